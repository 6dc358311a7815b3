"""Records: the plain data the test process and the server exchange, and the one check of each.

What a request was (:class:`HttpRequest`, :class:`Progress`), which statuses a test means
(``"404,5xx"``), and which file names are served (checked once, then percent-encoded). Nothing
here imports pytest or aiohttp: the server and the test process both build on it, and it on
neither.
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import quote

#: Everything the plugin puts on an exporter lives below this folder of its served root.
TOP: Final = "pytest-jumpstarter-http"
#: Owners' folders on an exporter: one per connected process, removed when its owner ends.
RUNS: Final = f"{TOP}/runs"
#: Where handles' URL namespaces are served on an exporter.
NS: Final = f"{TOP}/ns"
#: Content sent to an exporter, by sha256.
OBJECTS: Final = f"{TOP}/objects"
#: Transfers this large (an upload, a download a test waits for) get progress lines.
PROGRESS_BYTES: Final = 64 << 20


class RequestLogUnavailable(RuntimeError):
    """The server keeps no request log (an exporter with the stock HttpServer driver)."""


@dataclass(frozen=True)
class HttpRequest:
    """One request a server answered."""

    time: float
    client: str
    method: str
    path: str
    range: str | None
    status: int
    bytes_sent: int
    duration: float
    #: False when the body was cut short: the client went away, or the server stopped.
    complete: bool = True
    #: The fault ``http_server.inject()`` applied to it (``cut_after=1024, times=1``), if any.
    fault: str | None = None
    #: Whether ``status`` was the fault's answer rather than the server's (``--http-fail-on`` skips it).
    injected: bool = False
    #: The server's number of the request, in the order requests started: a request belongs to
    #: the test during which it started, even if it ends in a later one.
    seq: int = -1
    #: ``path`` relative to the base URL of the handle that read it (``"rootfs.img"``), decoded;
    #: empty in an entry no handle has read.
    name: str = ""

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time % 1 * 1000):03d}"
        range_ = f" [{self.range}]" if self.range else ""
        return (
            f"{stamp} {self.client} {self.method} {self.path}{range_} -> {self.status}, "
            f"{self.bytes_sent} bytes in {self.duration * 1000:.1f} ms"
            + ("" if self.complete else " (cut short)")
            + (f" [fault: {self.fault}]" if self.fault else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HttpRequest:
        """Rebuild an entry sent over Jumpstarter's wire, where numbers arrive as floats."""
        return cls(
            time=float(data["time"]),
            client=str(data["client"]),
            method=str(data["method"]),
            path=str(data["path"]),
            range=data.get("range"),
            status=int(data["status"]),
            bytes_sent=int(data["bytes_sent"]),
            duration=float(data["duration"]),
            complete=bool(data.get("complete", True)),
            fault=None if data.get("fault") is None else str(data["fault"]),
            injected=bool(data.get("injected", False)),
            seq=int(data.get("seq", -1)),
        )


@dataclass
class Progress:
    """A file response's body: ``sent`` grows on the server's loop, anyone may read it.

    ``total`` is the body's length, None until the headers are out; ``complete`` turns True
    once the whole body went out.
    """

    method: str
    path: str
    client: str
    sent: int = 0
    total: int | None = None
    complete: bool = False


_STATUS = re.compile(r"^[1-5](\d\d|xx)$")


def parse_statuses(text: str) -> tuple[str, ...]:
    """``"404,5xx"`` -> ``("404", "5xx")``; raises ValueError on anything else."""
    codes = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    bad = [code for code in codes if not _STATUS.match(code)]
    if bad or not codes:
        raise ValueError(", ".join(bad) or text)
    return codes


def status_matches(status: int, codes: Iterable[str]) -> bool:
    text = str(status)
    return any(code == text or (code.endswith("xx") and code[0] == text[0]) for code in codes)


def describe(entries: list[HttpRequest]) -> str:
    return "\n".join(entry.line() for entry in entries) if entries else "(no requests)"


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


def normalized(path: str) -> str:
    """A decoded URL path as the server resolves it, without its leading slash: ``//a/./b/`` is ``a/b``.

    aiohttp's static route serves every spelling of a name (repeated slashes, ``.``, ``..``, a
    trailing slash) as the same file, so what matches a name must accept them all.
    """
    return posixpath.normpath("/" + path).lstrip("/")


def url_path(name: str) -> str:
    """The percent-encoded URL path of a checked name, with a leading slash."""
    return "/" + quote(check_name(name), safe="/")
