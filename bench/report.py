"""The run's outputs: the printed table, results.json, chart.png and results.md."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
from collections.abc import Iterable
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from common import BENCH_DIR, Config, Figure, Section

PACKAGES = (
    "pytest-jumpstarter-http",
    "jumpstarter-driver-http",
    "aiohttp",
    "pytest",
    "pytest-httpserver",
    "pytest-localserver",
    "pytest-aiohttp",
    "pytest-xdist",
)
TOOLS = (("nginx", "-v"), ("curl", "--version"))


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What the figures were measured on, with the load average before and after the run.

    Other work on the machine during the run shows as a load average above ``nproc``.
    """
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": git_commit(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "packages": {name: version_of(name) for name in PACKAGES},
        "tools": {tool: tool_version(tool, flag) for tool, flag in TOOLS},
    }


def git_commit() -> str | None:
    """The measured checkout's commit, marked ``-dirty`` when it has uncommitted changes."""
    return tool_output(["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"])


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def tool_version(tool: str, flag: str) -> str | None:
    """The version number in ``tool``'s banner, or None if it is not installed."""
    found = re.search(r"\d+(\.\d+)+", tool_output([tool, flag]) or "")
    return found.group() if found else None


def tool_output(argv: list[str]) -> str | None:
    """The first line ``argv`` writes (nginx writes its version to stderr), or None if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return ((done.stdout or done.stderr).splitlines() or [""])[0].strip() or None


def verdict(figure: Figure) -> str:
    return "" if figure.met is None else ("met" if figure.met else "NOT MET")


def rows(section: Section) -> Iterable[tuple[str, str, str, str]]:
    for name, figure in section.figures.items():
        yield name, f"{figure.value:.3g} {figure.unit}", figure.target or "", verdict(figure)


def table(sections: list[Section]) -> str:
    """The printed table: one block per section, its skip reason or its figures."""
    lines: list[str] = []
    for section in sections:
        lines.append(f"\n== {section.title}")
        if section.skipped or section.error:
            lines.append(
                f"   {'skipped' if section.skipped else 'FAILED'}: {section.skipped or section.error}"
            )
        for name, value, target, met in rows(section):
            lines.append(f"   {name:<66} {value:>14}  {target:<8} {met}")
        lines.extend(f"   note: {note}" for note in section.notes)
    return "\n".join(lines)


def markdown(sections: list[Section], info: dict[str, Any], command: str) -> str:
    out = [
        "# Benchmark results",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}, Python {info['python']}, "
        f"Linux {info['kernel']}, commit {info['commit']}; 1-minute load average "
        f"{info['load_average_before'][0]:.2f} before the run, {info['load_average_after'][0]:.2f} after.",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in {**info["packages"], **info["tools"]}.items() if v)
        + ".",
        "",
        "Ratios are the figures to quote; absolute times depend on the machine. See bench/README.md.",
    ]
    for section in sections:
        out += ["", f"## {section.title}", ""]
        if section.skipped or section.error:
            out.append(f"{'Skipped' if section.skipped else 'Failed'}: {section.skipped or section.error}.")
            continue
        out += ["| figure | value | target | |", "|---|---:|---|---|"]
        out += [f"| {name} | {value} | {target} | {met} |" for name, value, target, met in rows(section)]
        out += [f"\nNote: {note}." for note in section.notes]
    return "\n".join(out) + "\n"


def write_json(
    path: Path, sections: list[Section], info: dict[str, Any], config: Config, command: str
) -> None:
    document = {
        "mode": config.mode,
        "command": command,
        "machine": info,
        "config": asdict(config),
        "sections": {section.key: section.to_json() for section in sections},
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")


def budget_used(figure: Figure) -> float:
    """How much of its target a figure uses: at most 1 means met, whichever way the target points."""
    assert figure.target is not None
    limit = float(figure.target.split()[-1])
    if figure.target.startswith(">"):
        return limit / figure.value if figure.value > 0 else math.inf
    return max(figure.value, 0.0) / limit


def chart(path: Path, sections: list[Section]) -> None:
    """Four panels: per-test cost, large-file throughput, peak RSS, and every target's share used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {section.key: section for section in sections}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    per_test_title = "ms added per test (median test, minus no server), log scale"
    bars(axes[0][0], by_key.get("per_test"), ": ms per test", per_test_title, log=True)
    grouped_throughput(axes[0][1], by_key.get("large_file"))
    bars(axes[1][0], by_key.get("large_file"), ": peak RSS MiB", "server peak RSS (VmHWM), MiB")
    targets(axes[1][1], sections)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def named(section: Section | None, suffix: str) -> dict[str, float]:
    """The figures of ``section`` whose names end with ``suffix``, keyed by what precedes it."""
    if section is None or section.skipped or section.error:
        return {}
    return {
        name.removesuffix(suffix): f.value for name, f in section.figures.items() if name.endswith(suffix)
    }


def bars(ax: Any, section: Section | None, suffix: str, title: str, *, log: bool = False) -> None:
    values = named(section, suffix)
    ax.bar_label(ax.barh(list(values), list(values.values()), color="tab:blue"), fmt="%.3g", fontsize=8)
    if log and values:  # a log scale of nothing fails (a run with --only)
        ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)


def grouped_throughput(ax: Any, section: Section | None) -> None:
    single = named(section, ": single MiB/s")
    concurrent = {
        name.rsplit(":", 1)[0]: value for name, value in named(section, " concurrent MiB/s").items()
    }
    positions = range(len(single))
    for offset, values, label in (
        (-0.2, list(single.values()), "one download"),
        (0.2, [concurrent.get(name, 0.0) for name in single], "concurrent downloads, total"),
    ):
        drawn = ax.barh([p + offset for p in positions], values, height=0.4, label=label)
        ax.bar_label(drawn, fmt="%.0f", fontsize=8)
    ax.set_yticks(list(positions), list(single))
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(section.title + ", MiB/s" if section else "large file: not measured", fontsize=10)


def targets(ax: Any, sections: list[Section]) -> None:
    checked = [
        (f"{name} ({f.value:.3g} {f.unit}, {f.target})", f)
        for s in sections
        for name, f in s.figures.items()
        if f.target is not None
    ]
    used = [budget_used(f) for _, f in checked]
    ax.barh(
        [label for label, _ in checked], used, color=["tab:green" if f.met else "tab:red" for _, f in checked]
    )
    ax.axvline(1.0, color="black", linewidth=1)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("targets: share of the target used (<= 1 is met)", fontsize=10)
