"""What the reports say of the servers: a test's request log (the terminal's section, JUnit XML
and pytest-html, each bounded), and where ``--http-keep`` kept the run's folders.

Where each reader finds it (issue 27):

* the terminal: a *Captured HTTP requests* section of the call's report, for a failed test
  (and a passing one under ``-rP``/``-rA``);
* pytest-html: the same section, which it shows in the test's row with every other section; so
  every test's report carries it while an HTML report is written, and when ``--http-report``
  leaves ``html`` out, the section is taken out of the rows again (:class:`HtmlRows`);
* JUnit XML: ``<property>`` elements of the test, as ``record_property`` writes them; or, when
  ``junit_logging`` writes the captured output, the test's ``<system-out>``. pytest's junitxml
  writes there only the sections named *Captured stdout ...* of the teardown's report, so the
  log is added to that report under such a name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest

from .options import Settings

if TYPE_CHECKING:
    from .handle import HttpServerHandle
    from .values import Keep

#: The title of the terminal's section, which pytest-html shows too.
SECTION = "Captured HTTP requests"
#: junitxml puts a teardown report's sections of this prefix into ``<system-out>``.
SYSTEM_OUT_SECTION = "Captured stdout HTTP requests"
#: The most requests of one server a report lists: the first and the last half of them.
MAX_REQUESTS = 100
#: The longest request line a report shows: a name may be 4096 bytes long.
MAX_LINE = 500
#: The JUnit property of each server, then of each of its requests, in order.
SERVER_PROPERTY = "http_server"
REQUEST_PROPERTY = "http_request"

#: The log of one test, for JUnit's ``<system-out>``: written into its teardown's report.
SYSTEM_OUT = pytest.StashKey[str]()


@dataclass(frozen=True)
class Readers:
    """Who reads the request log of a test besides the terminal, worked out once per run."""

    #: The terminal shows passing tests' sections (-rP, -rA).
    passed_sections: bool = False
    #: pytest-html writes a report and ``--http-report`` includes html.
    html: bool = False
    #: pytest-html writes a report and ``--http-report`` leaves html out.
    html_without: bool = False
    #: Where JUnit XML gets it, or None when no JUnit XML is written or ``--http-report`` leaves it out.
    junit: Literal["properties", "system-out"] | None = None

    @classmethod
    def of(cls, config: pytest.Config, settings: Settings) -> Readers:
        html_report = bool(getattr(config.option, "htmlpath", None))
        junit: Literal["properties", "system-out"] | None = None
        if getattr(config.option, "xmlpath", None) and "junit" in settings.report:
            junit = "system-out" if _junit_writes_system_out(config) else "properties"
        return cls(
            passed_sections=any(char in (config.option.reportchars or "") for char in "PA"),
            html=html_report and "html" in settings.report,
            html_without=html_report and "html" not in settings.report,
            junit=junit,
        )

    @property
    def read_passed(self) -> bool:
        """Whether a reader wants a passing test's log."""
        return self.passed_sections or self.html or self.junit is not None

    def section_wanted(self, report: pytest.TestReport) -> bool:
        """Whether ``report`` (a call's) carries the section: the terminal or pytest-html shows it."""
        return not report.passed or self.passed_sections or self.html


def _junit_writes_system_out(config: pytest.Config) -> bool:
    """Whether junitxml writes the teardown's captured stdout for every test (``junit_logging``)."""
    # With junit_log_passing_tests=false it writes only a failed call's report, which was made
    # before the plugin could add to it: the properties are the one place left.
    return config.getini("junit_logging") in ("system-out", "out-err", "all") and bool(
        config.getini("junit_log_passing_tests")
    )


@dataclass(frozen=True)
class ServerLog:
    """What one server answered during a test, as a report shows it."""

    label: str
    #: The request lines, at most ``MAX_REQUESTS`` and a line that says how many are left out.
    lines: tuple[str, ...]
    #: Why the log could not be read, or None.
    unavailable: str | None = None

    def text(self) -> str:
        if self.unavailable is not None:
            return f"{self.label}: request log unavailable: {self.unavailable}"
        return f"{self.label}:\n" + ("\n".join(self.lines) or "(no requests)")

    def properties(self) -> Iterator[tuple[str, str]]:
        yield SERVER_PROPERTY, self.label
        if self.unavailable is not None:
            yield REQUEST_PROPERTY, f"request log unavailable: {self.unavailable}"
        for line in self.lines:
            yield REQUEST_PROPERTY, line


