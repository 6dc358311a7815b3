"""A pytest plugin (``-p rpcclock``) that times a session's calls to its exporter: where its time goes.

It wraps methods of Jumpstarter's storage and HttpServer clients, and the plugin's local hashing,
in a timer, and writes ``{"name": [calls, seconds], ...}`` to the file ``BENCH_RPC_OUT`` at the
end of the session. The wrappers only time: every call goes through unchanged.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: (module, class, methods) to time; a call is named ``method`` (``local sha256`` for the hashing).
TIMED = (
    (
        "jumpstarter_driver_opendal.client",
        "OpendalClient",
        ("exists", "hash", "copy", "rename", "write_from_path", "remove_all", "delete"),
    ),
    ("jumpstarter_driver_http.client", "HttpServerClient", ("get_port", "get_host", "get_url", "start")),
    ("pytest_jumpstarter_http.store", "Digests", ("of",)),
)
_spent: dict[str, list[float]] = {}


def _timer(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent = _spent.setdefault(name, [0, 0.0])
            spent[0] += 1
            spent[1] += time.perf_counter() - start

    return timed


def _each_call(method: Callable[..., Any]) -> Callable[..., Any]:
    """``DriverClient.call`` timed under ``call METHOD``: every exporter call, by the method it names."""

    @functools.wraps(method)
    def timed(self: Any, name: str, *args: Any) -> Any:
        return _timer(f"call {name}", method)(self, name, *args)

    return timed


def pytest_sessionstart(session: pytest.Session) -> None:
    from jumpstarter.client import DriverClient

    DriverClient.call = _each_call(DriverClient.call)  # type: ignore[method-assign]
    for module, owner, methods in TIMED:
        cls = getattr(importlib.import_module(module), owner)
        for method in methods:
            setattr(cls, method, _timer("local sha256" if method == "of" else method, getattr(cls, method)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    Path(os.environ["BENCH_RPC_OUT"]).write_text(json.dumps(_spent))
