"""pytest hooks, then fixtures, of pytest-jumpstarter-http; the work is in the modules beside it.

Nothing heavy is imported here: jumpstarter and aiohttp load when a fixture first needs them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import eventloop, markers, options, preflight, reports

if TYPE_CHECKING:
    from .handle import HttpServerHandle
    from .runtime import HttpServerFactory, Runtime

#: The base class of jumpstarter-testing, whose class-scoped ``client`` fixture holds the board.
_JUMPSTARTER_TEST = "jumpstarter_testing.pytest.JumpstarterTest"

SETTINGS = pytest.StashKey[options.Settings]()
#: Who reads a test's request log: the terminal (-rP, -rA), JUnit XML, pytest-html.
READERS = pytest.StashKey[reports.Readers]()
#: The servers a test used, for its report.
SERVERS: pytest.StashKey[list[HttpServerHandle]] = pytest.StashKey()
#: Whether a test failed (in its set-up or call): ``--http-keep=failed`` keeps its folders.
FAILED = pytest.StashKey[bool]()
#: The server a test gets (see ``_choice``), chosen once per test.
CHOICE = pytest.StashKey[markers.Choice]()
#: What the run keeps: its roots, backends and session servers, made when a fixture first needs it.
RUNTIME: pytest.StashKey[Runtime] = pytest.StashKey()
#: The run's id: xdist gives its workers the controller's, a run of its own makes one up.
RUN_ID = pytest.StashKey[str]()
#: The plugin's folder below pytest's basetemp, once the process made a root in it.
FOLDER = pytest.StashKey[Path]()
#: How many folders ``--http-keep`` kept, by the folder they are in: this process's and its workers'.
KEPT = pytest.StashKey[dict[str, int]]()
#: The exporters' servers that remove what ``--http-keep`` kept when the session ends: this
#: process's and its workers'.
REMOVING = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for line in markers.MARKERS:
        config.addinivalue_line("markers", line)
    config.stash[SETTINGS] = settings = options.resolve(config)
    preflight.check(settings, config)
    config.stash[READERS] = readers = reports.Readers.of(config, settings)
    if readers.html_without:
        config.pluginmanager.register(reports.HtmlRows(), "jumpstarter_http_html")
    config.stash[KEPT], config.stash[REMOVING] = {}, []
    if config.pluginmanager.hasplugin("xdist"):
        xdist_kept = reports.XdistKept(config.stash[KEPT], config.stash[REMOVING])
        config.pluginmanager.register(xdist_kept, "jumpstarter_http_xdist")
    run_id = getattr(config, "workerinput", {}).get("testrunuid") or uuid.uuid4().hex
    config.stash[RUN_ID] = run_id[:12]
    eventloop.acquire()


def pytest_report_header(config: pytest.Config) -> str:
    return config.stash[SETTINGS].header()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    servers = item.stash.get(SERVERS, [])
    if call.when == "call" and servers:
        reports.add(item, report, servers, item.config.stash[SETTINGS], item.config.stash[READERS])
    if call.when == "teardown":
        reports.add_to_teardown(item, report)
    # As pytest's tmp_path records it for its retention policy; after --http-fail-on had its say.
    if report.failed:
        item.stash[FAILED] = True
    if call.when == "teardown" and CHOICE in item.stash:  # a rerun chooses again
        del item.stash[CHOICE]
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    runtime = config.stash.get(RUNTIME, None)
    for line in runtime.summary() if runtime else ():
        terminalreporter.write_line(line)
    keep = config.stash[SETTINGS].keep
    if keep != "none":
        terminalreporter.write_line(reports.kept_line(keep, config.stash[KEPT]))
        removing = reports.removing_line(config.stash[REMOVING])
        if removing is not None:
            terminalreporter.write_line(removing, yellow=True)
    # Counted from the reports, which xdist brings back from its workers.
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        if reason.startswith("Skipped: " + markers.NO_EXPORTER):
            reason = reason.removeprefix("Skipped: " + markers.NO_EXPORTER)
            reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        tests = "test was" if count == 1 else "tests were"
        terminalreporter.write_line(
            f"jumpstarter-http: {count} {tests} skipped for want of an exporter: {reason}", yellow=True
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    runtime = config.stash.get(RUNTIME, None)
    if runtime is not None:
        runtime.close(failed=session.testsfailed > 0)
    if config.stash[SETTINGS].keep != "none":
        kept = reports.kept_in(config.stash.get(FOLDER, None)) | (runtime.kept() if runtime else {})
        config.stash[KEPT].update(kept)
        removing = runtime.removing() if runtime else []
        config.stash[REMOVING].extend(removing)
        # An xdist worker has no terminal: its controller prints what it kept.
        getattr(config, "workeroutput", {})[reports.KEPT_OUTPUT] = kept
        getattr(config, "workeroutput", {})[reports.REMOVING_OUTPUT] = removing


def pytest_unconfigure(config: pytest.Config) -> None:
    if RUN_ID in config.stash:  # configured in full
        eventloop.release()


@pytest.fixture
def http_exporter_client(request: pytest.FixtureRequest) -> Any:
    """The Jumpstarter client whose exporter serves this test's files, or None to let the plugin connect.

    By default, the ``client`` fixture of a test in a ``jumpstarter_testing.pytest.JumpstarterTest``
    class, else None. Override it to return the client your suite already holds (the root
    ``DriverClient`` of your lease or ``env()``): the plugin then uses that exporter's HttpServer
    and never opens a session or lease of its own, so it serves next to the very board the test
    drives. Such servers live per test, as the client may end with its class.
    """
    return request.getfixturevalue("client") if _in_a_jumpstarter_test(request) else None


@pytest.fixture
def served_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The local directory ``http_server`` serves, as a ``pathlib.Path``.

    A fresh empty temporary directory per test (per session with ``--http-scope=session``),
    removed afterwards unless ``--http-keep``; or the ``--http-root`` directory (or the
    ``http_server(root=...)`` marker's), which the plugin never changes. On an exporter, a file
    written here is sent when the device first asks for it (the stock driver's: on ``url_for()``
    or ``publish()``). Override it in a conftest.py to serve a directory of your own.
    """
    root = markers.chosen_root(request.node, request.config.stash[SETTINGS])
    runtime = _runtime(request.config)
    with runtime.served_dir(_choice(request), root, request.node.name, lambda: _failed(request)) as path:
        yield path


