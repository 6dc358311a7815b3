"""Issue 17 on real exporters: on a shared exporter, every piece of state has one owner.

Each test runs pytest in a subprocess (its own process, environment, xdist workers, or a process
group to SIGKILL) against a ``jmp run`` exporter with a ``RecordingHttpServer``, reached over TCP
like a lab's, and judges the inner run by its JUnit XML report. Where the behaviour is one both
backends must share, the same inner suite runs on loopback too.

The rule they check, from the issue: a test's result depends only on what that test's own device
did, and nothing a run leaves behind changes the next run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from jumpstarter_helpers import JMP, StandaloneExporter, http_driver, write_exporter_config
from subprocess_runs import JUnit, clean_env, python_pytest, run, run_pytest

RECORDING = "pytest_jumpstarter_http.driver.RecordingHttpServer"
TOP = "pytest-jumpstarter-http"
XDIST = ["-p", "xdist", "-n", "2", "--dist=each"]

#: What every inner suite starts with: the device is urllib, bounded in time.
DEVICE = """
import hashlib, json, os, threading, time, urllib.error, urllib.request
from pathlib import Path

import pytest


def get(url, timeout=10):
    \"\"\"The status and body the device gets for ``url``.\"\"\"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def downloads(http_server, name):
    return [r for r in http_server.requests if r.path.split("?")[0].endswith("/" + name)]
"""


@dataclass
class Backend:
    """Where an inner run's servers are: loopback, or a ``jmp run`` exporter with a RecordingHttpServer."""

    name: str
    exporter: StandaloneExporter | None = None
    #: The exporter's served root on disk.
    root_dir: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        if self.exporter is None:
            return clean_env(**extra)
        return self.exporter.env(**extra)


def recording_exporter(folder: Path, start: Callable[[Path], StandaloneExporter]) -> Backend:
    """A ``jmp run`` exporter serving ``folder/exporter-root`` with a RecordingHttpServer, as a lab's."""
    if not Path(JMP).exists():
        pytest.skip("jmp (jumpstarter-cli, in the test extra) is not installed")
    root_dir = folder / "exporter-root"
    root_dir.mkdir(parents=True)
    config = write_exporter_config(folder / "exporter.yaml", {"http": {**http_driver(root_dir), "type": RECORDING}})
    return Backend("exporter", start(config), root_dir)


@pytest.fixture
def exporter(tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]) -> Backend:
    return recording_exporter(tmp_path, standalone_exporter)


@pytest.fixture(params=["loopback", "exporter"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> Backend:
    if request.param == "loopback":
        return Backend("loopback")
    return recording_exporter(tmp_path, standalone_exporter)


def suite(folder: Path, name: str, source: str) -> Path:
    """Write the inner test module ``name`` (the device's helpers first) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(DEVICE + source)
    return folder


def user_root(folder: Path, **files: bytes) -> Path:
    """A ``--http-root`` directory holding ``files``."""
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# --- 1. xdist workers sharing an exporter and an --http-root ------------------------------------

WORKERS = """
ME = os.environ["PYTEST_XDIST_WORKER"]
SYNC = Path(os.environ["SYNC"])
ROOT = Path(os.environ["ROOT"])


def arrive(step):
    \"\"\"Wait, at most 60 s, until both workers reached ``step``.\"\"\"
    (SYNC / f"{step}-{ME}").touch()
    deadline = time.monotonic() + 60
    while not all((SYNC / f"{step}-gw{n}").exists() for n in (0, 1)):
        assert time.monotonic() < deadline, f"{ME}: the other worker never reached {step}"
        time.sleep(0.02)


def test_each_worker_lists_only_its_own_download(http_server, http_url):
    arrive("started")
    assert get(http_url + "/image.raw") == (200, (ROOT / "image.raw").read_bytes())
    http_server.wait_for_request("image.raw", timeout=10)
    # Both downloads are in the exporter's log now: each worker logged its own before arriving.
    arrive("downloaded")
    mine = downloads(http_server, "image.raw")
    assert len(mine) == 1, f"{ME} lists {len(mine)} downloads of image.raw:\\n" + "\\n".join(
        r.line() for r in mine
    )


def test_a_worker_never_waits_on_the_other_workers_download(http_server, http_url):
    arrive("waiting")
    if ME == "gw1":
        assert get(http_url + "/rootfs.img")[0] == 200
        http_server.wait_for_request("rootfs.img", timeout=10)
        (SYNC / "rootfs-fetched").touch()
        return
    deadline = time.monotonic() + 60
    while not (SYNC / "rootfs-fetched").exists():
        assert time.monotonic() < deadline, "gw1 never downloaded rootfs.img"
        time.sleep(0.02)
    with pytest.raises(AssertionError):
        found = http_server.wait_for_request("rootfs.img", timeout=2)
        print(f"gw0 waited for rootfs.img and got gw1's download: {found.line()}")
"""


@pytest.mark.parametrize("scope", ["function", "session"])
def test_xdist_workers_sharing_an_exporter_and_a_root_each_see_only_their_own_requests(
    exporter: Backend, tmp_path: Path, scope: str
) -> None:
    work = suite(tmp_path / "work", "test_workers.py", WORKERS)
    root = user_root(tmp_path / "images", **{"image.raw": os.urandom(256 << 10), "rootfs.img": b"rootfs" * 1000})
    sync = tmp_path / "sync"
    sync.mkdir()
    junit = run_pytest(
        work,
        *XDIST,
        f"--http-root={root}",
        f"--http-scope={scope}",
        env=exporter.env(SYNC=str(sync), ROOT=str(root)),
        timeout=180,
    )
    junit.assert_passed(
        "test_each_worker_lists_only_its_own_download",
        "test_a_worker_never_waits_on_the_other_workers_download",
    )
