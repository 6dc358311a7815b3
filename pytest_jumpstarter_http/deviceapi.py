"""What a test scripts for the device talking back (issue 21): replies, upload folders and
credentials, as data both sides use.

:class:`ReplySpec`, :class:`UploadSpec` and :class:`AuthSpec` are checked once, as they are made,
on whichever side makes them: the test process that sends them and the server that receives them
over Jumpstarter's wire. A test sees a :class:`Reply` and the :class:`Upload` records. Like
:mod:`.records`, nothing here imports pytest or aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import copy
import glob
import hmac
import json as jsonlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final, cast
from urllib.parse import unquote

from .records import (
    MAX_WHOLE,
    Recorder,
    Scripted,
    Unavailable,
    ValueRange,
    bounded,
    normalized,
    shown,
    spec_path,
    user_facing,
)


class DeviceApiUnavailable(Unavailable):
    """The server cannot script replies, take uploads or ask for credentials (the stock driver)."""


#: The largest reply body sent to a server with its spec: Jumpstarter's wire carries each call
#: whole, so a larger body is a file to stage, served with the reply's headers.
MAX_REPLY_BODY: Final = 1 << 20
#: A request method as HTTP spells them: letters, upper case by convention and by our matching.
_METHOD = re.compile(r"^[A-Z][A-Z-]{0,31}$")
#: A header name: an HTTP token.
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
#: Statuses whose answer has no body, whatever the server is given.
_BODILESS = (204, 304)
#: A 1xx is no final answer: a client would wait for the one after it.
_STATUS_RANGE = ValueRange("an HTTP status", 200, 599, optional=False)
#: What the request log says of a request a reply answered, and of one its handler answered (a
#: handler's failure adds why: ``handler: no answer in time``).
REPLIED: Final = "reply"
HANDLED: Final = "handler"
#: What the request log says of a request an ordered reply answered in its turn, and of one that
#: matched an ordered reply out of its turn (answered 500, not as the test's own answer: it shows).
ORDERED: Final = "reply: ordered"
OUT_OF_ORDER: Final = "reply: out of order"
#: What the request log says of a request for a reply's path with another method (405).
NO_SUCH_METHOD: Final = "reply: no such method"


#: What a device gets when a handler could not answer: it failed, or its reply ended meanwhile.
HANDLER_FAILED: Final[dict[str, Any]] = {"status": 500, "payload": None, "headers": {}}


def by_reply(answered_by: str | None) -> bool:
    """Whether the request log's ``answered_by`` says a reply answered (its handler included)."""
    return answered_by in (REPLIED, ORDERED) or (answered_by or "").startswith(HANDLED)


#: What frames a body on the wire: the server sets them for the body it sends (issue 26).
_FRAMING = ("content-length", "transfer-encoding")
_TIMES_RANGE = ValueRange("a whole number of requests", 1, MAX_WHOLE)
_BYTES_RANGE = ValueRange("a whole number of bytes", 0, MAX_WHOLE, optional=False)


class _NoJson:
    """``respond()``'s default for ``json``: no JSON body, where ``json=None`` is JSON's ``null``."""

    def __repr__(self) -> str:
        return "NO_JSON"


NO_JSON: Any = _NoJson()


def _payload(body: Any, json: Any) -> bytes | None:
    """``respond()``'s body as bytes (a JSON value encoded), or None for neither; checked."""
    if body is not None and json is not NO_JSON:
        raise ValueError(
            "respond(): body and json were both given; a reply has one body, so give one of them."
        )
    if json is not NO_JSON:
        return _encoded("json", json)
    return _bytes("body", body, "; give bytes or str, or json= for a JSON value")


def _encoded(name: str, value: Any) -> bytes:
    """The JSON value ``value`` of the argument ``name``, encoded; checked."""
    try:
        return jsonlib.dumps(value, allow_nan=False).encode()
    except RecursionError:  # repr() of the value would recurse as deep: not shown
        raise ValueError(
            f"respond(): {name} is nested too deeply to encode; give a JSON value of fewer levels, "
            "or body= with its text."
        ) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"respond(): {name}={shown(value)} is not a JSON value ({exc}); give dicts, lists, "
            "strings, numbers, booleans or None."
        ) from None


