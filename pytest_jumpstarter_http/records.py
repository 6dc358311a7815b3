"""Records: the plain data the test process and the server exchange, and the one check of each.

What a request was (:class:`HttpRequest`, :class:`Progress`), which statuses a test means
(``"404,5xx"``), which file names are served (checked once, then percent-encoded), and the specs
of what a test sets on its server, each checked once as it is made: a fault (:class:`FaultSpec`,
seen by the test as a :class:`Fault`) and TLS (:class:`TlsSpec`); replies, upload folders and
credentials are in :mod:`.deviceapi`, built on the checks here (:class:`ValueRange`, :func:`bounded`,
:func:`spec_path`, :class:`Scripted`). :class:`Recorder` is what a handle asks of its server.
Nothing here imports pytest or aiohttp: the server and the test process both build on it, and it
on neither.
"""

from __future__ import annotations

import copy
import functools
import glob
import inspect
import math
import os
import posixpath
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from fnmatch import fnmatchcase
from typing import Any, Final, Generic, Protocol, TypeVar, cast
from urllib.parse import quote, unquote

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
#: The version of the server API (``RecordingHttpServer``'s exported calls) this code speaks. An
#: exporter and its test runners are upgraded on their own schedules: they check it on connecting.
#: 3: a reply matches on its query, headers and body, is answered by a handler or is ordered;
#: a server of 2 would ignore those keys and answer requests the reply does not match.
#: 4: ``holds()`` checks an object in one call (and calls go on one stream, :mod:`.channel`).
#: 5: ``renew_namespace()`` ends a handle's namespace and opens the next handle's in one call.
API_VERSION: Final = 5
#: The method and remote of a request-log entry of a connection refused before it made any
#: request: a TLS handshake an HTTPS site refused (issue 27). Its status is 0, its path the URL's.
NO_REQUEST: Final = "-"


def plugin_version() -> str:
    """This installation's version of pytest-jumpstarter-http."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-jumpstarter-http")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
#: The package: frames of its modules (their dataclasses' generated code too) are the plugin's.
_PACKAGE = __name__.rpartition(".")[0] + "."


def _users_mistake(method: F) -> F:
    """Make ``method`` fail on a user's mistake (an exception of :data:`MISTAKES`) with the sentence
    alone: no frame of the plugin in the traceback, only the user's own (issue 27). Applied once
    per class, to each public method and property, by :func:`user_facing`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return method(*args, **kwargs)
        except MISTAKES as exc:
            raise exc.with_traceback(_without_plugin_frames(exc.__traceback__)) from exc.__cause__

    return cast(F, wrapper)


def _without_plugin_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the frames of this package (those of the libraries below it stay)."""
    kept = []
    while tb is not None:
        if not str(tb.tb_frame.f_globals.get("__name__", "")).startswith(_PACKAGE):
            kept.append(tb)
        tb = tb.tb_next
    rebuilt = None
    for entry in reversed(kept):
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return rebuilt


def user_facing(cls: type[T]) -> type[T]:
    """Wrap the public methods and properties ``cls`` defines with :func:`_users_mistake`, so that
    a bad argument fails the test with its one sentence as pytest's own helpers do."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(value, property) and value.fget is not None:
            setattr(cls, name, property(_users_mistake(value.fget), value.fset, value.fdel, value.__doc__))
        elif inspect.isfunction(value):
            setattr(cls, name, _users_mistake(value))
    return cls


class Unavailable(RuntimeError):
    """The server cannot do what a test asked of it (an exporter with the stock HttpServer driver)."""


class RequestLogUnavailable(Unavailable):
    """The server keeps no request log (an exporter with the stock HttpServer driver)."""


#: The bytes of a request's body the server keeps for ``HttpRequest.body`` and for matching a reply.
BODY_KEPT: Final = 64 << 10


