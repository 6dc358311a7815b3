"""Every option of the plugin, its ini twin, and the one place that resolves them.

Precedence, highest first: the command line, the ini file, the default. The result is a
frozen :class:`Settings` kept in ``config.stash`` for the whole run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

Scope = Literal["function", "session"]
Backend = Literal["auto", "loopback", "exporter"]
SCOPES: tuple[Scope, ...] = ("function", "session")
#: Set by ``jmp shell`` (and by hand, for a ``jmp run`` exporter): the exporter to serve from.
JUMPSTARTER_HOST = "JUMPSTARTER_HOST"
BACKENDS: tuple[Backend, ...] = ("auto", "loopback", "exporter")


@dataclass(frozen=True)
class PortRange:
    """The ports a server may bind: ``first == last`` for a fixed port."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def fixed(self) -> bool:
        return self.first == self.last


@dataclass(frozen=True)
class Settings:
    """The plugin's effective settings, resolved once in ``pytest_configure``."""

    root: Path | None = None
    scope: Scope = "function"
    backend: Backend = "auto"
    host: str = "127.0.0.1"
    url_host: str | None = None
    port: PortRange | None = None
    keep: bool = False
    client: str | None = None
    selector: str | None = None
    driver: str | None = None
    timeout: float = 30.0
    fail_on: tuple[str, ...] = ()
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
        }
        return line + "".join(f", {key}={value}" for key, value in extras.items() if value)


class Source:
    """Where a raw value came from: named in its error, and the base of a relative path."""

    def __init__(self, label: str, base: Path) -> None:
        self.label, self.base = label, base

    def error(self, value: object, valid: str) -> pytest.UsageError:
        return pytest.UsageError(f"{self.label}: {value!r} is not valid; {valid}.")


def _choice(choices: tuple[str, ...]) -> Callable[[str, Source], str]:
    def parse(value: str, source: Source) -> str:
        if value not in choices:
            raise source.error(value, "use one of " + ", ".join(choices))
        return value

    return parse


def _text(value: str, source: Source) -> str | None:
    return value.strip() or None


def parse_root(value: str, source: Source) -> Path | None:
    if not value:
        return None
    path = source.base / os.path.expanduser(value)
    if not path.exists():
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise source.error(value, f"the directory does not exist{broken}; give an existing directory")
    if not path.is_dir():
        raise source.error(value, "it is a file, not a directory; give the directory to serve")
    if not os.access(path, os.R_OK | os.X_OK):
        raise source.error(value, "the directory is not readable; give a directory this user can read")
    return path.resolve()


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


def _timeout(value: str, source: Source) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise source.error(value, "give a number of seconds greater than 0") from None
    if not seconds > 0:
        raise source.error(value, "give a number of seconds greater than 0")
    return seconds


def _statuses(value: str, source: Source) -> tuple[str, ...]:
    from .requestlog import parse_statuses

    try:
        return parse_statuses(value)
    except ValueError:
        raise source.error(value, "give HTTP statuses or classes separated by commas, like 404,5xx") from None


def _flag(value: str, source: Source) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise source.error(value, "use true or false")


@dataclass(frozen=True)
class _Option:
    field: str
    help: str
    parse: Callable[[str, Source], Any]
    metavar: str | None = None

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
        "JUMPSTARTER_HOST is set or --http-selector is given (default: auto)",
        _choice(BACKENDS),
        "NAME",
    ),
    _Option("host", "Address loopback servers bind (default: 127.0.0.1)", _text, "ADDR"),
    _Option(
        "url_host",
        "Host written into server URLs, for a device that reaches the server through "
        "another address (default: the bound address)",
        _text,
        "HOST",
    ),
    _Option("port", "Port N or range A-B loopback servers bind (default: 0, any free port)", _port, "PORTS"),
    _Option("keep", "Keep temporary roots and staged uploads after their scope (default: false)", _flag),
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
        _text,
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
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("jumpstarter-http", "HTTP server fixtures (pytest-jumpstarter-http)")
    for option in OPTIONS:
        if option.parse is _flag:
            group.addoption(option.flag, action="store_const", const="true", default=None, help=option.help)
        else:
            group.addoption(option.flag, metavar=option.metavar, default=None, help=option.help)
        # A string, parsed here, so that a bad value's error can name its ini key.
        parser.addini(option.ini, option.help, default="")


def resolve(config: pytest.Config) -> Settings:
    """Read every option once: the command line beats the ini file, which beats the default."""
    values: dict[str, Any] = {}
    ini_base = config.inipath.parent if config.inipath else config.rootpath
    for option in OPTIONS:
        raw = config.getoption(option.flag)
        from_cli = raw is not None
        if not from_cli:
            raw = config.getini(option.ini)
        source = (
            Source(f"{option.flag} (command line)", config.invocation_params.dir)
            if from_cli
            else Source(f"ini key {option.ini}", ini_base)
        )
        if raw in ("", None):
            continue
        parsed = option.parse(str(raw), source)
        if parsed is not None:
            values[option.field] = parsed
    settings = Settings(**values, jumpstarter_host=os.environ.get(JUMPSTARTER_HOST) or None)
    _check_port(settings, config)
    return settings


def _check_port(settings: Settings, config: pytest.Config) -> None:
    """Refuse a fixed port that cannot work before any test runs."""
    port = settings.port
    if hasattr(config, "workerinput"):
        return  # the controller checked
    if port is None or not port.fixed:
        if settings.host != Settings.host:  # the default always binds; the check costs start-up time
            _try_bind(settings.host, 0)
        return
    workers = getattr(config.option, "numprocesses", None)
    if workers not in (None, 0, 1):
        raise pytest.UsageError(
            f"--http-port: the fixed port {port} cannot be shared by {workers} xdist workers; "
            "give a range A-B with at least one port per worker, or 0 for any free port."
        )
    _try_bind(settings.host, port.first)


def _try_bind(host: str, port: int) -> None:
    """Refuse an address this machine cannot bind, or a fixed port already taken, before any test."""
    import errno
    import socket

    valid = "give an address of this machine, like 127.0.0.1"
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise pytest.UsageError(f"--http-host: {host!r} is not valid ({exc.strerror}); {valid}.") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                problem = f"this machine cannot bind it ({exc.strerror})"
                raise pytest.UsageError(f"--http-host: {host!r} is not valid; {problem}; {valid}.") from None
            raise pytest.UsageError(
                f"--http-port: port {port} on {host} is already in use; "
                "free it, or give a range A-B or 0 for any free port."
            ) from None
