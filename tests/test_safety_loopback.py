"""Issue 11 on loopback: staging copies, live URLs, roots known by who made them, no false greens.

Each test here fails on the code before the fix (commit 21830df), which hard-linked staged files
into the root, kept the URL of the port a server first had, took any path below pytest's
basetemp for a root of its own, served a user root's staged files from a second server made in
``$TMPDIR`` (which a fixed port could not give), and skipped tests whose exporter it could not
reach even when the run asked for one.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from subprocess_runs import JUnit, clean_env, python_pytest, run, run_pytest

from pytest_jumpstarter_http import HttpServerHandle


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def rewrite(path: Path) -> None:
    path.write_text("changed by the test")


def truncate(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(0)


@pytest.mark.parametrize("change", [rewrite, truncate], ids=["rewrite", "truncate"])
def test_changing_a_staged_file_in_the_served_root_leaves_its_source_unchanged(
    http_server: HttpServerHandle, served_dir: Path, tmp_path: Path, change: Callable[[Path], None]
) -> None:
    source = tmp_path / "source" / "firmware.bin"
    source.parent.mkdir()
    source.write_bytes(b"the original firmware")
    url = http_server.stage(source)
    assert fetch(url) == b"the original firmware"
    change(served_dir / "firmware.bin")
    assert source.read_bytes() == b"the original firmware"
    assert source.stat().st_nlink == 1


def test_the_url_follows_a_loopback_server_restarted_through_its_client(
    http_server: HttpServerHandle, served_dir: Path
) -> None:
    (served_dir / "image.raw").write_bytes(b"image")
    first = http_server.port
    # A port-0 server may get its old port back; restart it until it has another one.
    for _ in range(20):
        http_server.client.stop()
        http_server.client.start()
        if http_server.port != first:
            break
    assert http_server.port != first
    assert http_server.url == f"http://127.0.0.1:{http_server.port}"
    assert fetch(http_server.url + "/image.raw") == b"image"
    assert fetch(http_server.url_for("image.raw")) == b"image"


# --- stage() for a user's root keeps its folder below pytest's basetemp -------------------------

STAGE_IN_USER_ROOT = """
import getpass, os, tempfile
from pathlib import Path

def test_stage(http_server, served_dir, tmp_path):
    assert served_dir == Path(os.environ["USER_ROOT"])
    source = tmp_path / "staged.bin"
    source.write_bytes(b"staged")
    url = http_server.stage(source)
    assert url.startswith(http_server.url + "/")
    # While the server runs, $TMPDIR holds nothing of the plugin's.
    assert os.listdir(tempfile.gettempdir()) == [f"pytest-of-{getpass.getuser()}"]
"""


@pytest.mark.parametrize("keep", [False, True], ids=["removed", "http-keep"])
def test_stage_for_a_user_root_keeps_its_staging_folder_below_pytests_basetemp(
    tmp_path: Path, keep: bool
) -> None:
    user_root, tmpdir = tmp_path / "images", tmp_path / "tmpdir"
    user_root.mkdir()
    tmpdir.mkdir()
    (tmp_path / "test_stage.py").write_text(STAGE_IN_USER_ROOT)
    args = ["test_stage.py", f"--http-root={user_root}", *(["--http-keep"] if keep else [])]
    env = clean_env(TMPDIR=str(tmpdir), USER_ROOT=str(user_root))
    run_pytest(tmp_path, *args, env=env).assert_passed("test_stage")
    assert os.listdir(tmpdir) == [f"pytest-of-{getpass.getuser()}"]
    assert os.listdir(user_root) == []
    staged = [path for path in tmpdir.rglob("staged.bin") if "test_stage" not in path.parent.name]
    # With --http-keep the staged copy stays, in a folder below the run's basetemp.
    assert len(staged) == keep
    for path in staged:
        assert path.is_relative_to(tmpdir / f"pytest-of-{getpass.getuser()}")


# --- a root is the plugin's own only if the plugin made it --------------------------------------

LINK_UNDER_BASETEMP = """
import os, urllib.request
from pathlib import Path

USER = Path(os.environ["USER_ROOT"])

def test_stage_through_a_link_under_basetemp(http_server_factory, tmp_path_factory, tmp_path):
    link = tmp_path_factory.getbasetemp() / "looks-like-ours"
    link.symlink_to(USER, target_is_directory=True)
    server = http_server_factory(link)
    source = tmp_path / "staged.bin"
    source.write_bytes(b"staged through a link")
    url = server.stage(source)
    assert sorted(os.listdir(USER)) == ["mine.txt"]
    assert url.startswith(server.url + "/")
    with open(os.environ["URL_FILE"], "w") as out:
        out.write(url)
    if os.environ.get("DOWNLOAD"):
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"staged through a link"
    assert sorted(os.listdir(USER)) == ["mine.txt"]
"""


def _stage_through_a_link(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, download: bool) -> None:
    user = pytester.path / "user"
    user.mkdir()
    (user / "mine.txt").write_text("the user's")
    monkeypatch.setenv("USER_ROOT", str(user))
    monkeypatch.setenv("URL_FILE", str(pytester.path / "url"))
    if download:
        monkeypatch.setenv("DOWNLOAD", "1")
    pytester.makepyfile(LINK_UNDER_BASETEMP)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert sorted(os.listdir(user)) == ["mine.txt"]
    assert (user / "mine.txt").read_text() == "the user's"


def test_a_link_under_basetemp_to_a_user_folder_is_not_taken_for_a_root_of_the_plugins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stage_through_a_link(pytester, monkeypatch, download=False)


def test_a_file_staged_for_a_root_behind_a_link_under_basetemp_is_served(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stage_through_a_link(pytester, monkeypatch, download=True)


# --- stage() with a fixed port ------------------------------------------------------------------

FIXED_PORT = """
import json, os, urllib.error, urllib.request
import pytest