class Fields(Mapping[str, str]):
    """Read-only name -> value pairs as a request carried them, in order: its headers (names in
    any case) or its query. ``fields[name]`` is the first value, :meth:`getall` every one."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = (), *, any_case: bool = False) -> None:
        self._pairs = tuple((str(name), str(value)) for name, value in pairs)
        self._fold: Callable[[str], str] = str.lower if any_case else str
        self._first: dict[str, str] = {}
        for name, value in self._pairs:
            self._first.setdefault(self._fold(name), value)

    def __getitem__(self, name: str) -> str:
        return self._first[self._fold(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getall(self, name: str) -> list[str]:
        """Every value of ``name``, in the order they came (empty if none)."""
        key = self._fold(name)
        return [value for each, value in self._pairs if self._fold(each) == key]

    def pairs(self) -> list[tuple[str, str]]:
        """Every name and value, as they came."""
        return list(self._pairs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self._pairs)!r})"


@dataclass(frozen=True)
class HttpRequest:
    """One request a server answered.

    ``path`` is what the device sent, query included (``"/api/v1/status?v=2"``), as the request
    log shows it; ``name`` is that path decoded, relative to the handle's URL, without the query
    (``"api/v1/status"``); ``query`` is the query parsed (``query["v"] == "2"``).
    """

    time: float
    #: The device's address (the peer of the connection).
    remote: str
    method: str
    #: What the device asked for, as it sent it, query included: below the URL of the handle that
    #: read it (``"/rootfs.img?v=2"``); in the server's own log, the whole path.
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
    #: Which part of the device API answered it: ``reply``, ``reply: ordered``, ``reply: out of
    #: order``, ``reply: no such method``, ``handler``, ``upload``, ``upload refused``, ``upload cut
    #: short``, ``auth`` (refused for its credentials); None when the server answered as usual.
    #: For a connection refused before any request (``NO_REQUEST``), what was wrong:
    #: ``TLS handshake failed: no client certificate``.
    answered_by: str | None = None
    #: The request's headers as the device sent them: ``headers["content-type"]``.
    headers: Fields = field(default_factory=lambda: Fields(any_case=True), repr=False, compare=False)
    #: How many bytes of its body the server read (up to ``BODY_KEPT``); whether there was more.
    body_size: int = 0
    body_cut: bool = False
    #: Reads the body from its server; set on the entries a handle gives its test.
    _body: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def query(self) -> Fields:
        """The query of ``path``, parsed: ``query["v"]``, ``query.getall("tag")``."""
        from urllib.parse import parse_qsl

        return Fields(parse_qsl(self.path.partition("?")[2], keep_blank_values=True))

    @property
    def body(self) -> bytes:
        """The body the device sent, as far as the server read it: the first 64 KiB
        (``body_cut`` says whether there was more) of a request a reply, a handler or an upload
        folder took; empty for the others, whose body the server never reads. On an exporter it
        is fetched when read."""
        return b"" if self._body is None or not self.body_size else self._body()

    def json(self) -> Any:
        """The body parsed as JSON (a ``ValueError`` if it is not JSON)."""
        import json

        return json.loads(self.body)

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time % 1 * 1000):03d}"
        if self.method == NO_REQUEST:  # a handshake refused: no request, no answer
            return f"{stamp} {self.answered_by}"
        range_ = f" [{self.range}]" if self.range else ""
        return (
            f"{stamp} {self.remote} {self.method} {self.path}{range_} -> {self.status}, "
            f"{self.bytes_sent} bytes in {self.duration * 1000:.1f} ms"
            + ("" if self.complete else " (cut short)")
            + (f" [fault: {self.fault}]" if self.fault else "")
            + (f" [{self.answered_by}]" if self.answered_by else "")
        )

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_body"}
        data["headers"] = self.headers.pairs()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HttpRequest:
        """Rebuild an entry sent over Jumpstarter's wire, where numbers arrive as floats."""
        return cls(
            time=float(data["time"]),
            remote=str(data["remote"]),
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
            answered_by=None if data.get("answered_by") is None else str(data["answered_by"]),
            headers=Fields(((str(k), str(v)) for k, v in data.get("headers") or ()), any_case=True),
            body_size=int(data.get("body_size", 0)),
            body_cut=bool(data.get("body_cut", False)),
        )


@dataclass
class Progress:
    """A file response's body: ``sent`` grows on the server's loop, anyone may read it.

    ``total`` is the body's length, None until the headers are out; ``complete`` turns True
    once the whole body went out.
    """

    method: str
    path: str
    remote: str
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


# --- faults ---------------------------------------------------------------------------------


class FaultsUnavailable(Unavailable):
    """The server cannot inject faults (an exporter with the stock HttpServer driver)."""


#: The largest whole number Jumpstarter's wire carries exactly: its numbers travel as doubles.
MAX_WHOLE: Final = 2**53 - 1
#: The longest ``delay``, in seconds: a day, far past any device's own timeout.
MAX_DELAY: Final = 86400


