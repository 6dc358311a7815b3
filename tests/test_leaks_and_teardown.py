"""Issue 6, no leaks and no hangs: what a run leaves behind, and how long teardown may take."""

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Teardown waits at most loopback.SHUTDOWN_GRACE (2 s) for downloads in flight; allow for a slow CI.
TEARDOWN_BOUND = 5.0


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def teardown_durations(reprec: pytest.HookRecorder) -> dict[str, float]:
    return {
        report.nodeid.rpartition("::")[2]: report.duration
        for report in reprec.getreports("pytest_runtest_logreport")
        if report.when == "teardown"
    }


RESOURCES = """
    import os, threading

    def listening_sockets():
        # This process's listening TCP sockets: its socket inodes that /proc/net lists as LISTEN.
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows)
                count += sum(1 for r in rows if r.split()[3] == "0A" and r.split()[9] in inodes)
        return count

    def resources():
        return {
            "fds": len(os.listdir("/proc/self/fd")),
            # asyncio's default executor (aiohttp opens files there) is a pool that grows up to
            # min(32, cpus + 4) threads and keeps them: bounded, so counted apart.
            "threads": sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")),
            "native threads": len(os.listdir("/proc/self/task")) - executor_threads(),
            "listening sockets": listening_sockets(),
        }

    def executor_threads():
        return sum(1 for t in threading.enumerate() if t.name.startswith("asyncio_"))
"""


def test_500_function_scoped_servers_leave_fds_threads_and_sockets_as_they_found_them(pytester):
    pytester.makeconftest(RESOURCES)
    pytester.makepyfile(
        """
        import os, urllib.request
        import pytest
        from conftest import executor_threads, resources

        BASELINE = {}

        def test_a_first_server(http_server, served_dir):
            (served_dir / "f").write_bytes(b"x" * 4096)
            assert urllib.request.urlopen(http_server.url_for("f"), timeout=10).read() == b"x" * 4096

        def test_b_baseline():
            BASELINE.update(resources())
            assert BASELINE["listening sockets"] == 1  # the process's server's own; the test's ended

        @pytest.mark.parametrize("n", range(500))
        def test_c_server(http_server, served_dir, n):
            (served_dir / "f").write_bytes(b"x" * 4096)
            with urllib.request.urlopen(http_server.url_for("f"), timeout=10) as response:
                assert response.read() == b"x" * 4096

        def test_d_nothing_leaked():
            assert resources() == BASELINE
            assert executor_threads() <= min(32, (os.cpu_count() or 1) + 4)
        """
    )
    # A process of its own: the descriptors and threads counted are this run's alone.
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=503)


DEV_MODE_SUITE = """
    import shutil, socket, urllib.request
    import pytest

    HELD = []

    def fetch(url):
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()

    def test_download(http_url, served_dir):
        (served_dir / "a.raw").write_bytes(b"a" * 100_000)
        assert fetch(http_url + "/a.raw") == b"a" * 100_000

    def test_stage_and_client(http_server, tmp_path):
        (tmp_path / "b.raw").write_bytes(b"b")
        assert fetch(http_server.stage(tmp_path / "b.raw", "deep/b.raw")) == b"b"
        assert http_server.client.get_port() not in (0, http_server.port)  # the process's server

    def test_factory(http_server_factory):
        servers = [http_server_factory() for _ in range(3)]
        for server in servers:
            (server.root / "c").write_bytes(b"c")
            assert fetch(server.url_for("c")) == b"c"

    @pytest.mark.http_server(scope="session")
    def test_session_server(http_server, served_dir):
        (served_dir / "d").write_bytes(b"d")
        assert fetch(http_server.url_for("d")) == b"d"

    def test_download_in_flight_at_teardown(http_server, served_dir):
        with open(served_dir / "big", "wb") as big:
            big.truncate(64 << 20)
        conn = socket.create_connection(("127.0.0.1", http_server.port))
        conn.sendall(b"GET /big HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        assert conn.recv(65536)
        HELD.append(conn)

    def test_server_stopped_by_the_test(http_server):
        http_server.client.stop()

    def test_served_dir_removed_by_the_test(http_server, served_dir):
        shutil.rmtree(served_dir)

    def test_failing(http_server):
        raise AssertionError("expected")

    def test_zz_close_what_the_tests_held():
        for conn in HELD:
            conn.close()
"""


def test_fixtures_run_clean_under_python_dev_mode_with_resource_warnings_as_errors(pytester, monkeypatch):
    pytester.makepyfile(DEV_MODE_SUITE)
    # Unclosed sockets, files and event loops only show as ResourceWarnings in a process's own
    # garbage collection and shutdown: a process of its own, in dev mode.
    monkeypatch.setenv("PYTHONDEVMODE", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "error::ResourceWarning")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-W", "error", "-W", "error::ResourceWarning")
    result.assert_outcomes(passed=8, failed=1)
    output = result.stdout.str() + result.stderr.str()
    for symptom in ("ResourceWarning", "unclosed", "Unclosed", "never awaited", "Task was destroyed"):
        assert symptom not in output


def test_the_serving_and_security_tests_pass_under_python_dev_mode(pytester, monkeypatch):
    here = Path(__file__).parent
    monkeypatch.setenv("PYTHONDEVMODE", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "error::ResourceWarning")
    # The project's own ini applies (its asyncio key needs pytest-asyncio loaded).
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:cacheprovider")
    result = pytester.runpytest_subprocess(
        str(here / "test_serving.py"), str(here / "test_security.py"), "-W", "error::ResourceWarning"
    )
    assert result.ret == 0, result.stdout.str()
    assert "ResourceWarning" not in result.stdout.str() + result.stderr.str()


