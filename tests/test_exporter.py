"""The exporter backend against real exporters: ``jmp shell --exporter-config`` and ``jmp run``.

Each ``jmp shell`` costs over a second, so one shell runs several pytest runs and checks; the
tests below each judge one part of its results. Results come from junit XML, since ``jmp shell``
exits 0 whatever its command does (jumpstarter#1099).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from jumpstarter_helpers import (
    HTTP_SERVER,
    RECORDING,
    http_driver,
    jmp_shell,
    storage_driver,
    write_driver_port,
    write_exporter_config,
)
from subprocess_runs import JUnit, clean_env, python_pytest, run_pytest

TOP = "pytest-jumpstarter-http"

COMMON = """
import hashlib, json, os, urllib.error, urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

EXPORTER_ROOT = Path(os.environ["EXPORTER_ROOT"])
WORK = Path(os.environ["WORK"])


def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def on_exporter(url):
    \"\"\"The exporter-side file behind a URL of the exporter's server.\"\"\"
    return EXPORTER_ROOT / urlparse(url).path.lstrip("/")


def record(key, value):
    path = WORK / "record.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(key, []).append(value)
    path.write_text(json.dumps(data))
"""

IN_SHELL = (
    COMMON
    + """
def test_flash(http_url, http_server):
    record("ports", http_server.port)
    assert http_url.startswith(f"http://127.0.0.1:{http_server.port}/pytest-jumpstarter-http/runs/")
    assert hashlib.sha256(fetch(http_url + "/image.raw")).hexdigest() == os.environ["IMAGE_SHA"]


def test_stage_beside_http_root(http_server, http_url, tmp_path):
    # The stock driver has no namespaces: a staged name must still be under http_url (issue 25).
    fresh = tmp_path / "fresh.img"
    fresh.write_bytes(b"fresh")
    assert http_server.stage(fresh) == http_url + "/fresh.img" == http_server.url_for("fresh.img")
    assert fetch(http_url + "/fresh.img") == b"fresh"
    assert hashlib.sha256(fetch(http_url + "/image.raw")).hexdigest() == os.environ["IMAGE_SHA"]
    with pytest.raises(FileExistsError, match="already exists and the plugin did not create it"):
        http_server.stage(fresh, "image.raw")


def test_staged_by_the_test_before(http_url):
    with pytest.raises(urllib.error.HTTPError) as caught:
        fetch(http_url + "/fresh.img")
    assert caught.value.code == 404


def test_stage_again(http_server):
    big = WORK / "big.img"
    big.write_bytes(os.urandom(64 << 20))
    url = http_server.stage(big)
    before = on_exporter(url).stat()
    assert http_server.stage(big) == url
    after = on_exporter(url).stat()
    # An upload writes a new file and renames it over the old one: a new inode.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert hashlib.sha256(fetch(url)).digest() == hashlib.sha256(big.read_bytes()).digest()
    record("folders", str(on_exporter(url).parent))
    record("big", url)


def test_stage_the_same_content_in_the_next_test(http_server):
    big = WORK / "big.img"
    url = http_server.stage(big, "renamed.img")
    assert hashlib.sha256(fetch(url)).digest() == hashlib.sha256(big.read_bytes()).digest()
    record("big", url)


def test_rewrite_what_it_staged(http_server):
    small = WORK / "small.img"
    small.write_bytes(b"original")
    url = http_server.stage(small)
    on_exporter(url).write_bytes(b"CORRUPT!")  # as the test's own device or helper might
    assert fetch(url) == b"CORRUPT!"


def test_stage_what_the_test_before_rewrote(http_server):
    assert fetch(http_server.stage(WORK / "small.img")) == b"original"


@pytest.mark.parametrize("name", ["../x", "a/../../x", "..", "/../x"])
def test_names(http_server, tmp_path, name):
    source = tmp_path / "x"
    source.write_text("escape")
    with pytest.raises(ValueError, match="not a valid served file name"):
        http_server.stage(source, name)
    with pytest.raises(ValueError, match="not a valid served file name"):
        http_server.url_for(name)


@pytest.mark.http_loopback
def test_loopback(http_server, http_url, served_dir):
    (served_dir / "image.raw").write_bytes(b"local")
    assert http_server.backend == "loopback"
    assert fetch(http_url + "/image.raw") == b"local"
    record("loopback", http_server.port)


