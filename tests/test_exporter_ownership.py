"""Issue 17 on real exporters: on a shared exporter, every piece of state has one owner.

Each test runs pytest in a subprocess (its own process, environment, xdist workers, or a process
group to SIGKILL) against a ``jmp run`` exporter with a ``RecordingHttpServer``, reached over TCP
like a lab's, and judges the inner run by its JUnit XML report. Where the behaviour is one both
backends must share, the same inner suite runs on loopback too.

The rule they check, from the issue: a test's result depends only on what that test's own device
did, and nothing a run leaves behind changes the next run.

Each fails on the code before the fix (commit 0daba2b), where an exporter's handles of one
``--http-root`` shared one mirror, ``roots/<hash of host name and path>``, and with it one URL
prefix of the request log and of faults; where ``stage()`` wrote beside that mirror; where faults
lived on the server until a test cleared them; and where a request was logged, and blamed, when
its response ended. The loopback run of ``test_a_name_staged_beside_a_user_root...`` passes there:
it is the behaviour the exporter must match.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from jumpstarter_helpers import (
    HTTP_SERVER,
    RECORDING,
    StandaloneExporter,
    http_driver,
    require,
    write_exporter_config,
)
from subprocess_runs import JUnit, clean_env, python_pytest, run_pytest

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


def exporter_backend(
    folder: Path, start: Callable[[Path], StandaloneExporter], driver_type: str = RECORDING
) -> Backend:
    """A ``jmp run`` exporter serving ``folder/exporter-root`` with ``driver_type`` (a RecordingHttpServer
    by default), as a lab's."""
    require()
    root_dir = folder / "exporter-root"
    root_dir.mkdir(parents=True)
    config = write_exporter_config(
        folder / "exporter.yaml", {"http": {**http_driver(root_dir), "type": driver_type}}
    )
    return Backend("exporter", start(config), root_dir)


@pytest.fixture
def exporter(tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]) -> Backend:
    """A fresh ``jmp run`` exporter with a RecordingHttpServer for this test, killed at its end."""
    return exporter_backend(tmp_path, standalone_exporter)


