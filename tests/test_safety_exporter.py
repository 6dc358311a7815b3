"""Issue 11 on real exporters: fresh bytes, live URLs, no links followed, nothing in shared folders.

One ``jmp shell --exporter-config`` runs two pytest runs, each with a ``TMPDIR`` of its own (set
for the inner pytest only): the first in an empty one, the second in one where an attacker made
``$TMPDIR/pytest-jumpstarter-http`` a link to a victim folder. The tests below each judge one
part of their results. ``jmp run`` exporters, reached over TCP like a lab's, prove that processes
share one exporter's server whatever spelling of its address or ``TMPDIR`` they have, and that an
upload killed half-way leaves nothing behind.

Each test fails on the code before the fix (commit 21830df), which knew a file's version by its
size and mtime, kept the port a server had when a test began, uploaded what a link in the root
pointed at, agreed on starting and stopping the server through files in ``$TMPDIR`` named after
the spelling of the exporter's address, and left its partial uploads where they fell.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
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
    jmp_shell,
    write_driver_port,
    write_exporter_config,
)
from subprocess_runs import JUnit, clean_env, python_pytest, run, run_pytest

TOP = "pytest-jumpstarter-http"

SAFETY = """
import hashlib, os, time, urllib.error, urllib.request
from pathlib import Path

import pytest