@pytest.mark.parametrize("n", range(4))
def test_stage(http_server, tmp_path, n, worker_id):
    source = tmp_path / f"{worker_id}-{n}.bin"
    source.write_bytes(f"{worker_id} {n}".encode())
    url = http_server.stage(source)
    assert url == f"{http_server.url}/{source.name}"
    # What the download gave is judged by the outer test: the staging folder's serving is
    # another module's.
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            served = response.read() == source.read_bytes()
    except urllib.error.HTTPError as exc:
        served = exc.code
    with open(os.path.join(os.environ["RECORD"], f"{worker_id}-{n}.json"), "w") as out:
        json.dump([http_server.port, url, served], out)
"""


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65536:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError(f"no {count} consecutive free ports on 127.0.0.1")


@dataclass
class FixedPortRun:
    """One pytest run staging four files for a user's root with a fixed port or a range."""

    junit: JUnit
    ports: range
    #: Per test: the server's port, the staged URL, and whether the download gave the file.
    records: dict[str, list[Any]]
    root: Path


@pytest.fixture(scope="module", params=[1, 2], ids=["one-port", "two-workers-two-ports"])
def fixed_port_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> FixedPortRun:
    workers: int = request.param
    work = tmp_path_factory.mktemp("fixed")
    root, record = work / "images", work / "record"
    root.mkdir()
    record.mkdir()
    (work / "test_fixed.py").write_text(FIXED_PORT)
    first = free_ports(workers)
    port = str(first) if workers == 1 else f"{first}-{first + workers - 1}"
    xdist = ["-n", str(workers)] if workers > 1 else ["-p", "no:xdist"]
    if workers == 1:  # worker_id is xdist's fixture
        (work / "conftest.py").write_text(
            "import pytest\n@pytest.fixture\ndef worker_id():\n    return 'main'\n"
        )
    env = clean_env(RECORD=str(record))
    junit = run_pytest(work, "test_fixed.py", f"--http-port={port}", f"--http-root={root}", *xdist, env=env)
    records = {path.stem: json.loads(path.read_text()) for path in record.iterdir()}
    return FixedPortRun(junit, range(first, first + workers), records, root)


def test_stage_for_a_user_root_works_with_a_fixed_port(fixed_port_run: FixedPortRun) -> None:
    fixed_port_run.junit.assert_passed(*(f"test_stage[{n}]" for n in range(4)))
    assert os.listdir(fixed_port_run.root) == []
    assert len(fixed_port_run.records) == 4
    assert {port for port, _, _ in fixed_port_run.records.values()} <= set(fixed_port_run.ports)


def test_files_staged_with_a_fixed_port_are_served_by_the_workers_own_server(
    fixed_port_run: FixedPortRun,
) -> None:
    fixed_port_run.junit.assert_passed(*(f"test_stage[{n}]" for n in range(4)))
    served = {name: outcome for name, (_, _, outcome) in fixed_port_run.records.items()}
    assert served == dict.fromkeys(served, True)


# --- no false greens ----------------------------------------------------------------------------

NEEDS_AN_EXPORTER = """
import pytest

def test_plain(http_server):
    pass

@pytest.mark.http_exporter
def test_marked(http_server):
    pass
"""


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_selector_with_no_client_config_fails_the_run_instead_of_skipping(
    tmp_path: Path, xdist: list[str]
) -> None:
    home = tmp_path / "home"
    (home / "jumpstarter").mkdir(parents=True)
    (tmp_path / "test_lab.py").write_text(NEEDS_AN_EXPORTER)
    env = clean_env(HOME=str(home), JMP_CLIENT_CONFIG_HOME=str(home / "jumpstarter"))
    env.pop("XDG_CONFIG_HOME", None)
    junit_path = tmp_path / "lab.xml"
    command = python_pytest(
        "test_lab.py", "--http-selector=board=rpi4", "--http-client=lab", *xdist, junit=junit_path
    )
    done = run(command, cwd=tmp_path, env=env)
    junit = JUnit(junit_path, done.stdout)
    assert done.returncode == 1, done.stdout
    for name in ("test_plain", "test_marked"):
        junit.assert_outcome(name, "error", "no Jumpstarter client config 'lab' (--http-client)")
    assert "skipped for want of an exporter" not in done.stdout


def test_an_unreachable_jumpstarter_host_fails_the_run_instead_of_skipping(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    (tmp_path / "test_lab.py").write_text(NEEDS_AN_EXPORTER)
    junit_path = tmp_path / "dead.xml"
    env = clean_env(JUMPSTARTER_HOST=host, JMP_GRPC_INSECURE="1")
    done = run(python_pytest("test_lab.py", junit=junit_path), cwd=tmp_path, env=env)
    junit = JUnit(junit_path, done.stdout)
    assert done.returncode == 1, done.stdout
    for name in ("test_plain", "test_marked"):
        junit.assert_outcome(name, "error", f"JUMPSTARTER_HOST={host!r} does not answer")


def test_a_test_skipped_for_want_of_an_exporter_is_counted_in_the_summary_without_r(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(NEEDS_AN_EXPORTER)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "jumpstarter-http: 1 test was skipped for want of an exporter: no Jumpstarter exporter: "
            "run pytest inside `jmp shell`, or give --http-selector=LABELS "
            "(or @pytest.mark.http_exporter(selector=...)) to lease one."
        ]
    )
    assert "SKIPPED [1]" not in result.stdout.str()
