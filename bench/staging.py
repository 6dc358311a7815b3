"""Section 4: staging a file to a real local exporter (``jmp shell --exporter-config``).

The driver client's own ``put_file`` is the yardstick and runs whenever ``jmp`` is installed.
The plugin's ``http_server.stage()`` in exporter mode, first time and again unchanged, runs once
``pytest_jumpstarter_http.exporter`` exists; until then that half is skipped with its reason.
"""

from __future__ import annotations

import importlib.util
import json
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
"""
# Runs inside jmp shell; each test adds its timings (seconds) to the JSON file BENCH_STAGE_OUT.
STAGE_SUITE = """\
import json
import os
import time
from pathlib import Path

SOURCE = Path(os.environ["BENCH_STAGE_FILE"])
OUT = Path(os.environ["BENCH_STAGE_OUT"])


def record(**seconds):
    OUT.write_text(json.dumps({**json.loads(OUT.read_text() or "{}"), **seconds}))


def timed(call, *args):
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def test_put_file():
    from jumpstarter.utils.env import env

    with env() as client:
        http = client.http
        first = timed(http.put_file, "direct.bin", str(SOURCE))
        record(put_file_s=first, put_file_again_s=timed(http.put_file, "direct.bin", str(SOURCE)))


def test_stage(http_server):
    first = timed(http_server.stage, SOURCE, "staged.bin")
    record(stage_s=first, stage_again_s=timed(http_server.stage, SOURCE, "staged.bin"))
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
    (folder / "exported").mkdir(parents=True, exist_ok=True)
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
    (folder / "exporter.yaml").write_text(EXPORTER_CONFIG.format(root=folder / "exported"))
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_stage.py").write_text(STAGE_SUITE)
    source, out = folder / "source.bin", folder / "timings.json"
    write_large_file(source, config.stage_size)
    out.write_text("")
    plugin = ["--http-backend", "exporter"] if with_stage else ["-p", "no:jumpstarter_http", "-k", "put_file"]
    argv = [
        str(JMP),
        "shell",
        "--exporter-config",
        str(folder / "exporter.yaml"),
        "--",
        PYTHON,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *plugin,
    ]
    run_checked(argv, cwd=folder, env=child_env(BENCH_STAGE_FILE=str(source), BENCH_STAGE_OUT=str(out)))
    return {key: float(value) for key, value in json.loads(out.read_text()).items()}


def report(section: Section, config: Config, seconds: dict[str, float]) -> None:
    section.samples = dict(seconds)
    mib = config.stage_size / MiB
    section.figures["put_file MiB/s"] = Figure(mib / seconds["put_file_s"], "MiB/s")
    section.figures["put_file again, unchanged s"] = Figure(seconds["put_file_again_s"], "s")
    if "stage_s" in seconds:
        section.figures["stage() first MiB/s"] = Figure(mib / seconds["stage_s"], "MiB/s")
        section.figures["stage() first / put_file time"] = Figure(
            seconds["stage_s"] / seconds["put_file_s"], "x"
        )
        section.figures["stage() again, unchanged s"] = Figure(seconds["stage_again_s"], "s")
