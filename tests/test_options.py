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
    pytester.runpytest("--http-root=images").assert_outcomes(passed=1)


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
    result = pytester.runpytest("--http-root=images", "--http-scope", "session")
    result.stdout.fnmatch_lines(
        ["jumpstarter-http: backend=loopback, scope=session, root=*images, host=127.0.0.1, port=any free"]
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
        (
            ["--http-root=" + "a" * 5000],
            "--http-root (command line): 'aaa*…*aaa' (5000 characters) is not valid; "
            "the path is too long for this system (a name over 255 or a path over 4096 characters); "
            "give an existing directory.",
        ),
        (
            ["--http-host=[localhost]"],
            "--http-host (command line): '[localhost]' is not valid; brackets enclose only an IPv6 address; "
            "write localhost.",
        ),
        (
            ["--http-url-host=http://10.0.0.1"],
            "--http-url-host (command line): 'http://10.0.0.1' is not valid; "
            "give the host alone, without a scheme, like 10.0.0.1.",
        ),
        (
            ["--http-url-host=build.lab:8080"],
            "--http-url-host (command line): 'build.lab:8080' is not valid; "
            "give the host alone, like build.lab; a URL's port is its server's own.",
        ),
        (
            ["--http-url-host=a b"],
            "--http-url-host (command line): 'a b' is not valid; "
            "give a host name, an IPv4 address or an IPv6 address, like 10.0.0.5 or build.lab.",
        ),
        (
            ["--http-url-host=x/y?"],
            "--http-url-host (command line): 'x/y?' is not valid; give a host name, an IPv4 address*",
        ),
        (
            ["--http-report=xml"],
            "--http-report (command line): 'xml' is not valid; use junit, html, junit,html or none.",
        ),
        (
            ["--http-selector=!!!=,="],
            "--http-selector (command line): '!!!=,=' is not valid; '!!!=' is no label requirement; "
            "give requirements separated by commas, like board=rpi4,!busy or board in (rpi4,rpi5).",
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


def test_an_ini_root_with_a_name_over_255_characters_names_the_ini_key(pytester):
    pytester.makeini(f"[pytest]\nhttp_root = {'b' * 300}\n")
    pytester.makepyfile("def test_never_runs(): raise AssertionError")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: ini key http_root: 'bbb*…*bbb' (300 characters) is not valid; the path is too long*"]
    )
    assert "Traceback" not in result.stderr.str()


def test_a_marker_root_that_is_no_path_fails_its_test_with_one_sentence(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.http_server(root=123)
        def test_it(http_url): raise AssertionError
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.http_server(root=...): 123 is not valid; "
            "give the directory as a str or a pathlib.Path."
        ]
    )
    assert "TypeError" not in result.stdout.str()


def test_a_bracketed_ipv6_host_binds_the_ipv6_loopback(pytester):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"this machine has no IPv6 loopback ({exc.strerror})")
    pytester.makepyfile(
        """
        import urllib.request
        def test_it(http_server):
            (http_server.root / "hello.txt").write_text("hello")
            assert http_server.url.startswith("http://[::1]:")
            assert urllib.request.urlopen(http_server.url + "/hello.txt").read() == b"hello"
        """
    )
    result = pytester.runpytest("--http-host=[::1]")
    result.stdout.fnmatch_lines(["jumpstarter-http: *host=::1, port=any free*"])
    result.assert_outcomes(passed=1)


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


def run_as_unprivileged_user(*args: str, ini: str = "") -> subprocess.CompletedProcess[str]:
    """pytest with ``args`` as nobody (when root), in a folder holding an unreadable ``locked/images``.

    A world-readable folder of its own, owned by the user who runs the check, with HOME and TMPDIR
    in it: pytester's folder lives under root's private temp dir, which nobody cannot enter.
    """
    where = Path(tempfile.mkdtemp())
    try:
        where.chmod(0o755)
        (where / "locked" / "images").mkdir(parents=True)
        (where / "locked").chmod(0o000)
        (where / "tox.ini").write_text(f"[pytest]\n{ini}\n")
        (where / "test_never_runs.py").write_text("def test_it(http_url): raise AssertionError\n")
        if os.geteuid() == 0:
            os.chown(where, 65534, 65534)
        return subprocess.run(
            as_unprivileged_user(plain_pytest(*args)),
            cwd=where,
            env={**os.environ, "HOME": str(where), "TMPDIR": str(where), "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        (where / "locked").chmod(0o755)
        shutil.rmtree(where)


def test_an_unreadable_root_is_refused():
    result = run_as_unprivileged_user("--http-root=locked")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stderr
    assert (
        "ERROR: --http-root (command line): 'locked' is not valid; the directory is not readable"
        in result.stderr
    )


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except OSError:
        pytest.skip("no /proc/sys/net/ipv4/ip_unprivileged_port_start: not Linux, or a kernel before 4.11")


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--http-port=80"],
            "",
            "--http-port (command line): '80' is not valid; ports below {start} need root or "
            "CAP_NET_BIND_SERVICE here; give a port from {start} to 65535, or 0 for any free port.",
        ),
        (
            ["--http-port=80-90"],
            "",
            "--http-port (command line): '80-90' is not valid; ports below {start} need root or "
            "CAP_NET_BIND_SERVICE here; give a port from {start} to 65535, or 0 for any free port.",
        ),
        (
            [],
            "http_port = 80",
            "ini key http_port: '80' is not valid; ports below {start} need root*",
        ),
        (
            ["--http-port={below}-{above}"],
            "",
            "--http-port (command line): '{below}-{above}' is not valid; ports below {start} need root or "
            "CAP_NET_BIND_SERVICE here; give {start}-{above}.",
        ),
        (
            ["--http-root=locked/images"],
            "",
            "--http-root (command line): 'locked/images' is not valid; "
            "this user may not look inside a folder on the way to it; give an existing directory.",
        ),
    ],
)
def test_a_setting_this_user_cannot_use_is_refused_before_any_test(args, ini, message):
    start = unprivileged_port_start()
    if start <= 90:
        pytest.skip(f"every port from {start} up is unprivileged here")
    values = {"start": start, "below": start - 24, "above": start + 6}
    result = run_as_unprivileged_user(*(arg.format(**values) for arg in args), ini=ini)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    pytest.LineMatcher(result.stderr.splitlines()).fnmatch_lines(["ERROR: " + message.format(**values)])
    assert "--http-host" not in result.stderr


