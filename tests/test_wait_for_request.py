"""``wait_for_request``: a hardware test powers the board, then waits for it to fetch its image."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest


def fetch_later(url: str, delay: float) -> threading.Thread:
    def fetch() -> None:
        time.sleep(delay)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
        except urllib.error.HTTPError:
            pass  # the test reads the status from the request log

    thread = threading.Thread(target=fetch)
    thread.start()
    return thread


def test_it_returns_once_the_device_has_fetched_the_file(http_server, served_dir):
    (served_dir / "image.raw").write_bytes(b"\0" * 4096)
    device = fetch_later(http_server.url_for("image.raw"), 0.3)
    request = http_server.wait_for_request("image.raw", timeout=10)
    device.join()
    assert (request.status, request.bytes_sent, request.method) == (200, 4096, "GET")


def test_it_waits_for_the_status_asked_for(http_server, served_dir):
    device = fetch_later(http_server.url + "/late.raw", 0.0)
    device.join()  # a 404 first: the file is not there yet
    (served_dir / "late.raw").write_bytes(b"x")
    fetch_later(http_server.url_for("late.raw"), 0.2).join()
    assert http_server.wait_for_request("late.raw", status=200, timeout=10).status == 200


def test_a_timeout_fails_with_what_the_device_requested_instead(http_server, served_dir):
    (served_dir / "other.raw").write_bytes(b"x")
    fetch_later(http_server.url_for("other.raw"), 0.0).join()
    with pytest.raises(
        AssertionError,
        match=r"no request for /image.raw within 0.2 s; the server answered:\n.*"
        r"GET /other.raw -> 200",
    ):
        http_server.wait_for_request("image.raw", timeout=0.2)


def test_async_tests_wait_without_blocking_their_loop(pytester):
    pytester.makepyfile(
        """
        import asyncio
        import aiohttp
        import pytest

        @pytest.mark.asyncio
        async def test_it(http_server, served_dir):
            (served_dir / "image.raw").write_bytes(b"a" * 1000)
            url = http_server.url_for("image.raw")

            async def device():
                await asyncio.sleep(0.2)
                async with aiohttp.ClientSession() as session, session.get(url) as response:
                    return await response.read()

            # The device's download runs in this very loop: a blocking wait would never see it.
            download = asyncio.create_task(device())
            request = await http_server.wait_for_request_async("image.raw", timeout=10)
            assert request.status == 200
            assert await download == b"a" * 1000
        """
    )
    for mode in ("strict", "auto"):
        result = pytester.runpytest_subprocess("-p", "asyncio", f"--asyncio-mode={mode}", "-p", "no:randomly")
        result.assert_outcomes(passed=1)


def test_a_large_download_shows_its_progress_while_the_test_waits(pytester):
    pytester.makepyfile(
        """
        import threading, time, urllib.request

        def test_flash(http_server, served_dir):
            (served_dir / "big.raw").write_bytes(bytes(64 << 20))

            def slow_device():
                with urllib.request.urlopen(http_server.url_for("big.raw"), timeout=30) as response:
                    while response.read(4 << 20):
                        time.sleep(0.25)  # a slow link: about 16 MiB/s

            threading.Thread(target=slow_device).start()
            request = http_server.wait_for_request("big.raw", timeout=30)
            assert (request.bytes_sent, request.complete) == (64 << 20, True)
        """
    )
    # A subprocess: the line goes to the terminal past output capture, as a user sees it.
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=1)
    # The last line is the download's real state, not its last look while it ran.
    result.stdout.fnmatch_lines(
        [
            "jumpstarter-http: 127.0.0.1 is downloading big.raw: * of 64.0 MiB (*%)*",
            "jumpstarter-http: 127.0.0.1 downloaded big.raw (200): 64.0 MiB in * s",
        ]
    )
    assert "is downloading" not in pytester.runpytest_subprocess("-q", "-p", "no:randomly").stdout.str()
