"""Every option of the plugin, its ini twin, its parser, and the one place that resolves them.

Precedence, highest first: the command line, the ini file, the default. The result is a
frozen :class:`Settings` kept in ``config.stash`` for the whole run.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from .values import JUMPSTARTER_HOST, TLS_MODES, Keep, PortRange, TlsMode

Scope = Literal["function", "session"]
Backend = Literal["auto", "loopback", "exporter"]
#: A report besides the terminal's that carries each test's request log.
Report = Literal["junit", "html"]
SCOPES: tuple[Scope, ...] = ("function", "session")
BACKENDS: tuple[Backend, ...] = ("auto", "loopback", "exporter")
REPORTS: tuple[Report, ...] = ("junit", "html")


@dataclass(frozen=True)
class Settings:
    """The plugin's effective settings, resolved once in ``pytest_configure``."""

    root: Path | None = None
    scope: Scope = "function"
    backend: Backend = "auto"
    host: str = "127.0.0.1"
    url_host: str | None = None
    port: PortRange | None = None
    keep: Keep = "none"
    client: str | None = None
    selector: str | None = None
    driver: str | None = None
    timeout: float = 30.0
    fail_on: tuple[str, ...] = ()
    tls: TlsMode = "off"
    report: tuple[Report, ...] = REPORTS
    #: Run ``http_server.check()`` after every test (``--http-strict``).
    strict: bool = False
    #: ``JUMPSTARTER_HOST`` as the run started.
    jumpstarter_host: str | None = None

    @property
    def wants_exporter(self) -> bool:
        """Whether the run itself asked for an exporter: then not reaching one is an error."""
        if self.backend != "auto":
            return self.backend == "exporter"
        return bool(self.jumpstarter_host or self.selector or self.client)

    @property
    def run_backend(self) -> Literal["loopback", "exporter"]:
        """Where tests without a backend marker are served."""
        return "exporter" if self.wants_exporter else "loopback"

    def header(self) -> str:
        root = str(self.root) if self.root else "a fresh temporary directory per server"
        if self.run_backend == "exporter":
            where = (
                f"jmp shell at {self.jumpstarter_host}"
                if self.jumpstarter_host
                else f"a lease matching {self.selector!r}"
                if self.selector
                else "an exporter (none named)"
            )
            line = f"jumpstarter-http: backend=exporter ({where}), scope={self.scope}, root={root}"
        else:
            port = str(self.port) if self.port else "any free"
            line = (
                f"jumpstarter-http: backend=loopback, scope={self.scope}, root={root}, "
                f"host={self.host}, port={port}"
            )
        extras = {
            "url-host": self.url_host,
            "selector": self.selector,
            "driver": self.driver,
            "fail-on": ",".join(self.fail_on),
            "tls": "" if self.tls == "off" else self.tls,
            "report": self._changed_report(),
            "strict": "on" if self.strict else "",
        }
        return line + "".join(f", {key}={value}" for key, value in extras.items() if value)

    def _changed_report(self) -> str:
        """``--http-report`` for the header, empty when it is the default."""
        if self.report == REPORTS:
            return ""
        return ",".join(self.report) or "none"


class Source:
    """Where a raw value came from: named in its error, and the base of a relative path."""

    def __init__(self, label: str, base: Path) -> None:
        self.label, self.base = label, base

    def error(self, value: object, valid: str) -> pytest.UsageError:
        return pytest.UsageError(f"{self.label}: {_shown(value)} is not valid; {valid}.")


def _shown(value: object) -> str:
    """``repr(value)``, cut in the middle when it would drown the message (a 5000-character path)."""
    text = repr(value)
    if len(text) <= 100:
        return text
    return f"{text[:48]}…{text[-48:]} ({len(str(value))} characters)"


def _choice(choices: tuple[str, ...]) -> Callable[[str, Source], str]:
    def parse(value: str, source: Source) -> str:
        word = _word(value)
        if word not in choices:
            raise source.error(value, "use one of " + ", ".join(choices))
        return word

    return parse


def _text(value: str, source: Source) -> str | None:
    return value.strip() or None