def test_teardown_does_not_wait_for_a_keep_alive_client_or_a_download_in_flight(pytester):
    pytester.makepyfile(
        """
        import socket

        HELD = []

        def test_keep_alive_client(http_server, served_dir):
            (served_dir / "f").write_bytes(b"x" * 1000)
            conn = socket.create_connection(("127.0.0.1", http_server.port))
            conn.sendall(b"GET /f HTTP/1.1\\r\\nHost: x\\r\\nConnection: keep-alive\\r\\n\\r\\n")
            received = b""
            for _ in range(100):
                received += conn.recv(65536)
                if received.endswith(b"x" * 1000):
                    break
            HELD.append((conn, http_server.port))

        def test_download_in_flight(http_server, served_dir):
            with open(served_dir / "big", "wb") as big:
                big.truncate(256 << 20)
            conn = socket.create_connection(("127.0.0.1", http_server.port))
            conn.sendall(b"GET /big HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            assert conn.recv(65536).startswith(b"HTTP/1.1 200")
            HELD.append((conn, http_server.port))

        def test_zz_their_ports_are_free():
            for conn, port in HELD:
                with socket.socket() as probe:
                    assert probe.connect_ex(("127.0.0.1", port)) != 0
                conn.close()
        """
    )
    reprec = pytester.inline_run("-p", "no:randomly")
    reprec.assertoutcome(passed=3)
    durations = teardown_durations(reprec)
    assert durations["test_keep_alive_client"] < TEARDOWN_BOUND
    assert durations["test_download_in_flight"] < TEARDOWN_BOUND


def test_a_session_server_with_a_download_in_flight_stops_within_the_grace(pytester, monkeypatch):
    record = pytester.path / "record.json"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(
        """
        import json, os, socket
        import pytest

        @pytest.fixture(scope="session")
        def held():
            # Set up before the session server, so torn down after it.
            conns = []
            yield conns
            for conn in conns:
                conn.close()

        def test_last(held, http_server, served_dir):
            with open(served_dir / "big", "wb") as big:
                big.truncate(256 << 20)
            conn = socket.create_connection(("127.0.0.1", http_server.port))
            conn.sendall(b"GET /big HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            assert conn.recv(65536)
            held.append(conn)  # still open when the session ends
            with open(os.environ["RECORD"], "w") as f:
                json.dump(http_server.port, f)
        """
    )
    reprec = pytester.inline_run("--http-scope", "session")
    reprec.assertoutcome(passed=1)
    assert teardown_durations(reprec)["test_last"] < TEARDOWN_BOUND
    assert not listening(json.loads(record.read_text()))


def test_a_test_that_fails_still_gets_its_server_stopped_and_its_root_removed(pytester, monkeypatch):
    record = pytester.path / "record.json"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(
        """
        import json, os

        def test_fails(http_server, served_dir):
            (served_dir / "f").write_text("x")
            with open(os.environ["RECORD"], "w") as f:
                json.dump([http_server.port, str(served_dir)], f)
            raise RuntimeError("the device did not boot")
        """
    )
    pytester.runpytest().assert_outcomes(failed=1)
    port, root = json.loads(record.read_text())
    assert not listening(port)
    assert not Path(root).exists()


def test_a_failing_user_teardown_is_reported_against_its_test_and_the_server_still_stops(
    pytester, monkeypatch
):
    record = pytester.path / "record.json"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(
        """
        import json, os
        import pytest

        @pytest.fixture
        def board(http_server):
            with open(os.environ["RECORD"], "w") as f:
                json.dump(http_server.port, f)
            yield http_server
            raise RuntimeError("the board would not power off")

        def test_flash(board):
            pass

        def test_next(http_server):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        ["*_ ERROR at teardown of test_flash _*", "E       RuntimeError: the board would not power off"]
    )
    assert not listening(json.loads(record.read_text()))


def test_teardown_copes_with_what_a_test_did_to_its_server_and_root(pytester):
    pytester.makepyfile(
        """
        import shutil, socket
        import pytest

        def free(port):
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) != 0

        def test_stops_the_server_through_the_client(http_server):
            http_server.client.stop()
            assert free(http_server.port)

        def test_stops_the_handle_itself(http_server):
            http_server.stop()
            assert free(http_server.port)

        def test_removes_served_dir(http_server, served_dir):
            shutil.rmtree(served_dir)

        def test_removes_what_it_staged(http_server, tmp_path):
            (tmp_path / "a").write_text("a")
            http_server.stage(tmp_path / "a", "made/by/stage/a")
            shutil.rmtree(http_server.root / "made")

        @pytest.mark.http_server(scope="session")
        def test_removes_the_session_root(served_dir):
            shutil.rmtree(served_dir)

        @pytest.mark.http_server(scope="session")
        def test_stops_the_session_server(http_server):
            http_server.client.stop()
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=6)


def test_a_loopback_server_used_without_pytest_lets_the_interpreter_exit(tmp_path):
    script = textwrap.dedent(
        """
        import sys, urllib.request
        from pytest_jumpstarter_http import LoopbackServer
        root = sys.argv[1]
        open(root + "/a", "w").write("a")
        with LoopbackServer(root).start() as server:
            assert urllib.request.urlopen(server.url_for("a"), timeout=10).read() == b"a"
        with LoopbackServer(root).start() as server:  # and a second time, after the loop stopped
            assert urllib.request.urlopen(server.url_for("a"), timeout=10).read() == b"a"
        print("done")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