def test_exporter(http_server):
    assert http_server.backend == "exporter"
    record("ports", http_server.port)
"""
)

PRESTARTED = (
    COMMON
    + """
def test_running(http_server):
    assert http_server.port == int((WORK / "http.start.port").read_text())


def test_only_objects_kept():
    # The first run's mirror of --http-root went with it; its content stays as an object.
    assert sorted(path.name for path in (EXPORTER_ROOT / "pytest-jumpstarter-http").iterdir()) == ["objects"]


def test_keep(http_server, tmp_path):
    source = tmp_path / "kept.bin"
    source.write_bytes(b"kept")
    url = http_server.stage(source)
    assert fetch(url) == b"kept"
    record("kept", str(on_exporter(url).parent))
"""
)


@dataclass
class ShellRun:
    """What one ``jmp shell`` on a one-HttpServer exporter did: two pytest runs and port checks."""

    fresh: JUnit
    prestarted: JUnit
    ports: dict[str, list[int]]
    record: dict[str, list[Any]]
    www: Path
    output: str


@pytest.fixture(scope="module")
def shell_run(tmp_path_factory: pytest.TempPathFactory) -> ShellRun:
    work = tmp_path_factory.mktemp("shell")
    exporter = work / "exporter"
    www = exporter / "www"
    www.mkdir(parents=True)
    images = work / "images"
    images.mkdir()
    image = os.urandom(1 << 20)
    (images / "image.raw").write_bytes(image)
    (work / "test_in_shell.py").write_text(IN_SHELL)
    (work / "test_prestarted.py").write_text(PRESTARTED)
    # The exporter removes nothing itself, so whatever is left on it after the run the plugin left.
    config = write_exporter_config(
        work / "one.yaml", {"http": http_driver(www, remove_created_on_close=False)}
    )
    port = write_driver_port(work)
    env = clean_env(EXPORTER_ROOT=str(www), WORK=str(work), IMAGE_SHA=hashlib.sha256(image).hexdigest())
    done = jmp_shell(
        config,
        [*port, "http", "show"],
        python_pytest("test_in_shell.py", "--http-root", str(images), junit=work / "fresh.xml"),
        [*port, "http", "show"],
        [*port, "http", "start"],
        python_pytest("test_prestarted.py", "--http-keep", junit=work / "prestarted.xml"),
        [*port, "http", "show"],
        cwd=work,
        env=env,
    )
    ports: dict[str, list[int]] = {}
    for action, number in re.findall(r"^http (\w+)-port=(\d+)$", done.stdout, re.MULTILINE):
        ports.setdefault(action, []).append(int(number))
    record = json.loads((work / "record.json").read_text()) if (work / "record.json").exists() else {}
    return ShellRun(
        JUnit(work / "fresh.xml", done.stdout),
        JUnit(work / "prestarted.xml", done.stdout),
        ports,
        record,
        www,
        done.stdout,
    )


def test_http_url_inside_jmp_shell_serves_the_exact_bytes_of_http_root(shell_run: ShellRun) -> None:
    shell_run.fresh.assert_passed("test_flash", "test_exporter")


def test_on_the_stock_driver_a_name_staged_beside_http_root_has_the_url_http_url_gives_it(
    shell_run: ShellRun,
) -> None:
    shell_run.fresh.assert_passed("test_stage_beside_http_root", "test_staged_by_the_test_before")


def test_a_run_leaves_only_the_content_it_sent_on_the_exporter(shell_run: ShellRun) -> None:
    # A mirror of --http-root shared by runs would be shared by hosts that only look alike (issue 17).
    shell_run.prestarted.assert_passed("test_only_objects_kept")
    # Only the --http-keep run's own folder stays.
    (kept,) = (shell_run.www / TOP / "runs").iterdir()
    assert [path.name for path in kept.rglob("*") if path.is_file()] == ["kept.bin"], shell_run.output


def test_staging_an_unchanged_64_mib_file_again_uploads_nothing(shell_run: ShellRun) -> None:
    shell_run.fresh.assert_passed("test_stage_again")


def test_the_next_test_staging_that_content_on_the_stock_driver_gets_a_copy_of_its_own(
    shell_run: ShellRun,
) -> None:
    shell_run.fresh.assert_passed("test_stage_the_same_content_in_the_next_test")
    first, then = shell_run.record["big"]
    assert not (shell_run.www / urlparse(first).path.lstrip("/")).exists()  # gone with its test
    assert urlparse(then).path != urlparse(first).path


def test_a_copy_the_test_before_rewrote_on_the_exporter_is_not_what_the_next_test_stages(
    shell_run: ShellRun,
) -> None:
    shell_run.fresh.assert_passed("test_rewrite_what_it_staged", "test_stage_what_the_test_before_rewrote")


def test_names_that_leave_the_root_are_refused_and_nothing_lands_outside_it(shell_run: ShellRun) -> None:
    shell_run.fresh.assert_passed(*(f"test_names[{name}]" for name in ("../x", "a/../../x", "..", "/../x")))
    assert [path.name for path in shell_run.www.parent.iterdir()] == ["www"]


def test_http_loopback_stays_on_loopback_inside_jmp_shell(shell_run: ShellRun) -> None:
    shell_run.fresh.assert_passed("test_loopback")
    assert shell_run.record["loopback"][0] not in shell_run.record["ports"]


def test_a_server_the_run_started_runs_on_for_the_rest_of_the_jmp_shell(shell_run: ShellRun) -> None:
    # The server belongs to the exporter: jmp shell stops it when it exits; a run never does, so
    # another run in the same shell can never lose it under a download.
    (port,) = set(shell_run.record["ports"])
    assert port > 0
    assert shell_run.ports["show"][:2] == [0, port], shell_run.output


def test_a_server_running_before_the_run_is_neither_restarted_nor_stopped(shell_run: ShellRun) -> None:
    shell_run.prestarted.assert_passed("test_running", "test_keep")
    (started,) = shell_run.ports["start"]
    assert started > 0
    assert shell_run.ports["show"][2] == started, shell_run.output


def test_per_test_upload_folders_are_removed_unless_http_keep(shell_run: ShellRun) -> None:
    (removed,) = shell_run.record["folders"]
    (kept,) = shell_run.record["kept"]
    assert f"/{TOP}/runs/" in removed
    assert not Path(removed).exists()
    assert (Path(kept) / "kept.bin").read_bytes() == b"kept"


DRIVER_TESTS = """
import pytest

