"""Scopes, markers and what each test gets, through pytester."""

import json
import socket
from pathlib import Path

import pytest

# pytester drops the modules an in-process run imported, but cryptography's Rust bindings cannot
# be imported twice in one interpreter: import the test CA's stack once, before any HTTPS run.
import trustme  # noqa: F401


def test_function_scope_gives_each_test_a_fresh_server_and_directory(pytester):
    pytester.makepyfile(
        """
        SEEN = []
        def test_one(http_server, served_dir):
            (served_dir / "leftover").write_text("1")
            SEEN.append((http_server.port, served_dir))
        def test_two(http_server, served_dir):
            SEEN.append((http_server.port, served_dir))
            assert not (served_dir / "leftover").exists()
        def test_they_differ():
            (port1, dir1), (port2, dir2) = SEEN
            assert port1 != port2 and dir1 != dir2
            assert not dir1.exists(), "a temporary root outlived its test"
        """
    )
    pytester.runpytest().assert_outcomes(passed=3)


def test_session_scope_shares_one_server_and_directory(pytester):
    pytester.makepyfile(
        """
        SEEN = []
        def test_one(http_server, served_dir):
            (served_dir / "kept").write_text("1")
            SEEN.append((http_server.port, served_dir))
        def test_two(http_server, served_dir, http_url):
            import urllib.request
            assert urllib.request.urlopen(http_url + "/kept").read() == b"1"
            SEEN.append((http_server.port, served_dir))
        def test_same():
            assert SEEN[0] == SEEN[1]
        """
    )
    pytester.runpytest("--http-scope", "session").assert_outcomes(passed=3)


def test_the_session_server_stops_and_its_root_goes_at_the_end_of_the_run(pytester, monkeypatch):
    record = pytester.path / "record.json"
    monkeypatch.setenv("RECORD", str(record))
    pytester.makepyfile(
        """
        import json, os
        def test_one(http_server, served_dir):
            with open(os.environ["RECORD"], "w") as f:
                json.dump([http_server.port, str(served_dir)], f)
        """
    )
    pytester.runpytest("--http-scope", "session").assert_outcomes(passed=1)
    port, root = json.loads(record.read_text())
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert not Path(root).exists()


def test_the_marker_overrides_scope_and_root_for_one_test(pytester):
    images = pytester.mkdir("images")
    (images / "a.raw").write_text("marker root")
    pytester.makepyfile(
        """
        import pytest, urllib.request
        PORTS = []
        @pytest.mark.http_server(scope="session", root="images")
        def test_a(http_server, http_url):
            PORTS.append(http_server.port)
            assert urllib.request.urlopen(http_url + "/a.raw").read() == b"marker root"
        @pytest.mark.http_server(scope="session", root="images")
        def test_b(http_server):
            PORTS.append(http_server.port)
        def test_c(http_server, served_dir):
            PORTS.append(http_server.port)
            assert not (served_dir / "a.raw").exists()
        def test_ports():
            assert PORTS[0] == PORTS[1] != PORTS[2]
        """
    )
    pytester.runpytest().assert_outcomes(passed=4)


def test_a_module_marker_applies_to_every_test_in_it(pytester):
    pytester.makepyfile(
        """
        import pytest
        pytestmark = pytest.mark.http_server(scope="session")
        PORTS = set()
        @pytest.mark.parametrize("n", range(4))
        def test_it(http_server, n):
            PORTS.add(http_server.port)
            assert len(PORTS) == 1
        """
    )
    pytester.runpytest().assert_outcomes(passed=4)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "http_server(scop='session')",
            "@pytest.mark.http_server: http_server() got an unexpected keyword argument 'scop'.",
        ),
        (
            "http_server('session')",
            "@pytest.mark.http_server: http_server() takes 0 positional arguments but 1 was given.",
        ),
        (
            "http_server(scope='module')",
            "@pytest.mark.http_server(scope=...): 'module' is not valid; use one of function, session.",
        ),
        (
            "http_server(root='nowhere')",
            "@pytest.mark.http_server(root=...): 'nowhere' is not valid; the directory does not exist*",
        ),
        (
            "http_exporter(board='rpi4')",
            "@pytest.mark.http_exporter: http_exporter() got an unexpected keyword argument 'board'.",
        ),
        (
            "http_loopback(True)",
            "@pytest.mark.http_loopback: http_loopback() takes 0 positional arguments but 1 was given.",
        ),
    ],
)
def test_bad_marker_arguments_fail_that_test_only(pytester, marker, message):
    pytester.makepyfile(
        f"""
        import pytest
        @pytest.mark.{marker}
        def test_bad(http_url): pass
        def test_good(http_url): pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([message])
    assert "markers.py" not in result.stdout.str()


def test_markers_are_listed_with_their_signatures(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.http_server(*, scope=None, root=None, tls=None): *",
            "@pytest.mark.http_loopback: *",
            "@pytest.mark.http_exporter(selector=None, driver=None): *",
        ]
    )


def test_http_loopback_keeps_a_test_on_loopback_when_the_backend_is_exporter(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.http_loopback
        def test_it(http_server):
            assert http_server.backend == "loopback"
        """
    )
    pytester.runpytest("--http-backend", "exporter").assert_outcomes(passed=1)