def read(
    servers: list[HttpServerHandle], fail_on: tuple[str, ...], report: pytest.TestReport
) -> list[ServerLog]:
    """Each server's log of the test, bounded; fail a passing ``report`` on a status of ``--http-fail-on``."""
    return [_read(server, fail_on, report) for server in servers]


def _read(server: HttpServerHandle, fail_on: tuple[str, ...], report: pytest.TestReport) -> ServerLog:
    from .connect import ExporterError
    from .records import RequestLogUnavailable, status_matches

    option = f"--http-fail-on {','.join(fail_on)}"
    try:
        entries = server.requests
    except (RequestLogUnavailable, ExporterError) as exc:  # the stock driver's; an exporter gone
        if fail_on and isinstance(exc, ExporterError):
            _fail(report, f"{option}: {server.label} not checked: {exc}")
        return ServerLog(server.label, (), str(exc))
    # A status the test injected (a fault's) is not the server failing.
    bad = [entry for entry in entries if not entry.injected and status_matches(entry.status, fail_on)]
    if bad:
        _fail(report, f"{option}: {server.label} answered " + "; ".join(entry.line() for entry in bad))
    return ServerLog(server.label, _bounded([entry.line() for entry in entries]))


def check(report: pytest.TestReport, servers: list[HttpServerHandle], strict: bool) -> None:
    """Fail a passing call's ``report`` on what a server's ``check()`` finds: a request out of order
    always, and under ``--http-strict`` everything it lists, as ``--http-fail-on`` fails a test."""
    from .connect import ExporterError
    from .records import RequestLogUnavailable

    for server in servers:
        try:
            problems = server._problems(strict=strict)
        except RequestLogUnavailable:
            continue  # the stock driver: its report says the log is unavailable
        except ExporterError as exc:  # it asked only because there was something to check
            problems = ("" if strict else "its ordered replies ") + f"not checked: {exc}"
        if problems:
            _fail(report, ("--http-strict: " if strict else "") + f"{server.label}: {problems}")
            return


def _fail(report: pytest.TestReport, why: str) -> None:
    """Fail a passing ``report`` for ``why``; one that failed already keeps its own reason."""
    if report.passed:
        report.outcome = "failed"
        report.longrepr = why


