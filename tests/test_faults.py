"""Network faults on the device's downloads (issue 13), with curl and GNU wget as the device.

The device-facing tests are written once, in ``SUITE`` and ``XDIST_SUITE``; this module runs them
on loopback, ``test_faults_exporter.py`` inside a real ``jmp shell`` on a ``RecordingHttpServer``.
They run in a subprocess: they start servers, clients and threads of their own, and the whole
run's duration is what shows that no stalled download holds a teardown.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from subprocess_runs import XDIST_ARGS, JUnit, clean_env, run_pytest, write_device_suites

from pytest_jumpstarter_http.records import FaultSpec, HttpRequest

SUITE = """
import hashlib, os, subprocess, time
import pytest

def curl(*args):
    return subprocess.run(["curl", "-sS", *map(str, args)], capture_output=True, text=True, timeout=60)

def code(url):
    return curl("-o", os.devnull, "-w", "%{http_code}", url).stdout

def mine(http_server, name):
    return [r for r in http_server.requests if r.path.split("?")[0].endswith("/" + name)]

def sha(data):
    return hashlib.sha256(data).hexdigest()

def test_curl_retries_through_two_503s(http_server, served_dir, tmp_path):
    (served_dir / "retry.txt").write_text("finally")
    url = http_server.url_for("retry.txt")
    fault = http_server.inject("retry.txt", status=503, times=2)
    done = curl("-f", "--retry", "3", "-o", tmp_path / "retry.txt", url)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "retry.txt").read_text() == "finally"
    http_server.wait_for_request("retry.txt", status=200)
    entries = mine(http_server, "retry.txt")
    assert [r.status for r in entries] == [503, 503, 200]
    assert [r.fault for r in entries] == ["status=503, times=2"] * 2 + [None]
    assert fault.hits == 2

def test_curl_resumes_a_cut_download(http_server, served_dir, tmp_path):
    data = os.urandom(4 << 20)
    (served_dir / "image.raw").write_bytes(data)
    url = http_server.url_for("image.raw")
    fault = http_server.inject("image.raw", cut_after=1 << 20, times=1)
    out = tmp_path / "image.raw"
    assert curl("-o", out, url).returncode == 18  # CURLE_PARTIAL_FILE
    assert out.stat().st_size == 1 << 20
    done = curl("-f", "-C", "-", "-o", out, url)
    assert done.returncode == 0, done.stderr
    assert sha(out.read_bytes()) == sha(data)
    http_server.wait_for_request("image.raw", status=206)
    cut, resumed = mine(http_server, "image.raw")
    assert (cut.status, cut.bytes_sent, cut.complete) == (200, 1 << 20, False)
    assert cut.fault == "cut_after=1048576, times=1"
    assert (resumed.status, resumed.range, resumed.bytes_sent, resumed.fault) == (
        206, "bytes=1048576-", 3 << 20, None
    )
    assert fault.hits == 1

