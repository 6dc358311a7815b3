"""The driver's static route behind BeneathFiles: never outside the root, same answers.

Every test runs Jumpstarter's real HttpServer driver on 127.0.0.1 and talks to it through
http.client, which sends the path exactly as written (``..%2f`` included).
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest

from pytest_jumpstarter_http import eventloop
from pytest_jumpstarter_http.serving import CHUNK, SHAPER_KEY, BeneathFiles, RequestLog, install

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.typedefs import Handler, Middleware
    from aiohttp.web import Request, StreamResponse

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the swap needs renameat2(2), Linux's")

SECRET = b"secret from outside the root"
INSIDE = b"inside"


@contextmanager
def serving(
    root: Path,
    *,
    safe: bool = True,
    log: RequestLog | None = None,
    outer: Middleware | None = None,
) -> Iterator[int]:
    """The driver serving ``root`` on a free loopback port, with our middleware when ``safe``."""
    from jumpstarter_driver_http.driver import HttpServer

    driver = HttpServer(  # type: ignore[abstract]
        root_dir=str(root), host="127.0.0.1", port=0, remove_created_on_close=False, log_level="WARNING"
    )
    if outer is not None:
        driver.app.middlewares.append(outer)
    if safe:
        files = BeneathFiles(root, log=log)
        driver.app.middlewares.append(files)
        driver.app.on_cleanup.append(files.on_cleanup)

    async def start() -> None:
        await driver.start()
        assert driver.runner is not None
        driver.runner._shutdown_timeout = 0.5
        if log is not None:
            install(driver.runner, log)

    eventloop.acquire()
    try:
        eventloop.call(start, timeout=30)
        yield driver.get_port()
    finally:
        try:
            eventloop.call(driver.stop, timeout=30)
        finally:
            eventloop.release()


def fetch(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


# -- the race --------------------------------------------------------------------------------

#: Swaps root/d and root/swap with renameat2(RENAME_EXCHANGE) until killed: a process of its
#: own, so that it races the server without waiting for this one's GIL.
SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = (os.fsencode(os.path.join(sys.argv[1], name)) for name in ("d", "swap"))
if libc.renameat2(-100, a, -100, b, 2) or libc.renameat2(-100, a, -100, b, 2):
    sys.exit(os.strerror(ctypes.get_errno()))
print("swapping", flush=True)
while True:
    libc.renameat2(-100, a, -100, b, 2)
"""


@pytest.fixture
def swapped(tmp_path: Path) -> Iterator[Path]:
    """root/d/f inside, outside/f a secret; another process swaps root/d with a link to outside."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(INSIDE)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f").write_bytes(SECRET)
    (root / "swap").symlink_to(tmp_path / "outside")
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert swapper.stdout is not None
        if swapper.stdout.readline() != "swapping\n":
            pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable here: {swapper.communicate()[1].strip()}")
        yield root
    finally:
        swapper.kill()
        swapper.communicate()


#: GETs per run: the stock route served the secret for about one GET in nine (5 runs of 3000).
RACE_GETS = 1000


def test_a_folder_swapped_for_a_link_never_serves_from_outside(swapped: Path, lookup: str) -> None:
    answers = race(swapped, safe=True)
    assert set(answers) <= {(200, INSIDE), (404, b""), (404, b"404: Not Found")}, answers
    assert (200, INSIDE) in answers  # the race ran on a name that served


def test_the_stock_static_route_leaks_under_the_same_swap(swapped: Path) -> None:
    """Shows what the middleware is for: the same race, on aiohttp's own route, serves the secret."""
    answers = race(swapped, safe=False, until_leak=True)
    assert (200, SECRET) in answers


def race(root: Path, *, safe: bool, until_leak: bool = False) -> dict[tuple[int, bytes], int]:
    answers: dict[tuple[int, bytes], int] = {}
    with serving(root, safe=safe) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(RACE_GETS):
                connection.request("GET", "/d/f")
                response = connection.getresponse()
                answer = (response.status, response.read())
                answers[answer] = answers.get(answer, 0) + 1
                if until_leak and answer == (200, SECRET):
                    break
        finally:
            connection.close()
    return answers


# -- the same answers as aiohttp's static route ------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.txt").write_bytes(SECRET)
    (root / "a.txt").write_bytes(b"0123456789abcdefghij")
    (root / "sub" / "b.bin").write_bytes(os.urandom(1000))
    (root / "with space ü.json").write_bytes(b'{"x": 1}')
    (root / "page.html").write_bytes(b"<p>plain</p>")
    (root / "page.html.gz").write_bytes(b"not really gzip")
    (root / "link.txt").symlink_to("sub/b.bin")
    (root / "image").symlink_to("page.html")
    (root / "abs-link").symlink_to(root.resolve() / "a.txt")
    (root / "out.txt").symlink_to(tmp_path / "outside" / "f.txt")
    (root / "out-dir").symlink_to(tmp_path / "outside")
    os.mkfifo(root / "fifo")
    return root


