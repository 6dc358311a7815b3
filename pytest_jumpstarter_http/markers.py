"""The plugin's markers: their signatures, and what they choose for one test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from .settings import SCOPES, Scope, Settings, Source, parse_root

JUMPSTARTER_HOST = "JUMPSTARTER_HOST"

MARKERS = (
    "http_server(*, scope=None, root=None): serve this test's http_server with this scope "
    "(function or session) and root directory, overriding --http-scope and --http-root",
    "http_loopback: serve this test's files from a local loopback server, even inside jmp shell",
    "http_exporter(selector=None, driver=None): serve this test's files from the HttpServer driver "
    "of a Jumpstarter exporter (the jmp shell one, or one leased by selector); driver picks it by path",
)


# Python checks the markers' arguments through these signatures, so a wrong keyword gets its
# own clear TypeError.
def http_server(*, scope: Scope | None = None, root: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    return {"scope": scope, "root": root}


def http_exporter(selector: str | None = None, driver: str | None = None) -> dict[str, Any]:
    return {"selector": selector, "driver": driver}


def http_loopback() -> dict[str, Any]:
    return {}


_SIGNATURES = {f.__name__: f for f in (http_server, http_exporter, http_loopback)}


@dataclass(frozen=True)
class Choice:
    """What one test asked for, after its markers are applied to the run's settings."""

    scope: Scope
    root: Path | None
    backend: Literal["loopback", "exporter"]
    selector: str | None = None
    driver: str | None = None
    #: --http-backend exporter was given: no reachable exporter fails the test instead of skipping it.
    exporter_required: bool = False


def _marker_args(node: pytest.Item, name: str) -> dict[str, Any] | None:
    marker = node.get_closest_marker(name)
    if marker is None:
        return None
    try:
        return _SIGNATURES[name](*marker.args, **marker.kwargs)
    except TypeError as exc:
        problem = str(exc)
    pytest.fail(f"@pytest.mark.{name}: {problem}.", pytrace=False)


def choose(node: pytest.Item, settings: Settings) -> Choice:
    """Resolve the scope, root and backend of ``node`` from its markers and the settings."""
    server = _marker_args(node, "http_server") or {}
    exporter = _marker_args(node, "http_exporter")
    loopback = _marker_args(node, "http_loopback")
    scope = server.get("scope") or settings.scope
    if scope not in SCOPES:
        pytest.fail(
            f"@pytest.mark.http_server: scope={scope!r} is not valid; use one of {', '.join(SCOPES)}.",
            pytrace=False,
        )
    root = settings.root
    if server.get("root") is not None:
        source = Source("@pytest.mark.http_server(root=...)", node.path.parent)
        try:
            root = parse_root(os.fspath(server["root"]), source)
        except pytest.UsageError as exc:
            problem = str(exc)
        else:
            problem = ""
        if problem:
            pytest.fail(problem, pytrace=False)
    closest = next(
        (m.name for m in node.iter_markers() if m.name in ("http_exporter", "http_loopback")), None
    )
    if closest == "http_loopback" or (closest is None and loopback is not None):
        return Choice(scope, root, "loopback")
    if closest == "http_exporter" and exporter is not None:
        return Choice(
            scope,
            root,
            "exporter",
            selector=exporter["selector"] or settings.selector,
            driver=exporter["driver"] or settings.driver,
            exporter_required=settings.backend == "exporter",
        )
    backend = settings.backend
    if backend == "auto":
        backend = "exporter" if os.environ.get(JUMPSTARTER_HOST) or settings.selector else "loopback"
    return Choice(
        scope,
        root,
        backend,
        selector=settings.selector,
        driver=settings.driver,
        exporter_required=settings.backend == "exporter",
    )
