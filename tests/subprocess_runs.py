"""Commands, pytest above all, run in a subprocess with a clean environment, and their JUnit XML reports.

A test runs pytest in a subprocess where isolation is the point (environment variables, threads,
a ``jmp shell`` around it) and judges the run by its JUnit XML report, not its exit code:
``jmp shell --exporter-config`` exits 0 even when its command fails (jumpstarter#1099).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable


def write_inner_suite(where: Path, files: dict[str, str]) -> None:
    """Write an inner suite's ``files`` (name -> text) into ``where``, with an ini file that makes
    every warning an error."""
    (where / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    for name, text in files.items():
        (where / name).write_text(text)


#: Two xdist workers, one file of a device suite's xdist pair each.
XDIST_ARGS = ("-p", "xdist", "-n", "2", "--dist", "loadfile", "test_xa.py", "test_xb.py")


def write_device_suites(where: Path, suite: str, xdist: dict[str, str]) -> Path:
    """Write a device ``suite`` (as ``test_device.py``) and its ``xdist`` pair into ``where``;
    return the folder the two xdist workers meet in."""
    write_inner_suite(where, {"test_device.py": suite, **xdist})
    sync = where / "sync"
    sync.mkdir()
    return sync


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment, plus ``extra``, without what would steer a run under test.

    Gone: a Jumpstarter connection (a ``jmp shell``, a lease) and pytest's own variables
    (``PYTEST_ADDOPTS``, an xdist worker's identity, the current test).
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JMP_", "JUMPSTARTER_", "PYTEST_"))
    }
    env["TERM"] = "dumb"
    env.update(extra)
    return env


def run(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``env``, the clean one by default; stdout and stderr both go to ``stdout``.

    The caller checks the outcome, and shows the output when it is not the expected one.
    """
    return subprocess.run(
        list(command),
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def plain_pytest(*args: str) -> list[str]:
    """A pytest run of this interpreter with only the plugins a user of this one would load."""
    return [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:aiohttp", *args]


def python_pytest(*args: str, junit: str | os.PathLike[str]) -> list[str]:
    """A pytest run of this interpreter that writes its results to ``junit``."""
    return plain_pytest(f"--junitxml={junit}", *args)


RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


@dataclass
class Case:
    """One test of a JUnit XML report."""

    #: The module's dotted path, and the class if any: ``override.test_override``.
    classname: str
    name: str
    outcome: str
    message: str
    #: Seconds the test took, setup and teardown included.
    seconds: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.classname}::{self.name}"


class JUnit:
    """The results of one pytest run, read from its JUnit XML report."""

    def __init__(self, path: Path, output: str = "") -> None:
        if not path.exists():
            raise AssertionError(f"pytest wrote no report {path}; its output:\n{output}")
        #: Every test by its ``classname::name``.
        self.cases: dict[str, Case] = {}
        for element in ET.parse(path).getroot().iter("testcase"):
            case = Case(element.get("classname", ""), element.get("name", ""), "passed", "")
            case.seconds = float(element.get("time", 0))
            for kind in ("skipped", "failure", "error"):
                for result in element.findall(kind):
                    case.outcome = {"failure": "failed"}.get(kind, kind)
                    case.message += f"{result.get('message', '')}\n{result.text or ''}\n"
            # A test xdist ran again after a crash shows up twice: keep the worst outcome.
            if earlier := self.cases.get(case.id):
                case.message = earlier.message + case.message
                if RANK[earlier.outcome] > RANK[case.outcome]:
                    case.outcome = earlier.outcome
            self.cases[case.id] = case
        self.output = output

    def __getitem__(self, name: str) -> Case:
        """The test ``classname::name``, or the only one called ``name``."""
        found = [case for key, case in self.cases.items() if name in (key, case.name)]
        if len(found) != 1:
            tests = sorted(self.cases)
            raise AssertionError(f"{len(found)} tests {name!r} in the report: {tests}\n{self.output}")
        return found[0]

    def outcomes(self) -> dict[str, str]:
        """``classname::name`` -> passed, skipped, failed or error."""
        return {key: case.outcome for key, case in self.cases.items()}

    def assert_passed(self, *names: str) -> None:
        for name in names:
            case = self[name]
            assert case.outcome == "passed", f"{name} {case.outcome}:\n{case.message}\n{self.output}"

    def assert_outcome(self, name: str, outcome: str, *fragments: str) -> str:
        """Check the outcome of ``name`` and that its message holds every fragment; return it."""
        case = self[name]
        assert case.outcome == outcome, (
            f"{name} {case.outcome}, not {outcome}:\n{case.message}\n{self.output}"
        )
        for fragment in fragments:
            assert fragment in case.message, f"{fragment!r} not in the message of {name}:\n{case.message}"
        return case.message


def run_pytest(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "report",
    timeout: float = 60,
) -> JUnit:
    """Run pytest in a subprocess in ``cwd`` and read its report, ``cwd/NAME.xml``."""
    junit = cwd / f"{name}.xml"
    junit.unlink(missing_ok=True)
    done = run(python_pytest(*args, junit=junit), cwd=cwd, env=env, timeout=timeout)
    return JUnit(junit, done.stdout)