def test_default(http_server):
    print("DRIVER", http_server.driver_path)
    assert http_server.backend == "exporter"

@pytest.mark.http_exporter(driver="alias")
def test_marker(http_server):
    assert http_server.driver_path == "alias"
"""


@pytest.fixture(scope="module")
def driver_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, JUnit]:
    """pytest inside exporters with no, one (and a ref: to it) and two HttpServer drivers."""
    work = tmp_path_factory.mktemp("drivers")
    (work / "test_drivers.py").write_text(DRIVER_TESTS)
    data = work / "data"
    exports = {
        "none": {"disk": storage_driver(data)},
        "ref": {
            "disk": storage_driver(data),
            "flasher": {"children": {"http": http_driver(work / "www1")}},
            "alias": {"ref": "flasher.http"},
        },
        "two": {
            "http": http_driver(work / "www2"),
            "flasher": {"children": {"http": http_driver(work / "www3")}},
            "alias": {"ref": "flasher.http"},
        },
    }
    runs: dict[str, JUnit] = {}
    for name, export in exports.items():
        config = write_exporter_config(work / f"{name}.yaml", export)
        commands = [python_pytest("-s", "test_drivers.py", junit=work / f"{name}.xml")]
        if name == "two":
            chosen = python_pytest(
                "-s",
                "test_drivers.py::test_default",
                "--http-driver",
                "flasher.http",
                junit=work / "chosen.xml",
            )
            commands.append(chosen)
        done = jmp_shell(config, *commands, cwd=work)
        runs[name] = JUnit(work / f"{name}.xml", done.stdout)
        if name == "two":
            runs["chosen"] = JUnit(work / "chosen.xml", done.stdout)
    return runs


def test_an_exporter_without_an_http_server_driver_is_an_error_that_lists_its_drivers(
    driver_runs: dict[str, JUnit],
) -> None:
    driver_runs["none"].assert_outcome(
        "test_default",
        "error",
        "has no jumpstarter_driver_http.driver.HttpServer driver; add one to its config",
        "disk (jumpstarter_driver_opendal.client.OpendalClient)",
    )


def test_two_http_server_drivers_and_none_chosen_is_an_error_that_lists_them(
    driver_runs: dict[str, JUnit],
) -> None:
    message = driver_runs["two"].assert_outcome(
        "test_default",
        "error",
        "has several HttpServer drivers (http, flasher.http); choose one with --http-driver",
    )
    assert "alias" not in message


def test_http_driver_picks_a_nested_http_server(driver_runs: dict[str, JUnit]) -> None:
    driver_runs["chosen"].assert_passed("test_default")
    assert "DRIVER flasher.http" in driver_runs["chosen"].output


def test_a_ref_alias_is_not_counted_as_a_second_driver(driver_runs: dict[str, JUnit]) -> None:
    driver_runs["ref"].assert_passed("test_default", "test_marker")
    assert "DRIVER flasher.http" in driver_runs["ref"].output


UNREACHABLE = """
def test_it(http_server):
    pass
