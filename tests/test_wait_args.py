"""``wait_for_request`` and ``assert_requested`` (issue 17): their arguments are checked, a status
list means what it means in ``--http-fail-on``, an async wait ends when it is cancelled, and a
failure shows the test's own line rather than the plugin's.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from subprocess_runs import clean_env, plain_pytest

from pytest_jumpstarter_http import HttpServerHandle


def soon(call: Callable[[], Any]) -> BaseException | None:
    """What ``call`` raises, which it must do within five seconds; a daemon thread, so a hang fails."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "still waiting after 5 s"
    return raised[0] if raised else None


def fetch(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize(
    "timeout",
    [float("nan"), float("inf"), -1, 10**400, "10", True],
    ids=["nan", "inf", "negative", "huge", "str", "bool"],
)
def test_a_timeout_that_is_no_finite_number_of_seconds_is_refused_at_once(
    http_server: HttpServerHandle, timeout: Any
) -> None:
    raised = soon(lambda: http_server.wait_for_request("never.raw", timeout=timeout))
    assert isinstance(raised, ValueError), raised
    text = str(raised)
    assert text.startswith("wait_for_request(): timeout="), text
    assert text.endswith("is not a time to wait; give a finite number of seconds, 0 or more."), text
    assert text.count(". ") == 0


def test_a_status_list_finds_a_request_as_http_fail_on_would(
    http_server: HttpServerHandle, served_dir: Path
) -> None:
    (served_dir / "a.raw").write_text("ok")
    url = http_server.url_for("a.raw")
    http_server.inject("a.raw", status=503, times=1)
    assert fetch(url) == 503
    assert http_server.wait_for_request("a.raw", status="4xx,5xx", timeout=5).status == 503
    assert http_server.assert_requested("a.raw", status=" 404, 5XX ").status == 503
    assert fetch(url) == 200
    assert http_server.wait_for_request("a.raw", status="2xx,3xx", timeout=5).status == 200
    assert http_server.assert_requested("a.raw", status=200).status == 200


@pytest.mark.parametrize("status", ["6xx", "4xx,6xx", "5x", "", 42, True, 503.0])
@pytest.mark.parametrize("method", ["assert_requested", "wait_for_request"])
def test_a_status_that_is_no_status_is_refused(
    http_server: HttpServerHandle, method: str, status: Any
) -> None:
    raised = soon(lambda: getattr(http_server, method)("a.raw", status=status))
    assert isinstance(raised, ValueError), raised
    text = str(raised)
    assert text.startswith(f"{method}(): status={status!r} is not a status;"), text
    assert text.endswith("give one such as 404 or 5xx, or a comma list of them such as '4xx,5xx'."), text


ASYNC_WAITS = """
import asyncio, time
import pytest

@pytest.mark.asyncio
async def test_a_cancelled_wait(http_server):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(http_server.wait_for_request_async("never.raw", timeout=20), 0.5)
    assert time.monotonic() - started < 2

def test_the_next_test(http_server):
    pass
"""


def test_a_cancelled_async_wait_ends_at_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(ASYNC_WAITS)
    started = time.monotonic()
    # A subprocess: the loop's executor, where the old wait kept polling, ends with the run.
    result = pytester.runpytest_subprocess("-p", "asyncio", "--asyncio-mode=strict", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    # The wait asked for 20 s: a wait that outlived its cancellation would hold the run that long.
    assert time.monotonic() - started < 12


FAILURES = """
import asyncio
import pytest

def test_assert_requested(http_server):
    http_server.assert_requested("missing.raw")

def test_wait_for_request(http_server):
    http_server.wait_for_request("missing.raw", timeout=0.1)

@pytest.mark.asyncio
async def test_wait_for_request_async(http_server):
    await http_server.wait_for_request_async("missing.raw", timeout=0.1)

def test_a_bad_argument(http_server):
    http_server.wait_for_request("missing.raw", status="6xx")
"""


def test_a_failure_shows_the_tests_line_not_the_plugins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(FAILURES)
    result = pytester.runpytest_subprocess("-p", "asyncio", "--asyncio-mode=strict", "-p", "no:randomly")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            '>*http_server.assert_requested("missing.raw")',
            "E*AssertionError: no request for /missing.raw; the server answered:",
            '>*http_server.wait_for_request("missing.raw", timeout=0.1)',
            "E*AssertionError: no request for /missing.raw within 0.1 s; the server answered:",
            '>*await http_server.wait_for_request_async("missing.raw", timeout=0.1)',
            '>*http_server.wait_for_request("missing.raw", status="6xx")',
            "E*ValueError: wait_for_request(): status='6xx' is not a status;*",
        ]
    )
    assert "handle.py" not in result.stdout.str()


INTERRUPTED = """
import asyncio, os
import pytest

@pytest.mark.asyncio
async def test_waits(http_server, tmp_path):
    with open(os.environ["WAIT_STARTED"], "w"):
        pass
    await http_server.wait_for_request_async("never.raw", timeout=20)
"""


def test_ctrl_c_ends_an_async_wait_at_once(tmp_path: Path) -> None:
    (tmp_path / "test_interrupted.py").write_text(INTERRUPTED)
    started = tmp_path / "started"
    # A subprocess of its own: the point is a signal to the whole run, as Ctrl-C sends it.
    command = plain_pytest(
        "-p", "asyncio", "--asyncio-mode=strict", "-p", "no:randomly", "test_interrupted.py"
    )
    env = clean_env(WAIT_STARTED=str(started))
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as run:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert run.poll() is None, run.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # well into the wait
        run.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        output, _ = run.communicate(timeout=30)
    assert time.monotonic() - interrupted < 5, output
    assert b"KeyboardInterrupt" in output, output