def _headers(headers: Any) -> dict[str, str]:
    """``respond()``'s headers, checked: names are tokens, values hold no line break."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise TypeError(
            f"respond(): headers={shown(headers)} is a {type(headers).__name__}, not a mapping; "
            "give a dict of header names to values."
        )
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"respond(): header {shown(name)}: {shown(value)} is not a str name and value.")
        if not _HEADER.match(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(
                f"respond(): header {shown(name)}: {shown(value)} is no valid header; give a "
                "token name and a value without line breaks."
            )
        if name.lower() in _FRAMING:
            raise ValueError(
                f"respond(): header {shown(name)} frames the body, which the server does for the body "
                "it sends; leave it out."
            )
    return dict(headers)


def _times(times: Any, ordered: Any) -> int | None:
    """``respond()``'s ``times``, checked: a step of a sequence (``ordered``) answers once unless
    it says more."""
    bounded("respond()", "times", times, _TIMES_RANGE)
    if not isinstance(ordered, bool):
        raise TypeError(f"respond(): ordered={shown(ordered)} is not a bool; give True or False.")
    return 1 if ordered and times is None else cast(int | None, times)


@dataclass(frozen=True)
class Asked:
    """A request as a reply matches it: its method, decoded URL path, raw query, headers, and
    the part of its body the server read (None: not read)."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None


def _query(query: Any) -> str | dict[str, list[str]] | None:
    """``query_string=``: a raw query (its leading ``?`` dropped), or names to a value or a list of them."""
    if query is None or isinstance(query, str):
        return None if query is None else query.removeprefix("?")
    values = _query_values(query) if isinstance(query, Mapping) else None
    if values is None:
        raise TypeError(
            f"respond(): query_string={shown(query)} is no query; give a str such as 'v=2&tag=a', or "
            "a dict of names to a str or a list of str."
        )
    return values


def _query_values(query: Mapping[Any, Any]) -> dict[str, list[str]] | None:
    """A query's names to their lists of values; None unless every name and value is a str."""
    values = {name: [value] if isinstance(value, str) else value for name, value in query.items()}
    ok = all(isinstance(name, str) and isinstance(v, list) for name, v in values.items())
    return values if ok and all(isinstance(x, str) for v in values.values() for x in v) else None


