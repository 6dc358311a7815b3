"""Servers under pytest-xdist: loopback ports, one exporter shared by workers, leases per worker."""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from fake_controller import FakeController
from jumpstarter_helpers import (
    free_range,
    http_device,
    http_driver,
    jmp_shell,
    write_driver_port,
    write_exporter_config,
)
from subprocess_runs import JUnit, clean_env, python_pytest, run_pytest

LOOPBACK = """
import json, os, urllib.request
from pathlib import Path
import pytest

def log(kind, server):
    with (Path(os.environ["RECORD"]) / f"{os.getpid()}.jsonl").open("a") as record:
        record.write(json.dumps([kind, server.port, str(server.root)]) + "\\n")

def fetch(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()

@pytest.mark.parametrize("n", range(6))
def test_function(http_server, served_dir, n):
    (served_dir / "f").write_text(str(n))
    assert fetch(http_server.url_for("f")) == str(n).encode()
    log("function", http_server)

@pytest.mark.http_server(scope="session")
@pytest.mark.parametrize("n", range(6))
def test_session(http_server, served_dir, n):
    (served_dir / f"s{n}").write_text(str(n))
    assert fetch(http_server.url_for(f"s{n}")) == str(n).encode()
    log("session", http_server)
"""


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def read_records(folder: Path) -> dict[str, list[list[Any]]]:
    """What each process logged, by pid."""
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in folder.glob("*.jsonl")
    }


@pytest.mark.parametrize(
    "workers", [["-n", "2"], ["-n", "4"], ["-p", "no:xdist"]], ids=["n2", "n4", "no-xdist"]
)
def test_loopback_servers_work_in_every_worker_for_both_scopes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    record = pytester.mkdir("record")
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(LOOPBACK)
    pytester.runpytest(*workers).assert_outcomes(passed=12)
    processes = read_records(record)
    if "no:xdist" in workers:
        assert len(processes) == 1
    else:
        assert len(processes) >= 2, "xdist ran every test in one worker"
    for lines in processes.values():
        session = {(port, root) for kind, port, root in lines if kind == "session"}
        function = [(port, root) for kind, port, root in lines if kind == "function"]
        assert len(session) <= 1, "a worker started more than one session server"
        assert len({root for _, root in function}) == len(function), "two tests shared a temporary root"
    for lines in processes.values():
        for _, port, root in lines:
            assert not listening(port), "a server outlived the run"
            assert not Path(root).exists(), "a temporary root outlived the run"


RANGE = """
import json, os, time
from pathlib import Path
import pytest

@pytest.mark.parametrize("n", range(12))
def test_servers(http_server_factory, n):
    servers = [http_server_factory() for _ in range(3)]
    # From after the last start to before the first stop, all three ports are certainly held.
    held = time.monotonic_ns()
    time.sleep(0.05)
    released = time.monotonic_ns()
    http_server_factory.close()
    with (Path(os.environ["RECORD"]) / f"{os.getpid()}-{n}.json").open("w") as record:
        json.dump({"ports": [server.port for server in servers], "from": held, "to": released}, record)
"""


def test_a_port_range_gives_every_server_a_distinct_port_of_the_range_across_four_workers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, last = free_range(16)
    record = pytester.mkdir("record")
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(RANGE)
    pytester.runpytest("-n", "4", "--http-port", f"{first}-{last}").assert_outcomes(passed=12)
    spans = [json.loads(path.read_text()) for path in record.glob("*.json")]
    assert len(spans) == 12
    holders: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for span in spans:
        assert len(set(span["ports"])) == 3
        for port in span["ports"]:
            assert first <= port <= last
            holders[port].append((span["from"], span["to"]))
    for port, held in holders.items():
        held.sort()
        for (_, end), (start, _) in itertools.pairwise(held):
            assert end < start, f"two servers held port {port} at once"


def test_an_exhausted_port_range_is_a_clear_error(pytester: pytest.Pytester) -> None:
    first, last = free_range(2)
    pytester.makepyfile(
        """
        def test_three_servers(http_server_factory):
            for _ in range(3):
                http_server_factory()
        """
    )
    result = pytester.runpytest("--http-port", f"{first}-{last}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*--http-port: every port of {first}-{last} on 127.0.0.1 is in use; widen the range, or give 0*"]
    )


SHARED_CONFTEST = """
import os
from pathlib import Path

import pytest

RAN = []

def pytest_runtest_setup(item):
    RAN.append(item.path.name)

@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    # After the session's fixtures are gone: this worker has left the shared server.
    if "test_b.py" in RAN:
        (Path(os.environ["WORK"]) / "b-left").write_text(str(os.getpid()))
"""

SLOW_DOWNLOAD = """
import hashlib, os, time, urllib.request
from pathlib import Path

WORK = Path(os.environ["WORK"])

def test_slow_download(http_server, tmp_path):
    data = os.urandom(32 << 20)
    (tmp_path / "big.img").write_bytes(data)
    url = http_server.stage(tmp_path / "big.img")
    other = WORK / os.environ["WAIT_FOR"]
    sha = hashlib.sha256()
    deadline = time.monotonic() + 30
    with urllib.request.urlopen(url, timeout=30) as response:
        (WORK / "downloading").write_text(str(os.getpid()))
        # Read slowly until the other worker is done, then give a wrongful stop time to bite.
        while not other.exists() and time.monotonic() < deadline:
            sha.update(response.read(64 << 10))
            time.sleep(0.02)
        time.sleep(1)
        while chunk := response.read(1 << 20):
            sha.update(chunk)
    assert other.exists(), "the other worker never finished"
    assert sha.digest() == hashlib.sha256(data).digest(), "the download was cut"
"""