@pytest.fixture(params=["loopback", "exporter"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> Backend:
    """Runs a test on loopback, then on a fresh ``jmp run`` exporter with a RecordingHttpServer."""
    if request.param == "loopback":
        return Backend("loopback")
    return exporter_backend(tmp_path, standalone_exporter)


@pytest.fixture(params=["loopback", RECORDING, HTTP_SERVER], ids=["loopback", "recording", "stock"])
def any_driver(
    request: pytest.FixtureRequest, tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> Backend:
    """Runs a test on loopback, then on a fresh ``jmp run`` exporter with each driver: a
    RecordingHttpServer, and Jumpstarter's stock HttpServer."""
    if request.param == "loopback":
        return Backend("loopback")
    return exporter_backend(tmp_path, standalone_exporter, request.param)


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
    root = user_root(
        tmp_path / "images", **{"image.raw": os.urandom(256 << 10), "rootfs.img": b"rootfs" * 1000}
    )
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


# --- 2. a staged name on an exporter with a user root --------------------------------------------

STAGED = """
def stage_fresh(http_server, tmp_path):
    data = os.urandom(64 << 10)
    source = tmp_path / "fresh.img"
    source.write_bytes(data)
    return http_server.stage(source, "builds/fresh.img"), data


def test_a_staged_name_has_the_url_url_for_gives_it(http_server, tmp_path):
    staged, data = stage_fresh(http_server, tmp_path)
    assert get(staged) == (200, data)
    named = http_server.url_for("builds/fresh.img")
    assert named == staged
    assert get(named) == (200, data)


def test_the_download_of_a_staged_name_is_found_by_that_name(http_server, tmp_path):
    staged, data = stage_fresh(http_server, tmp_path)
    assert get(staged) == (200, data)
    assert http_server.wait_for_request("builds/fresh.img", timeout=10).status == 200
    assert http_server.assert_requested("builds/fresh.img", status=200).bytes_sent == len(data)
"""


def test_a_name_staged_beside_a_user_root_is_one_name_with_one_url(backend: Backend, tmp_path: Path) -> None:
    work = suite(tmp_path / "work", "test_staged.py", STAGED)
    root = user_root(tmp_path / "images", **{"image.raw": b"image"})
    junit = run_pytest(work, f"--http-root={root}", env=backend.env(), timeout=120)
    junit.assert_passed(
        "test_a_staged_name_has_the_url_url_for_gives_it",
        "test_the_download_of_a_staged_name_is_found_by_that_name",
    )


# --- 3. a run SIGKILLed while its fault is on ---------------------------------------------------

KILLED = """
def test_injects_a_fault_and_is_killed_while_it_is_on(http_server, http_url):
    fault = json.loads(os.environ["FAULT"])
    http_server.inject("image.raw", **fault)
    if "status" in fault:
        assert get(http_url + "/image.raw")[0] == fault["status"]
    Path(os.environ["INJECTED"]).touch()
    time.sleep(120)
"""

NEXT = """
def test_downloads_the_whole_image_at_once(http_url):
    # A stalled download would time out here, after 10 s without a byte.
    status, body = get(http_url + "/image.raw", timeout=10)
    assert (status, sha(body)) == (200, os.environ["IMAGE_SHA"])
"""


def run_until_killed(work: Path, args: list[str], env: dict[str, str], signal_file: Path) -> None:
    """Run pytest in a process group of its own; SIGKILL the group once ``signal_file`` exists."""
    command = python_pytest(*args, junit=work / "killed.xml")
    with subprocess.Popen(
        command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    ) as process:
        deadline = time.monotonic() + 60
        while not signal_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                output = process.communicate(timeout=30)[0].decode()
                raise AssertionError(f"the run never signalled its fault was on:\n{output}")
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("fault", ['{"status": 503}', '{"stall_after": 1024}'], ids=["status", "stall"])
def test_a_fault_of_a_run_killed_while_it_was_on_never_reaches_the_next_run(
    exporter: Backend, tmp_path: Path, fault: str
) -> None:
    work = suite(tmp_path / "work", "test_killed.py", KILLED)
    suite(work, "test_next.py", NEXT)
    image = os.urandom(1 << 20)
    root = user_root(tmp_path / "images", **{"image.raw": image})
    injected = tmp_path / "injected"
    env = exporter.env(FAULT=fault, INJECTED=str(injected), IMAGE_SHA=hashlib.sha256(image).hexdigest())
    run_until_killed(work, ["test_killed.py", f"--http-root={root}"], env, injected)
    started = time.monotonic()
    junit = run_pytest(work, "test_next.py", f"--http-root={root}", env=env, name="next", timeout=120)
    junit.assert_passed("test_downloads_the_whole_image_at_once")
    assert junit["test_downloads_the_whole_image_at_once"].seconds < 30
    assert time.monotonic() - started < 60


# --- 4. a request belongs to the test during which it started -----------------------------------

HELD = """
def test_1_leaves_a_request_held_by_its_delay_fault(http_server, http_url):
    fault = http_server.inject("missing.raw", delay=30)
    threading.Thread(target=get, args=(http_url + "/missing.raw", 60), daemon=True).start()
    deadline = time.monotonic() + 10
    while fault.hits == 0:
        assert time.monotonic() < deadline, "the request never reached the server"
        time.sleep(0.05)


def test_2_is_not_blamed_for_the_request_of_test_1(http_server):
    # The fault ended with test 1: its held request is answered 404 now, during this test.
    time.sleep(1)
"""


def test_a_request_held_past_its_test_is_not_blamed_on_the_next_one(backend: Backend, tmp_path: Path) -> None:
    work = suite(tmp_path / "work", "test_held.py", HELD)
    junit = run_pytest(work, "--http-scope=session", "--http-fail-on=404", env=backend.env(), timeout=120)
    junit.assert_passed(
        "test_1_leaves_a_request_held_by_its_delay_fault", "test_2_is_not_blamed_for_the_request_of_test_1"
    )


# --- 5. --http-fail-on and the test's own faults ------------------------------------------------

RETRIES = """
@pytest.mark.http_fault("a.raw", status=503, times=2)
def test_retries_through_its_own_503s(http_server, served_dir):
    (served_dir / "a.raw").write_bytes(b"a" * 1000)
    url = http_server.url_for("a.raw")
    statuses = []
    for _ in range(5):
        status, body = get(url)
        statuses.append(status)
        if status == 200:
            break
    assert (statuses, body) == ([503, 503, 200], b"a" * 1000)
"""


@pytest.mark.parametrize("how", ["ini", "option"])
def test_a_status_the_test_injected_is_not_the_server_failing(
    backend: Backend, tmp_path: Path, how: str
) -> None:
    work = suite(tmp_path / "work", "test_retries.py", RETRIES)
    args = []
    if how == "ini":
        (work / "pytest.ini").write_text("[pytest]\nhttp_fail_on = 5xx\n")
    else:
        args = ["--http-fail-on=5xx"]
    junit = run_pytest(work, *args, env=backend.env(), timeout=120)
    junit.assert_passed("test_retries_through_its_own_503s")


# --- 6. nothing of a run stays on the exporter but its objects ---------------------------------

LEFT = """
ROOT = os.environ.get("ROOT")


@pytest.mark.parametrize("n", range(2))
def test_serves_and_stages(http_server, http_url, served_dir, tmp_path, n):
    source = tmp_path / "staged.bin"
    source.write_bytes(os.urandom(4096))
    assert get(http_server.stage(source, f"deep/er/staged-{n}.bin")) == (200, source.read_bytes())
    if ROOT:
        assert get(http_url + "/sub/image.raw") == (200, (Path(ROOT) / "sub" / "image.raw").read_bytes())
    else:
        (served_dir / "sub").mkdir(exist_ok=True)
        (served_dir / "sub" / f"made-{n}.txt").write_text("made")
        assert get(http_server.url_for(f"sub/made-{n}.txt")) == (200, b"made")
"""


def leftovers(root_dir: Path) -> list[str]:
    """What is below the exporter's root, but the plugin's objects and the folders holding them."""
    kept = {TOP, f"{TOP}/objects"}
    return sorted(
        name
        for name in (path.relative_to(root_dir).as_posix() for path in root_dir.rglob("*"))
        if name not in kept and not name.startswith(f"{TOP}/objects/")
    )


@pytest.mark.parametrize("with_root", [False, True], ids=["temporary-root", "http-root"])
@pytest.mark.parametrize("scope", ["function", "session"])
def test_a_run_leaves_nothing_on_the_exporter_but_objects(
    exporter: Backend, tmp_path: Path, scope: str, with_root: bool
) -> None:
    assert exporter.root_dir is not None
    work = suite(tmp_path / "work", "test_left.py", LEFT)
    args = [f"--http-scope={scope}"]
    env = exporter.env()
    if with_root:
        root = tmp_path / "images"
        user_root(root / "sub", **{"image.raw": os.urandom(8192)})
        args.append(f"--http-root={root}")
        env["ROOT"] = str(root)
    junit = run_pytest(work, *args, env=env, timeout=120)
    junit.assert_passed("test_serves_and_stages[0]", "test_serves_and_stages[1]")
    assert any(exporter.root_dir.glob(f"{TOP}/objects/*")), "the run sent nothing to the exporter"
    # The exporter may clean up after the run's connection ended: give it a few seconds.
    deadline = time.monotonic() + 10
    while leftovers(exporter.root_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = leftovers(exporter.root_dir)
    assert not left, f"the run left on the exporter: {left}"


# --- 7. HttpRequest.name ------------------------------------------------------------------------

NAMED = """
def test_a_request_is_named_relative_to_the_url(http_server, served_dir):
    (served_dir / "rootfs.img").write_bytes(b"rootfs" * 100)
    assert get(http_server.url_for("rootfs.img"))[0] == 200
    http_server.wait_for_request("rootfs.img", timeout=10)
    assert http_server.requests[-1].name == "rootfs.img"
"""


def test_a_request_is_named_by_its_path_relative_to_the_handles_url(backend: Backend, tmp_path: Path) -> None:
    work = suite(tmp_path / "work", "test_named.py", NAMED)
    run_pytest(work, env=backend.env(), timeout=120).assert_passed(
        "test_a_request_is_named_relative_to_the_url"
    )


# --- 8. two hosts with one host name and one --http-root path -----------------------------------

TWO_HOSTS = """
import socket

ME = os.environ["ME"]
SYNC = Path(os.environ["SYNC"])


def test_each_host_flashes_its_own_image(http_url):
    assert socket.gethostname() == "labhost"
    # Both handles exist now, each having published its root to the exporter.
    (SYNC / ME).touch()
    deadline = time.monotonic() + 60
    while not all((SYNC / name).exists() for name in ("A", "B")):
        assert time.monotonic() < deadline, f"{ME}: the other host never started"
        time.sleep(0.02)
    status, body = get(http_url + "/image.raw")
    mine = (Path(os.environ["ROOT"]) / "image.raw").read_bytes()
    assert (status, body[:8], sha(body)) == (200, mine[:8], sha(mine))
"""


def as_other_host(root: Path, content: Path, command: list[str]) -> list[str]:
    """``command`` in new UTS and mount namespaces, on host ``labhost``, with ``content`` at ``root``."""
    script = f"hostname labhost && mount --bind {shlex.quote(str(content))} {shlex.quote(str(root))} && exec "
    return ["unshare", "--uts", "--mount", "--", "sh", "-c", script + shlex.join(command)]


def test_two_hosts_with_one_host_name_and_one_root_path_each_get_their_own_image(
    exporter: Backend, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("acting as a second host takes root and unshare (util-linux)")
    work = suite(tmp_path / "work", "test_two_hosts.py", TWO_HOSTS)
    root = tmp_path / "images"  # the one path both hosts give as --http-root
    root.mkdir()
    sync = tmp_path / "sync"
    sync.mkdir()
    processes: dict[str, subprocess.Popen[str]] = {}
    for me in ("A", "B"):
        content = user_root(tmp_path / f"host-{me}", **{"image.raw": me.encode() * 8 + os.urandom(4096)})
        tmpdir = tmp_path / f"tmp-{me}"
        tmpdir.mkdir()
        command = python_pytest("test_two_hosts.py", f"--http-root={root}", junit=work / f"{me}.xml")
        processes[me] = subprocess.Popen(
            as_other_host(root, content, command),
            cwd=work,
            env=exporter.env(ME=me, SYNC=str(sync), ROOT=str(root), TMPDIR=str(tmpdir)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        outputs = {me: process.communicate(timeout=120)[0] for me, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
            process.wait(10)
    for me, output in outputs.items():
        JUnit(work / f"{me}.xml", output).assert_passed("test_each_host_flashes_its_own_image")


# --- 8. staging by reference (issue 25) ---------------------------------------------------------

BY_REFERENCE = """
CONTENT = Path(os.environ["CONTENT"])
FILES = Path(os.environ["FILES"])


def files():
    # What the exporter holds below the plugin's folder while the run is on, but its objects.
    return sorted(
        str(path) for path in FILES.rglob("*") if path.is_file() and "/objects/" not in str(path)
    )


@pytest.mark.parametrize("n", range(3))
def test_stage_the_same_content(http_server, n):
    url = http_server.stage(CONTENT, "manifest.json")
    assert url == http_server.url_for("manifest.json")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == CONTENT.read_bytes()
        assert response.headers["Content-Type"] == "application/json"
    assert files() == []


def test_a_content_the_run_sent_is_staged_in_one_call(http_server, monkeypatch):
    from jumpstarter.client.core import AsyncDriverClient
    from pytest_jumpstarter_http.client import Calls

    calls, unary, channel = [], AsyncDriverClient.call_async, Calls.call

    async def counted(client, method, *args):  # Jumpstarter's call, counted as it goes through
        calls.append(method)
        return await unary(client, method, *args)

    async def counted_on_channel(self, method, args):  # and a call on the call channel
        calls.append(method)
        return await channel(self, method, args)

    monkeypatch.setattr(AsyncDriverClient, "call_async", counted)
    monkeypatch.setattr(Calls, "call", counted_on_channel)
    url = http_server.stage(CONTENT, "again/manifest.json")
    assert calls == ["link"]  # the URL's port came with it
    assert url == http_server.url_for("again/manifest.json")
    assert get(url) == (200, CONTENT.read_bytes())
"""


def test_a_name_staged_again_is_served_by_reference_and_copied_nowhere_on_the_exporter(
    exporter: Backend, tmp_path: Path
) -> None:
    assert exporter.root_dir is not None
    work = suite(tmp_path / "work", "test_by_reference.py", BY_REFERENCE)
    content = tmp_path / "manifest.json"
    content.write_bytes(b'{"image": "' + b"x" * (1 << 20) + b'"}')
    env = exporter.env(CONTENT=str(content), FILES=str(exporter.root_dir / TOP))
    junit = run_pytest(work, env=env, timeout=120)
    junit.assert_passed(*(f"test_stage_the_same_content[{n}]" for n in range(3)))
    junit.assert_passed("test_a_content_the_run_sent_is_staged_in_one_call")
    (obj,) = (exporter.root_dir / TOP / "objects").iterdir()
    assert obj.name == hashlib.sha256(content.read_bytes()).hexdigest()


ONE_CALL_A_TEST = """
CONTENT = Path(os.environ["CONTENT"])
CALLS = []  # (test, phase, method) of every call to the exporter's server
URLS = []  # the URL of what each test staged


@pytest.fixture(autouse=True)
def phase(request, monkeypatch):
    # Set up before http_server, torn down after it: sees the calls of both.
    from jumpstarter.client.core import AsyncDriverClient
    from pytest_jumpstarter_http.client import Calls

    now, unary, channel = ["set-up"], AsyncDriverClient.call_async, Calls.call

    async def counted(client, method, *args):
        CALLS.append((request.node.name, now[0], method))
        return await unary(client, method, *args)

    async def counted_on_channel(self, method, args):
        CALLS.append((request.node.name, now[0], method))
        return await channel(self, method, args)

    monkeypatch.setattr(AsyncDriverClient, "call_async", counted)
    monkeypatch.setattr(Calls, "call", counted_on_channel)
    yield now


@pytest.mark.parametrize("n", range(3))
def test_stage(phase, http_server, n):
    phase[0] = "call"
    for url in URLS:  # what an earlier test staged ended with its namespace
        assert get(url)[0] == 404
    URLS.append(http_server.stage(CONTENT, "image.raw"))
    assert get(URLS[-1]) == (200, CONTENT.read_bytes())
    phase[0] = "teardown"


def test_calls_of_each_test():
    def of(test, phase, word=""):
        return [method for name, now, method in CALLS if (name, now) == (test, phase) and word in method]

    assert of("test_stage[0]", "set-up", "namespace") == ["open_namespace"]
    for n in range(3):  # and its request log, for its report
        assert of(f"test_stage[{n}]", "teardown", "namespace") == ["renew_namespace"]
    for n in (1, 2):  # the namespace the teardown before opened
        assert of(f"test_stage[{n}]", "set-up") == []
        assert of(f"test_stage[{n}]", "call") == ["link"]
"""


def test_a_test_ends_its_namespace_and_readies_the_next_ones_in_one_call(
    exporter: Backend, tmp_path: Path
) -> None:
    work = suite(tmp_path / "work", "test_one_call.py", ONE_CALL_A_TEST)
    content = tmp_path / "image.raw"
    content.write_bytes(b"image" * 1000)
    junit = run_pytest(work, env=exporter.env(CONTENT=str(content)), timeout=120)
    junit.assert_passed(*(f"test_stage[{n}]" for n in range(3)), "test_calls_of_each_test")


HANDSHAKE_BEFORE = """
import socket

PORT = {}


@pytest.mark.http_server(tls=True)
def test_a_tls(http_server):
    PORT["https"] = http_server.port


def test_between():
    # test_a_tls's device, retrying after its test ended: plain HTTP to the HTTPS port, refused
    with socket.create_connection(("127.0.0.1", PORT["https"]), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        try:
            sock.recv(100)
        except OSError:
            pass
    time.sleep(0.5)  # the server logs the refusal meanwhile


def test_b(http_server):
    assert [request.line() for request in http_server.requests] == []
"""


def test_a_handshake_refused_before_a_test_is_not_in_its_log(exporter: Backend, tmp_path: Path) -> None:
    # The owner's HTTPS site logs a refused handshake in every namespace the owner has open: a
    # namespace readied for the next test before it starts would collect what came before it.
    work = suite(tmp_path / "work", "test_handshake.py", HANDSHAKE_BEFORE)
    junit = run_pytest(work, env=exporter.env(), timeout=120)
    junit.assert_passed("test_a_tls", "test_between", "test_b")


STAGE_OVER_ROOT = """
def test_a_name_of_the_root_is_never_staged_over(http_server, http_url, tmp_path):
    build = tmp_path / "image.raw"
    build.write_bytes(b"a build")
    with pytest.raises(FileExistsError, match="already exists and the plugin did not create it"):
        http_server.stage(build)
    assert get(http_url + "/image.raw") == (200, b"the user's")
    assert get(http_server.stage(build, "builds/image.raw")) == (200, b"a build")
    build.write_bytes(b"a new build")
    assert get(http_server.stage(build, "builds/image.raw")) == (200, b"a new build")  # its own: again


def test_a_file_of_the_root_staged_is_served_where_it_is(http_server, http_url):
    root = Path(os.environ["ROOT"])
    assert http_server.stage(root / "image.raw") == http_url + "/image.raw"
    assert get(http_url + "/image.raw") == (200, b"the user's")
    (root / "rebuilt.raw").write_bytes(b"v1")
    assert get(http_url + "/rebuilt.raw") == (200, b"v1")  # on an exporter: sent as the device asks
    (root / "rebuilt.raw").write_bytes(b"v2, rebuilt")
    assert get(http_server.stage(root / "rebuilt.raw")) == (200, b"v2, rebuilt")


def test_a_root_link_out_of_the_root_is_no_file_of_it(http_server):
    with pytest.raises(FileExistsError, match="the plugin did not create it"):
        http_server.stage(Path(os.environ["ROOT"]).parent / "outside.raw", "out.raw")
"""


def test_stage_refuses_a_name_of_the_root_and_serves_a_file_of_it_in_place_on_both_backends(
    backend: Backend, tmp_path: Path
) -> None:
    """A RecordingHttpServer served a staged name over the root's file; loopback refused it."""
    work = suite(tmp_path / "work", "test_stage_over_root.py", STAGE_OVER_ROOT)
    root = user_root(tmp_path / "user-root", **{"image.raw": b"the user's"})
    (tmp_path / "outside.raw").write_bytes(b"outside")
    (root / "out.raw").symlink_to(tmp_path / "outside.raw")
    junit = run_pytest(work, f"--http-root={root}", env=backend.env(ROOT=str(root)), timeout=120)
    junit.assert_passed(
        "test_a_name_of_the_root_is_never_staged_over",
        "test_a_file_of_the_root_staged_is_served_where_it_is",
        "test_a_root_link_out_of_the_root_is_no_file_of_it",
    )
    assert (root / "image.raw").read_bytes() == b"the user's"
    assert sorted(path.name for path in root.iterdir()) == ["image.raw", "out.raw", "rebuilt.raw"]


STAGE_OVER_FOLDER = """
def test_a_folder_of_a_staged_name_is_never_staged_as_a_file(http_server, tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    url = http_server.stage(tmp_path / "x", "d/x")
    with pytest.raises(FileExistsError, match="'d' is a folder of 'd/x', which this server staged"):
        http_server.stage(tmp_path / "x", "d")
    assert get(url) == (200, b"x")
    assert get(http_server.url + "/d")[0] != 200


def test_a_staged_file_is_never_made_a_folder(http_server, tmp_path):
    (tmp_path / "e").write_bytes(b"e")
    url = http_server.stage(tmp_path / "e", "e")
    with pytest.raises(FileExistsError, match="'e', which this server staged, is a file"):
        http_server.stage(tmp_path / "e", "e/x/y")
    assert get(url) == (200, b"e")
    assert get(http_server.url + "/e/x/y")[0] == 404
"""


def test_stage_refuses_a_folder_of_a_staged_name_and_a_name_below_a_staged_file_on_every_driver(
    any_driver: Backend, tmp_path: Path
) -> None:
    """Loopback raised IsADirectoryError, the stock driver a DriverError, and a RecordingHttpServer
    served both names: a name and a folder of it, which no folder kept by --http-keep can hold."""
    work = suite(tmp_path / "work", "test_stage_over_folder.py", STAGE_OVER_FOLDER)
    junit = run_pytest(work, env=any_driver.env(), timeout=120)
    junit.assert_passed(
        "test_a_folder_of_a_staged_name_is_never_staged_as_a_file",
        "test_a_staged_file_is_never_made_a_folder",
    )


BELOW_A_ROOT_FILE = """
def test_a_name_below_a_file_of_the_root_is_refused(http_server, http_url, tmp_path):
    (tmp_path / "x").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="image.raw' is a file the plugin did not create, so"):
        http_server.stage(tmp_path / "x", "image.raw/x")
    assert get(http_url + "/image.raw") == (200, b"the user's")
    assert get(http_server.stage(tmp_path / "x", "images/x")) == (200, b"x")
"""


def test_stage_refuses_a_name_below_a_file_of_the_root_on_every_driver(
    any_driver: Backend, tmp_path: Path
) -> None:
    """Loopback served both, the stock driver raised a DriverError (its mirror holds the file)."""
    work = suite(tmp_path / "work", "test_below_a_root_file.py", BELOW_A_ROOT_FILE)
    root = user_root(tmp_path / "user-root", **{"image.raw": b"the user's"})
    junit = run_pytest(work, f"--http-root={root}", env=any_driver.env(), timeout=120)
    junit.assert_passed("test_a_name_below_a_file_of_the_root_is_refused")
    assert sorted(path.name for path in root.iterdir()) == ["image.raw"]


SHARED_MIRROR = """
ROOT = Path(os.environ["ROOT"])


@pytest.fixture
def builds(tmp_path):
    (tmp_path / "mine").write_bytes(b"mine")
    (tmp_path / "theirs").write_bytes(b"theirs")
    return tmp_path


def test_a_name_another_handle_staged_in_the_mirror_is_refused(http_server, http_server_factory, builds):
    other = http_server_factory(root=ROOT, backend="exporter")
    url = http_server.stage(builds / "mine", "shared.bin")
    with pytest.raises(FileExistsError, match="'shared.bin' is staged by another live handle of this"):
        other.stage(builds / "theirs", "shared.bin")
    with pytest.raises(FileExistsError, match="which another live handle of this process on the same root"):
        other.stage(builds / "theirs", "shared.bin/x")
    other.stop()
    assert get(url) == (200, b"mine")


def test_a_name_is_free_again_once_the_handle_that_staged_it_stopped(
    http_server, http_server_factory, builds
):
    first = http_server_factory(root=ROOT, backend="exporter")
    first.stage(builds / "mine", "again.bin")
    first.stop()
    assert get(http_server.stage(builds / "theirs", "again.bin")) == (200, b"theirs")
"""


def test_two_live_handles_of_one_root_never_stage_one_name_in_the_stock_drivers_mirror(
    tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> None:
    """The stock driver stages into the process's one mirror of ``--http-root``: the second handle
    overwrote the first's file, and whichever stopped first deleted it."""
    exporter = exporter_backend(tmp_path, standalone_exporter, HTTP_SERVER)
    work = suite(tmp_path / "work", "test_shared_mirror.py", SHARED_MIRROR)
    root = user_root(tmp_path / "user-root", **{"index.html": b"hi"})
    junit = run_pytest(work, f"--http-root={root}", env=exporter.env(ROOT=str(root)), timeout=120)
    junit.assert_passed(
        "test_a_name_another_handle_staged_in_the_mirror_is_refused",
        "test_a_name_is_free_again_once_the_handle_that_staged_it_stopped",
    )
    assert sorted(path.name for path in root.iterdir()) == ["index.html"]


# --- 9. no publish(): a name the exporter lacks is asked of the run (issue 25) ----------------------

NO_PUBLISH = """
def test_files_written_after_the_server_started_are_served_at_http_url(http_url, served_dir):
    image = os.urandom(1 << 20)
    (served_dir / "image.raw").write_bytes(image)
    (served_dir / "repo" / "info").mkdir(parents=True)
    (served_dir / "repo" / "info" / "refs").write_text("0123 refs/heads/main")
    assert get(http_url + "/image.raw") == (200, image)
    assert get(http_url + "/repo/info/refs") == (200, b"0123 refs/heads/main")
    assert get(http_url + "/image.raw") == (200, image)  # kept, by content, for the next request
    started = time.monotonic()
    assert get(http_url + "/missing.bin")[0] == 404
    assert time.monotonic() - started < 5
    (served_dir / "outside").symlink_to("/etc/hostname")
    assert get(http_url + "/outside")[0] == 404
    (served_dir / "late.txt").write_text("late")
    assert get(http_url + "/late.txt") == (200, b"late")
"""


@pytest.mark.parametrize("scope", ["function", "session"])
def test_a_file_written_into_served_dir_is_served_without_publish_on_both_backends(
    backend: Backend, tmp_path: Path, scope: str
) -> None:
    work = suite(tmp_path / "work", "test_no_publish.py", NO_PUBLISH)
    junit = run_pytest(work, f"--http-scope={scope}", env=backend.env(), timeout=120)
    junit.assert_passed("test_files_written_after_the_server_started_are_served_at_http_url")


# --- 10. the request log names requests relative to the handle's URL (issue 27) ------------------

RELATIVE = """
def test_a_request_s_path_is_below_the_url(http_server, served_dir):
    (served_dir / "a b.raw").write_bytes(b"a")
    assert get(http_server.url_for("a b.raw") + "?v=2")[0] == 200
    (entry,) = http_server.requests
    assert (entry.path, entry.name) == ("/a%20b.raw?v=2", "a b.raw")


def test_its_report_shows_the_url_once(http_server, served_dir):
    (served_dir / "a.raw").write_bytes(b"a")
    assert get(http_server.url_for("a.raw"))[0] == 200
    http_server.wait_for_request("missing.raw", timeout=0.2)
"""


def test_the_request_log_names_each_request_below_the_url_the_report_shows_once(
    backend: Backend, tmp_path: Path
) -> None:
    work = suite(tmp_path / "work", "test_relative.py", RELATIVE)
    junit = run_pytest(work, env=backend.env(), timeout=120)
    junit.assert_passed("test_a_request_s_path_is_below_the_url")
    output = junit.output
    assert "no request for /missing.raw within 0.2 s; the server answered:" in output
    assert " GET /a.raw -> 200" in output
    # The failed test's report names its server's URL once, above the requests (pytest's own
    # display of the fixture's value aside).
    long = [line for line in output.splitlines() if "/pytest-jumpstarter-http/ns/" in line]
    shown = [line for line in long if not line.startswith("http_server = <")]
    assert len(shown) == (backend.name == "exporter"), shown


# --- 11. folder URLs: index.html, and the slash (issue 26) --------------------------------------

FOLDERS = """
ROOT = os.environ["ROOT"]


@pytest.mark.http_server(root=ROOT)
def test_a_folder_url_serves_its_index_and_one_without_its_slash_is_redirected(http_url):
    index = (Path(ROOT) / "simple" / "pkg" / "index.html").read_bytes()
    assert get(http_url + "/simple/pkg/") == (200, index)
    with urllib.request.urlopen(http_url + "/simple/pkg?x=1", timeout=10) as response:
        assert (response.url, response.read()) == (http_url + "/simple/pkg/?x=1", index)
    assert get(http_url + "/simple/")[0] == 403  # a folder without an index.html


def test_a_folder_written_during_the_test_serves_its_index(http_url, served_dir):
    (served_dir / "pkg").mkdir()
    (served_dir / "pkg" / "index.html").write_text("<a href='pkg-1.0.tar.gz'>pkg-1.0.tar.gz</a>")
    assert get(http_url + "/pkg/") == (200, b"<a href='pkg-1.0.tar.gz'>pkg-1.0.tar.gz</a>")
"""


def test_a_folder_url_serves_its_index_html_on_both_backends(backend: Backend, tmp_path: Path) -> None:
    work = suite(tmp_path / "work", "test_folders.py", FOLDERS)
    root = tmp_path / "index-root"
    user_root(root / "simple" / "pkg", **{"index.html": b"<a href='pkg-1.0.tar.gz'>pkg</a>"})
    junit = run_pytest(work, env=backend.env(ROOT=str(root)), timeout=120)
    junit.assert_passed(
        "test_a_folder_url_serves_its_index_and_one_without_its_slash_is_redirected",
        "test_a_folder_written_during_the_test_serves_its_index",
    )


# --- 12. --http-keep=failed keeps what a failed test staged by reference (issue 27) ---------------

KEPT = """
def test_stages_and_fails(http_server, tmp_path):
    source = tmp_path / "kept.bin"
    source.write_bytes(b"kept by --http-keep=failed")
    assert get(http_server.stage(source, "deep/kept.bin")) == (200, source.read_bytes())
    raise AssertionError("this test fails on purpose")


def test_stages_and_passes(http_server, tmp_path):
    source = tmp_path / "gone.bin"
    source.write_bytes(b"not kept")
    http_server.stage(source, "gone/gone.bin")


def test_after_them(http_url):
    assert get(http_url + "/deep/kept.bin")[0] == 404  # staged by another test, kept elsewhere
"""


@pytest.mark.parametrize("http_root", [False, True], ids=["own-folder", "http-root"])
@pytest.mark.parametrize("driver_type", [RECORDING, HTTP_SERVER])
def test_http_keep_failed_keeps_the_files_a_failed_test_staged_and_nothing_else(
    tmp_path: Path,
    standalone_exporter: Callable[[Path], StandaloneExporter],
    driver_type: str,
    http_root: bool,
) -> None:
    """Nothing of the passing test stays: not its file, nor the stock driver's spare copy of it.
    What the failed test staged is kept in its own folder, never where the next test is served
    (the stock driver stages into the process's mirror of ``--http-root``, which kept the empty
    folders staging made there)."""
    root_dir = tmp_path / "exporter-root"
    root_dir.mkdir()
    # The driver's own remove_created_on_close would remove them when the session ends (backends.md).
    driver = {**http_driver(root_dir, remove_created_on_close=False), "type": driver_type}
    exporter = standalone_exporter(write_exporter_config(tmp_path / "exporter.yaml", {"http": driver}))
    work = suite(tmp_path / "work", "test_kept.py", KEPT)
    args = [f"--http-root={user_root(tmp_path / 'user-root', **{'index.html': b'hi'})}"] if http_root else []
    junit = run_pytest(work, "--http-keep=failed", *args, env=exporter.env(), timeout=120)
    assert junit.outcomes() == {
        "test_kept::test_stages_and_fails": "failed",
        "test_kept::test_stages_and_passes": "passed",
        "test_kept::test_after_them": "passed",
    }
    files = sorted(path for path in root_dir.glob(f"{TOP}/runs/**/*") if path.is_file())
    mirror = [path for path in files if any(part.startswith("mirror-") for part in path.parts)]
    assert [path.name for path in mirror] == (["index.html"] if http_root else []), mirror  # the user's
    kept = [path for path in files if path not in mirror]
    assert [path.read_bytes() for path in kept] == [b"kept by --http-keep=failed"], kept
    assert kept[0].relative_to(kept[0].parents[1]).as_posix() == "deep/kept.bin"
    in_mirror = [path for path in root_dir.glob(f"{TOP}/runs/*/mirror-*/**/*") if path.is_dir()]
    assert [str(path) for path in in_mirror if not any(path.iterdir())] == []  # staging made them
