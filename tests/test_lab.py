"""The plugin in a simulated lab: the device sits on another network than pytest.

pytest and the device are in separate network namespaces (see ``netlab.py``); the device downloads
with curl and busybox wget from inside its own, using exactly the URL the plugin handed out. Each
lab runs its inner pytest runs once, in a module-scoped fixture; the tests below judge the results.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netlab import (
    DEVICE_IP,
    EXPORTER_CONTROL_IP,
    EXPORTER_DEVICE_IP,
    GRPC_PORT,
    LAPTOP_IP,
    TESTHOST_IP,
    ExporterLab,
    LaptopLab,
    connect_from,
    # The fixtures exporter_lab and laptop_lab: importing them here is what registers them.
    exporter_lab_fixture,  # noqa: F401
    in_netns,
    laptop_lab_fixture,  # noqa: F401
)
from subprocess_runs import JUnit

#: The inner run's conftest: the worker that ran test_serve.py says when it has left the run.
LAB_CONFTEST = """
import os
from pathlib import Path
import pytest

RAN = []

def pytest_runtest_setup(item):
    RAN.append(item.path.name)

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    # trylast: after pytest's own sessionfinish tore the session fixtures down, so this worker's
    # tests are over and it has left the exporter's server.
    if "test_serve.py" in RAN:
        (Path(os.environ["WORK"]) / "other-done").write_text(str(os.getpid()))
"""

#: Small files the device fetches: one from served_dir through url_for, one through stage.
SERVE = """
import os, time
import pytest
from lab_device import WORK, download, record, sha256

HOST = os.environ["EXPECT_HOST"]


def test_waits_for_the_download():
    deadline = time.monotonic() + 60
    while not (WORK / "downloading").exists():
        assert time.monotonic() < deadline, "the device's big download never started"
        time.sleep(0.02)


def test_served_dir(http_server, http_url, served_dir, tmp_path):
    (served_dir / "boot.img").write_bytes(os.urandom(1 << 20))
    url = http_server.url_for("boot.img")
    assert url.startswith(f"http://{HOST}:{http_server.port}/")
    record(test="served_dir", url=url, server=http_server.url, port=http_server.port)
    download(url, tmp_path, sha256(served_dir / "boot.img"))


def test_stage(http_server, tmp_path):
    (tmp_path / "kernel.img").write_bytes(os.urandom(1 << 20))
    url = http_server.stage(tmp_path / "kernel.img")
    assert url.startswith(f"http://{HOST}:{http_server.port}/")
    record(test="stage", url=url, server=http_server.url, port=http_server.port)
    download(url, tmp_path, sha256(tmp_path / "kernel.img"))
"""

#: 64 MiB the device fetches while the other worker ends its tests and leaves the server.
BIG = """
import hashlib, os, signal, subprocess, time
from lab_device import WORK, curl_command, record, sha256