def test_wget_continues_across_cuts(http_server, served_dir, tmp_path):
    data = os.urandom(3 << 20)
    (served_dir / "fw.bin").write_bytes(data)
    url = http_server.url_for("fw.bin")
    http_server.inject("fw.bin", cut_after=1 << 20, times=2)
    done = subprocess.run(
        ["wget", "-nv", "-c", "--tries=3", "--waitretry=0", url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sha((tmp_path / "fw.bin").read_bytes()) == sha(data)
    http_server.wait_for_request("fw.bin", status=206)
    entries = mine(http_server, "fw.bin")
    # cut_after counts each response's bytes: the second, a range, is cut 1 MiB into it too.
    assert [(r.status, r.bytes_sent, r.complete) for r in entries] == [
        (200, 1 << 20, False), (206, 1 << 20, False), (206, 1 << 20, True)
    ]
    assert [r.range for r in entries] == [None, "bytes=1048576-", "bytes=2097152-"]

def test_wget_times_out_on_a_stall(http_server, served_dir, tmp_path):
    (served_dir / "stall.bin").write_bytes(b"s" * (1 << 20))
    url = http_server.url_for("stall.bin")
    http_server.inject("stall.bin", stall_after=64 << 10)
    done = subprocess.run(
        ["wget", "--tries=1", "--read-timeout=2", url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "timed out" in done.stderr, done.stderr
    entry = http_server.wait_for_request("stall.bin", timeout=20)
    assert (entry.bytes_sent, entry.complete) == (64 << 10, False)

STALLED = []

def test_stall_1_a_stalled_download_is_left_to_the_teardown(http_server, served_dir):
    (served_dir / "held.bin").write_bytes(b"h" * (1 << 20))
    url = http_server.url_for("held.bin")
    fault = http_server.inject("held.bin", stall_after=1000)
    STALLED.append(subprocess.Popen(["curl", "-sS", "-o", os.devnull, url], stderr=subprocess.PIPE))
    deadline = time.monotonic() + 20
    while fault.hits == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fault.hits == 1

def test_stall_2_the_teardown_cut_it(http_server):
    curl_ = STALLED.pop()
    assert curl_.wait(timeout=20) == 18  # CURLE_PARTIAL_FILE: the connection closed mid-body
    curl_.stderr.close()

def test_clearing_a_fault_releases_its_stalled_download(http_server, served_dir):
    (served_dir / "held.bin").write_bytes(b"h" * (1 << 20))
    url = http_server.url_for("held.bin")
    fault = http_server.inject("held.bin", stall_after=1000)
    with subprocess.Popen(["curl", "-sS", "-o", os.devnull, url], stderr=subprocess.PIPE) as held:
        deadline = time.monotonic() + 20
        while fault.hits == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        fault.clear()
        assert held.wait(timeout=20) == 18
    assert not fault.active and fault.hits == 1
    assert code(url) == "200"

def test_rate_limits_the_download(http_server, served_dir, tmp_path):
    (served_dir / "slow.bin").write_bytes(os.urandom(8 << 20))
    url = http_server.url_for("slow.bin")
    rate = 2 << 20
    http_server.inject("slow.bin", rate=rate)
    done = curl("-f", "-o", tmp_path / "slow.bin", "-w", "%{speed_download}", url)
    assert done.returncode == 0, done.stderr
    # A wide behavioural band, not a benchmark.
    assert 0.75 * rate <= float(done.stdout) <= 1.25 * rate, done.stdout

def test_a_delay_outlasts_a_short_client_timeout(http_server, served_dir, tmp_path):
    (served_dir / "late.txt").write_text("late")
    url = http_server.url_for("late.txt")
    http_server.inject("late.txt", delay=3)
    assert curl("--max-time", "1", "-o", os.devnull, url).returncode == 28  # timed out
    done = curl("-f", "--max-time", "10", "-o", tmp_path / "late.txt", url)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "late.txt").read_text() == "late"

def test_a_glob_matches_several_files(http_server, served_dir):
    (served_dir / "images").mkdir()
    urls = {}
    for name in ("images/a.raw", "images/b.raw", "images/c.txt", "a.raw"):
        (served_dir / name).write_text(name)
        urls[name] = http_server.url_for(name)
    fault = http_server.inject("images/*.raw", status=404)
    assert {name: code(url) for name, url in urls.items()} == {
        "images/a.raw": "404", "images/b.raw": "404", "images/c.txt": "200", "a.raw": "200"
    }
    assert fault.hits == 2

@pytest.mark.http_fault("marked.txt", status=500, times=1)
@pytest.mark.http_fault("marked.txt", delay=0.5)
def test_markers_inject_faults(http_server, served_dir):
    (served_dir / "marked.txt").write_text("m")
    url = http_server.url_for("marked.txt")
    assert [code(url) for _ in range(2)] == ["500", "200"]
    http_server.wait_for_request("marked.txt", status=200)
    assert [r.fault for r in mine(http_server, "marked.txt")] == ["status=500, times=1", "delay=0.5"]

def test_leak_1_a_test_leaves_its_fault_injected(http_server, served_dir):
    (served_dir / "leak.txt").write_text("ok")
    url = http_server.url_for("leak.txt")
    http_server.inject("leak.txt", status=500)
    assert code(url) == "500"

@pytest.mark.http_fault("leak-marked.txt", status=500)
def test_leak_2_a_marked_test_leaves_its_fault(http_server, served_dir):
    (served_dir / "leak-marked.txt").write_text("ok")
    assert code(http_server.url_for("leak-marked.txt")) == "500"

def test_leak_3_the_next_test_gets_its_files(http_server, served_dir):
    for name in ("leak.txt", "leak-marked.txt"):
        (served_dir / name).write_text("ok")
        assert code(http_server.url_for(name)) == "200"

@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"delay": -1}, "inject(): delay=-1 is out of range; give a number of seconds from 0 to 86400."),
        ({"rate": 0}, "inject(): rate=0 is out of range; give a number of bytes per second from 1 to"),
        ({"cut_after": -5}, "inject(): cut_after=-5 is out of range"),
        ({"cut_after": 1.5}, "inject(): cut_after=1.5 is not a whole number"),
        ({"cut_after": 1, "stall_after": 2}, "cut_after=1 and stall_after=2 were both given"),
        ({"status": 200}, "inject(): status=200 is out of range; give an HTTP error status from 400 to 599."),
        ({"status": 503, "rate": 10}, "status=503 answers with no file, so rate has nothing"),
        ({"times": 0}, "inject(): times=0 is out of range; give a whole number of requests from 1 to"),
    ],
)
def test_bad_arguments_are_a_value_error(http_server, kwargs, message):
    with pytest.raises(ValueError) as raised:
        http_server.inject("x.bin", **kwargs)
    assert message in str(raised.value), str(raised.value)
    assert str(raised.value).count(". ") == 0  # one sentence
