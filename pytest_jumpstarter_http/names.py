"""Names of served files: validated once, then percent-encoded into URLs."""

from __future__ import annotations

from urllib.parse import quote

MAX_NAME = 1024


def check_name(name: str, *, where: str = "name") -> str:
    """Return ``name`` if it is a safe relative path below the served root, else raise ``ValueError``.

    Jumpstarter's opendal storage (0.45) writes ``../x`` outside the exporter's root, so this is
    the only thing standing between a bad name and a file outside the root.
    """
    valid = "use a relative path of plain parts separated by '/', like 'images/disk.raw'"
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it is empty"
    elif len(name) > MAX_NAME:
        problem = f"it is longer than {MAX_NAME} characters"
    elif "\0" in name:
        problem = "it contains a NUL byte"
    elif "\\" in name:
        problem = "it contains a backslash"
    elif name.startswith("/"):
        problem = "it is an absolute path"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "it has an empty, '.' or '..' part"
    if problem:
        raise ValueError(f"{where} {name!r} is not a valid served file name: {problem}; {valid}.")
    return name


def url_path(name: str) -> str:
    """The percent-encoded URL path of a checked name, with a leading slash."""
    return "/" + quote(check_name(name), safe="/")