@dataclass(frozen=True)
class ValueRange:
    """What one numeric argument of ``inject()`` may be."""

    #: What it counts, as the error message asks for it: "a whole number of bytes".
    kind: str
    low: int
    high: int
    whole: bool = True
    #: None is valid: the argument was not asked for.
    optional: bool = True


#: The numeric arguments of ``inject()``. Each is bounded so that it crosses the wire exactly and
#: the server can compute with it: past the bounds a delay overflows the event loop's clock, and
#: a rate or count overflows a float on the server (issue 17).
_RANGES: Final = {
    "delay": ValueRange("a number of seconds", 0, MAX_DELAY, whole=False, optional=False),
    "rate": ValueRange("a number of bytes per second", 1, MAX_WHOLE, whole=False),
    "cut_after": ValueRange("a whole number of bytes", 0, MAX_WHOLE),
    "stall_after": ValueRange("a whole number of bytes", 0, MAX_WHOLE),
    "status": ValueRange("an HTTP error status", 400, 599),
    "times": ValueRange("a whole number of requests", 1, MAX_WHOLE),
}


def shown(value: object) -> str:
    """``repr(value)``, cut when it would drown the message: a 5000-character path, ``10**400``."""
    if isinstance(value, int) and value.bit_length() > 333:  # repr refuses past 4300 digits
        power = math.floor(math.log10(abs(value)))  # a float's log: one too high just below 10**n
        return f"<a whole number of {power + (abs(value) >= 10**power)} digits>"
    text = repr(value)
    if len(text) <= 100:
        return text
    return f"{text[:48]}…{text[-48:]} ({len(text)} characters)"


def bounded(where: str, name: str, value: Any, rule: ValueRange) -> None:
    """Check the numeric argument ``name`` of the method ``where`` against ``rule``."""
    if value is None and rule.optional:
        return
    if isinstance(value, bool) or not isinstance(value, int if rule.whole else (int, float)):
        problem = "not a whole number" if rule.whole else "not a number"
    elif not rule.low <= value <= rule.high:  # Python compares int and float exactly; nan is never in
        problem = "out of range"
    else:
        return
    raise ValueError(
        f"{where}: {name}={shown(value)} is {problem}; give {rule.kind} from {rule.low} to {rule.high}."
    )