"""

#: Two files xdist gives to two workers (``--dist loadfile``): one injects a fault on a name and
#: holds it while the other fetches the same name from its own folder of the (shared) server.
XDIST_SUITE = {
    "test_xa.py": """
import os, subprocess, time
from pathlib import Path

SYNC = Path(os.environ["FAULT_SYNC"])

def wait_for(name):
    deadline = time.monotonic() + 60
    while not (SYNC / name).exists():
        assert time.monotonic() < deadline, f"no {name}: did both files run on one worker?"
        time.sleep(0.05)

def code(url):
    return subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", url],
                          capture_output=True, text=True, timeout=60).stdout

def test_one_worker_injects_a_fault(http_server, served_dir):
    (served_dir / "shared.txt").write_text("a")
    url = http_server.url_for("shared.txt")
    http_server.inject("shared.txt", status=500)
    (SYNC / "injected").write_text(os.environ["PYTEST_XDIST_WORKER"])
    wait_for("fetched")
    assert code(url) == "500"
""",
    "test_xb.py": """
import os
from test_xa import SYNC, code, wait_for

def test_the_other_worker_never_sees_it(http_server, served_dir):
    (served_dir / "shared.txt").write_text("b")
    url = http_server.url_for("shared.txt")
    wait_for("injected")
    assert (SYNC / "injected").read_text() != os.environ["PYTEST_XDIST_WORKER"]
    try:
        assert code(url) == "200"
    finally:
        (SYNC / "fetched").write_text("")
