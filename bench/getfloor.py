"""Section 7: one small GET, sequential, against this plugin's server and what its speed is bounded by.

The per-test targets compare a test of this plugin with one of pytest-httpserver, whose server
is werkzeug in a thread of the test's process. This plugin serves with Jumpstarter's driver,
an aiohttp server on a loop thread of the test's process. So an aiohttp handler that answers
bytes from memory, with no file, no request log and nothing else, is the floor of any GET this
plugin can answer; aiohttp's own static route, which the stock driver uses, is shown beside it.
Each server answers 1 KiB to a urllib GET on a new connection, ``GETS`` times a round, the
servers interleaved within each round, all of them in one child process (``python getfloor.py``).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import PYTHON, Config, Figure, Section, child_env, run_checked

OURS = "jumpstarter-http"
HTTPSERVER = "pytest-httpserver"
HANDLER = "aiohttp handler, no file"
STATIC = "aiohttp static route"
GETS = 2000
BODY = b"x" * 1024
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ms_per_get(url: str, gets: int) -> float:
    for _ in range(gets // 20):  # warm up: the first GETs of a server pay for its imports
        _opener.open(url, timeout=30).read()
    start = time.perf_counter()
    for _ in range(gets):
        with _opener.open(url, timeout=30) as response:
            assert response.read() == BODY
    return (time.perf_counter() - start) * 1000 / gets


def ours(root: Path) -> str:
    from pytest_jumpstarter_http.loopback import LoopbackServer

    return LoopbackServer(root).start().url_for("small.bin")


def httpserver(root: Path) -> str:
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1")
    server.start()
    server.expect_request("/small.bin").respond_with_data(BODY)
    return server.url_for("/small.bin")


def aiohttp_server(root: Path, *, static: bool) -> str:
    from aiohttp import web

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    app = web.Application()
    if static:
        app.router.add_static("/", root)
    else:

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=BODY)

        app.router.add_get("/small.bin", handler)
    runner = web.AppRunner(app, access_log=None)

    async def started() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(started(), loop).result()
    return f"http://127.0.0.1:{port}/small.bin"


def child(root: Path, rounds: int, gets: int) -> None:
    """Start every server in this process, serving ``root``, then print each one's ms per GET,
    round by round."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request on stderr
    root.mkdir(parents=True, exist_ok=True)
    (root / "small.bin").write_bytes(BODY)
    servers: dict[str, Callable[[Path], str]] = {
        OURS: ours,
        HTTPSERVER: httpserver,
        HANDLER: lambda root: aiohttp_server(root, static=False),
        STATIC: lambda root: aiohttp_server(root, static=True),
    }
    urls = {name: start(root) for name, start in servers.items()}
    seen: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, url in urls.items():
            seen[name].append(ms_per_get(url, gets))
    print(json.dumps(seen))


def get_floor(config: Config, workdir: Path) -> Section:
    section = Section("get_floor", "One small GET, sequential: this plugin's server and its floor")
    rounds, gets = (config.rounds, GETS) if config.mode == "full" else (1, 50)
    root = workdir / "get-floor"
    done = run_checked([PYTHON, __file__, str(root), str(rounds), str(gets)], cwd=workdir, env=child_env())
    seen: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    for name, values in seen.items():
        section.figures[f"{name}: ms per GET"] = Figure(statistics.median(values), "ms")
        section.samples.update({f"{name}: round {n + 1} ms": ms for n, ms in enumerate(values)})
    for name in (OURS, HANDLER, STATIC):
        ratios = [ms / base for ms, base in zip(seen[name], seen[HTTPSERVER], strict=True)]
        section.figures[f"{name} / {HTTPSERVER}"] = Figure(statistics.median(ratios), "x")
    return section


if __name__ == "__main__":
    child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