def test_keep_leaves_temporary_roots_behind(pytester):
    pytester.makepyfile(
        """
        def test_it(served_dir, pytestconfig):
            (served_dir / "evidence.log").write_text("kept")
            (pytestconfig.rootpath / "root.txt").write_text(str(served_dir))
        """
    )
    pytester.runpytest("--http-keep").assert_outcomes(passed=1)
    root = Path((pytester.path / "root.txt").read_text())
    assert (root / "evidence.log").read_text() == "kept"


def test_keep_failed_keeps_only_the_folders_of_failed_tests(pytester):
    # Issue 18: as pytest's tmp_path_retention_policy = failed.
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("outcome", ["passes", "fails"])
        def test_it(outcome, served_dir, http_server, pytestconfig, tmp_path):
            (served_dir / "evidence.log").write_text(outcome)
            staged = tmp_path / "staged.bin"
            staged.write_text(outcome)
            http_server.stage(staged)
            (pytestconfig.rootpath / f"{outcome}.txt").write_text(str(served_dir))
            assert outcome == "passes"

        @pytest.mark.http_server(root="user")
        def test_staged_beside_a_user_root(http_server, tmp_path):
            staged = tmp_path / "staged.bin"
            staged.write_text("beside")
            http_server.stage(staged)
            assert False
        """
    )
    (pytester.path / "user").mkdir()
    result = pytester.runpytest("--http-keep=failed")
    result.assert_outcomes(passed=1, failed=2)
    kept = Path((pytester.path / "fails.txt").read_text())
    assert (kept / "evidence.log").read_text() == "fails"
    assert (kept / "staged.bin").read_text() == "fails"
    assert not Path((pytester.path / "passes.txt").read_text()).exists()
    # The staging folder of the user's root went with its failed test's server, and was kept.
    staged = [path.read_text() for path in kept.parent.glob("staged-*/staged.bin")]
    assert staged == ["beside"]
    assert not list((pytester.path / "user").iterdir())


def test_a_connection_of_one_test_never_reaches_the_server_of_the_next(pytester):
    # The loopback backend serves one test after another from one driver (issue 19): each test's
    # teardown must end its connections, or a kept-alive one would read the next test's files.
    pytester.makepyfile(
        """
        import socket

        HELD = []

        def ask(conn, path):
            conn.sendall(f"GET /{path} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n".encode())
            return conn.recv(65536)

        def test_one(http_server, served_dir):
            (served_dir / "one").write_bytes(b"1")
            conn = socket.create_connection(("127.0.0.1", http_server.port), timeout=10)
            assert ask(conn, "one").startswith(b"HTTP/1.1 200")  # and the connection stays open
            HELD.append(conn)

        def test_two(http_server, served_dir):
            (served_dir / "two").write_bytes(b"2")
            (conn,) = HELD
            try:
                answer = ask(conn, "two")
            except OSError:  # reset
                answer = b""
            assert answer == b"", answer
            assert http_server.requests == []
            conn.close()
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_a_finished_test_s_handle_keeps_its_own_requests_only(pytester):
    pytester.makepyfile(
        """
        import urllib.request

        HANDLES = []

        def test_one(http_server, served_dir):
            (served_dir / "one").write_bytes(b"1")
            urllib.request.urlopen(http_server.url_for("one"), timeout=10).read()
            HANDLES.append(http_server)

        def test_two(http_server, served_dir):
            (served_dir / "two").write_bytes(b"2")
            urllib.request.urlopen(http_server.url_for("two"), timeout=10).read()
            assert [r.path for r in http_server.requests] == ["/two"]
            assert [r.path for r in HANDLES[0].requests] == ["/one"]
        """
    )
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("True", "https"),
        ("'on'", "https"),
        ("'Yes'", "https"),
        ("'1'", "https"),
        ("'off'", "http"),
        ("'no'", "http"),
    ],
)
def test_the_tls_marker_and_the_factory_take_what_http_tls_takes(pytester, value, scheme):
    pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.http_server(tls={value})
        def test_marker(http_server):
            assert http_server.scheme == {scheme!r}

        def test_factory(http_server_factory):
            assert http_server_factory(tls={value}).scheme == {scheme!r}
        """
    )
    pytester.runpytest("--http-tls=mutual").assert_outcomes(passed=2)