OTHER_WORKER = """
import os, time, urllib.request
from pathlib import Path
import pytest

WORK = Path(os.environ["WORK"])

def test_waits_for_the_download():
    deadline = time.monotonic() + 30
    while not (WORK / "downloading").exists():
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)

@pytest.mark.parametrize("n", range(4))
def test_server(http_server, tmp_path, n):
    (tmp_path / "small").write_text(str(n))
    with urllib.request.urlopen(http_server.stage(tmp_path / "small"), timeout=10) as response:
        assert response.read() == str(n).encode()
"""

CRASH = """
def test_crash(http_server):
    crashed = WORK / "crashed"
    # xdist gives a crashed worker's test to its replacement: crash once only.
    if crashed.exists():
        pytest.skip("crashed once already")
    crashed.write_text(str(os.getpid()))
    os._exit(1)
"""


@pytest.fixture(scope="module")
def shared_shell(tmp_path_factory: pytest.TempPathFactory) -> tuple[JUnit, JUnit, list[str]]:
    """Inside one jmp shell, two ``-n 2`` runs with a slow download on one worker while the other
    worker runs its tests and leaves, then runs its tests and crashes; the server's port after each.
    """
    work = tmp_path_factory.mktemp("shared")
    config = write_exporter_config(work / "shared.yaml", {"http": http_driver(work / "www")})
    (work / "conftest.py").write_text(SHARED_CONFTEST)
    (work / "test_a.py").write_text(SLOW_DOWNLOAD)
    (work / "test_b.py").write_text(OTHER_WORKER)
    (work / "test_c.py").write_text(OTHER_WORKER + CRASH)
    port = write_driver_port(work)
    xdist = ["-p", "xdist", "-n", "2", "--dist", "loadfile"]
    done = jmp_shell(
        config,
        ["env", "WAIT_FOR=b-left", *python_pytest(*xdist, "test_a.py", "test_b.py", junit=work / "left.xml")],
        [*port, "http", "show"],
        ["rm", "-f", str(work / "downloading")],
        [
            "env",
            "WAIT_FOR=crashed",
            *python_pytest(*xdist, "test_a.py", "test_c.py", junit=work / "crash.xml"),
        ],
        [*port, "http", "show"],
        cwd=work,
        env=clean_env(WORK=str(work)),
    )
    ports = re.findall(r"^http show-port=(\d+)$", done.stdout, re.MULTILINE)
    return JUnit(work / "left.xml", done.stdout), JUnit(work / "crash.xml", done.stdout), ports


def test_a_slow_download_survives_the_other_worker_finishing_on_the_same_exporter(
    shared_shell: tuple[JUnit, JUnit, list[str]],
) -> None:
    left, _, ports = shared_shell
    left.assert_passed("test_slow_download", "test_waits_for_the_download", "test_server[3]")
    # The server belongs to the exporter: the run started it and left it running.
    assert ports[0] != "0", left.output


def test_a_crashing_worker_does_not_stop_the_server_for_the_others(
    shared_shell: tuple[JUnit, JUnit, list[str]],
) -> None:
    _, crashed, ports = shared_shell
    crashed.assert_passed("test_slow_download", "test_server[3]")
    crashed.assert_outcome("test_crash", "error", "crashed while running 'test_c.py::test_crash'")
    # Neither the crash nor the end of the run stopped or restarted the server: the port the
    # first run left is the one the second left.
    assert ports[1] == ports[0] != "0", crashed.output


LEASE_BARRIER = """
import os, time
from pathlib import Path

def test_{n}(http_server):
    record = Path(os.environ["RECORD"])
    (record / "{n}").write_text(http_server.connection.name)
    deadline = time.monotonic() + 20
    while len(list(record.iterdir())) < 2:
        assert time.monotonic() < deadline, "the other worker never leased"
        time.sleep(0.02)
"""


def test_each_worker_leases_its_own_exporter(
    fake_controller: FakeController, client_config_home: Path, tmp_path: Path
) -> None:
    for name in ("rpi4-01", "rpi4-02"):
        fake_controller.add_exporter(name, {"board": "rpi4"}, device_factory=http_device(tmp_path / name))
    record = tmp_path / "record"
    record.mkdir()
    for n in ("one", "two"):
        (tmp_path / f"test_{n}.py").write_text(LEASE_BARRIER.format(n=n))
    junit = run_pytest(
        tmp_path,
        "-p",
        "xdist",
        "-n",
        "2",
        "--dist",
        "loadfile",
        "--http-client",
        "fake",
        "--http-selector",
        "board=rpi4",
        env=clean_env(JMP_CLIENT_CONFIG_HOME=str(client_config_home), RECORD=str(record)),
    )
    junit.assert_passed("test_one", "test_two")
    assert sorted(path.read_text() for path in record.iterdir()) == ["rpi4-01", "rpi4-02"]
    assert sorted(lease.exporter.name for lease in fake_controller.leases.values() if lease.exporter) == [
        "rpi4-01",
        "rpi4-02",
    ]
    assert not fake_controller.active_leases(), "a worker kept its lease after the run"