def _bytes(name: str, value: Any, fix: str = "") -> bytes | None:
    """``respond()``'s argument ``name``, bytes or str, as bytes (None stays None)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"respond(): {name}={shown(value)} is a {type(value).__name__}, not bytes or str{fix}.")


def _match_headers(headers: Any) -> dict[str, str]:
    """``match_headers=``, checked as a reply's own headers are, names folded to lower case."""
    if headers is None:
        return {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise TypeError(
            f"respond(): match_headers={shown(headers)} is not a dict of str header names to str values."
        )
    return {name.lower(): value for name, value in headers.items()}


@dataclass(frozen=True)
class ReplySpec:
    """A scripted reply, checked as it is made: its fields are ``respond()``'s arguments.

    ``payload`` is the body as sent (a JSON value encoded); with none, a 2xx reply to ``GET``
    serves the file at ``path`` with ``headers`` added. ``target`` places it below a handle's
    URL (:meth:`under`). ``query_string``, ``data``, ``match_headers`` and ``match_json`` are what
    the request must carry besides its method and path. An ``ordered`` reply is a step of its
    handle's sequence, and answers once unless ``times`` says more.
    """

    path: str
    status: int = 200
    body: bytes | str | None = None
    json: Any = NO_JSON
    headers: Mapping[str, str] | None = None
    method: str = "GET"
    times: int | None = None
    ordered: bool = False
    query_string: str | Mapping[str, Any] | None = None
    data: bytes | str | None = None
    match_headers: Mapping[str, str] | None = None
    match_json: Any = NO_JSON
    #: Seconds the server waits for the test's handler (``respond(handler=)``); 0: none.
    handler_wait: float = 0.0
    payload: bytes | None = field(default=None, init=False)
    #: The ``fnmatch`` pattern of the decoded URL path it answers, with a leading slash; set by
    #: :meth:`under`.
    target: str = field(default="", init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "path", spec_path("respond()", "path", self.path))
        bounded("respond()", "status", self.status, _STATUS_RANGE)
        set_(self, "times", _times(self.times, self.ordered))
        if not isinstance(self.method, str) or not (_METHOD.match(self.method.upper()) or self.method == "*"):
            raise ValueError(
                f"respond(): method={shown(self.method)} is no HTTP method; give one such as 'GET', "
                "or '*' for any."
            )
        set_(self, "method", self.method.upper())
        self._check_matching()
        if self.handler_wait and (self.body is not None or self.json is not NO_JSON or self.headers):
            raise ValueError(
                "respond(): a handler answers with its own status, headers and body; give handler= "
                "without body, json or headers."
            )
        self._check_answer()

    def _check_answer(self) -> None:
        """Check what it answers (``body`` or ``json``, ``headers``), and set ``payload``."""
        payload = _payload(self.body, self.json)
        headers = _headers(self.headers)
        if payload is not None and len(payload) > MAX_REPLY_BODY:
            raise ValueError(
                f"respond(): the body is {len(payload)} bytes, more than the {MAX_REPLY_BODY} a reply "
                "carries to the server; stage() it as a file and respond() without a body."
            )
        if payload and self.status in _BODILESS:
            raise ValueError(
                f"respond(): status={self.status} carries no body; give no body or another status."
            )
        if self.json is not NO_JSON and not any(key.lower() == "content-type" for key in headers):
            headers["Content-Type"] = "application/json"
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "headers", headers)

    def _check_matching(self) -> None:
        """Check what the request must carry (``query_string``, ``data``, ``match_headers``,
        ``match_json``), each in its one form."""
        set_ = object.__setattr__
        set_(self, "query_string", _query(self.query_string))
        set_(self, "data", _bytes("data", self.data))
        set_(self, "match_headers", _match_headers(self.match_headers))
        if self.match_json is NO_JSON:
            return
        _encoded("match_json", self.match_json)
        if self.data is not None:
            raise ValueError(
                "respond(): data and match_json were both given; a request has one body, so "
                "match it with one of them."
            )

    @property
    def serves_file(self) -> bool:
        """Whether it serves the file at its path (with its headers) rather than a body of its own."""
        plain = self.payload is None and not self.handler_wait
        return plain and 200 <= self.status < 300 and self.status != 204 and self.method == "GET"

    @property
    def reads_body(self) -> bool:
        """Whether it matches on the request's body, which the server must read first."""
        return self.data is not None or self.match_json is not NO_JSON

    def under(self, prefix: str) -> ReplySpec:
        """This reply below the percent-encoded URL path ``prefix`` of a handle."""
        placed = copy.copy(self)
        base = glob.escape("/" + normalized(unquote(prefix)))
        object.__setattr__(placed, "target", "/" + normalized(f"{base}/{self.path}"))
        return placed

    def answers(self, method: str, path: str) -> bool:
        """Whether it answers a ``method`` request for the decoded URL ``path``, however spelled."""
        asked = self.method in (method, "*") or (method == "HEAD" and self.method == "GET")
        return asked and fnmatchcase("/" + normalized(path), self.target)

    def fits(self, asked: Asked) -> bool:
        """Whether ``asked`` carries the query, headers and body it matches on (its method and
        path: :meth:`answers`)."""
        headers = self.match_headers or {}
        return (
            self.answers(asked.method, asked.path)
            and self._query_fits(asked.query)
            and all(asked.headers.get(name) == value for name, value in headers.items())
            and self._body_fits(asked.body)
        )

    def _query_fits(self, query: str) -> bool:
        if isinstance(self.query_string, dict):
            return _parsed(query) == self.query_string
        return self.query_string is None or query == self.query_string

    def _body_fits(self, body: bytes | None) -> bool:
        if self.data is not None:
            return body == self.data
        return self.match_json is NO_JSON or _json_of(body) == (True, self.match_json)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "payload": _b64(self.payload),
            "headers": dict(self.headers or {}),
            "method": self.method,
            "times": self.times,
            "ordered": self.ordered,
            "target": self.target,
            "query_string": self.query_string,
            "data": _b64(self.data if isinstance(self.data, bytes) else None),
            "match_headers": dict(self.match_headers or {}),
            # JSON text: Jumpstarter's wire would carry its numbers as floats.
            "match_json": None
            if self.match_json is NO_JSON
            else _encoded("match_json", self.match_json).decode(),
            "handler_wait": self.handler_wait,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplySpec:
        """Rebuild a spec sent over Jumpstarter's wire (numbers as floats, bodies in base64);
        checked again."""
        times = data.get("times")
        match_json = data.get("match_json")
        spec = cls(
            str(data["path"]),
            status=int(data["status"]),
            body=_unb64(data.get("payload")),
            headers=_strings(data.get("headers")),
            method=str(data["method"]),
            times=None if times is None else int(times),
            ordered=bool(data.get("ordered", False)),
            query_string=_query_of_wire(data.get("query_string")),
            data=_unb64(data.get("data")),
            match_headers=_strings(data.get("match_headers")),
            match_json=NO_JSON if match_json is None else jsonlib.loads(str(match_json)),
            handler_wait=float(data.get("handler_wait") or 0.0),
        )
        object.__setattr__(spec, "target", "/" + normalized(str(data["target"])))
        return spec