IMAGE_SHA = os.environ["IMAGE_SHA"]


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def status(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flash(http_url):
    assert hashlib.sha256(fetch(http_url + "/image.raw")).hexdigest() == IMAGE_SHA


def rewrite_keeping_size_and_times(path, data):
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # like cp -p, tar -x
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_file_rewritten_with_its_size_and_mtime_kept_is_staged_anew(http_server, tmp_path):
    source = tmp_path / "firmware.bin"
    source.write_bytes(b"A" * 4096)
    assert fetch(http_server.stage(source)) == b"A" * 4096
    rewrite_keeping_size_and_times(source, b"B" * 4096)
    assert fetch(http_server.stage(source)) == b"B" * 4096


def test_a_served_file_rewritten_with_its_size_and_mtime_kept_is_published_anew(http_server, served_dir):
    path = served_dir / "config.txt"
    path.write_bytes(b"version 1")
    assert fetch(http_server.url_for("config.txt")) == b"version 1"
    rewrite_keeping_size_and_times(path, b"version 2")
    assert fetch(http_server.url_for("config.txt")) == b"version 2"
    path.unlink()


def test_a_link_out_of_the_root_is_not_served(http_url, http_server):
    assert status(http_url + "/link") == 404
    assert status(http_server.url_for("link")) == 404
    assert hashlib.sha256(fetch(http_url + "/inside")).hexdigest() == IMAGE_SHA


@pytest.mark.http_loopback
def test_a_link_out_of_the_root_is_not_served_on_loopback(http_url, http_server):
    assert http_server.backend == "loopback"
    assert status(http_url + "/link") == 404
    assert status(http_server.url_for("link")) == 404
    assert hashlib.sha256(fetch(http_url + "/inside")).hexdigest() == IMAGE_SHA


def test_zz_the_url_follows_the_server_restarted_through_its_client(http_server, tmp_path):
    source = tmp_path / "staged.bin"
    source.write_bytes(b"staged")
    first = http_server.port
    # A port-0 server may get its old port back; restart it until it has another one.
    for _ in range(20):
        http_server.client.stop()
        http_server.client.start()
        if http_server.port != first:
            break
    assert http_server.port != first
    assert http_server.url.startswith(f"http://127.0.0.1:{http_server.port}/")
    assert hashlib.sha256(fetch(http_server.url + "/image.raw")).hexdigest() == IMAGE_SHA
    assert hashlib.sha256(fetch(http_server.url_for("inside"))).hexdigest() == IMAGE_SHA
    assert fetch(http_server.stage(source)) == b"staged"
"""


LEFT_STOPPED = """
def test_leaves_the_server_stopped(http_server):
    http_server.client.stop()


def test_after_it(http_server):
    pass
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below ``folder``, links not followed: a link's target, a file's sha256."""
    entries: dict[str, str] = {}
    for base, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(base) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                entries[key] = "link to " + os.readlink(path)
            elif path.is_dir():
                entries[key] = "folder"
            else:
                entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


@dataclass
class SafetyRun:
    """What one ``jmp shell`` did: a run in an empty ``TMPDIR``, one in an attacked ``TMPDIR``."""

    clean: JUnit
    attacked: JUnit
    #: The exporter's served root.
    www: Path
    secret: bytes
    #: ``TMPDIR`` of the first run, empty before it.
    tmp_clean: Path
    #: ``TMPDIR`` of the second run, holding only the attacker's link before it.
    tmp_attacked: Path
    victim: Path
    victim_before: dict[str, str]
    output: str
    #: The output of a third run, whose first test leaves the server stopped.
    stopped: str


@pytest.fixture(scope="module")
def safety_run(tmp_path_factory: pytest.TempPathFactory) -> SafetyRun:
    work = tmp_path_factory.mktemp("safety")
    www = work / "exporter" / "www"
    www.mkdir(parents=True)
    images = work / "images"
    images.mkdir()
    image = os.urandom(1 << 20)
    (images / "image.raw").write_bytes(image)
    secret = os.urandom(32).hex().encode()
    (work / "secret.txt").write_bytes(secret)
    (images / "link").symlink_to(work / "secret.txt")
    (images / "inside").symlink_to("image.raw")
    # An attacker's TMPDIR: the plugin's old state folder is a link to a folder of the victim's,
    # with links in it where the old code put its .json and .lock files.
    tmp_clean, tmp_attacked, victim = work / "tmp-clean", work / "tmp-attacked", work / "victim"
    for folder in (tmp_clean, tmp_attacked, victim):
        folder.mkdir()
    (victim / "precious.txt").write_text("the victim's")
    (victim / "planted.json").symlink_to(victim / "precious.txt")
    (victim / "planted.lock").symlink_to(victim / "precious.txt")
    (tmp_attacked / TOP).symlink_to(victim, target_is_directory=True)
    victim_before = snapshot(victim)
    (work / "test_safety.py").write_text(SAFETY)
    (work / "test_stopped.py").write_text(LEFT_STOPPED)
    config = write_exporter_config(
        work / "safety.yaml", {"http": http_driver(www, remove_created_on_close=False)}
    )
    env = clean_env(IMAGE_SHA=hashlib.sha256(image).hexdigest())
    root = f"--http-root={images}"
    done = jmp_shell(
        config,
        ["env", f"TMPDIR={tmp_clean}", *python_pytest("test_safety.py", root, junit=work / "clean.xml")],
        [
            "env",
            f"TMPDIR={tmp_attacked}",
            *python_pytest("test_safety.py", root, junit=work / "attacked.xml"),
        ],
        ["echo", "STOPPED-RUN"],
        python_pytest("test_stopped.py", junit=work / "stopped.xml"),
        cwd=work,
        env=env,
    )
    return SafetyRun(
        JUnit(work / "clean.xml", done.stdout),
        JUnit(work / "attacked.xml", done.stdout),
        www,
        secret,
        tmp_clean,
        tmp_attacked,
        victim,
        victim_before,
        done.stdout.split("STOPPED-RUN")[0],
        done.stdout.split("STOPPED-RUN")[-1],
    )


def test_the_report_header_inside_jmp_shell_names_the_exporter_backend_and_the_shell(
    safety_run: SafetyRun,
) -> None:
    assert safety_run.output.count("jumpstarter-http: backend=exporter (jmp shell at ") == 2, (
        safety_run.output
    )


def test_a_file_rewritten_keeping_its_size_and_mtime_reaches_the_device_with_its_new_bytes(
    safety_run: SafetyRun,
) -> None:
    safety_run.clean.assert_passed(
        "test_a_file_rewritten_with_its_size_and_mtime_kept_is_staged_anew",
        "test_a_served_file_rewritten_with_its_size_and_mtime_kept_is_published_anew",
    )


def test_urls_follow_the_exporters_server_restarted_through_its_client(safety_run: SafetyRun) -> None:
    safety_run.clean.assert_passed("test_zz_the_url_follows_the_server_restarted_through_its_client")


def test_a_link_out_of_the_http_root_is_neither_served_nor_copied_to_the_exporter(
    safety_run: SafetyRun,
) -> None:
    for junit in (safety_run.clean, safety_run.attacked):
        junit.assert_passed(
            "test_flash",
            "test_a_link_out_of_the_root_is_not_served",
            "test_a_link_out_of_the_root_is_not_served_on_loopback",
        )
    files = [path for path in safety_run.www.rglob("*") if path.is_file()]
    assert files
    holding = [str(path) for path in files if safety_run.secret in path.read_bytes()]
    assert holding == []


def test_an_exporter_run_leaves_nothing_in_tmpdir_but_pytests_own_folder(safety_run: SafetyRun) -> None:
    safety_run.clean.assert_passed("test_flash")
    assert os.listdir(safety_run.tmp_clean) == [f"pytest-of-{getpass.getuser()}"]


def test_an_exporter_run_writes_nothing_through_a_link_planted_in_tmpdir(safety_run: SafetyRun) -> None:
    safety_run.attacked.assert_passed("test_flash")
    assert sorted(os.listdir(safety_run.tmp_attacked)) == [TOP, f"pytest-of-{getpass.getuser()}"]
    assert snapshot(safety_run.victim) == safety_run.victim_before
    assert (safety_run.victim / "precious.txt").read_text() == "the victim's"


def test_a_server_left_stopped_by_a_test_is_started_again_for_the_next(safety_run: SafetyRun) -> None:
    # Its report names the server by its last URL (reading the live one would fail), and the
    # next test's handle finds it stopped, so it starts it: nobody's download can be in flight.
    assert "INTERNALERROR" not in safety_run.stopped, safety_run.stopped
    assert "2 passed" in safety_run.stopped, safety_run.stopped


# --- jmp run exporters, shared by several processes ---------------------------------------------

SHARED = """
import os, time, urllib.request
from pathlib import Path

FLAGS = Path(os.environ["FLAGS"])
ME = os.environ["ME"]


def wait_for(*names):
    deadline = time.monotonic() + 60
    while not all((FLAGS / name).exists() for name in names):
        assert time.monotonic() < deadline, f"{ME}: no {names} after 60 s"
        time.sleep(0.02)


def test_share(http_server, tmp_path):
    port = http_server.port
    (FLAGS / f"{ME}.port").write_text(str(port))
    wait_for(*os.environ["WAIT_FOR"].split(","))
    source = tmp_path / f"{ME}.bin"
    source.write_bytes(ME.encode() * 1000)
    url = http_server.stage(source)
    assert http_server.port == port
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == source.read_bytes()
"""


def _exporter_for_sharing(
    tmp_path: Path, start: Callable[[Path], StandaloneExporter], kind: str = HTTP_SERVER
) -> StandaloneExporter:
    config = write_exporter_config(
        tmp_path / "shared.yaml",
        {"http": {**http_driver(tmp_path / "www", remove_created_on_close=False), "type": kind}},
    )
    (tmp_path / "test_shared.py").write_text(SHARED)
    (tmp_path / "flags").mkdir()
    return start(config)


def _sharer(
    tmp_path: Path, exporter: StandaloneExporter, me: str, host: str, wait_for: str
) -> subprocess.Popen[str]:
    tmpdir = tmp_path / f"tmp-{me}"
    tmpdir.mkdir()
    env = exporter.env(ME=me, WAIT_FOR=wait_for, FLAGS=str(tmp_path / "flags"), TMPDIR=str(tmpdir))
    env["JUMPSTARTER_HOST"] = host
    command = python_pytest("test_shared.py", junit=tmp_path / f"{me}.xml")
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_file(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.communicate(timeout=30)[0] if process.poll() is not None else ""
            raise AssertionError(f"no {path.name} from the pytest run:\n{output}")
        time.sleep(0.02)


def _server_port(tmp_path: Path, exporter: StandaloneExporter) -> int:
    done = run([*write_driver_port(tmp_path), "http", "show"], cwd=tmp_path, env=exporter.env())
    assert done.returncode == 0, done.stdout
    return int((tmp_path / "http.show.port").read_text())


def test_a_process_that_started_the_server_and_exits_leaves_it_running_for_another_spelling_and_tmpdir(
    tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> None:
    exporter = _exporter_for_sharing(tmp_path, standalone_exporter)
    flags = tmp_path / "flags"
    # B finds the server stopped and starts it; A comes while B runs, by another spelling of
    # the address and with another TMPDIR, and downloads only after B has ended.
    first = _sharer(tmp_path, exporter, "B", f"localhost:{exporter.port}", "A.port")
    _wait_for_file(flags / "B.port", first)
    second = _sharer(tmp_path, exporter, "A", exporter.address, "B.done")
    _wait_for_file(flags / "A.port", second)
    first_output = first.communicate(timeout=60)[0]
    (flags / "B.done").touch()
    second_output = second.communicate(timeout=60)[0]
    JUnit(tmp_path / "B.xml", first_output).assert_passed("test_share")
    JUnit(tmp_path / "A.xml", second_output).assert_passed("test_share")
    port = int((flags / "B.port").read_text())
    assert int((flags / "A.port").read_text()) == port
    assert _server_port(tmp_path, exporter) == port


# A RecordingHttpServer starts itself in one call, start_unless_running(): its racers take no lock
# of this machine, as racers on two hosts cannot.
@pytest.mark.parametrize("kind", [HTTP_SERVER, RECORDING])
def test_processes_racing_to_start_a_stopped_server_start_it_once_and_leave_it_running(
    tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter], kind: str
) -> None:
    exporter = _exporter_for_sharing(tmp_path, standalone_exporter, kind)
    assert _server_port(tmp_path, exporter) == 0
    names = [f"P{n}" for n in range(4)]
    everyone = ",".join(f"{name}.port" for name in names)
    processes = [_sharer(tmp_path, exporter, name, exporter.address, everyone) for name in names]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    for name, output in zip(names, outputs, strict=True):
        JUnit(tmp_path / f"{name}.xml", output).assert_passed("test_share")
    ports = {int((tmp_path / "flags" / f"{name}.port").read_text()) for name in names}
    assert len(ports) == 1, ports
    assert _server_port(tmp_path, exporter) == ports.pop()


BIG_UPLOAD = """
import os
from pathlib import Path

def test_big(http_server, tmp_path):
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for _ in range(256):
            out.write(os.urandom(1 << 20))
    http_server.stage(big)
"""

AFTER = """
def test_after(http_server):
    assert http_server.backend == "exporter"
"""


def _partials(www: Path) -> list[Path]:
    return [path for path in www.rglob("*") if ".part-" in path.name]


def test_an_upload_killed_half_way_leaves_no_partial_file_after_the_next_run(
    tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> None:
    www = tmp_path / "www"
    config = write_exporter_config(
        tmp_path / "killed.yaml", {"http": http_driver(www, remove_created_on_close=False)}
    )
    exporter = standalone_exporter(config)
    (tmp_path / "test_big.py").write_text(BIG_UPLOAD)
    (tmp_path / "test_after.py").write_text(AFTER)
    command = python_pytest("test_big.py", junit=tmp_path / "big.xml")
    with subprocess.Popen(
        command, cwd=tmp_path, env=exporter.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as process:
        deadline = time.monotonic() + 120
        while not _partials(www):
            assert process.poll() is None, process.communicate(timeout=10)[0].decode()
            assert time.monotonic() < deadline, "no partial upload on the exporter after 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    assert _partials(www)
    run_pytest(tmp_path, "test_after.py", env=exporter.env(), name="after").assert_passed("test_after")
    assert _partials(www) == []


# --- two users of one machine -------------------------------------------------------------------

TWO_USERS = """
import os, urllib.request


def test_stage(http_server, tmp_path):
    image = tmp_path / "image.raw"
    image.write_bytes(os.environ["WHO"].encode())
    with urllib.request.urlopen(http_server.stage(image), timeout=30) as response:
        assert response.read() == os.environ["WHO"].encode()
"""


def test_two_users_of_one_machine_each_use_the_same_exporter(
    standalone_exporter: Callable[[Path], StandaloneExporter], tmp_path: Path
) -> None:
    # Issue 11, item 8: after root's run, the state folder it left in the shared $TMPDIR (0755,
    # root's) made every other user's exporter tests error with a PermissionError.
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("acting as a second user takes root and setpriv")
    exporter = standalone_exporter(
        write_exporter_config(tmp_path / "shared.yaml", {"http": http_driver(tmp_path / "www")})
    )
    # Folders outside root's private temp folder, which the second user could not enter: one
    # shared temp folder, world-writable and sticky like /tmp, and a home for each user.
    shared = Path(tempfile.mkdtemp())
    try:
        tmp = shared / "tmp"
        tmp.mkdir(mode=0o1777)
        tmp.chmod(0o1777)
        shared.chmod(0o755)
        for who, uid, prefix in (("root", 0, []), ("nobody", 65534, NOBODY)):
            home = shared / who
            home.mkdir()
            (home / "test_two_users.py").write_text(TWO_USERS)
            os.chown(home, uid, uid)
            done = run(
                [*prefix, *python_pytest("-p", "no:cacheprovider", junit=home / "report.xml")],
                cwd=home,
                env=exporter.env(TMPDIR=str(tmp), HOME=str(home), WHO=who, PYTHONDONTWRITEBYTECODE="1"),
                timeout=120,
            )
            JUnit(home / "report.xml", done.stdout).assert_passed("test_stage")
    finally:
        shutil.rmtree(shared)


#: Runs a command as the user nobody (uid and gid 65534), with no supplementary groups.
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