@pytest.fixture
def http_server(request: pytest.FixtureRequest, served_dir: Path) -> Iterator[HttpServerHandle]:
    """A running HTTP server that serves ``served_dir``, as an ``HttpServerHandle``.

    It is Jumpstarter's own ``HttpServer`` driver: on loopback it runs in this process on a free
    port; inside ``jmp shell`` or with ``--http-selector`` it is the exporter's server next to the
    device. Fresh per test, or one per process with ``--http-scope=session`` or
    ``@pytest.mark.http_server(scope="session")``. Use ``.url``, ``.url_for(name)``,
    ``.stage(path)``, ``.requests``, ``.assert_requested(path)``, ``.inject(path, ...)`` and
    ``.client``. The faults a test injects (or marks with ``http_fault``) end with the test.
    With ``--http-tls=on`` or ``@pytest.mark.http_server(tls=True)`` it serves HTTPS: ``.ca_cert``
    is the CA certificate the device must trust (``.client_cert`` its certificate, for mutual TLS).
    """
    runtime = _runtime(request.config)
    with runtime.server(_choice(request), served_dir, lambda: _failed(request)) as server:
        markers.inject_marked_faults(request.node, server)
        yield _watch(request, server)


@pytest.fixture
def http_url(http_server: HttpServerHandle) -> str:
    """The base URL of ``http_server`` as the device under test sees it, a ``str`` with no trailing slash.

    ``f"{http_url}/image.raw"`` serves ``--http-root``'s ``image.raw`` on loopback and on an
    exporter alike. A file a test writes into ``served_dir`` is served at once on loopback; on
    an exporter it is uploaded by ``http_server.url_for(name)``, so prefer that for such files.
    """
    return http_server.url