def parse_root(value: object, source: Source) -> Path | None:
    """The directory ``value`` names, relative to ``source.base``; None for an empty value.

    ``value`` is raw: a string from the command line or the ini file, or whatever a test gave
    ``@pytest.mark.http_server(root=...)``.
    """
    if not isinstance(value, str | os.PathLike):
        raise source.error(value, "give the directory as a str or a pathlib.Path")
    text = os.fsdecode(os.fspath(value))
    if not text:
        return None
    if "\0" in text:
        raise source.error(value, "a path cannot hold a NUL character; give an existing directory")
    path = source.base / os.path.expanduser(text)
    try:
        status = path.stat()
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise source.error(
            value, f"the directory does not exist{broken}; give an existing directory"
        ) from None
    except OSError as exc:
        raise source.error(value, f"{_stat_problem(exc)}; give an existing directory") from None
    if not stat.S_ISDIR(status.st_mode):
        raise source.error(value, "it is a file, not a directory; give the directory to serve")
    if not os.access(path, os.R_OK | os.X_OK):
        raise source.error(value, "the directory is not readable; give a directory this user can read")
    return path.resolve()


def _stat_problem(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "the path is too long for this system (a name over 255 or a path over 4096 characters)"
    if exc.errno == errno.EACCES:
        return "this user may not look inside a folder on the way to it"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path on the way to it is a file"
    if exc.errno == errno.ELOOP:
        return "it goes round a loop of symbolic links"
    return f"it cannot be looked up ({exc.strerror})"


def _port(value: str, source: Source) -> PortRange | None:
    valid = "give 0 (any free port), a port N or a range A-B within 1-65535"
    first, sep, last = value.strip().partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise source.error(value, valid) from None
    if not sep and low == 0:
        return None
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise source.error(value, valid)
    if low > high:
        raise source.error(value, f"the range is reversed; write it as {high}-{low}")
    return PortRange(low, high)


def _host(value: str, source: Source) -> str | None:
    """The address to bind, an IPv6 literal without the brackets a URL would put around it."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if _ip_version(inner) != 6:
            raise source.error(value, f"brackets enclose only an IPv6 address; write {inner}")
        return inner
    return host or None


def _ip_version(text: str) -> int:
    import ipaddress

    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return 0


#: A DNS name or an IPv4 address: dot-separated labels of letters, digits, ``-`` and ``_``. A
#: string, not a compiled pattern: ``re`` compiles it on first use, not in every pytest start-up.
_HOST_NAME = (
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def _url_host(value: str, source: Source) -> str | None:
    """The host part of the servers' URLs: a DNS name, an IPv4 address, or an IPv6 address."""
    host = value.strip()
    if not host:
        return None
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if _ip_version(inner) == 6:
        return inner  # the URL brackets it
    if _is_host_name(host):
        return host
    raise source.error(value, _url_host_fix(host))


def _is_host_name(host: str) -> bool:
    """A DNS name, or an IPv4 address: digits and dots alone must make an address (``10.0.0`` does not)."""
    return bool(re.fullmatch(_HOST_NAME, host)) and (
        _ip_version(host) == 4 or not re.fullmatch(r"[0-9.]+", host)
    )


def _url_host_fix(host: str) -> str:
    """How to turn ``host``, which is no host, into one."""
    if "://" in host:
        from urllib.parse import urlsplit

        return f"give the host alone, without a scheme, like {urlsplit(host).hostname or 'the host'}"
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (re.fullmatch(_HOST_NAME, name) or _ip_version(name.strip("[]")) == 6):
        return f"give the host alone, like {name}; a URL's port is its server's own"
    return "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab"


def parse_selector(value: str, source: Source) -> str | None:
    """A Jumpstarter label selector (``board=rpi4,!busy``), each of its requirements checked.

    Jumpstarter's parser skips a requirement it cannot read, so a typo would widen the lease to any
    exporter; each comma-separated part must therefore read as one requirement on its own.
    """
    from jumpstarter.client.selectors import parse_label_selector

    selector = value.strip()
    # Jumpstarter's own split: at commas outside parentheses.
    for part in re.split(r",(?![^()]*\))", selector):
        if part.strip() and parse_label_selector(part) == ({}, []):
            raise source.error(
                value,
                f"{part.strip()!r} is no label requirement; give requirements separated by commas, "
                "like board=rpi4,!busy or board in (rpi4,rpi5)",
            )
    return selector or None


def _timeout(value: str, source: Source) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise source.error(value, "give a number of seconds greater than 0") from None
    if not seconds > 0:
        raise source.error(value, "give a number of seconds greater than 0")
    return seconds


def _statuses(value: str, source: Source) -> tuple[str, ...]:
    from .records import parse_statuses

    try:
        return parse_statuses(value)
    except ValueError:
        raise source.error(value, "give HTTP statuses or classes separated by commas, like 404,5xx") from None


#: The words that turn an option on, and off, wherever it takes them (issue 27: one rule).
YES = ("true", "yes", "on", "1")
NO = ("false", "no", "off", "0")


def _word(value: object) -> str:
    """A word of a value as options read it: case and surrounding blanks do not count."""
    return str(value).strip().lower()


#: What ``--http-keep`` keeps, by the words a value may use.
_KEEP: dict[str, Keep] = {
    **dict.fromkeys(("all", *YES), "all"),
    "failed": "failed",
    **dict.fromkeys(("none", "", *NO), "none"),
}


def _keep(value: str, source: Source) -> Keep:
    """What to keep: ``all``, ``failed`` (a failed test's folders), ``none``; true and false still read."""
    keep = _KEEP.get(_word(value))
    if keep is None:
        raise source.error(
            value, "use all, failed or none (on the command line --http-keep=failed; alone, it keeps all)"
        )
    return keep


def _report(value: str, source: Source) -> tuple[Report, ...]:
    """The reports that carry the request log: junit, html, both separated by a comma, or none."""
    word = _word(value)
    if word in YES:
        return REPORTS
    if word in ("none", *NO):
        return ()
    reports = {part.strip() for part in word.split(",")}
    if not reports <= set(REPORTS):
        raise source.error(value, "use junit, html, junit,html or none")
    return tuple(report for report in REPORTS if report in reports)


def _on_off(value: str, source: Source) -> bool:
    """On or off, by the words every option reads as on and as off."""
    word = _word(value)
    if word not in (*YES, *NO):
        raise source.error(value, "use on or off (or true, false, yes, no, 1, 0); given alone, it is on")
    return word in YES


#: What ``--http-tls`` serves, by the words a value may use: the on and off words of every option.
_TLS: dict[str, TlsMode] = {
    **{mode: mode for mode in TLS_MODES},
    **dict.fromkeys(YES, "on"),
    **dict.fromkeys(NO, "off"),
}


def parse_tls(value: object, source: Source) -> TlsMode:
    """``off``, ``on`` or ``mutual``, where an on or off word (``true``, ``no``...) reads as ``on``
    or ``off``: on the command line, in the ini file, in the marker and the factory alike, which
    also take ``True`` and ``False``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    mode = _TLS.get(_word(value)) if isinstance(value, str) else None
    if mode is None:
        raise source.error(value, "use off, on or mutual (in Python: False, True or 'mutual')")
    return mode


def tls_mode(value: object) -> TlsMode:
    """``http_server_factory(tls=...)`` as a mode; a ``ValueError`` of one sentence if it is none."""
    try:
        return parse_tls(value, Source("http_server_factory(tls=...)", Path.cwd()))
    except pytest.UsageError as exc:
        raise ValueError(str(exc)) from None


@dataclass(frozen=True)
class _Option:
    field: str
    help: str
    parse: Callable[[str, Source], Any]
    metavar: str | None = None
    #: What the option means given alone (``--http-keep``); None for one that needs a value.
    bare: str | None = None

    @property
    def flag(self) -> str:
        return "--http-" + self.field.replace("_", "-")

    @property
    def ini(self) -> str:
        return "http_" + self.field


OPTIONS: tuple[_Option, ...] = (
    _Option("root", "Directory to serve instead of a fresh temporary one (default: none)", parse_root, "DIR"),
    _Option("scope", "Server lifetime: function or session (default: function)", _choice(SCOPES), "SCOPE"),
    _Option(
        "backend",
        "Where the server runs: auto, loopback or exporter; auto picks exporter when "
        "JUMPSTARTER_HOST is set or --http-selector or --http-client is given (default: auto)",
        _choice(BACKENDS),
        "NAME",
    ),
    _Option("host", "Address loopback servers bind (default: 127.0.0.1)", _host, "ADDR"),
    _Option(
        "url_host",
        "Host written into server URLs, for a device that reaches the server through "
        "another address (default: the bound address)",
        _url_host,
        "HOST",
    ),
    _Option("port", "Port N or range A-B loopback servers bind (default: 0, any free port)", _port, "PORTS"),
    _Option(
        "keep",
        "Keep the plugin's temporary folders and staged files after their scope: all, failed (a "
        "failed test's only) or none; given alone, all (default: none)",
        _keep,
        "WHEN",
        bare="all",
    ),
    _Option(
        "client",
        "Jumpstarter client config used to lease an exporter "
        "(default: the current client config, else default)",
        _text,
        "NAME",
    ),
    _Option(
        "selector",
        "Label selector of the exporter to lease, e.g. board=rpi4 (default: none)",
        parse_selector,
        "LABELS",
    ),
    _Option(
        "driver",
        "Dotted path of the HttpServer driver on the exporter, e.g. flasher.http (default: the only one)",
        _text,
        "PATH",
    ),
    _Option(
        "timeout",
        "Seconds to wait for an exporter, a lease or a server to answer (default: 30)",
        _timeout,
        "SECONDS",
    ),
    _Option(
        "fail_on",
        "Fail a test whose server answered one of these statuses, e.g. 404,5xx (default: none)",
        _statuses,
        "CODES",
    ),
    _Option(
        "tls",
        "Serve HTTPS: off, on, or mutual (the device must show a client certificate), with a "
        "certificate of the run's test CA (default: off)",
        parse_tls,
        "MODE",
    ),
    _Option(
        "report",
        "Reports besides the terminal's that carry each test's request log, at most 100 requests a "
        "server: junit (JUnit XML properties, or system-out as junit_logging asks), html "
        "(pytest-html), junit,html or none (default: junit,html)",
        _report,
        "WHICH",
    ),
    _Option(
        "strict",
        "Fail each test whose servers got a request nothing expected (404 or 405) or kept replies "
        "not used up, as http_server.check() does: on or off; given alone, on (default: off)",
        _on_off,
        "ON_OFF",
        bare="on",
    ),
)


BY_FIELD = {option.field: option for option in OPTIONS}


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("jumpstarter-http", "HTTP server fixtures (pytest-jumpstarter-http)")
    for option in OPTIONS:
        if option.bare is not None:
            group.addoption(
                option.flag, nargs="?", const=option.bare, metavar=option.metavar, help=option.help
            )
        else:
            group.addoption(option.flag, metavar=option.metavar, default=None, help=option.help)
        # A string, parsed here, so that a bad value's error can name its ini key.
        parser.addini(option.ini, option.help, default="")


def raw_value(config: pytest.Config, field: str) -> tuple[str, Source]:
    """The raw value of the option ``field`` and where it came from: the command line beats the ini file."""
    option = BY_FIELD[field]
    raw = config.getoption(option.flag)
    if raw is not None:
        return str(raw), Source(f"{option.flag} (command line)", config.invocation_params.dir)
    ini_base = config.inipath.parent if config.inipath else config.rootpath
    return str(config.getini(option.ini)), Source(f"ini key {option.ini}", ini_base)


def resolve(config: pytest.Config) -> Settings:
    """Read every option once: the command line beats the ini file, which beats the default."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw, source = raw_value(config, option.field)
        parsed = option.parse(raw, source) if raw else None
        if parsed is not None:
            values[option.field] = parsed
    return Settings(**values, jumpstarter_host=os.environ.get(JUMPSTARTER_HOST) or None)