def spec_path(where: str, name: str, path: Any) -> str:
    """The argument ``name`` of the method ``where``, a path relative to the server's URL, checked."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise ValueError(
            f"{where}: {name}={shown(path)} is a {type(path).__name__}, not a path; give a str or "
            "os.PathLike path relative to the server's URL."
        )
    if not path.strip("/"):
        raise ValueError(f"{where}: {name}={path!r} is empty; give a path relative to the server's URL.")
    # A leading or a trailing slash changes nothing: "/simple/pkg/" is "simple/pkg" (issue 26).
    return check_name(path.strip("/"), where=f"{where} {name}")


def _check_together(spec: FaultSpec) -> None:
    """Refuse arguments that each are valid but contradict one another."""
    if spec.cut_after is not None and spec.stall_after is not None:
        raise ValueError(
            f"inject(): cut_after={spec.cut_after!r} and stall_after={spec.stall_after!r} were both given; "
            "a response is either cut or stalled, so give one of them."
        )
    shaped = [name for name in ("rate", "cut_after", "stall_after") if getattr(spec, name) is not None]
    if spec.status is not None and shaped:
        raise ValueError(
            f"inject(): status={spec.status} answers with no file, so {shaped[0]} has nothing to "
            f"act on; give status or {shaped[0]}, not both."
        )


@dataclass(frozen=True)
class FaultSpec:
    """One fault, checked as it is made: what it matches and what it does.

    Its fields are ``inject()``'s arguments, so making one is the one check of them, for
    ``http_server.inject()``, the ``http_fault`` marker and the server that receives it alike: an
    unknown keyword is Python's ``TypeError``, a bad value a ``ValueError`` of one sentence.
    ``patterns`` place it below a handle's URL (:meth:`under`).
    """

    #: The path (or glob) as the test gave it, relative to the handle's URL (an ``os.PathLike``
    #: is taken as its ``str``).
    path: str
    delay: float = 0.0
    rate: float | None = None
    cut_after: int | None = None
    stall_after: int | None = None
    status: int | None = None
    times: int | None = None
    #: ``fnmatch`` patterns of the decoded URL path, one per URL prefix of the handle (:meth:`under`).
    patterns: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", spec_path("inject()", "path", self.path))
        for name, rule in _RANGES.items():
            bounded("inject()", name, getattr(self, name), rule)
        _check_together(self)
        object.__setattr__(self, "delay", float(self.delay))

    def arguments(self) -> dict[str, Any]:
        """Its fields as ``inject()``'s arguments."""
        return {name: getattr(self, name) for name in ("path", *_RANGES)}

    def under(self, prefixes: tuple[str, ...]) -> FaultSpec:
        """This fault below the percent-encoded URL paths ``prefixes`` a handle's files are served under."""
        escaped = (glob.escape(unquote(prefix).rstrip("/")) for prefix in prefixes)
        return self._matching(tuple(f"{prefix}/{self.path}" for prefix in escaped))

    def _matching(self, patterns: tuple[str, ...]) -> FaultSpec:
        placed = copy.copy(self)
        object.__setattr__(placed, "patterns", patterns)
        return placed

    @property
    def shapes(self) -> bool:
        """Whether it changes how a file's body is sent."""
        return self.rate is not None or self.cut_after is not None or self.stall_after is not None

    def matches(self, path: str) -> bool:
        """Whether it applies to a request for the decoded URL ``path``, however it is spelled.

        aiohttp's static route serves ``/sub//a.raw``, ``/sub/./a.raw``, ``/sub/x/../a.raw`` and
        ``/sub/a.raw/`` as ``/sub/a.raw``, so a fault matches the path they all resolve to (issue 17).
        """
        resolved = "/" + normalized(path)
        return any(fnmatchcase(resolved, pattern) for pattern in self.patterns)

    def label(self) -> str:
        """``cut_after=1024, times=1``: what the request log shows for a request it hit."""
        effects = {name: getattr(self, name) for name in _RANGES} | {"delay": self.delay or None}
        shown = [f"{name}={_plain(value)}" for name, value in effects.items() if value is not None]
        return ", ".join(shown) or "no effect"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patterns"] = list(self.patterns)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        """Rebuild a spec sent over Jumpstarter's wire, where numbers arrive as floats; checked again."""

        def whole(key: str) -> int | None:
            value = data.get(key)
            return None if value is None else int(value)

        rate = data.get("rate")
        spec = cls(
            str(data["path"]),
            delay=float(data.get("delay") or 0.0),
            rate=None if rate is None else float(rate),
            cut_after=whole("cut_after"),
            stall_after=whole("stall_after"),
            status=whole("status"),
            times=whole("times"),
        )
        return spec._matching(tuple(str(pattern) for pattern in data["patterns"]))


def _plain(value: float) -> str:
    """``3`` for 3.0, ``0.5`` for 0.5: numbers as a user would write them."""
    return str(int(value)) if float(value).is_integer() else repr(value)


#: A test's handler as its server's API calls it: the request (``HttpRequest.as_dict()`` with
#: its body in base64) to the response (``HttpResponse.as_dict()``).
Answerer = Callable[[dict[str, Any]], dict[str, Any]]