@pytest.fixture
def http_server_factory(request: pytest.FixtureRequest) -> Iterator[HttpServerFactory]:
    """Start more servers in one test: ``http_server_factory(root=None, backend="loopback", tls=False)``.

    Each call returns a new ``HttpServerHandle`` on its own root (a fresh temporary directory
    by default); every server it made is stopped when the test ends.
    """
    from .runtime import HttpServerFactory

    factory = HttpServerFactory(_runtime(request.config), lambda server: _watch(request, server))
    try:
        yield factory
    finally:
        factory.close(failed=_failed(request))


def _runtime(config: pytest.Config) -> Runtime:
    """What the run keeps, made when a fixture first needs it: a run that serves nothing imports
    none of it."""
    if RUNTIME not in config.stash:
        from .runtime import Runtime

        settings, run_id = config.stash[SETTINGS], config.stash[RUN_ID]
        config.stash[RUNTIME] = Runtime(settings, lambda: _basetemp(config), run_id, _terminal_lines(config))
    return config.stash[RUNTIME]


def _choice(request: pytest.FixtureRequest) -> markers.Choice:
    """The server this test gets, from its markers, the settings and its Jumpstarter client:
    resolved once per test, by whichever of ``served_dir`` and ``http_server`` asks first."""
    item: pytest.Item = request.node
    if CHOICE not in item.stash:
        client = request.getfixturevalue("http_exporter_client") if _may_hold_a_board(request) else None
        item.stash[CHOICE] = markers.choose(item, request.config.stash[SETTINGS], client)
    return item.stash[CHOICE]


def _may_hold_a_board(request: pytest.FixtureRequest) -> bool:
    """Whether ``http_exporter_client`` can give this test a client: it is a ``JumpstarterTest``,
    or a conftest, module or class overrides the fixture, or the test asks for it itself.

    Any other test gets None from it, so it is not set up for them: it is off the per-test path.
    """
    if _in_a_jumpstarter_test(request) or "http_exporter_client" in request.fixturenames:
        return True
    # pytest has no public lookup of the fixture a node sees under a name;
    # tests/test_private_apis.py fails loudly if this one moves.
    definitions = request._fixturemanager.getfixturedefs("http_exporter_client", request.node) or ()
    return bool(definitions) and definitions[-1].func.__module__ != __name__


def _in_a_jumpstarter_test(request: pytest.FixtureRequest) -> bool:
    """Whether the test is a method of a ``jumpstarter_testing`` ``JumpstarterTest`` class."""
    return any(
        f"{base.__module__}.{base.__qualname__}" == _JUMPSTARTER_TEST
        for base in getattr(request.cls, "__mro__", ())
    )


def _basetemp(config: pytest.Config) -> Path:
    """The plugin's folder below pytest's basetemp, asked when the first root is made."""
    # pytest attaches its TempPathFactory to the config in pytest_configure for plugins like this
    # one, which need it outside a fixture; tests/test_private_apis.py fails loudly if it moves.
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    config.stash[FOLDER] = folder = factory.getbasetemp() / "http"
    return folder


def _terminal_lines(config: pytest.Config) -> Callable[[str], None] | None:
    """Write a line to the terminal, past output capture; None under -q."""
    if config.get_verbosity() < 0:
        return None

    def write(line: str) -> None:
        # Looked up when used: the terminal and capture plugins register after this one configures.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)

    return write


def _failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test failed so far (its set-up or call): read as its fixtures end."""
    return bool(request.node.stash.get(FAILED, False))


def _watch(request: pytest.FixtureRequest, server: HttpServerHandle) -> HttpServerHandle:
    """Show the requests ``server`` answers during this test in the test's report."""
    request.node.stash.setdefault(SERVERS, []).append(server)
    return server