def _bounded(lines: list[str]) -> tuple[str, ...]:
    """The first and last ``MAX_REQUESTS // 2`` lines, each cut at ``MAX_LINE`` characters."""
    cut = [line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…" for line in lines]
    if len(cut) <= MAX_REQUESTS:
        return tuple(cut)
    half = MAX_REQUESTS // 2
    left_out = len(cut) - 2 * half
    return (
        *cut[:half],
        f"… {left_out} requests not shown (http_server.requests has them all) …",
        *cut[-half:],
    )


def text(logs: list[ServerLog]) -> str:
    return "\n".join(log.text() for log in logs)


def add(
    item: pytest.Item,
    report: pytest.TestReport,
    servers: list[HttpServerHandle],
    settings: Settings,
    readers: Readers,
) -> None:
    """Read the servers' logs for a call's ``report`` if a reader wants them, and give it to each."""
    _fail_on_handlers(item, report, servers)
    if report.passed:
        check(report, servers, settings.strict)
    if report.passed and not (settings.fail_on or readers.read_passed):
        return  # a passing test whose log nobody reads: asking an exporter for it is wasted time
    logs = read(servers, settings.fail_on, report)
    if readers.section_wanted(report):
        report.sections.append((SECTION, text(logs)))
    if readers.junit == "properties":
        # As record_property does: the teardown's report copies them, and junitxml writes that one's.
        item.user_properties.extend(prop for log in logs for prop in log.properties())
    elif readers.junit == "system-out":
        item.stash[SYSTEM_OUT] = text(logs)


def _fail_on_handlers(item: pytest.Item, report: pytest.TestReport, servers: list[HttpServerHandle]) -> None:
    """Fail the test whose handler raised (``respond(handler=)``), with the handler's traceback;
    a test that failed already shows it in a section."""
    errors = [error for server in servers for error in server.handler_errors]
    if not errors:
        return
    shown = [
        f"{type(error).__name__}: {error}"  # a mistake in what it returned: the sentence is all
        if error.__traceback__ is None
        else str(item.repr_failure(pytest.ExceptionInfo.from_exception(error)))
        for error in errors
    ]
    if report.passed:
        _fail(report, "a handler of respond() raised; the device got a 500:\n" + "\n\n".join(shown))
    else:
        report.sections.append(("a handler of respond() raised", "\n\n".join(shown)))


def add_to_teardown(item: pytest.Item, report: pytest.TestReport) -> None:
    """Give the teardown's ``report`` the log junitxml writes into ``<system-out>``, if it has one."""
    log = item.stash.get(SYSTEM_OUT, None)
    if log is not None:
        del item.stash[SYSTEM_OUT]  # a rerun reads its own
        report.sections.append((SYSTEM_OUT_SECTION, f"{SECTION}:\n{log}\n"))


class HtmlRows:
    """pytest-html's hook, registered only when that plugin writes a report and ``--http-report``
    leaves html out: it takes the section out of the rows, as pytest-html shows every section."""

    @staticmethod
    def pytest_html_results_table_html(report: pytest.TestReport, data: list[str]) -> None:
        # pytest-html's own header line of a section (basereport.py's _process_logs).
        header = f"{' ' + SECTION + ' ':-^80}\n"
        data[:] = [entry for entry in data if not entry.startswith(header)]


#: What an xdist worker kept, in the output it sends its controller as it ends.
KEPT_OUTPUT = "jumpstarter_http_kept"
#: The servers an xdist worker used that remove what it kept when the Jumpstarter session ends.
REMOVING_OUTPUT = "jumpstarter_http_removing"


def kept_in(folder: Path | None) -> dict[str, int]:
    """How many folders are left in the plugin's ``folder`` (None: it made none) once its run has
    removed its own: the ones ``--http-keep`` kept, as the folder is made fresh for each run."""
    if folder is None or not folder.is_dir():
        return {}
    return {str(folder): sum(1 for _ in folder.iterdir())}


def kept_line(keep: Keep, kept: dict[str, int]) -> str:
    """The run summary's one line of where ``--http-keep`` kept folders, of every process of the run:
    ``kept`` counts them by folder, a local path or a folder on an exporter as ``Backend.kept`` names it."""
    counted = {each: count for each, count in kept.items() if count}
    if not counted:
        why = " (no test that had one failed)" if keep == "failed" else ""
        return f"jumpstarter-http: --http-keep={keep} kept no folders{why}"
    here = sorted(filter(os.path.isabs, counted))
    away = [f"{_folders(counted[each])} in {each}" for each in sorted(counted) if each not in here]
    return f"jumpstarter-http: --http-keep={keep} kept " + "; and ".join(
        ([_kept_here(here, counted)] if here else []) + away
    )


def _kept_here(where: list[str], kept: dict[str, int]) -> str:
    """How many folders are kept in the local folders ``where``, and where."""
    if len(where) == 1:
        return f"{_folders(kept[where[0]])} in {where[0]}"
    parent = os.path.commonpath(where)
    each = ", ".join(os.path.relpath(path, parent) for path in where)
    return f"{_folders(sum(kept[path] for path in where))} below {parent}, in {each}"


def _folders(count: int) -> str:
    return f"{count} folder" if count == 1 else f"{count} folders"


def removing_line(removing: list[str]) -> str | None:
    """The run summary's one sentence, after ``kept_line``, saying that what ``--http-keep`` kept on
    these exporters' servers goes when the Jumpstarter session ends; None for none."""
    if not removing:
        return None
    where = " and ".join(sorted(set(removing)))
    return (
        f"jumpstarter-http: what --http-keep keeps on {where} is removed when the Jumpstarter "
        "session ends, by the driver's remove_created_on_close; set remove_created_on_close: false "
        "in the exporter config to keep it."
    )


class XdistKept:
    """The controller's hook of pytest-xdist, registered only when xdist is present: it gathers
    what each worker kept, and where that is removed, for the lines of the run's summary."""

    def __init__(self, kept: dict[str, int], removing: list[str]) -> None:
        self._kept = kept
        self._removing = removing

    def pytest_testnodedown(self, node: object, error: object) -> None:
        output = getattr(node, "workeroutput", {})
        self._kept.update(output.get(KEPT_OUTPUT, {}))
        self._removing.extend(output.get(REMOVING_OUTPUT, []))