class Recorder(Protocol):
    """What a handle asks of its server beyond serving: its request log and its faults.

    ``client.ServerApi`` implements it once, over Jumpstarter's wire on an exporter
    (``RecordingHttpServerClient``) and with the driver's own methods on loopback (``LocalApi``);
    this typed view lets this layer's ``Fault``, ``Reply`` and ``Upload`` name it without importing
    the test process's modules, and mypy checks ``ServerApi`` against it. Numbers and specs cross
    as the wire carries them.
    """

    def get_requests(self, start: int, prefix: str = "") -> tuple[int, list[HttpRequest]]:
        """How many requests started so far, and those numbered ``start`` or later below ``prefix``."""
        ...

    def get_in_flight(self, prefix: str = "") -> list[Progress]:
        """The downloads under way now whose raw path starts with ``prefix``."""
        ...

    def inject_fault(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        """Apply a fault (``FaultSpec.as_dict()``) until it or ``namespace`` is cleared; its id."""
        ...

    def end(self, ident: str, namespace: str | None = None) -> int:
        """End a fault, reply, upload folder or credential set through ``namespace``; how often it
        acted (0 if it is gone)."""
        ...

    def hits(self, ident: str, namespace: str | None = None) -> int:
        """How often a fault, reply, upload folder or credential set through ``namespace`` acted so far."""
        ...

    def forget(self, ident: str) -> None:
        """Forget the handler of reply ``ident`` (if it has one), which its namespace's end ended."""
        ...

    def add_reply(
        self, spec: dict[str, Any], namespace: str | None = None, handler: Answerer | None = None
    ) -> str:
        """Answer with a scripted reply (``ReplySpec.as_dict()``) until it or ``namespace`` ends; its
        id. ``handler`` answers a reply with a handler, in a worker thread of this process."""
        ...

    def get_body(self, seq: int, prefix: str) -> bytes:
        """What the server read of the body of request ``seq`` below ``prefix``."""
        ...

    def accept_uploads(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        """Store the bodies PUT or POSTed below ``UploadSpec.as_dict()``'s prefix; its id."""
        ...

    def require_auth(self, spec: dict[str, Any], namespace: str | None = None) -> str:
        """Refuse requests without the credentials of ``AuthSpec.as_dict()``; its id."""
        ...

    def get_uploads(self, api_id: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """What an ``accept_uploads`` id of ``namespace`` stored: ``Upload`` fields, and where each is."""
        ...

    def requests_started(self) -> int:
        """How many requests started so far: where a new request window starts."""
        ...

    def read_upload(self, entry: dict[str, Any], namespace: str | None = None) -> bytes:
        """The content of an upload of :meth:`get_uploads`."""
        ...


#: What a test's own mistake raises from a public call: a bad argument, a file that is not there,
#: a name that is taken, a server that cannot do it. Each is one sentence, and all the test needs.
MISTAKES: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    HttpPublishError,
    Unavailable,
)


#: The spec of something a test set on its server.
S = TypeVar("S")


@user_facing
class Scripted(Generic[S]):
    """Something a test set on its server (a fault, a reply): how often it acted, and how to end
    it early. It ends by itself with the test that set it."""

    def __init__(self, recorder: Recorder, ident: str, spec: S, namespace: str | None = None) -> None:
        self._recorder = recorder
        #: The server's id of it, which only its namespace's calls reach.
        self.id = ident
        self._namespace = namespace
        self.spec = spec
        self._final_hits: int | None = None

    @property
    def active(self) -> bool:
        """Whether it still acts: not cleared (a reply may have used up its ``times``)."""
        return self._final_hits is None

    @property
    def hits(self) -> int:
        """How many requests it acted on so far (on an exporter, read from the exporter)."""
        if self._final_hits is not None:
            return self._final_hits
        return self._recorder.hits(self.id, self._namespace)

    def clear(self) -> None:
        """End it now: a fault's stalled and delayed responses end (a stalled one is cut); after a
        reply, the next one for its path and method answers, or the file."""
        if self._final_hits is None:
            self._final_hits = self._recorder.end(self.id, self._namespace)


@user_facing
class Fault(Scripted["FaultSpec"]):
    """A fault injected by ``http_server.inject()``: how often it hit, and how to end it early.

    It ends by itself with the test that injected it.
    """

    @property
    def path(self) -> str:
        """The path (or glob) it matches, relative to the server's URL."""
        return self.spec.path

    def __repr__(self) -> str:
        state = "active" if self.active else "cleared"
        return f"<Fault {self.path!r} {self.spec.label()} {state}>"


# --- TLS ------------------------------------------------------------------------------------


def _pem(name: str, value: object, kind: str) -> None:
    """Refuse a ``value`` that holds no PEM block ending in ``kind`` (``CERTIFICATE``, ``PRIVATE KEY``)."""
    if not isinstance(value, str) or f"{kind}-----" not in value:
        raise ValueError(f"serve_tls(): {name} is not a PEM {kind.lower()}; give the PEM text of one.")


@dataclass(frozen=True)
class TlsSpec:
    """What a server needs to serve HTTPS: its certificate, its key, and the CA its clients must show.

    Checked once, as it is made, on whichever side makes it: the test process that sends it and the
    server that receives it over Jumpstarter's wire.
    """

    #: The server's certificate chain, PEM, leaf first.
    cert_pem: str
    #: The server certificate's private key, PEM.
    key_pem: str
    #: The CA certificate (PEM) a client's certificate must be signed by; None asks for none.
    client_ca_pem: str | None = None

    def __post_init__(self) -> None:
        _pem("cert_pem", self.cert_pem, "CERTIFICATE")
        _pem("key_pem", self.key_pem, "PRIVATE KEY")  # also "EC PRIVATE KEY", "RSA PRIVATE KEY"
        if self.client_ca_pem is not None:
            _pem("client_ca_pem", self.client_ca_pem, "CERTIFICATE")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TlsSpec:
        client_ca = data.get("client_ca_pem")
        return cls(str(data["cert_pem"]), str(data["key_pem"]), None if client_ca is None else str(client_ca))
