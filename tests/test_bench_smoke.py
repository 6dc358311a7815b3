"""``bench/run.py --quick`` runs end to end and writes numbers; it never checks the benchmark's targets."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {"per_test", "startup", "large_file", "large_file_tls", "staging", "xdist", "uploads", "get_floor"}
#: Sections that may be skipped, and the tool whose absence skips them.
NEEDS = {"large_file": "curl", "large_file_tls": "nginx", "staging": "jmp", "uploads": "jmp"}


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory a quick benchmark run wrote its results to."""
    out = tmp_path_factory.mktemp("bench")
    # A subprocess: the benchmark starts servers and pytest runs of its own, and must not see this
    # run's PYTEST_* variables (an xdist worker's would change what its suites do).
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def results(bench_out: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((bench_out / "results.json").read_text())
    return document


def test_quick_run_writes_the_json_the_table_and_the_chart(bench_out: Path) -> None:
    assert (bench_out / "results.md").read_text().startswith("# Benchmark results")
    pytest.importorskip("matplotlib")
    assert (bench_out / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_results_name_the_machine_and_the_mode(results: dict[str, Any]) -> None:
    assert results["mode"] == "quick"
    assert results["machine"]["nproc"] > 0
    assert results["machine"]["python"]


def test_every_section_is_reported_without_error(results: dict[str, Any]) -> None:
    assert set(results["sections"]) == SECTIONS
    assert [key for key, section in results["sections"].items() if section["error"]] == []


def test_only_sections_whose_tool_is_missing_are_skipped(results: dict[str, Any]) -> None:
    skipped = {key for key, section in results["sections"].items() if section["skipped"]}
    assert skipped <= set(NEEDS)
    for key in skipped:
        assert NEEDS[key] in results["sections"][key]["skipped"]


def test_sections_that_ran_produced_positive_medians_and_finite_figures(results: dict[str, Any]) -> None:
    ran = {key: section for key, section in results["sections"].items() if not section["skipped"]}
    assert {"per_test", "startup", "xdist"} <= set(ran)
    for key, section in ran.items():
        assert section["figures"], key
        assert all(math.isfinite(figure["value"]) for figure in section["figures"].values()), key
        assert section["samples"], key
        assert all(value > 0 for value in section["samples"].values()), key


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_large_file_throughput_is_measured_when_curl_is_there(results: dict[str, Any]) -> None:
    figures = results["sections"]["large_file"]["figures"]
    assert figures["jumpstarter-http: single MiB/s"]["value"] > 0
    assert figures["jumpstarter-http: peak RSS MiB"]["value"] > 0


@pytest.mark.skipif(not (Path(sys.executable).parent / "jmp").exists(), reason="jmp is not installed")
def test_uploads_relay_sees_at_least_each_file_it_carried(results: dict[str, Any]) -> None:
    # A relay that counted nothing would report every upload as free: the one put_file proves it counts.
    figures = results["sections"]["uploads"]["figures"]
    assert figures["put_file wire bytes / file size"]["value"] >= 1.0
    for driver in ("stock", "RecordingHttpServer"):
        assert figures[f"{driver}: wire bytes / file size"]["value"] >= 1.0