"""


@pytest.fixture
def dead_unix_socket() -> Iterator[Path]:
    """A socket file nobody listens on any more, like the one a finished jmp shell leaves."""
    # A unix socket path has room for about 100 bytes; pytest's temporary paths can be longer.
    with tempfile.TemporaryDirectory(prefix="jh-") as folder:
        path = Path(folder) / "dead.sock"
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))
        yield path


def dead_tcp_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_dead_jumpstarter_host_is_a_clear_error_within_ten_seconds(
    pytester: pytest.Pytester, dead_unix_socket: Path, kind: str
) -> None:
    host = str(dead_unix_socket) if kind == "unix" else dead_tcp_port()
    pytester.makepyfile(UNREACHABLE)
    # A subprocess: JUMPSTARTER_HOST is read from the environment of the run.
    env = clean_env(JUMPSTARTER_HOST=host, JMP_GRPC_INSECURE="1", JMP_DRIVERS_ALLOW="UNSAFE")
    junit = run_pytest(pytester.path, env=env, timeout=30)
    junit.assert_outcome("test_it", "error", f"JUMPSTARTER_HOST={host!r} does not answer")
    assert junit["test_it"].seconds < 10


NEEDS_AN_EXPORTER = """
import pytest
@pytest.mark.http_exporter
def test_it(http_server):
    pass
"""


def test_http_exporter_without_an_exporter_is_skipped_saying_how_to_get_one(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(NEEDS_AN_EXPORTER)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*no Jumpstarter exporter: run pytest inside `jmp shell`, or give --http-selector*"]
    )


def test_http_exporter_without_an_exporter_fails_with_http_backend_exporter(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(NEEDS_AN_EXPORTER)
    result = pytester.runpytest("--http-backend", "exporter")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no Jumpstarter exporter: run pytest inside `jmp shell`*"])


KEPT_EXPORTER = """
import hashlib, os, urllib.request
from pathlib import Path

def test_flash(http_url):
    with urllib.request.urlopen(http_url + "/image.raw", timeout=30) as response:
        assert hashlib.sha256(response.read()).hexdigest() == os.environ["IMAGE_SHA"]
"""


def test_a_rerun_does_not_send_the_http_root_image_again_to_an_exporter_that_keeps_files(
    tmp_path: Path, standalone_exporter: Any
) -> None:
    www, images = tmp_path / "www", tmp_path / "images"
    images.mkdir()
    image = os.urandom(8 << 20)
    (images / "image.raw").write_bytes(image)
    config = write_exporter_config(
        tmp_path / "kept.yaml", {"http": http_driver(www, remove_created_on_close=False)}
    )
    exporter = standalone_exporter(config)
    (tmp_path / "test_kept.py").write_text(KEPT_EXPORTER)
    env = exporter.env(IMAGE_SHA=hashlib.sha256(image).hexdigest())
    run_pytest(tmp_path, "--http-root", str(images), env=env, name="first").assert_passed("test_flash")
    (sent,) = (www / TOP / "objects").iterdir()
    first = sent.stat()
    run_pytest(tmp_path, "--http-root", str(images), env=env, name="second").assert_passed("test_flash")
    second = sent.stat()
    # An upload writes a new object and renames it over the old one: a new inode.
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


GONE = """
import os, signal, time
from pathlib import Path
from pytest_jumpstarter_http import HttpResponse

def test_before(http_server):
    assert http_server.backend == "exporter"