@pytest.mark.parametrize(
    ("value", "shown"),
    [("junit", "report=junit"), ("HTML", "report=html"), ("html, junit", ""), ("none", "report=none")],
)
def test_http_report_takes_a_list_of_reports_and_the_header_shows_a_changed_one(pytester, value, shown):
    pytester.makeini(f"[pytest]\nhttp_report = {value}\n")
    header = [line for line in pytester.runpytest().outlines if line.startswith("jumpstarter-http:")]
    assert header[0].endswith(shown) if shown else "report=" not in header[0]


def test_an_ini_value_of_the_wrong_type_names_the_ini_key(pytester):
    pytester.makeini("[pytest]\nhttp_keep = perhaps\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: ini key http_keep: 'perhaps' is not valid; use all, failed or none (on the "
            "command line --http-keep=failed; alone, it keeps all)."
        ]
    )


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


def test_a_run_that_serves_nothing_builds_no_runtime(pytester):
    # What a run keeps (roots, backends, the test CA) is built for the first fixture that serves:
    # every pytest run where the plugin is installed pays for importing it otherwise.
    pytester.makepyfile(
        """
        import sys

        def test_plain():
            assert "pytest_jumpstarter_http.runtime" not in sys.modules

        def test_serving(http_url):
            assert "pytest_jumpstarter_http.runtime" in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=2)


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


def test_http_root_as_two_arguments_warns_that_pytest_moved_the_rootdir(pytester, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    pytester.makeini("[pytest]\nhttp_scope = session\n")
    pytester.makepyfile("def test_it(http_url): pass")
    result = pytester.runpytest("--http-root", str(outside))
    moved = os.path.commonpath([pytester.path, outside])
    result.stdout.fnmatch_lines(
        [
            "jumpstarter-http: *scope=function*",  # the project's ini file was not read
            f"rootdir: {moved}",
            f"*PytestConfigWarning: --http-root {outside} was given as two arguments, so pytest took "
            f"'{outside}' for a test path when it chose the rootdir ({moved}) and the ini file (none); "
            f"write --http-root={outside} instead.",
        ]
    )
    result.assert_outcomes(passed=1)


def test_http_root_with_an_equals_sign_keeps_the_projects_rootdir_and_ini_file(pytester, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    pytester.makeini("[pytest]\nhttp_scope = session\n")
    pytester.makepyfile("def test_it(http_url): pass")
    result = pytester.runpytest(f"--http-root={outside}")
    result.stdout.fnmatch_lines(["jumpstarter-http: *scope=session*", f"rootdir: {pytester.path}"])
    result.assert_outcomes(passed=1)


def test_a_value_that_names_no_path_may_follow_its_option_as_a_second_argument(pytester):
    pytester.makepyfile("def test_it(http_url): pass")
    result = pytester.runpytest("--http-scope", "session", "--http-port", "0")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("word", "settings"),
    [
        ("true", ("on", "all", ("junit", "html"))),
        ("YES", ("on", "all", ("junit", "html"))),
        (" on ", ("on", "all", ("junit", "html"))),
        ("1", ("on", "all", ("junit", "html"))),
        ("false", ("off", "none", ())),
        ("No", ("off", "none", ())),
        ("off", ("off", "none", ())),
        ("0", ("off", "none", ())),
    ],
)
def test_every_option_that_turns_something_on_reads_the_same_words(pytester, word, settings):
    pytester.makeini(f"[pytest]\nhttp_tls = {word}\nhttp_report = {word}\n")
    pytester.makepyfile(
        f"""
        from pytest_jumpstarter_http.plugin import SETTINGS

        def test_it(pytestconfig):
            settings = pytestconfig.stash[SETTINGS]
            assert (settings.tls, settings.keep, settings.report) == {settings!r}
        """
    )
    pytester.runpytest(f"--http-keep={word}").assert_outcomes(passed=1)


def test_a_word_value_reads_the_same_in_any_case(pytester):
    pytester.makepyfile("def test_it(http_server): pass")
    result = pytester.runpytest("--http-scope=Session", "--http-backend=LOOPBACK", "--http-tls=Mutual")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["jumpstarter-http: backend=loopback, scope=session, *, tls=mutual"])