def _strings(mapping: Any) -> dict[str, str]:
    """A mapping of str to str as Jumpstarter's wire carried it (None: empty)."""
    return {str(k): str(v) for k, v in dict(mapping or {}).items()}


def _query_of_wire(query: Any) -> str | dict[str, list[str]] | None:
    if query is None or isinstance(query, str):
        return query
    return {str(k): [str(x) for x in v] for k, v in dict(query).items()}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes | None:
    return None if text is None else base64.b64decode(str(text))


def _parsed(query: str) -> dict[str, list[str]]:
    """A raw query as names to their values, in order."""
    from urllib.parse import parse_qsl

    parsed: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parsed.setdefault(name, []).append(value)
    return parsed


def _json_of(body: bytes | None) -> tuple[bool, Any]:
    """Whether ``body`` is JSON, and its value."""
    try:
        return True, jsonlib.loads(body or b"")
    except (ValueError, RecursionError):
        return False, None


@user_facing
@dataclass(frozen=True)
class HttpResponse:
    """What a handler of ``respond(path, handler=fn)`` returns: ``fn(request) -> HttpResponse``.

    ``body`` (bytes or str) or ``json`` (any JSON value, sent as ``application/json``), up to
    1 MiB; ``status`` 200 to 599; ``headers`` without the framing ones, which the server sets.
    """

    status: int = 200
    body: bytes | str | None = None
    json: Any = NO_JSON
    headers: Mapping[str, str] | None = None
    payload: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # The one check of a reply's answer: respond()'s, its sentence naming this class.
        try:
            reply = ReplySpec("-", self.status, self.body, self.json, self.headers, method="POST")
        except (TypeError, ValueError) as exc:
            raise type(exc)(str(exc).replace("respond():", "HttpResponse():", 1)) from None
        object.__setattr__(self, "payload", reply.payload)
        object.__setattr__(self, "headers", reply.headers)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "payload": _b64(self.payload), "headers": dict(self.headers or {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HttpResponse:
        """Rebuild an answer sent over Jumpstarter's wire; checked again."""
        return cls(int(data["status"]), _unb64(data.get("payload")), headers=_strings(data.get("headers")))


@dataclass(frozen=True)
class UploadSpec:
    """Where a device may upload, checked as it is made: ``accept_uploads()``'s arguments."""

    prefix: str = "uploads/"
    max_bytes: int = 64 << 20
    #: The decoded URL path below which it stores, with a leading slash; set by :meth:`under`.
    target: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", spec_path("accept_uploads()", "prefix", self.prefix))
        bounded("accept_uploads()", "max_bytes", self.max_bytes, _BYTES_RANGE)

    def under(self, prefix: str) -> UploadSpec:
        placed = copy.copy(self)
        object.__setattr__(placed, "target", "/" + normalized(f"{unquote(prefix)}/{self.prefix}"))
        return placed

    def name_of(self, path: str) -> str | None:
        """The upload's name in the decoded URL ``path``, as the device spelled it; None if not below."""
        inside = self.target + "/"
        return path[len(inside) :] if path.startswith(inside) else None

    def as_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "max_bytes": self.max_bytes, "target": self.target}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UploadSpec:
        spec = cls(str(data["prefix"]), int(data["max_bytes"]))
        object.__setattr__(spec, "target", "/" + normalized(str(data["target"])))
        return spec


#: A character no credential may hold: control characters, and each one's separator.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN = {"user": ":", "token": " ", "password": "\x00"}


def _credential(name: str, value: Any) -> None:
    if value is None:
        return
    # A refusal names the problem, never a secret: it lands in reports and JUnit (issue 26).
    given = f"{name}={shown(value)}" if name == "user" else f"the {name} given"
    if not isinstance(value, str):
        raise TypeError(f"require_auth(): {given} is a {type(value).__name__}, not a str.")
    if not value or _CONTROL.search(value) or _FORBIDDEN[name] in value:
        raise ValueError(
            f"require_auth(): {given} cannot be sent in an Authorization header; give a non-empty "
            "str without control characters (no ':' in a user, no space in a token)."
        )


@dataclass(frozen=True)
class AuthSpec:
    """The credentials a server asks for, checked as they are made: ``require_auth()``'s arguments."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    #: The decoded URL path below which every request needs them, no trailing slash ("" for all).
    target: str = field(default="", init=False)

    def __post_init__(self) -> None:
        for name in ("user", "password", "token"):
            _credential(name, getattr(self, name))
        if (self.user is None) != (self.password is None):
            raise ValueError(
                "require_auth(): user and password go together for Basic credentials; give both, or "
                "token= only."
            )
        if self.user is None and self.token is None:
            raise ValueError(
                "require_auth(): no credentials were given; give user and password, token=, or both."
            )

    def under(self, prefix: str) -> AuthSpec:
        placed = copy.copy(self)
        object.__setattr__(placed, "target", unquote(prefix).rstrip("/"))
        return placed

    def covers(self, path: str) -> bool:
        """Whether a request for the decoded URL ``path`` needs the credentials, however it is spelled."""
        return ("/" + normalized(path)).startswith(self.target + "/")

    def accepts(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header carries these credentials (compared in constant time)."""
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and self.token is not None:
            # Header bytes that are no UTF-8 reach here as surrogates: compare them as they came.
            given = value.strip().encode("utf-8", "surrogateescape")
            return hmac.compare_digest(given, self.token.encode())
        if scheme.lower() != "basic" or self.user is None:
            return False
        try:
            given = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, f"{self.user}:{self.password}".encode())

    def challenges(self) -> list[str]:
        """The ``WWW-Authenticate`` values a refused request gets."""
        realm = 'realm="pytest-jumpstarter-http"'
        return [f"Basic {realm}"] * (self.user is not None) + [f"Bearer {realm}"] * (self.token is not None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuthSpec:
        spec = cls(data.get("user"), data.get("password"), token=data.get("token"))
        object.__setattr__(spec, "target", str(data["target"]))
        return spec


@user_facing
class Reply(Scripted["ReplySpec"]):
    """A reply scripted by ``http_server.respond()``: how often it answered, and how to end it early.

    It ends by itself with the test that scripted it.
    """

    def __repr__(self) -> str:
        state = "active" if self.active else "cleared"
        return f"<Reply {self.spec.method} {self.spec.path!r} {self.spec.status} {state}>"


@user_facing
@dataclass(frozen=True)
class Upload:
    """A body a device PUT or POSTed below ``accept_uploads()``'s prefix, stored whole."""

    #: Its name below the prefix: ``boot.log``, or ``run1/boot.log`` for a multipart part.
    name: str
    size: int
    sha256: str
    method: str
    _recorder: Recorder = field(repr=False, compare=False)
    _entry: dict[str, Any] = field(repr=False, compare=False)
    _namespace: str | None = field(repr=False, compare=False, default=None)

    @classmethod
    def from_entry(cls, recorder: Recorder, entry: dict[str, Any], namespace: str | None = None) -> Upload:
        return cls(
            str(entry["name"]),
            int(entry["size"]),
            str(entry["sha256"]),
            str(entry["method"]),
            recorder,
            entry,
            namespace,
        )

    def read_bytes(self) -> bytes:
        """Its content, read from the server's folder (on an exporter, fetched from it now)."""
        import hashlib

        data = self._recorder.read_upload(self._entry, self._namespace)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ValueError(
                f"read_bytes(): upload {self.name!r} was replaced by a later upload of the same name; "
                "read each upload before the device sends the next one of that name."
            )
        return data
