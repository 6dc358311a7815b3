"""Issue 6, nothing lost: the user's --http-root is byte-for-byte the same after any run.

And what the plugin made (temporary roots, staged files) is gone at the end of its scope,
unless --http-keep.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIG = 32 << 20  # large enough that a slow reader keeps the download in flight


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``: a file's sha256 and mode, a link's target, a folder's mode."""
    entries: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            info = path.lstat()
            if path.is_symlink():
                entries[key] = ("link", os.readlink(path))
            elif path.is_dir():
                entries[key] = ("dir", info.st_mode)
            else:
                entries[key] = (
                    "file",
                    info.st_mode,
                    info.st_size,
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                )
    return entries


@pytest.fixture
def images(pytester: pytest.Pytester) -> Path:
    """A user's --http-root: files of several kinds, nested folders, a link inside."""
    root = pytester.mkdir("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "disk.raw").write_bytes(os.urandom(1 << 20))
    (root / "big.raw").write_bytes(os.urandom(BIG))
    (root / "empty").write_bytes(b"")
    (root / "with space #1.txt").write_text("odd name")
    (root / "nested" / "deeper" / "kernel.img").write_bytes(os.urandom(4096))
    (root / "latest.raw").symlink_to("disk.raw")
    (root / "readonly.bin").write_bytes(b"ro")
    (root / "readonly.bin").chmod(0o444)
    (pytester.path / "build.img").write_bytes(b"built by the test run")
    return root


#: Each inner test downloads every file, and stages a file into the root, before it does its worst.
INNER = """
    import os, pathlib, urllib.request
    import pytest

    def download_everything(http_server):
        for path in sorted(http_server.root.rglob("*")):
            if path.is_file():
                name = str(path.relative_to(http_server.root))
                with urllib.request.urlopen(http_server.url_for(name), timeout=10) as response:
                    assert response.read() == path.read_bytes()

    def stage(http_server):
        build = pathlib.Path(os.environ["BUILD"])
        url = http_server.stage(build, "staged/by/the/plugin/build.img")
        assert urllib.request.urlopen(url, timeout=10).read() == build.read_bytes()
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, images: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BUILD", str(pytester.path / "build.img"))

    def write(body: str) -> None:
        pytester.makepyfile(INNER + body)

    return write


def test_http_root_is_unchanged_after_a_passing_run(pytester, images, inner):
    before = snapshot(images)
    inner(
        """
    def test_downloads(http_server):
        download_everything(http_server)
        stage(http_server)
        download_everything(http_server)

    @pytest.mark.http_server(scope="session")
    def test_session_server_stages_too(http_server):
        stage(http_server)
    """
    )
    pytester.runpytest("--http-root", str(images)).assert_outcomes(passed=2)
    assert snapshot(images) == before


def test_http_root_is_unchanged_after_failing_tests(pytester, images, inner):
    before = snapshot(images)
    inner(
        """
    def test_fails(http_server):
        stage(http_server)
        assert False, "the device rejected the image"

    def test_errors(http_server):
        stage(http_server)
        raise OSError("the serial console went away")

    @pytest.fixture
    def broken(http_server):
        stage(http_server)
        raise RuntimeError("setup failed after staging")

    def test_setup_fails(broken):
        pass
    """
    )
    pytester.runpytest("--http-root", str(images)).assert_outcomes(failed=2, errors=1)
    assert snapshot(images) == before


def test_http_root_is_unchanged_after_a_test_raises_keyboard_interrupt(pytester, images, inner):
    before = snapshot(images)
    inner(
        """
    def test_interrupted(http_server):
        stage(http_server)
        download_everything(http_server)
        raise KeyboardInterrupt

    def test_never_runs(http_server):
        pass
    """
    )
    reprec = pytester.inline_run("--http-root", str(images), no_reraise_ctrlc=True)
    assert reprec.ret == pytest.ExitCode.INTERRUPTED
    assert [call.excinfo.type for call in reprec.getcalls("pytest_keyboard_interrupt")] == [KeyboardInterrupt]
    assert snapshot(images) == before


# A shell starts background jobs (a CI runner's, a nohup'd run) with SIGINT ignored, and children
# inherit that; a user at a terminal gets the default, so give the run under test the default back.
PYTEST_WITH_SIGINT = (
    "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.exit(pytest.console_main())"
)


def test_http_root_is_unchanged_after_sigint_mid_download(pytester, images, inner):
    before = snapshot(images)
    downloading, factory_root = pytester.path / "downloading", pytester.path / "factory-root"
    inner(
        f"""
    import time

    def test_slow_download(http_server, http_server_factory):
        stage(http_server)
        pathlib.Path({str(factory_root)!r}).write_text(str(http_server_factory().root))
        with urllib.request.urlopen(http_server.url_for("big.raw"), timeout=30) as response:
            response.read(65536)
            pathlib.Path({str(downloading)!r}).touch()
            for _ in range(600):  # a slow device: at most 30 s
                response.read(65536)
                time.sleep(0.05)
        raise AssertionError("SIGINT never came")
    """
    )
    # A signal needs a process of its own, sent while its test is blocked downloading.
    with subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", PYTEST_WITH_SIGINT, "--http-root", str(images)],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        for _ in range(300):
            if downloading.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        if not downloading.exists():
            process.kill()
            pytest.fail(f"the download never started:\n{process.communicate()[0].decode()}")
        process.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # faulthandler prints where every thread is stuck
            pytest.fail(f"pytest did not stop within 30 s of SIGINT:\n{process.communicate()[0].decode()}")
    assert time.monotonic() - interrupted < 10
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output.decode()
    assert b"KeyboardInterrupt" in output
    assert snapshot(images) == before
    assert not Path(factory_root.read_text()).exists()


def test_http_root_is_unchanged_after_an_xdist_worker_crashes(pytester, images, inner):
    before = snapshot(images)
    inner(
        """
    @pytest.mark.parametrize("n", range(6))
    def test_downloads(http_server, n):
        download_everything(http_server)

    def test_crash(http_server):
        with urllib.request.urlopen(http_server.url_for("big.raw"), timeout=10) as response:
            response.read(65536)
            os._exit(1)  # the worker dies mid-download, no teardown at all
    """
    )
    result = pytester.runpytest("--http-root", str(images), "-n", "2")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*test_crash*"])
    assert snapshot(images) == before


def test_http_root_is_unchanged_after_a_worker_crashes_with_a_file_staged(pytester, images, inner):
    before = snapshot(images)
    inner(
        """
    def test_crash(http_server):
        stage(http_server)
        os._exit(1)
    """
    )
    pytester.runpytest("--http-root", str(images), "-n", "1").assert_outcomes(failed=1)
    assert snapshot(images) == before


def test_staged_files_and_temporary_roots_go_at_the_end_of_their_scope(pytester, monkeypatch):
    record = pytester.path / "record.json"
    monkeypatch.setenv("RECORD", str(record))
    (pytester.path / "build.img").write_bytes(b"b")
    pytester.makepyfile(
        """
        import json, os, pathlib
        import pytest

        MADE = {}

        def test_function_scope(http_server, served_dir, http_server_factory):
            MADE["function"] = [str(served_dir), str(http_server_factory().root)]
            http_server.stage("build.img", "a/b/build.img")

        def test_the_function_scope_s_are_gone():
            assert not any(map(os.path.exists, MADE["function"]))

        @pytest.mark.http_server(scope="session")
        def test_session_scope(http_server, served_dir):
            http_server.stage("build.img", "a/b/build.img")
            MADE["session"] = [str(served_dir), str(served_dir / "a")]

        def test_record():
            pathlib.Path(os.environ["RECORD"]).write_text(json.dumps(MADE))
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=4)
    made = json.loads(record.read_text())
    assert not any(map(os.path.exists, made["session"]))


def test_keep_leaves_staged_files_and_temporary_roots_behind(pytester, images, monkeypatch):
    record = pytester.path / "record.json"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(
        """
        import json, os

        def test_it(http_server, http_server_factory):
            (http_server.root.parent / "build.img").write_bytes(b"b")
            staged = http_server.root / "kept/build.img"
            http_server.stage(http_server.root.parent / "build.img", "kept/build.img")
            with open(os.environ["RECORD"], "w") as f:
                json.dump([str(staged), str(http_server_factory().root)], f)
        """
    )
    pytester.runpytest("--http-keep").assert_outcomes(passed=1)
    staged, factory_root = map(Path, json.loads(record.read_text()))
    assert staged.read_bytes() == b"b"
    assert factory_root.is_dir()
