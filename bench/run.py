"""Benchmark pytest-jumpstarter-http against its alternatives: ``python bench/run.py [--quick] [--out DIR]``.

Runs every section on this machine, prints a table, and writes results.json, chart.png and
results.md to ``--out`` (default: docs/benchmarks, or a temporary directory with ``--quick``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from common import BENCH_DIR, FULL, QUICK, Config, Section
from getfloor import get_floor
from largefile import large_file
from report import chart, machine, markdown, table, write_json
from staging import staging
from suites import per_test_cost, startup_tax, xdist_scaling
from tlsfile import large_file_tls
from uploads import uploads

SECTIONS: dict[str, Callable[[Config, Path], Section]] = {
    "per_test": per_test_cost,
    "startup": startup_tax,
    "large_file": large_file,
    "large_file_tls": large_file_tls,
    "staging": staging,
    "xdist": xdist_scaling,
    "uploads": uploads,
    "get_floor": get_floor,
}
DEFAULT_OUT = BENCH_DIR.parent / "docs" / "benchmarks"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes and counts: a smoke run of seconds")
    parser.add_argument("--out", type=Path, help="Directory for the results (default: docs/benchmarks)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SECTIONS), help="Run only this section (repeatable)"
    )
    parser.add_argument(
        "--rounds",
        type=positive,
        help="Interleaved rounds of each generated suite (sections 1 and 5; default: 5, 1 with --quick)",
    )
    return parser.parse_args(argv)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of rounds")
    return value


def run_section(key: str, config: Config, workdir: Path) -> Section:
    """Run one section; a failure is recorded in its place so that the others still report."""
    started = time.monotonic()
    print(f"[bench] {key} ...", file=sys.stderr, flush=True)
    try:
        section = SECTIONS[key](config, workdir)
    except Exception as exc:
        traceback.print_exc()
        section = Section(key, key, error=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    print(f"[bench] {key} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return section


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.rounds:
        config = replace(config, rounds=args.rounds)
    out: Path = args.out or (Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/run.py", *argv])
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="jumpstarter-http-bench-") as tmp:
        sections = [run_section(key, config, Path(tmp)) for key in args.only or SECTIONS]
    info = machine(load_before)
    print(table(sections))
    write_json(out / "results.json", sections, info, config, command)
    (out / "results.md").write_text(markdown(sections, info, command))
    try:
        chart(out / "chart.png", sections)
    except ImportError as exc:
        print(f"[bench] no chart: {exc} (pip install matplotlib)", file=sys.stderr)
    print(f"\nresults in {out}")
    return 1 if any(section.error for section in sections) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
