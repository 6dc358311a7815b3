"""A pytest plugin the generated suites load (``-p benchclock``) to time themselves from the inside.

It writes ``{"loop": seconds, "tests": [seconds, ...], "phases": [seconds, ...]}`` to the file
named by ``BENCH_CLOCK_OUT``: the whole test loop; each test's full protocol (set-up, call,
teardown and every hook around them, such as making and logging the reports); and each test's
set-up, call and teardown alone, summed from the durations pytest puts in its reports (the
per-test timer of issue 19). Timing inside the process leaves out interpreter start-up and
collection, whose noise would swamp a few milliseconds per test.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from pathlib import Path

import pytest

_tests: list[float] = []
_phases: list[float] = []
_running: dict[str, float] = {}  # node id: the durations of its phases reported so far


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _running[report.nodeid] = _running.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        _tests.append(time.perf_counter() - start)
        _phases.append(_running.pop(item.nodeid, 0.0))


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, object, object]:
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        loop = time.perf_counter() - start
        out = os.environ.get("BENCH_CLOCK_OUT")
        if out and "PYTEST_XDIST_WORKER" not in os.environ:  # only the controller speaks for an xdist run
            Path(out).write_text(json.dumps({"loop": loop, "tests": _tests, "phases": _phases}))