def wait_for(condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within 60 s"
        time.sleep(0.02)


def test_big_download(http_server, tmp_path):
    data = os.urandom(64 << 20)
    (tmp_path / "rootfs.img").write_bytes(data)
    url = http_server.stage(tmp_path / "rootfs.img")
    record(test="big", at="start", url=url, port=http_server.port, live=http_server.client.get_port())
    out = tmp_path / "device-rootfs.img"
    device = subprocess.Popen(curl_command(url, out, "--limit-rate", "32M"), start_new_session=True)
    try:
        begun = lambda: device.poll() is not None or out.exists() and out.stat().st_size > 0  # noqa: E731
        wait_for(begun, "the device's first bytes")
        assert device.poll() is None, f"curl on the device exited {device.returncode} at once"
        # Hold the device mid-download, its connection open, until the other worker has ended its
        # tests and left: whatever its teardowns do to the server happens during this download.
        os.killpg(device.pid, signal.SIGSTOP)
        (WORK / "downloading").write_text(str(os.getpid()))
        # A teardown that stops (or waits on) the server this download holds never gets here.
        wait_for((WORK / "other-done").exists, "the other worker's leaving, during the download,")
        received = out.stat().st_size
        os.killpg(device.pid, signal.SIGCONT)
        code = device.wait(90)
    finally:
        if device.poll() is None:
            os.killpg(device.pid, signal.SIGKILL)
            device.wait()
    assert received < len(data), "the download ended before the other worker left"
    assert code == 0, f"curl on the device exited {code}: the download was cut"
    assert sha256(out) == hashlib.sha256(data).hexdigest()
    record(test="big", at="end", url=url, port=http_server.port, live=http_server.client.get_port())
"""

#: On the laptop: with LAB_EXPECT=unreachable the device must fail where the laptop succeeds.
LAPTOP = """
import os, urllib.request
from lab_device import curl, download, record, sha256, wget


def test_served_dir(http_server, served_dir, tmp_path):
    (served_dir / "boot.img").write_bytes(os.urandom(1 << 20))
    url = http_server.url_for("boot.img")
    record(test="served_dir", url=url)
    if os.environ["LAB_EXPECT"] == "reachable":
        download(url, tmp_path, sha256(served_dir / "boot.img"))
    else:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == (served_dir / "boot.img").read_bytes()
        for name, fetch in (("curl", curl), ("wget", wget)):
            done = fetch(url, tmp_path / name)
            record(test="unreachable", client=name, code=done.returncode, error=done.stderr)


def test_stage(http_server, tmp_path):
    (tmp_path / "kernel.img").write_bytes(os.urandom(1 << 20))
    url = http_server.stage(tmp_path / "kernel.img")
    record(test="stage", url=url)
    if os.environ["LAB_EXPECT"] == "reachable":
        download(url, tmp_path, sha256(tmp_path / "kernel.img"))
"""


def read_records(work: Path) -> list[dict[str, Any]]:
    lines = []
    for path in sorted(work.glob("record-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    for path in work.glob("record-*.jsonl"):
        path.unlink()
    return lines


@dataclass
class Runs:
    """What the inner runs of one lab did: their junit reports and records, by run name."""

    junit: dict[str, JUnit]
    records: dict[str, list[dict[str, Any]]]


# --- the exporter lab -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exporter_runs(exporter_lab: ExporterLab) -> Runs:
    """In testhost: a ``-n 2`` run (big download on one worker, small ones on the other), then a
    ``--http-scope=session`` run of the small ones; the exporter serves all of them."""
    work = exporter_lab.work
    (work / "conftest.py").write_text(LAB_CONFTEST)
    (work / "test_serve.py").write_text(SERVE)
    (work / "test_big.py").write_text(BIG)
    runs = Runs({}, {})
    xdist = ["-p", "xdist", "-n", "2", "--dist", "loadfile", "test_big.py", "test_serve.py"]
    runs.junit["xdist"] = exporter_lab.pytest(*xdist, name="xdist", EXPECT_HOST=EXPORTER_DEVICE_IP)
    runs.records["xdist"] = read_records(work)
    session = ["-p", "no:xdist", "--http-scope=session", "test_serve.py"]
    session += ["--deselect", "test_serve.py::test_waits_for_the_download"]
    runs.junit["session"] = exporter_lab.pytest(*session, name="session", EXPECT_HOST=EXPORTER_DEVICE_IP)
    runs.records["session"] = read_records(work)
    return runs


def test_the_device_reaches_only_the_exporter_and_testhost_only_the_control_net(
    exporter_lab: ExporterLab,
) -> None:
    lab = exporter_lab
    for netns in (lab.testhost, lab.exporter, lab.device):
        routes = subprocess.run(
            ["ip", "-n", netns, "route", "show", "default"], capture_output=True, text=True, check=True
        )
        assert routes.stdout == "", f"{netns} has a default route: {routes.stdout}"
    forwarding = subprocess.run(
        in_netns(lab.exporter, "cat", "/proc/sys/net/ipv4/ip_forward"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert forwarding.stdout.strip() == "0", "the exporter forwards between its networks"
    # The exporter's gRPC port answers testhost (anything but curl's 7, "could not connect").
    assert connect_from(lab.testhost, EXPORTER_CONTROL_IP, GRPC_PORT).returncode != 7
    unreachable = [
        (lab.device, TESTHOST_IP),
        (lab.device, EXPORTER_CONTROL_IP),
        (lab.testhost, EXPORTER_DEVICE_IP),
        (lab.testhost, DEVICE_IP),
    ]
    for netns, host in unreachable:
        route = subprocess.run(
            ["ip", "-n", netns, "route", "get", host], capture_output=True, text=True, check=False
        )
        assert "Network is unreachable" in route.stderr, f"{netns} has a route to {host}: {route.stdout}"
        done = connect_from(netns, host, GRPC_PORT)
        assert done.returncode == 7, f"{netns} reached {host}: {done.stdout}{done.stderr}"


def test_the_device_downloads_served_dir_and_staged_files_from_the_exporter_under_xdist(
    exporter_runs: Runs,
) -> None:
    exporter_runs.junit["xdist"].assert_passed("test_served_dir", "test_stage", "test_waits_for_the_download")


def test_one_exporter_server_serves_every_worker_and_is_never_restarted(exporter_runs: Runs) -> None:
    records = exporter_runs.records["xdist"]
    exporter_runs.junit["xdist"].assert_passed("test_big_download", "test_served_dir", "test_stage")
    assert len({line["worker"] for line in records}) == 2, records
    ports = {line["port"] for line in records} | {line["live"] for line in records if "live" in line}
    (port,) = ports
    assert port > 0
    big = [line["at"] for line in records if line["test"] == "big"]
    assert big == ["start", "end"], records
    for line in records:
        assert line["url"].startswith(f"http://{EXPORTER_DEVICE_IP}:{port}/"), line


def test_a_big_device_download_survives_the_other_workers_test_ending(exporter_runs: Runs) -> None:
    exporter_runs.junit["xdist"].assert_passed("test_big_download")
    (big,) = {line["worker"] for line in exporter_runs.records["xdist"] if line["test"] == "big"}
    others = {line["worker"] for line in exporter_runs.records["xdist"] if line["test"] != "big"}
    assert big not in others, "the big download and the other tests ran on one worker"


def test_session_scope_serves_every_test_from_one_exporter_folder(exporter_runs: Runs) -> None:
    exporter_runs.junit["session"].assert_passed("test_served_dir", "test_stage")
    session = {line["server"] for line in exporter_runs.records["session"]}
    function = {line["server"] for line in exporter_runs.records["xdist"] if "server" in line}
    assert len(session) == 1, session
    assert len(function) == 2, "function scope should give each test its own folder"


# --- the board on the laptop's USB ethernet -------------------------------------------------


@pytest.fixture(scope="module")
def laptop_runs(laptop_lab: LaptopLab) -> Runs:
    """In the laptop namespace, on loopback: bound to the laptop's address, bound to every
    address with --http-url-host, and the default 127.0.0.1."""
    (laptop_lab.work / "test_laptop.py").write_text(LAPTOP)
    runs = Runs({}, {})
    options = {
        "host": ([f"--http-host={LAPTOP_IP}"], "reachable"),
        "wildcard": (["--http-host=0.0.0.0", f"--http-url-host={LAPTOP_IP}"], "reachable"),
        "default": ([], "unreachable"),
    }
    for name, (args, expect) in options.items():
        runs.junit[name] = laptop_lab.pytest(*args, "test_laptop.py", name=name, LAB_EXPECT=expect)
        runs.records[name] = read_records(laptop_lab.work)
    return runs


@pytest.mark.parametrize("run", ["host", "wildcard"])
def test_a_board_on_the_laptop_downloads_from_the_laptops_address(laptop_runs: Runs, run: str) -> None:
    laptop_runs.junit[run].assert_passed("test_served_dir", "test_stage")
    urls = [line["url"] for line in laptop_runs.records[run]]
    assert len(urls) == 2
    assert all(url.startswith(f"http://{LAPTOP_IP}:") for url in urls), urls


def test_the_default_127_0_0_1_is_unreachable_from_the_board(laptop_runs: Runs) -> None:
    laptop_runs.junit["default"].assert_passed("test_served_dir", "test_stage")
    records = laptop_runs.records["default"]
    assert all(line["url"].startswith("http://127.0.0.1:") for line in records if "url" in line)
    failed = {line["client"]: line["code"] for line in records if line["test"] == "unreachable"}
    # curl 7: could not connect; the board's own 127.0.0.1 has no server.
    assert failed["curl"] == 7, records
    assert failed["wget"] != 0, records