def etag_of(port: int, path: str) -> str:
    return fetch(port, "HEAD", path)[2]["etag"]


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/a.txt", {}),
    ("HEAD", "/a.txt", {}),
    ("GET", "/a.txt", {"Range": "bytes=0-9"}),
    ("GET", "/a.txt", {"Range": "bytes=-5"}),
    ("GET", "/a.txt", {"Range": "bytes=5-"}),
    ("GET", "/a.txt", {"Range": "bytes=50-60"}),
    ("GET", "/a.txt", {"Range": "bytes=x"}),
    ("GET", "/a.txt", {"If-None-Match": "ETAG"}),
    ("GET", "/a.txt", {"If-Match": '"nope"'}),
    ("GET", "/a.txt", {"If-Modified-Since": "Sun, 06 Nov 2094 08:49:37 GMT"}),
    ("GET", "/a.txt", {"If-Modified-Since": "Sun, 06 Nov 1994 08:49:37 GMT"}),
    ("GET", "/a.txt/", {}),
    ("GET", "/sub/b.bin", {}),
    ("GET", "/sub", {}),
    ("GET", "/sub/", {}),
    ("GET", "/", {}),
    ("HEAD", "/sub", {}),
    ("GET", "/missing", {}),
    ("GET", "/missing/x", {}),
    ("GET", "/a.txt/x", {}),
    ("GET", "/..%2foutside%2ff.txt", {}),
    ("GET", "/sub%2f..%2f..%2foutside%2ff.txt", {}),
    ("GET", "/sub%2f..%2fa.txt", {}),
    ("GET", "/../outside/f.txt", {}),
    ("GET", "//etc/passwd", {}),
    ("GET", "/%2fetc%2fpasswd", {}),
    ("GET", "/a.txt%00", {}),
    ("GET", "/with%20space%20%C3%BC.json", {}),
    ("GET", "/" + "x" * 300, {}),
    ("GET", "/" + "/".join(["x" * 200] * 30), {}),
    ("GET", "/link.txt", {}),
    ("GET", "/image", {}),
    ("GET", "/abs-link", {}),
    ("GET", "/out.txt", {}),
    ("GET", "/out-dir/f.txt", {}),
    ("GET", "/fifo", {}),
    ("GET", "/page.html", {}),
    ("GET", "/page.html", {"Accept-Encoding": "gzip, deflate"}),
    ("POST", "/a.txt", {}),
    ("PUT", "/missing", {}),
]

#: Names answered differently on purpose: a name longer than the file system allows is a 500
#: with a logged traceback from aiohttp (ENAMETOOLONG out of Path.resolve()), a 404 here.
DIFFERENT = {"/" + "x" * 300, "/" + "/".join(["x" * 200] * 30)}
#: A folder asked without its slash: aiohttp's 403, a redirect to the URL with it here, as nginx
#: answers (issue 26), so that its index.html and its relative links work.
REDIRECTED = {"/sub"}

#: Headers that must be the same; Date is the clock and the rest are aiohttp's framing.
COMPARED = (
    "content-type",
    "content-length",
    "content-range",
    "etag",
    "last-modified",
    "accept-ranges",
    "content-encoding",
)


@pytest.mark.parametrize(
    ("method", "path", "headers"), REQUESTS, ids=[f"{m} {p[:40]} {h}" for m, p, h in REQUESTS]
)
def test_answers_match_the_stock_static_route(
    tree: Path, method: str, path: str, headers: dict[str, str], lookup: str
) -> None:
    with serving(tree, safe=False) as stock, serving(tree, safe=True) as safe:
        answers = []
        for port in (stock, safe):
            sent = {k: etag_of(port, "/a.txt") if v == "ETAG" else v for k, v in headers.items()}
            status, body, got = fetch(port, method, path, sent)
            answers.append((status, body, {k: got.get(k) for k in COMPARED}))
    assert SECRET not in answers[1][1]
    if path in DIFFERENT:
        assert [answer[0] for answer in answers] == [500, 404]
    elif path in REDIRECTED:
        assert [answer[0] for answer in answers] == [403, 301]
    else:
        assert answers[1] == answers[0]


# -- bytes sent and completion -----------------------------------------------------------------