""",
}

#: Every test of SUITE, by name; the leak tests are also run with a session-scoped server.
LEAKS = ("test_leak_1_a_test_leaves_its_fault_injected", "test_leak_2_a_marked_test_leaves_its_fault")
#: Seconds no run of the suite comes near; a stalled download held by a teardown would.
NEVER_HANGS = 30


def write_suites(where: Path) -> Path:
    """Write the suites and an ini file into ``where``; return the folder the xdist runs sync in."""
    return write_device_suites(where, SUITE, XDIST_SUITE)


def check_device_run(report: JUnit) -> None:
    """What the device sees: the same on both backends."""
    assert set(report.outcomes().values()) == {"passed"}, report.output
    assert len(report.cases) == 22, report.output
    # Each test's duration includes its teardown: a held stall would show here.
    slow = {case.id: case.seconds for case in report.cases.values() if case.seconds > NEVER_HANGS}
    assert not slow, slow


@dataclass
class Runs:
    device: JUnit
    session: JUnit
    xdist: JUnit


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if shutil.which("curl") is None or shutil.which("wget") is None:
        pytest.skip("curl and GNU wget are the device here: apt-get install -y curl wget")
    where = tmp_path_factory.mktemp("faults")
    sync = write_suites(where)
    device = run_pytest(where, "test_device.py", name="device", timeout=240)
    session = run_pytest(where, "test_device.py", "--http-scope=session", "-k", "leak", name="session")
    env = clean_env(FAULT_SYNC=str(sync))
    xdist = run_pytest(where, *XDIST_ARGS, env=env, name="xdist")
    return Runs(device, session, xdist)


def test_the_device_sees_every_fault_on_loopback(loopback: Runs) -> None:
    check_device_run(loopback.device)


def test_faults_never_leak_into_the_next_test_of_a_session_server(loopback: Runs) -> None:
    assert set(loopback.session.outcomes().values()) == {"passed"}, loopback.session.output
    assert len(loopback.session.cases) == 3


def test_each_xdist_worker_keeps_its_faults_to_itself(loopback: Runs) -> None:
    loopback.xdist.assert_passed("test_one_worker_injects_a_fault", "test_the_other_worker_never_sees_it")


def test_a_bad_marker_argument_fails_the_test_naming_the_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.http_fault("image.raw", cut_after=-1)
        def test_bad_value(http_server):
            pass

        @pytest.mark.http_fault("image.raw", cut=1)
        def test_bad_keyword(http_server):
            pass

        @pytest.mark.http_fault(status=503)
        def test_no_path(http_server):
            pass
        """
    )
    result = pytester.runpytest("-rA")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.http_fault: inject(): cut_after=-1 is out of range; give a whole number of "
            "bytes from 0 to 9007199254740991.",
            "@pytest.mark.http_fault: http_fault() got an unexpected keyword argument 'cut'.",
            "@pytest.mark.http_fault: http_fault() missing 1 required positional argument: 'path'.",
        ]
    )
    assert "During handling" not in result.stdout.str()


def test_the_marker_is_registered_with_its_signature(pytester: pytest.Pytester) -> None:
    pytester.runpytest("--markers").stdout.fnmatch_lines(
        ["@pytest.mark.http_fault(path, *, delay=0.0, rate=None, cut_after=None, stall_after=None, *"]
    )


def test_a_fault_matches_below_the_handles_url_prefix_only() -> None:
    spec = FaultSpec("images/*.raw").under(("/runs/gw0/test%5Bx%5D0",))
    assert spec.matches("/runs/gw0/test[x]0/images/a.raw")
    assert not spec.matches("/runs/gw1/test[x]0/images/a.raw")
    assert not spec.matches("/runs/gw0/test[x]0/a.raw")
    assert not spec.matches("/runs/gw0/testx0/images/a.raw")  # the prefix's [x] is no glob


def test_a_fault_crosses_the_wire_unchanged() -> None:
    spec = FaultSpec("a.bin", delay=1.5, cut_after=10, times=2)
    wire = {key: float(value) if isinstance(value, int) else value for key, value in spec.as_dict().items()}
    assert FaultSpec.from_dict(wire) == spec


def test_an_old_request_log_entry_has_no_fault_and_a_new_one_shows_it() -> None:
    entry = {
        "time": 0.0,
        "remote": "127.0.0.1",
        "method": "GET",
        "path": "/a",
        "range": None,
        "status": 200,
        "bytes_sent": 5.0,
        "duration": 0.1,
    }
    assert HttpRequest.from_dict(entry).fault is None
    cut = HttpRequest.from_dict({**entry, "complete": False, "fault": "cut_after=5"})
    assert cut.line().endswith("-> 200, 5 bytes in 100.0 ms (cut short) [fault: cut_after=5]")
