"""Section 4: staging a file to a real local exporter (``jmp shell --exporter-config``).

The driver client's own ``put_file`` is the yardstick and runs whenever ``jmp`` is installed.
The plugin's ``http_server.stage()`` in exporter mode runs on both drivers of one exporter, the
stock ``HttpServer`` and ``RecordingHttpServer``, in one ``jmp shell``: 17 function-scoped tests
each stage the file under one name (issue 25), as ratios to one ``put_file`` of this run.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
from pathlib import Path

from common import PYTHON, Config, Figure, MiB, Section, child_env, run_checked
from largefile import write_large_file

JMP = Path(PYTHON).parent / "jmp"
EXPORTER_CONFIG = """\
apiVersion: jumpstarter.dev/v1alpha1
kind: ExporterConfig
metadata:
  namespace: default
  name: bench
endpoint: ""
token: ""
export:
  http:
    type: jumpstarter_driver_http.driver.HttpServer
    config:
      root_dir: {root}
      host: 127.0.0.1
      port: 0
      # Files stay when the shell exits, so that a second shell on this config finds them (uploads.py).
      remove_created_on_close: false
"""
#: The RecordingHttpServer beside it, for the staging section only (uploads.py has one driver).
RECORDING_CONFIG = """\
  rec:
    type: pytest_jumpstarter_http.driver.RecordingHttpServer
    config:
      root_dir: {root}-rec
      host: 127.0.0.1
      port: 0
      remove_created_on_close: false
"""
#: Function-scoped tests that stage the same file under one name, as issue 25 measured them.
STAGES = 17
#: The drivers the plugin's stage() is measured on: its exporter config name, and its label.
DRIVERS = {"http": "stock", "rec": "RecordingHttpServer"}
#: The file the staging suite is written to; its test_put_file is the yardstick of uploads.py too.
STAGE_TESTS = "test_stage.py"
# Runs inside jmp shell; each test adds its timings (seconds) to the JSON file BENCH_STAGE_OUT.
STAGE_SUITE = """\
import json
import os
import time
from pathlib import Path

import pytest

SOURCE = Path(os.environ["BENCH_STAGE_FILE"])
OUT = Path(os.environ["BENCH_STAGE_OUT"])


def record(**seconds):
    OUT.write_text(json.dumps({**json.loads(OUT.read_text() or "{}"), **seconds}))


def timed(call, *args):
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def put_file():
    from jumpstarter.utils.env import env

    with env() as client:
        return timed(client.http.put_file, "direct.bin", str(SOURCE))


def test_put_file():
    record(put_file_s=put_file())


def test_put_file_again_unchanged():
    record(put_file_again_s=put_file())


@pytest.mark.parametrize("n", range(int(os.environ.get("BENCH_STAGES", "1"))))
def test_stage(http_server, n):
    driver = os.environ.get("BENCH_DRIVER", "http")
    seconds = timed(http_server.stage, SOURCE, "staged.bin")
    done = json.loads(OUT.read_text() or "{}").get(f"{driver}_stages_s", 0.0)
    record(**{f"{driver}_stages_s": done + seconds}, **({f"{driver}_stage_s": seconds} if n == 0 else {}))
"""


def exporter_mode_missing() -> str | None:
    """Why the plugin's exporter-mode ``stage()`` cannot be measured yet, or None."""
    if importlib.util.find_spec("pytest_jumpstarter_http.exporter") is None:
        return "pytest_jumpstarter_http.exporter (the exporter backend) does not exist yet"
    return None


def staging(config: Config, workdir: Path) -> Section:
    section = Section("staging", f"Staging {config.stage_size // MiB} MiB to a local exporter")
    if not JMP.exists():
        section.skipped = f"{JMP} is missing (pip install jumpstarter-cli)"
        return section
    folder = workdir / "staging"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        seconds = run_in_shell(folder, config, with_stage=(missing := exporter_mode_missing()) is None)
    finally:
        shutil.rmtree(folder)
    if missing:
        section.notes.append(f"plugin stage() skipped: {missing}")
    report(section, config, seconds)
    return section


def run_in_shell(folder: Path, config: Config, *, with_stage: bool) -> dict[str, float]:
    """Run the staging suite once inside ``jmp shell`` against an exporter started from a temp config."""
    exporter = write_exporter_config(folder, recording=True)
    source, out = write_stage_suite(folder, config)
    env = child_env(BENCH_STAGE_FILE=str(source), BENCH_STAGE_OUT=str(out), BENCH_STAGES=str(STAGES))
    runs = [pytest_argv("-p", "no:jumpstarter_http", "-k", "put_file")]
    for driver in DRIVERS if with_stage else ():
        stage = pytest_argv("--http-driver", driver, "-k", "test_stage")
        runs.append(["env", f"BENCH_DRIVER={driver}", *stage])
    # One shell, so that every run meets the same exporter; && keeps a failed run from going unseen.
    script = " && ".join(shlex.join(run) for run in runs)
    run_checked(in_shell(exporter, "sh", "-c", script), cwd=folder, env=env)
    return {key: float(value) for key, value in json.loads(out.read_text()).items()}


def write_exporter_config(folder: Path, *, recording: bool = False) -> Path:
    """An exporter config in ``folder`` whose stock HttpServer serves ``folder/exported`` (and,
    if ``recording``, a RecordingHttpServer ``folder/exported-rec``); its path."""
    for root in ("exported", "exported-rec"):
        (folder / root).mkdir(parents=True, exist_ok=True)
    path = folder / "exporter.yaml"
    text = EXPORTER_CONFIG + (RECORDING_CONFIG if recording else "")
    path.write_text(text.format(root=folder / "exported"))
    return path


def write_stage_suite(folder: Path, config: Config) -> tuple[Path, Path]:
    """The staging suite and its source file in ``folder``: the source's path, and the timings file's."""
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / STAGE_TESTS).write_text(STAGE_SUITE)
    source, out = folder / "source.bin", folder / "timings.json"
    write_large_file(source, config.stage_size)
    out.write_text("")
    return source, out


def in_shell(exporter: Path, *command: str) -> list[str]:
    """The argv that runs ``command`` inside ``jmp shell`` on a local exporter started from ``exporter``."""
    return [str(JMP), "shell", "--exporter-config", str(exporter), "--", *command]


def pytest_argv(*args: str) -> list[str]:
    """A quiet pytest run of this interpreter that leaves no cache behind."""
    return [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def report(section: Section, config: Config, seconds: dict[str, float]) -> None:
    section.samples = dict(seconds)
    mib = config.stage_size / MiB
    section.figures["put_file MiB/s"] = Figure(mib / seconds["put_file_s"], "MiB/s")
    section.figures["put_file again, unchanged s"] = Figure(seconds["put_file_again_s"], "s")
    for driver, label in DRIVERS.items():
        if f"{driver}_stage_s" not in seconds:
            continue
        first, all_of_them = seconds[f"{driver}_stage_s"], seconds[f"{driver}_stages_s"]
        section.figures[f"{label}: stage() first MiB/s"] = Figure(mib / first, "MiB/s")
        put_file = seconds["put_file_s"]
        section.figures[f"{label}: stage() first / put_file time"] = Figure(first / put_file, "x")
        section.figures[f"{label}: {STAGES} tests' stage() / one put_file time"] = Figure(
            all_of_them / put_file, "x"
        )