def test_an_abandoned_download_is_logged_with_the_bytes_actually_sent(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with big.open("wb") as file:
        file.truncate(64 << 20)
    log = RequestLog()
    with serving(tmp_path, log=log) as port:
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            client.sendall(b"GET /big.raw HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            # Past two chunks: a sendfile call sends a chunk at most and is counted when it returns,
            # so at least the first chunk's count is in.
            while got < 2 * CHUNK + (1 << 20):
                got += len(client.recv(65536))
            [running] = log.in_flight()
            assert (running.path, running.total, running.complete) == ("/big.raw", 64 << 20, False)
            assert CHUNK <= running.sent < 64 << 20
        [entry] = wait_for_entries(log, port, 1)
    assert (entry.path, entry.status, entry.complete) == ("/big.raw", 200, False)
    assert 2 * CHUNK + (1 << 20) <= entry.bytes_sent < 32 << 20
    assert "(cut short)" in entry.line()
    assert log.in_flight() == []


def test_a_body_of_a_chunk_or_more_is_copied_by_worker_threads_and_a_smaller_one_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One loop thread copying every body kept four downloads at once on one core (bench large_file).
    (tmp_path / "large.raw").write_bytes(os.urandom(2 * CHUNK + 12345))
    (tmp_path / "medium.raw").write_bytes(os.urandom(1 << 20))
    callers: dict[int, set[int]] = {}
    real_sendfile = os.sendfile

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        size = os.fstat(in_fd).st_size
        callers.setdefault(size, set()).add(threading.get_ident())
        return real_sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", sendfile)
    with serving(tmp_path) as port:
        loop_thread = eventloop.call(_thread_ident)
        for name in ("large.raw", "medium.raw"):
            status, body, _ = fetch(port, "GET", f"/{name}")
            assert (status, body) == (200, (tmp_path / name).read_bytes())
        status, body, _ = fetch(port, "GET", "/large.raw", {"Range": f"bytes={CHUNK - 7}-"})
        assert (status, body) == (206, (tmp_path / "large.raw").read_bytes()[CHUNK - 7 :])
    assert callers[1 << 20] == {loop_thread}
    large = callers[2 * CHUNK + 12345]
    assert large
    assert loop_thread not in large


def test_a_whole_download_is_logged_complete(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    log = RequestLog()
    with serving(tmp_path, log=log) as port:
        assert fetch(port, "GET", "/f", {"Range": "bytes=10-"})[0] == 206
        assert fetch(port, "HEAD", "/f")[0] == 200
        entries = wait_for_entries(log, port, 2)
    assert [(e.status, e.bytes_sent, e.complete) for e in entries] == [(206, 99_990, True), (200, 0, True)]


def test_a_download_cut_by_the_server_stopping_is_logged(tmp_path: Path) -> None:
    big = tmp_path / "big.raw"
    with big.open("wb") as file:
        file.truncate(64 << 20)
    log = RequestLog()
    with socket.socket() as client, serving(tmp_path, log=log) as port:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /big.raw HTTP/1.1\r\nHost: x\r\n\r\n")
        client.recv(65536)
        while not log.in_flight():
            eventloop.call(_tick)
        # the client neither reads nor closes: the server's shutdown cancels the download
    [entry] = log.since(0)
    assert (entry.path, entry.status, entry.complete) == ("/big.raw", 200, False)
    assert entry.bytes_sent < 64 << 20


class FirstBytes:
    """A body shaper that sends only the first ``size`` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size

    async def send(self, writer: AbstractStreamWriter, fobj: IO[Any], offset: int, count: int) -> int:
        fobj.seek(offset)
        data = fobj.read(min(self.size, count))
        await writer.write(data)
        return len(data)


def test_a_body_shaper_in_the_request_sends_the_body_instead_of_sendfile(tmp_path: Path) -> None:
    from aiohttp import web

    @web.middleware
    async def shape(request: Request, handler: Handler) -> StreamResponse:
        request[SHAPER_KEY] = FirstBytes(10)
        return await handler(request)

    (tmp_path / "f").write_bytes(b"0123456789" * 100)
    log = RequestLog()
    with serving(tmp_path, log=log, outer=shape) as port:
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n0123456789" not in head:
                head += client.recv(65536)
            assert b"Content-Length: 1000" in head
        [entry] = wait_for_entries(log, port, 1)
    assert (entry.bytes_sent, entry.complete) == (10, False)


def wait_for_entries(log: RequestLog, port: int, count: int) -> list:  # type: ignore[type-arg]
    """The first ``count`` entries; the server logs after the client has seen the response."""
    for _ in range(1000):
        entries = log.since(0)
        if len(entries) >= count:
            return entries
        eventloop.call(_tick)
    raise AssertionError(f"port {port}: only {log.since(0)} after waiting for {count} entries")


async def _thread_ident() -> int:
    return threading.get_ident()


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.01)


def test_no_descriptor_outlives_its_response(tree: Path) -> None:
    def open_fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    log = RequestLog()
    with serving(tree, log=log) as port:
        fetch(port, "GET", "/a.txt")  # the root is held open from the first request on
        before = open_fds()
        for method, path, headers in REQUESTS:
            fetch(port, method, path, {k: v for k, v in headers.items() if v != "ETAG"})
        with socket.create_connection(("127.0.0.1", port)) as client:  # a download cut short
            client.sendall(b"GET /sub/b.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(10)
        wait_for_entries(log, port, 1 + len(REQUESTS) + 1)
        # The cut download's socket closes a loop tick after its entry is logged; a file
        # descriptor that outlives its response never does.
        deadline = time.monotonic() + 2
        while not open_fds() <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert open_fds() <= before
