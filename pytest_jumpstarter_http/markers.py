"""The plugin's markers: their signatures, and what they choose for one test."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from .options import OPTIONS, Scope, Settings, Source

#: Starts the reason of a test skipped for want of an exporter; the run's summary counts them.
NO_EXPORTER = "http_exporter: "

MARKERS = (
    "http_server(*, scope=None, root=None): serve this test's http_server with this scope "
    "(function or session) and root directory, overriding --http-scope and --http-root",
    "http_loopback: serve this test's files from a local loopback server, even inside jmp shell",
    "http_exporter(selector=None, driver=None): serve this test's files from the HttpServer driver "
    "of a Jumpstarter exporter (the jmp shell one, or one leased by selector); driver picks it by path",
    "http_fault(path, *, delay=0.0, rate=None, cut_after=None, stall_after=None, status=None, times=None): "
    "inject a network fault into this test's http_server for the files matching path, as "
    "http_server.inject() does; repeatable",
)


# Python checks the markers' arguments through these signatures, so a wrong keyword gets its
# own clear TypeError.
def http_server(*, scope: Scope | None = None, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    return {"scope": scope, "root": root}


def http_exporter(selector: str | None = None, driver: str | None = None) -> dict[str, Any]:
    return {"selector": selector, "driver": driver}


def http_loopback() -> dict[str, Any]:
    return {}


def http_fault(*args: Any, **kwargs: Any) -> dict[str, Any]:
    # The arguments of ``http_server.inject()``, checked by its own signature.
    import inspect

    from .handle import HttpServerHandle

    try:
        bound = inspect.signature(HttpServerHandle.inject).bind(None, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"http_fault() {exc}") from None
    return {name: value for name, value in bound.arguments.items() if name != "self"}


_SIGNATURES = {f.__name__: f for f in (http_server, http_exporter, http_loopback, http_fault)}
_OPTIONS = {option.field: option for option in OPTIONS}


@dataclass(frozen=True)
class Choice:
    """Which server one test gets: its markers applied to the run's settings."""

    scope: Scope
    backend: Literal["loopback", "exporter"]
    selector: str | None = None
    driver: str | None = None
    #: The run asked for an exporter: not reaching one fails the test instead of skipping it.
    required: bool = False
    #: The Jumpstarter client the test holds (``http_exporter_client``), whose exporter serves.
    client: Any = field(default=None, compare=False, repr=False)


def _marker_args(node: pytest.Item, marker: pytest.Mark) -> dict[str, Any]:
    try:
        return _SIGNATURES[marker.name](*marker.args, **marker.kwargs)
    except TypeError as exc:
        problem = str(exc)
    pytest.fail(f"@pytest.mark.{marker.name}: {problem}.", pytrace=False)


def fault_markers(node: pytest.Item) -> list[dict[str, Any]]:
    """The arguments of every ``http_fault`` marker of ``node``, the farthest (module's) first."""
    return [_marker_args(node, marker) for marker in reversed(list(node.iter_markers("http_fault")))]


def _parsed(node: pytest.Item, marker: pytest.Mark, field: str) -> Any:
    """The marker's argument ``field``, checked as its option's value is; None if not given."""
    value = _marker_args(node, marker)[field]
    if value is None:
        return None
    source = Source(f"@pytest.mark.{marker.name}({field}=...)", node.path.parent)
    try:
        return _OPTIONS[field].parse(value, source)
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


def choose(node: pytest.Item, settings: Settings, client: Any = None) -> Choice:
    """Resolve the scope and backend of ``node`` from its markers, the settings and its own client."""
    scope: Scope = _server_marker(node, "scope") or settings.scope
    # The closest of the two backend markers wins: a test's own over its class's or module's.
    marker = next((m for m in node.iter_markers() if m.name in ("http_exporter", "http_loopback")), None)
    if client is not None and (marker is None or marker.name == "http_exporter"):
        # The test holds the board: serve next to it, never through a connection of our own, and
        # per test, since the client may end with the test's class.
        driver = _parsed(node, marker, "driver") if marker else None
        return Choice("function", "exporter", None, driver or settings.driver, True, client)
    if marker is None:
        return Choice(
            scope, settings.run_backend, settings.selector, settings.driver, settings.wants_exporter
        )
    if marker.name == "http_loopback":
        _marker_args(node, marker)
        return Choice(scope, "loopback")
    return Choice(
        scope,
        "exporter",
        _parsed(node, marker, "selector") or settings.selector,
        _parsed(node, marker, "driver") or settings.driver,
        settings.wants_exporter,
    )