def kill():
    Path(os.environ["KILL"]).write_text("now")
    deadline = time.monotonic() + 10
    while Path(os.environ["KILL"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)

def test_exporter_dies(request):
    if os.environ["BETWEEN"]:  # in a test of no server: test_before's teardown readied the next one's
        kill()
        time.sleep(0.5)  # what this process sees of it by then
        return
    http_server = request.getfixturevalue("http_server")
    if os.environ["REPLY"]:  # a reply's handler lives in this process: its stop forgets it
        http_server.respond("/hello", handler=lambda request: HttpResponse(body=b"hi"))
    kill()

def test_after(http_server):
    pass

def test_after_too(http_server):
    pass
"""


@pytest.mark.parametrize("between", [False, True], ids=["in-a-test", "between-tests"])
@pytest.mark.parametrize("driver", [HTTP_SERVER, RECORDING])
def test_an_exporter_gone_mid_session_errors_the_tests_that_need_it_and_pytest_exits(
    tmp_path: Path, standalone_exporter: Any, driver: str, between: bool
) -> None:
    """A test whose exporter goes while it runs ends clean: what it set went with the exporter.
    The exporter may go between tests too, after a teardown readied the next test's namespace."""
    entry = {**http_driver(tmp_path / "www"), "type": driver}
    config = write_exporter_config(tmp_path / "gone.yaml", {"http": entry})
    exporter = standalone_exporter(config)
    env = {"REPLY": "1" if driver == RECORDING and not between else "", "BETWEEN": "1" if between else ""}
    junit, returncode = _kill_when_asked(tmp_path, exporter, GONE, **env)
    junit.assert_passed("test_before", "test_exporter_dies")
    gone = f"exporter 'jmp shell at {exporter.address}' stopped answering during the run"
    for name in ("test_after", "test_after_too"):
        message = junit.assert_outcome(name, "error", gone, "is it still running?")
        # One clear sentence, once: no Jumpstarter traceback, no second error at teardown.
        assert "DriverError" not in message
        assert message.count(gone) == 2  # the message attribute and the report text
    assert returncode == 1


def _kill_when_asked(tmp_path: Path, exporter: Any, suite: str, *args: str, **env: str) -> tuple[JUnit, int]:
    """Run ``suite``, killing ``exporter`` when a test writes the file ``$KILL`` names."""
    (tmp_path / "test_gone.py").write_text(suite)
    kill = tmp_path / "kill"
    junit_path = tmp_path / "gone.xml"
    command = python_pytest("test_gone.py", *args, junit=junit_path)
    with subprocess.Popen(
        command, cwd=tmp_path, env=exporter.env(KILL=str(kill), **env), stdout=subprocess.PIPE, text=True
    ) as process:
        deadline = time.monotonic() + 30
        while not kill.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        exporter.kill()
        kill.unlink()
        output, _ = process.communicate(timeout=30)
    return JUnit(junit_path, output), process.returncode


GONE_UNCHECKED = """
import os, time, urllib.error, urllib.request
from pathlib import Path

def test_exporter_dies(http_server):
    if os.environ["ORDERED"]:
        http_server.respond("/first", ordered=True)
        http_server.respond("/second", ordered=True)
    try:
        urllib.request.urlopen(http_server.url + "/second", timeout=10)
    except urllib.error.HTTPError as error:
        assert error.code in (404, 500)
    Path(os.environ["KILL"]).write_text("now")
    deadline = time.monotonic() + 10
    while Path(os.environ["KILL"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""


@pytest.mark.parametrize(
    ("args", "ordered", "shown"),
    [
        (["--http-fail-on=404"], "", "--http-fail-on 404: "),
        (["--http-strict"], "", "--http-strict: "),
        ([], "1", ": its ordered replies "),
    ],
    ids=["fail-on", "strict", "ordered"],
)
def test_a_check_the_exporter_can_no_longer_answer_fails_the_test_it_would_have_judged(
    tmp_path: Path, standalone_exporter: Any, args: list[str], ordered: str, shown: str
) -> None:
    """A test that got a 404, a request nothing expected or one out of order does not pass because
    the exporter went before the report could read its log."""
    entry = {**http_driver(tmp_path / "www"), "type": RECORDING}
    exporter = standalone_exporter(write_exporter_config(tmp_path / "gone.yaml", {"http": entry}))
    junit, returncode = _kill_when_asked(tmp_path, exporter, GONE_UNCHECKED, *args, ORDERED=ordered)
    junit.assert_outcome("test_exporter_dies", "failed", shown, "not checked: exporter ", "stopped answering")
    assert returncode == 1
