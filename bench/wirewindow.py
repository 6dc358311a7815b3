"""A pytest plugin (``-p wirewindow``) that records what a session sent to its exporter, and how long it took.

It reads the totals of the relay ``wirecount.py`` (file ``BENCH_WIRE_COUNTS``) at session start
and finish, and writes ``{"up": bytes, "down": bytes, "seconds": wall}`` to ``BENCH_WIRE_OUT``.
Session finish comes after the session fixtures' teardown, so the window holds everything the
http plugin sends, from its first connection to the removal of its folders.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from wirecount import read

#: Wall clock, bytes up and bytes down at session start.
_start: list[float] = []


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _start[:] = (time.perf_counter(), *read(Path(os.environ["BENCH_WIRE_COUNTS"])))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    up, down = read(Path(os.environ["BENCH_WIRE_COUNTS"]))
    seconds = time.perf_counter() - _start[0]
    window = {"up": up - _start[1], "down": down - _start[2], "seconds": seconds}
    Path(os.environ["BENCH_WIRE_OUT"]).write_text(json.dumps(window))
