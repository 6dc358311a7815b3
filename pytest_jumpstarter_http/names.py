"""Names of served files: validated once, then percent-encoded into URLs; what to say of a file not served."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

#: The longest part and the longest whole name, in UTF-8 bytes: Linux's NAME_MAX and PATH_MAX.
MAX_PART_BYTES = 255
MAX_NAME_BYTES = 4096

_VALID = "use a relative path of plain parts separated by '/', like 'images/disk.raw'"


class HttpPublishWarning(UserWarning):
    """Some entries of ``--http-root`` could not be sent to an exporter; the rest are served."""


class HttpPublishError(Exception):
    """A file cannot be sent to an exporter: not a regular file, unreadable, or a name it cannot hold."""


def _parts(name: str) -> list[str]:
    return name.split("/")


#: Each rule in the order it is checked: whether a name breaks it, and how to say so.
_RULES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda name: len(name.encode()) > MAX_NAME_BYTES, f"it is longer than {MAX_NAME_BYTES} bytes"),
    (lambda name: "\0" in name, "it contains a NUL byte"),
    (lambda name: "\\" in name, "it contains a backslash"),
    (lambda name: name.startswith("/"), "it is an absolute path"),
    (
        lambda name: any(part in ("", ".", "..") for part in _parts(name)),
        "it has an empty, '.' or '..' part",
    ),
    (
        lambda name: any(len(part.encode()) > MAX_PART_BYTES for part in _parts(name)),
        f"it has a part longer than {MAX_PART_BYTES} bytes",
    ),
    # opendal strips trailing whitespace from the last part: "image.raw " would replace
    # "image.raw" on an exporter. Refused on loopback too, so a test passes on both or neither.
    (
        lambda name: any(part != part.strip() for part in _parts(name)),
        "a part begins or ends with whitespace, which an exporter's storage strips",
    ),
)


def name_problem(name: object) -> str | None:
    """What makes ``name`` invalid (``"it is empty"``), or None for a valid name."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    try:
        name.encode()
    except UnicodeEncodeError:  # os.listdir's surrogate escapes of a name in another encoding
        return "it is not valid UTF-8 (a file name in another encoding)"
    return next((problem for broken, problem in _RULES if broken(name)), None)


def check_name(name: str, *, where: str = "name") -> str:
    """Return ``name`` if it is a safe relative path below the served root, else raise ``ValueError``.

    Jumpstarter's opendal storage (0.45) writes ``../x`` outside the exporter's root, so this is
    the only thing standing between a bad name and a file outside the root. It also refuses what
    either backend's storage would store under another name or not at all, so that a name that
    works on loopback works on an exporter.
    """
    problem = name_problem(name)
    if problem:
        raise ValueError(f"{where} {name!r} is not a valid served file name: {problem}; {_VALID}.")
    return name


def url_path(name: str) -> str:
    """The percent-encoded URL path of a checked name, with a leading slash."""
    return "/" + quote(check_name(name), safe="/")
