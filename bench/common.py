"""What every benchmark section shares: the run's sizes, figures with their targets, timing helpers."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
MiB = 1024 * 1024
#: No benchmark subprocess may run longer than this; a hung server fails the run instead of the machine.
SUBPROCESS_TIMEOUT = 600.0


@dataclass(frozen=True)
class Config:
    """Counts and sizes of one run: ``FULL`` for the published figures, ``QUICK`` for the smoke test."""

    mode: Literal["full", "quick"]
    tests: int  # tests per generated suite (sections 1 and 5)
    rounds: int  # interleaved rounds of each generated suite (sections 1 and 5; --rounds)
    large_rounds: int  # rounds of the large downloads
    startup_rounds: int  # alternating rounds of the start-up tax
    large_size: int  # bytes of the large file (section 3)
    concurrency: int  # simultaneous downloads (section 3)
    stage_size: int  # bytes staged to the exporter (section 4)
    xdist_file: int  # bytes each xdist test downloads (section 5)


FULL = Config(
    "full",
    tests=200,
    rounds=5,
    large_rounds=3,
    startup_rounds=25,
    large_size=1024 * MiB,
    concurrency=4,
    stage_size=256 * MiB,
    xdist_file=MiB,
)
QUICK = Config(
    "quick",
    tests=6,
    rounds=1,
    large_rounds=1,
    startup_rounds=2,
    large_size=4 * MiB,
    concurrency=2,
    stage_size=4 * MiB,
    xdist_file=64 * 1024,
)


@dataclass
class Figure:
    """One reported number, with the target it is held to (if any) and whether it met it."""

    value: float
    unit: str
    target: str | None = None
    met: bool | None = None


@dataclass
class Section:
    """A benchmark's figures and their medians; or why it was skipped, or the error that stopped it."""

    key: str
    title: str
    figures: dict[str, Figure] = field(default_factory=dict)
    samples: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def at_most(value: float, limit: float, unit: str) -> Figure:
    return Figure(value, unit, f"<= {limit:g}", value <= limit)


def at_least(value: float, limit: float, unit: str) -> Figure:
    return Figure(value, unit, f">= {limit:g}", value >= limit)


def below(value: float, limit: float, unit: str) -> Figure:
    return Figure(value, unit, f"< {limit:g}", value < limit)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleave(
    runs: Mapping[str, Callable[[], Mapping[str, float]]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Each measurement's metrics, round by round, over ``rounds`` rounds with the measurements interleaved.

    Interleaving spreads slow drifts of the machine (thermal, page cache, a noisy neighbour)
    over every measurement instead of charging them to whichever ran last; keeping the rounds
    apart lets a ratio be taken within each round, between runs that were neighbours in time.
    """
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            seen[name].append(dict(run()))
    return seen


def medians_of(rounds: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """The median of each metric of each measurement over its rounds."""
    out: dict[str, dict[str, float]] = {}
    for name, results in rounds.items():
        metrics: dict[str, list[float]] = {}
        for result in results:
            for metric, value in result.items():
                metrics.setdefault(metric, []).append(value)
        out[name] = {metric: median(values) for metric, values in metrics.items()}
    return out


def alternate(
    runs: Mapping[str, Callable[[], Mapping[str, float]]], rounds: int
) -> dict[str, dict[str, float]]:
    """Median of each metric of each measurement over ``rounds`` interleaved rounds (see ``interleave``)."""
    return medians_of(interleave(runs, rounds))


def run_checked(
    argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion; a non-zero exit raises with the tail of its output."""
    done = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{tail}")
    return done


def timed(argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> float:
    """Wall seconds of one checked run of ``argv``."""
    start = time.perf_counter()
    run_checked(argv, cwd=cwd, env=env)
    return time.perf_counter() - start


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a benchmark subprocess, plus ``extra``.

    Without proxies (every request goes to 127.0.0.1), without the PYTEST_* variables of a pytest
    run that may have started the benchmark (an xdist worker's would change what the suites do),
    and without JUMPSTARTER_HOST, which would send the generated suites' servers to an exporter.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if "proxy" not in key.lower() and not key.startswith("PYTEST_") and key != "JUMPSTARTER_HOST"
    }
    env.update(extra)
    return env
