"""The plugin's markers: their signatures, and what they choose for one test."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .options import BY_FIELD, Scope, Settings, Source
from .values import TlsMode

if TYPE_CHECKING:
    from .handle import HttpServerHandle
    from .records import FaultSpec

#: Starts the reason of a test skipped for want of an exporter; the run's summary counts them.
NO_EXPORTER = "http_exporter: "

MARKERS = (
    "http_server(*, scope=None, root=None, tls=None): serve this test's http_server with this scope "
    "(function or session), root directory and TLS (False or True, or a value of --http-tls: 'off', "
    "'on', 'mutual'), overriding --http-scope, --http-root and --http-tls",
    "http_loopback: serve this test's files from a local loopback server, even inside jmp shell",
    "http_exporter(selector=None, driver=None): serve this test's files from the HttpServer driver "
    "of a Jumpstarter exporter (the jmp shell one, or one leased by selector); driver picks it by path",
    "http_fault(path, *, delay=0.0, rate=None, cut_after=None, stall_after=None, status=None, times=None): "
    "inject a network fault into this test's http_server for the files matching path, as "
    "http_server.inject() does; repeatable",
)


# Python checks the markers' arguments through these signatures, so a wrong keyword gets its
# own clear TypeError.
def http_server(
    *,
    scope: Scope | None = None,
    root: str | os.PathLike[str] | None = None,
    tls: bool | TlsMode | None = None,
) -> dict[str, Any]:
    return {"scope": scope, "root": root, "tls": tls}


def http_exporter(selector: str | None = None, driver: str | None = None) -> dict[str, Any]:
    return {"selector": selector, "driver": driver}


def http_loopback() -> dict[str, Any]:
    return {}


def http_fault(*args: Any, **kwargs: Any) -> FaultSpec:
    # ``http_server.inject()``'s arguments, checked by the one check of them: making a FaultSpec.
    from .records import FaultSpec  # the records load when a test first uses them, not at start-up

    try:
        return FaultSpec(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(str(exc).replace("FaultSpec.__init__()", "http_fault()")) from None


_SIGNATURES = {f.__name__: f for f in (http_server, http_exporter, http_loopback, http_fault)}


@dataclass(frozen=True)
class Choice:
    """Which server one test gets: its markers applied to the run's settings."""

    scope: Scope
    backend: Literal["loopback", "exporter"]
    selector: str | None = None
    driver_path: str | None = None
    #: The run asked for an exporter: not reaching one fails the test instead of skipping it.
    required: bool = False
    #: Plain HTTP, HTTPS, or HTTPS that asks the device for a certificate.
    tls: TlsMode = "off"
    #: The Jumpstarter client the test holds (``http_exporter_client``), whose exporter serves.
    exporter_client: Any = field(default=None, compare=False, repr=False)


def _marker_args(marker: pytest.Mark) -> Any:
    try:
        return _SIGNATURES[marker.name](*marker.args, **marker.kwargs)
    except (TypeError, ValueError) as exc:
        problem = str(exc).rstrip(".")
    pytest.fail(f"@pytest.mark.{marker.name}: {problem}.", pytrace=False)


def inject_marked_faults(node: pytest.Item, server: HttpServerHandle) -> None:
    """Inject every ``http_fault`` marker of ``node`` into ``server``, the farthest (module's) first;
    they end with the test, as the faults it injects itself."""
    from .records import FaultsUnavailable

    for marker in reversed(list(node.iter_markers("http_fault"))):
        spec: FaultSpec = _marker_args(marker)
        try:
            server.inject(**spec.arguments())
        except FaultsUnavailable as exc:
            pytest.fail(f"@pytest.mark.http_fault: {exc}", pytrace=False)


def _parsed(node: pytest.Item, marker: pytest.Mark, field: str) -> Any:
    """The marker's argument ``field``, checked as its option's value is; None if not given."""
    value = _marker_args(marker)[field]
    if value is None:
        return None
    source = Source(f"@pytest.mark.{marker.name}({field}=...)", node.path.parent)
    try:
        return BY_FIELD[field].parse(value, source)
    except pytest.UsageError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _server_marker(node: pytest.Item, field: str) -> Any:
    marker = node.get_closest_marker("http_server")
    return None if marker is None else _parsed(node, marker, field)


def chosen_root(node: pytest.Item, settings: Settings) -> Path | None:
    """The user's directory ``node`` serves (marker, then ``--http-root``), or None for a temporary one."""
    root: Path | None = _server_marker(node, "root")
    return root or settings.root


def choose(node: pytest.Item, settings: Settings, exporter_client: Any = None) -> Choice:
    """Resolve the scope, backend and TLS of ``node`` from its markers, the settings and its client."""
    if exporter_client is None and not any(marker.name in _SIGNATURES for marker in node.iter_markers()):
        return _unmarked(settings)  # most tests
    tls: TlsMode = _server_marker(node, "tls") or settings.tls
    return dataclasses.replace(_where(node, settings, exporter_client), tls=tls)


@functools.cache
def _unmarked(settings: Settings) -> Choice:
    """The choice of a test without the plugin's markers: the settings', worked out once."""
    return Choice(
        scope=settings.scope,
        backend=settings.run_backend,
        selector=settings.selector,
        driver_path=settings.driver,
        required=settings.wants_exporter,
        tls=settings.tls,
    )


def _where(node: pytest.Item, settings: Settings, exporter_client: Any) -> Choice:
    """The scope and backend of ``node``."""
    marker = _backend_marker(node)
    if exporter_client is not None and (marker is None or marker.name == "http_exporter"):
        return _next_to_the_board(node, marker, settings, exporter_client)
    scope: Scope = _server_marker(node, "scope") or settings.scope
    if marker is None:
        return dataclasses.replace(_unmarked(settings), scope=scope)
    if marker.name == "http_loopback":
        _marker_args(marker)
        return Choice(scope=scope, backend="loopback")
    return Choice(
        scope=scope,
        backend="exporter",
        selector=_parsed(node, marker, "selector") or settings.selector,
        driver_path=_parsed(node, marker, "driver") or settings.driver,
        required=settings.wants_exporter,
    )


def _backend_marker(node: pytest.Item) -> pytest.Mark | None:
    """The closest of the two backend markers: a test's own wins over its class's or module's."""
    return next((m for m in node.iter_markers() if m.name in ("http_exporter", "http_loopback")), None)


def _next_to_the_board(
    node: pytest.Item, marker: pytest.Mark | None, settings: Settings, exporter_client: Any
) -> Choice:
    """The test holds the board: serve next to it, never through a connection of our own, and
    per test, since the client may end with the test's class."""
    driver = _parsed(node, marker, "driver") if marker else None
    return Choice(
        scope="function",
        backend="exporter",
        driver_path=driver or settings.driver,
        required=True,
        exporter_client=exporter_client,
    )
