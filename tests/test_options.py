"""Options, ini keys, the report header and bad values, through pytester."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from subprocess_runs import plain_pytest

SERVED = """
    import urllib.request
    def test_it(http_url):
        assert urllib.request.urlopen(http_url + "/image.raw").read() == b"from root"
"""


@pytest.fixture
def root(pytester):
    path = pytester.mkdir("images")
    (path / "image.raw").write_bytes(b"from root")
    return path


def test_http_root_serves_that_directory(pytester, root):
    pytester.makepyfile(SERVED)
    pytester.runpytest("--http-root", "images").assert_outcomes(passed=1)


def test_the_ini_key_works_relative_to_the_ini_file(pytester, root):
    pytester.makeini("[pytest]\nhttp_root = images\n")
    pytester.makepyfile(SERVED)
    sub = pytester.mkdir("elsewhere")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sub)
        result = pytester.runpytest(str(pytester.path))
    result.assert_outcomes(passed=1)


def test_the_command_line_beats_the_ini_file(pytester, root):
    pytester.makeini("[pytest]\nhttp_scope = session\n")
    pytester.makepyfile(
        """
        PORTS = []
        def test_one(http_server): PORTS.append(http_server.port)
        def test_two(http_server): PORTS.append(http_server.port)
        def test_ports_differ(): assert PORTS[0] != PORTS[1]
        """
    )
    pytester.runpytest("--http-scope", "function").assert_outcomes(passed=3)


def test_the_header_shows_the_effective_settings(pytester, root):
    result = pytester.runpytest("--http-root", "images", "--http-scope", "session")
    result.stdout.fnmatch_lines(
        ["jumpstarter-http: backend=auto, scope=session, root=*images, host=127.0.0.1, port=any free"]
    )


def test_options_and_ini_keys_are_documented_in_help(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*--http-root=DIR*",
            "*--http-scope=SCOPE*",
            "*--http-port=PORTS*",
            "*--http-keep*",
            "*http_root (string)*",
            "*http_keep (string)*",
        ]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--http-root", "missing"],
            "--http-root (command line): 'missing' is not valid; the directory does not exist*",
        ),
        (["--http-root", "file.txt"], "--http-root (command line): 'file.txt' is not valid; it is a file*"),
        (
            ["--http-scope", "module"],
            "--http-scope (command line): 'module' is not valid; use one of function, session.",
        ),
        (
            ["--http-backend", "cloud"],
            "--http-backend (command line): 'cloud' is not valid; use one of auto,*",
        ),
        (
            ["--http-port", "eighty"],
            "--http-port (command line): 'eighty' is not valid; give 0 (any free port)*",
        ),
        (
            ["--http-port", "9000-8000"],
            "*'9000-8000' is not valid; the range is reversed; write it as 8000-9000.",
        ),
        (
            ["--http-port", "70000"],
            "--http-port (command line): '70000' is not valid; give 0*within 1-65535.",
        ),
        (["--http-port", "0-10"], "--http-port (command line): '0-10' is not valid*"),
        (
            ["--http-timeout", "-1"],
            "--http-timeout (command line): '-1' is not valid; give a number of seconds*",
        ),
    ],
)
def test_a_bad_option_stops_the_run_with_one_clear_sentence(pytester, args, message):
    (pytester.path / "file.txt").write_text("not a directory")
    pytester.makepyfile("def test_never_runs(): raise AssertionError")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str()


def test_a_broken_symlink_root_is_named_as_such(pytester):
    (pytester.path / "dangling").symlink_to(pytester.path / "gone")
    result = pytester.runpytest("--http-root", "dangling")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*'dangling' is not valid; the directory does not exist (a broken symbolic link)*"]
    )


def as_unprivileged_user(command: list[str]) -> list[str]:
    """Root reads every directory, so run the check as nobody when the suite runs as root."""
    if os.geteuid() != 0:
        return command
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv, so no user here lacks read access")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]


def test_an_unreadable_root_is_refused():
    # A world-readable folder of its own: pytester's lives under root's private temp dir.
    where = Path(tempfile.mkdtemp())
    try:
        where.chmod(0o755)
        (where / "locked").mkdir(mode=0o000)
        (where / "test_never_runs.py").write_text("def test_it(http_url): raise AssertionError\n")
        result = subprocess.run(
            as_unprivileged_user(plain_pytest("--http-root=locked")),
            cwd=where,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        (where / "locked").chmod(0o755)
        shutil.rmtree(where)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stderr
    assert (
        "ERROR: --http-root (command line): 'locked' is not valid; the directory is not readable"
        in result.stderr
    )


def test_an_ini_value_of_the_wrong_type_names_the_ini_key(pytester):
    pytester.makeini("[pytest]\nhttp_keep = perhaps\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini key http_keep: 'perhaps' is not valid; use true or false."])


def test_a_bad_ini_value_names_the_ini_key(pytester):
    pytester.makeini("[pytest]\nhttp_port = 1-2-3\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini key http_port: '1-2-3' is not valid*"])


def test_a_fixed_port_already_in_use_is_refused_before_any_test(pytester):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = pytester.runpytest("--http-port", str(port))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --http-port: port {port} on 127.0.0.1 is already in use*"])


def test_a_fixed_port_is_refused_under_several_xdist_workers(pytester):
    result = pytester.runpytest("--http-port", "18080", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --http-port: the fixed port 18080 cannot be shared by 2 xdist workers*"]
    )


def test_a_fixed_port_serves_test_after_test(pytester):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    pytester.makepyfile(
        f"""
        import pytest
        @pytest.mark.parametrize("n", range(3))
        def test_it(http_server, n):
            assert http_server.port == {port}
        """
    )
    pytester.runpytest("--http-port", str(port)).assert_outcomes(passed=3)


def test_importing_the_plugin_imports_neither_jumpstarter_nor_aiohttp():
    code = (
        "import sys, pytest_jumpstarter_http.plugin; "
        "print(sorted(m for m in ('jumpstarter', 'aiohttp', 'grpc', 'anyio', 'opendal') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_plugin_can_be_disabled(pytester):
    pytester.makepyfile("def test_it(http_url): pass")
    result = pytester.runpytest("-p", "no:jumpstarter_http")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'http_url' not found*"])


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])
def test_an_address_this_machine_cannot_bind_is_refused_before_any_test(pytester, host):
    pytester.makepyfile("def test_never_runs(http_url): raise AssertionError")
    result = pytester.runpytest("--http-host", host)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --http-host: {host!r} is not valid*give an address of this machine*"]
    )
