"""Section 6: 17 tests staging the same file to a local exporter send it once, and a second run sends nothing.

Inside one ``jmp shell`` on a local exporter (the exporter config of section 4, both drivers):
one plain ``put_file`` of the file (the yardstick), then, on each driver, a suite of 17
function-scoped tests that each ``http_server.stage()`` it. Then a second ``jmp shell`` on the
same config, whose drivers keep their files, runs the suite again on each driver, and then once
more without the ``stage()`` calls (the baseline: what the fixtures alone say to the exporter).
The bytes sent are counted by a relay on the shell's socket (``wirecount.py``) over each pytest
session (``wirewindow.py``); nothing is subtracted from them. ``rpcclock.py`` times each
exporter call, to show where the time goes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from common import BENCH_DIR, PYTHON, Config, Figure, MiB, Section, at_most, child_env, run_checked
from staging import DRIVERS, JMP, STAGE_TESTS, in_shell, pytest_argv, write_exporter_config, write_stage_suite

TESTS = 17
KiB = 1024
UPLOADS_SUITE = """\
import os
from pathlib import Path

import pytest

SOURCE = Path(os.environ["BENCH_STAGE_FILE"])
STAGE = os.environ["BENCH_UPLOADS_STAGE"] == "1"


@pytest.mark.parametrize("n", range(int(os.environ["BENCH_UPLOADS_TESTS"])))
def test_stage(http_server, n):
    if STAGE:
        http_server.stage(SOURCE, "image.raw")
"""
#: The sessions measured, in the order they run, and whether their tests call stage(); each but
#: put_file once per driver, its name prefixed by the driver's (``rec first``).
FIRST, PUT_FILE, SECOND, BASELINE = "first", "put_file", "second", "baseline"


def uploads(config: Config, workdir: Path) -> Section:
    mib = config.stage_size / MiB
    section = Section("uploads", f"{TESTS} tests staging one {mib:g} MiB file to a local exporter")
    if not JMP.exists():
        section.skipped = f"{JMP} is missing (pip install jumpstarter-cli)"
        return section
    folder = workdir / "uploads"
    folder.mkdir(parents=True)
    try:
        exporter = write_exporter_config(folder, recording=True)
        source, timings = write_stage_suite(folder, config)
        (folder / "test_uploads.py").write_text(UPLOADS_SUITE)
        env = child_env(
            BENCH_STAGE_FILE=str(source),
            BENCH_STAGE_OUT=str(timings),
            BENCH_UPLOADS_TESTS=str(TESTS),
            BENCH_WIRE_COUNTS=str(folder / "wire.counts"),
            # The bench plugins, and the package wherever this run imports it from.
            PYTHONPATH=os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
        )
        put_file = pytest_argv(
            "-p", "no:jumpstarter_http", "-p", "wirewindow", f"{STAGE_TESTS}::test_put_file"
        )
        firsts = [suite(folder, driver, FIRST, stage=True) for driver in DRIVERS]
        shell(folder, exporter, env, [session(folder, PUT_FILE, put_file), *firsts])
        # A second shell: a second exporter process on the same roots, which kept the first's files.
        seconds = [
            run
            for driver in DRIVERS
            for run in (
                suite(folder, driver, SECOND, stage=True),
                suite(folder, driver, BASELINE, stage=False),
            )
        ]
        shell(folder, exporter, env, seconds)
        names = [f"{driver} {name}" for driver in DRIVERS for name in (FIRST, SECOND, BASELINE)]
        seen = {name: measured(folder, name) for name in (PUT_FILE, *names)}
        put_file_s = float(json.loads(timings.read_text())["put_file_s"])
    finally:
        shutil.rmtree(folder)
    report(section, config, seen, put_file_s)
    return section


def suite(folder: Path, driver: str, name: str, *, stage: bool) -> list[str]:
    """The command of one run of the uploads suite on ``driver``, measured as ``driver name``."""
    flags = ("-p", "wirewindow", "-p", "rpcclock", "-p", "benchclock", "--http-backend", "exporter")
    argv = pytest_argv(*flags, f"--http-driver={driver}", "test_uploads.py")
    command = session(folder, f"{driver} {name}", argv)
    return ["env", f"BENCH_UPLOADS_STAGE={int(stage)}", *command]


def session(folder: Path, name: str, argv: list[str]) -> list[str]:
    """``argv`` with its measurements going to files of ``folder`` named after ``name``."""
    return [
        "env",
        f"BENCH_WIRE_OUT={folder / f'{name}.wire.json'}",
        f"BENCH_RPC_OUT={folder / f'{name}.rpc.json'}",
        f"BENCH_CLOCK_OUT={folder / f'{name}.clock.json'}",
        *argv,
    ]


def shell(folder: Path, exporter: Path, env: dict[str, str], commands: list[list[str]]) -> None:
    """Run ``commands`` one after another in one ``jmp shell``, behind the byte-counting relay."""
    script = " && ".join(shlex.join(command) for command in commands)
    relay = [PYTHON, str(BENCH_DIR / "wirecount.py"), env["BENCH_WIRE_COUNTS"], "--", "sh", "-c", script]
    run_checked(in_shell(exporter, *relay), cwd=folder, env=env)


def measured(folder: Path, name: str) -> dict[str, Any]:
    """What the session ``name`` wrote: its wire bytes and wall time, and its exporter calls if timed."""
    seen: dict[str, Any] = json.loads((folder / f"{name}.wire.json").read_text())
    rpc = folder / f"{name}.rpc.json"
    seen["rpc"] = json.loads(rpc.read_text()) if rpc.exists() else {}
    clock = folder / f"{name}.clock.json"
    seen["clock"] = json.loads(clock.read_text()) if clock.exists() else {"loop": None, "tests": []}
    return seen


def report(section: Section, config: Config, seen: dict[str, dict[str, Any]], put_file_s: float) -> None:
    section.figures["put_file wire bytes / file size"] = Figure(seen[PUT_FILE]["up"] / config.stage_size, "x")
    for driver, label in DRIVERS.items():
        first, second, baseline = (seen[f"{driver} {name}"] for name in (FIRST, SECOND, BASELINE))
        figures = section.figures
        figures[f"{label}: wire bytes / file size"] = at_most(first["up"] / config.stage_size, 1.1, "x")
        figures[f"{label}: {TESTS} tests / one put_file time"] = at_most(
            first["seconds"] / put_file_s, 1.5, "x"
        )
        figures[f"{label}: second run wire KiB"] = at_most(second["up"] / KiB, 4, "KiB")
        figures[f"{label}: no-stage baseline wire KiB"] = Figure(baseline["up"] / KiB, "KiB")
    section.samples = {"put_file s": put_file_s}
    for name in (name for name in seen if name != PUT_FILE):
        run = seen[name]
        section.samples[f"{name}: wall s"] = run["seconds"]
        # The rest of the wall time is the session's start-up, collection and summary.
        section.samples[f"{name}: test loop s"] = run["clock"]["loop"]
        section.samples[f"{name}: wire up bytes"] = run["up"]
        section.samples[f"{name}: wire down bytes"] = run["down"]
        tests = run["clock"]["tests"]
        for index, seconds in enumerate(tests[:2]):
            section.samples[f"{name}: test {index + 1} s"] = seconds
        if len(tests) > 2:
            section.samples[f"{name}: tests 3-{len(tests)} mean s"] = sum(tests[2:]) / len(tests[2:])
        for call, (count, seconds) in sorted(run["rpc"].items()):
            section.samples[f"{name}: {call} x{count} s"] = seconds
