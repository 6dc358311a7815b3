"""Generated pytest suites, run as subprocesses: per-test cost (1), start-up tax (2), xdist scaling (5)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from common import (
    BENCH_DIR,
    PYTHON,
    Config,
    Figure,
    Section,
    alternate,
    at_most,
    below,
    child_env,
    interleave,
    median,
    medians_of,
    run_checked,
    timed,
)

PREAMBLE = """\
import urllib.request

import pytest

BODY = b"x" * 1024
BLOB = {blob}
N = {tests}
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))


def fetch(url):
    with _opener.open(url, timeout=30) as response:
        return response.read()


@pytest.mark.parametrize("i", range(N))
"""

NO_SERVER = "def test_get(i):\n    pass\n"
# Each test writes a file of a new name, as a suite of different tests does (at function scope
# every name is new anyway, in the test's own folder). Rewriting one name at session scope costs
# more (0.19 ms against 0.03 ms on ext4, issue 19): PLUGIN_REWRITE measures that case apart.
PLUGIN_GET = """\
def test_get(i, served_dir, http_url):
    (served_dir / f"small-{i}.bin").write_bytes(BODY)
    assert fetch(f"{http_url}/small-{i}.bin") == BODY
"""
PLUGIN_REWRITE = """\
def test_get(i, served_dir, http_url):
    (served_dir / "small.bin").write_bytes(BODY)
    assert fetch(f"{http_url}/small.bin") == BODY
"""
PLUGIN_IDLE = "def test_get(i, http_url):\n    pass\n"
# The same work in pytest-httpserver's terms: a handler for a new path per test, one GET.
HTTPSERVER_GET = """\
def test_get(i, httpserver):
    httpserver.expect_request(f"/small-{i}.bin").respond_with_data(BODY)
    assert fetch(httpserver.url_for(f"/small-{i}.bin")) == BODY
"""
LOCALSERVER_GET = """\
def test_get(i, httpserver):
    httpserver.serve_content(BODY)
    assert fetch(httpserver.url + "/small.bin") == BODY
"""
AIOHTTP_GET = """\
async def test_get(i, tmp_path, aiohttp_server):
    from aiohttp import ClientSession, web

    (tmp_path / "small.bin").write_bytes(BODY)
    app = web.Application()
    app.router.add_static("/", tmp_path)
    server = await aiohttp_server(app, host="127.0.0.1")
    async with ClientSession() as session, session.get(server.make_url("/small.bin")) as response:
        assert await response.read() == BODY
"""
# The README's own case: the file is in --http-root already, so neither side writes one per test
# (a new 1 KiB file costs about 0.35 ms on this machine's ext4, more than a GET: WRITE_ONLY).
ROOT_GET = """\
def test_get(i, http_url):
    assert fetch(f"{http_url}/small.bin") == BODY
"""
WRITE_ONLY = """\
def test_get(i):
    import os, pathlib

    (pathlib.Path(os.environ["BENCH_WRITE_DIR"]) / f"small-{i}.bin").write_bytes(BODY)
"""
BLOB_GET = """\
def test_get(i, http_url):
    assert len(fetch(f"{http_url}/blob.bin")) == BLOB
"""

PLUGIN = "pytest_jumpstarter_http.plugin"
BASELINE = "no server"
OURS = "jumpstarter-http"
OURS_SESSION = "jumpstarter-http session"
OURS_SESSION_REWRITE = "jumpstarter-http session, rewrite"
OURS_SESSION_IDLE = "jumpstarter-http session, no GET"
HTTPSERVER = "pytest-httpserver"
OURS_ROOT = "jumpstarter-http, --http-root file"
OURS_ROOT_SESSION = "jumpstarter-http session, --http-root file"
WRITE = "no server, a new file written"


@dataclass(frozen=True)
class Variant:
    """One generated suite: the test function, the plugins it loads, extra pytest arguments and env."""

    name: str
    test: str
    plugins: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    max_tests: int | None = None

    def count(self, config: Config) -> int:
        return min(config.tests, self.max_tests or config.tests)


PER_TEST_VARIANTS = (
    Variant(BASELINE, NO_SERVER),
    Variant(OURS, PLUGIN_GET, (PLUGIN,)),
    Variant(OURS_SESSION, PLUGIN_GET, (PLUGIN,), ("--http-scope", "session")),
    Variant(OURS_SESSION_REWRITE, PLUGIN_REWRITE, (PLUGIN,), ("--http-scope", "session")),
    Variant(OURS_SESSION_IDLE, PLUGIN_IDLE, (PLUGIN,), ("--http-scope", "session")),
    # pytest-httpserver binds "localhost" unless told; keep every server on 127.0.0.1.
    Variant(
        HTTPSERVER,
        HTTPSERVER_GET,
        ("pytest_httpserver.pytest_plugin",),
        env=(("PYTEST_HTTPSERVER_HOST", "127.0.0.1"),),
    ),
    # Stopping a pytest-localserver server waits out werkzeug's 0.5 s poll interval; 20 tests show it.
    Variant("pytest-localserver", LOCALSERVER_GET, ("pytest_localserver.plugin",), max_tests=20),
    Variant(
        "pytest-aiohttp",
        AIOHTTP_GET,
        ("pytest_asyncio.plugin", "pytest_aiohttp.plugin"),
        ("-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"),
    ),
)
#: The competitors whose per-test cost is charted next to ours.
SERVERS = (OURS, OURS_SESSION, OURS_SESSION_REWRITE, HTTPSERVER, "pytest-localserver", "pytest-aiohttp")
#: Ours without a file written per test, and what writing one costs alone.
UNCHARTED = (OURS_ROOT, OURS_ROOT_SESSION, WRITE)


def root_variants(workdir: Path) -> tuple[Variant, ...]:
    """The variants that need a folder: a --http-root holding the file, a folder to write into."""
    root, written = workdir / "per-test-root", workdir / "per-test-written"
    root.mkdir(parents=True, exist_ok=True)
    written.mkdir(parents=True, exist_ok=True)
    (root / "small.bin").write_bytes(b"x" * 1024)
    served = ("--http-root", str(root))
    return (
        Variant(OURS_ROOT, ROOT_GET, (PLUGIN,), served),
        Variant(OURS_ROOT_SESSION, ROOT_GET, (PLUGIN,), (*served, "--http-scope", "session")),
        Variant(WRITE, WRITE_ONLY, env=(("BENCH_WRITE_DIR", str(written)),)),
    )


def write_suite(variant: Variant, workdir: Path, tests: int, blob: int = 0) -> Path:
    """Write ``variant`` as a one-file suite in its own directory, with an empty ini to fix the rootdir."""
    folder = workdir / ("suite-" + "".join(c if c.isalnum() else "-" for c in variant.name))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_suite.py").write_text(PREAMBLE.format(tests=tests, blob=blob) + variant.test)
    return folder


def pytest_argv(*args: str) -> list[str]:
    return [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]


def suite_runner(variant: Variant, folder: Path) -> Callable[[], dict[str, float]]:
    """A function that runs the suite once with only its own plugins, and returns its timings.

    Plugin autoload is off so that each suite pays only for the plugins it uses.
    """
    clock = folder / "clock.json"
    argv = pytest_argv("-p", "benchclock", *(f"-p{plugin}" for plugin in variant.plugins), *variant.args)
    env = child_env(
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONPATH=str(BENCH_DIR),
        BENCH_CLOCK_OUT=str(clock),
        **dict(variant.env),
    )

    def run() -> dict[str, float]:
        wall = timed(argv, cwd=folder, env=env)
        timings = json.loads(clock.read_text())
        result = {"wall_s": wall, "loop_s": timings["loop"]}
        if timings["tests"]:  # an xdist controller runs none itself
            result["test_ms"] = median(timings["tests"]) * 1000
            result["phases_ms"] = median(timings["phases"]) * 1000
        return result

    return run


def run_variants(
    variants: tuple[Variant, ...], workdir: Path, config: Config, blob: int = 0
) -> dict[str, list[dict[str, float]]]:
    """Each variant's timings, round by round, the variants interleaved in every round."""
    runs = {v.name: suite_runner(v, write_suite(v, workdir, v.count(config), blob)) for v in variants}
    return interleave(runs, config.rounds)


def flatten(medians: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {
        f"{name}: {metric}": value for name, metrics in medians.items() for metric, value in metrics.items()
    }


def whole_run_ms(suite: Mapping[str, float], base: Mapping[str, float], tests: int, base_tests: int) -> float:
    """Wall ms per test of a suite of ``tests`` tests beyond the no-server suite scaled to as many tests."""
    base_wall = base["wall_s"] - base["loop_s"] * (1 - tests / base_tests)
    return (suite["wall_s"] - base_wall) * 1000 / tests


PHASES = ", phases"
WHOLE_RUN = ", whole run / tests"


def added(
    run: Mapping[str, float], base: Mapping[str, float], tests: int, base_tests: int
) -> dict[str, float]:
    """What a suite's round adds per test over its round of the no-server suite, by the three clocks.

    The median test's whole protocol (""), its set-up, call and teardown alone (``PHASES``), and
    the wall time of the whole run per test, one-time costs included (``WHOLE_RUN``).
    """
    return {
        "": run["test_ms"] - base["test_ms"],
        PHASES: run["phases_ms"] - base["phases_ms"],
        WHOLE_RUN: whole_run_ms(run, base, tests, base_tests),
    }


def per_test_cost(config: Config, workdir: Path) -> Section:
    """Section 1: what a server and one small GET add to each test, against a suite with no server.

    Every figure is taken within each round, against that round's no-server suite, and its
    median over the rounds is reported: a ratio compares runs that were neighbours in time.
    """
    section = Section(
        "per_test",
        f"Per-test cost of a server plus one GET ({config.tests} tests, {config.rounds} interleaved rounds)",
    )
    variants = PER_TEST_VARIANTS + root_variants(workdir)
    rounds = run_variants(variants, workdir, config)
    medians = medians_of(rounds)
    section.samples = flatten(medians)
    counts = {v.name: v.count(config) for v in variants}

    def against_base(name: str) -> list[tuple[dict[str, float], dict[str, float]]]:
        """Each round's timings of ``name`` with that round's no-server suite's."""
        return list(zip(rounds[name], rounds[BASELINE], strict=True))

    per_round: dict[str, dict[str, list[float]]] = {kind: {} for kind in ("", PHASES, WHOLE_RUN)}
    for name in SERVERS + UNCHARTED:
        for run, base in against_base(name):
            for kind, value in added(run, base, counts[name], config.tests).items():
                per_round[kind].setdefault(name, []).append(value)
    figures = section.figures
    for name in SERVERS + UNCHARTED:
        for kind, values in per_round.items():
            figures[f"{name}: ms per test{kind}"] = Figure(median(values[name]), "ms")

    def ratio(figure: str, kind: str, ours: str, limit: float | None = None) -> None:
        """The median over the rounds of ``ours`` / pytest-httpserver, each round's pair divided."""
        values = [a / b for a, b in zip(per_round[kind][ours], per_round[kind][HTTPSERVER], strict=True)]
        if limit is None:
            figures[figure] = Figure(median(values), "x")
            return
        figures[figure] = at_most(median(values), limit, "x")
        section.notes.append(f"{figure} by round: " + ", ".join(f"{v:.2f}" for v in values))

    # The targets of issue 19.
    ratio("function scope / pytest-httpserver", "", OURS, 1.5)
    ratio("session scope / pytest-httpserver (both shared)", "", OURS_SESSION, 1.0)
    ratio("function scope / pytest-httpserver, whole run / tests", WHOLE_RUN, OURS, 2.5)
    # The per-test timer: set-up, call and teardown alone, without the hooks around them.
    ratio("function scope / pytest-httpserver, phases", PHASES, OURS)
    ratio("session scope / pytest-httpserver, phases", PHASES, OURS_SESSION)
    ratio("session scope / pytest-httpserver, whole run / tests", WHOLE_RUN, OURS_SESSION)
    ratio("session scope rewriting one file / pytest-httpserver", "", OURS_SESSION_REWRITE)
    # Neither side writes a file: the file is in --http-root (the README's case).
    ratio("function scope, --http-root file / pytest-httpserver", "", OURS_ROOT)
    ratio("session scope, --http-root file / pytest-httpserver", "", OURS_ROOT_SESSION)
    figures["session scope, no GET / no server"] = Figure(
        median([run["test_ms"] / base["test_ms"] for run, base in against_base(OURS_SESSION_IDLE)]), "x"
    )
    return section


TRIVIAL = "def test_nothing():\n    pass\n"
IMPORT_PROBE = (
    "import time, pytest; start = time.perf_counter(); import pytest_jumpstarter_http.plugin; "
    "print(time.perf_counter() - start)"
)


def startup_tax(config: Config, workdir: Path) -> Section:
    """Section 2: what the installed, unused plugin adds to a trivial run with every installed plugin."""
    section = Section("startup", "Start-up tax of the installed, unused plugin")
    folder = workdir / "suite-trivial"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_trivial.py").write_text(TRIVIAL)
    # An installed plugin runs from bytecode pip compiled at install time; with
    # PYTHONDONTWRITEBYTECODE set (as on some machines) every run would compile every module again
    # and charge that to start-up. Cache bytecode in the work folder instead, for both variants.
    env = {key: value for key, value in child_env().items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")

    def probe() -> dict[str, float]:
        return {"s": float(run_checked([PYTHON, "-c", IMPORT_PROBE], env=env).stdout)}

    runs: dict[str, Callable[[], dict[str, float]]] = {
        "with plugin": lambda: {"s": timed(pytest_argv(), cwd=folder, env=env)},
        "-p no:jumpstarter_http": lambda: {
            "s": timed(pytest_argv("-p", "no:jumpstarter_http"), cwd=folder, env=env)
        },
        "import of the plugin module": probe,
    }
    medians = {name: metrics["s"] for name, metrics in alternate(runs, config.startup_rounds).items()}
    section.samples = {f"{name}: s": value for name, value in medians.items()}
    added = (medians["with plugin"] - medians["-p no:jumpstarter_http"]) * 1000
    section.figures["added ms per pytest run"] = below(added, 15, "ms")
    section.figures["plugin module import ms"] = Figure(medians["import of the plugin module"] * 1000, "ms")
    return section


def xdist_scaling(config: Config, workdir: Path) -> Section:
    """Section 5: loopback tests downloading a file each, two xdist workers against none."""
    section = Section(
        "xdist", f"xdist: {config.tests} tests each downloading {config.xdist_file // 1024} KiB"
    )
    root = workdir / "xdist-root"
    root.mkdir(parents=True, exist_ok=True)
    (root / "blob.bin").write_bytes(bytes(range(256)) * (config.xdist_file // 256))
    plugins = ("xdist.plugin", PLUGIN)
    variants = tuple(
        Variant(f"-n {workers}", BLOB_GET, plugins, ("-n", str(workers), "--http-root", str(root)))
        for workers in (0, 2)
    )
    medians = medians_of(run_variants(variants, workdir, config, blob=config.xdist_file))
    section.samples = flatten(medians)
    section.figures["wall -n 2 / -n 0"] = at_most(
        medians["-n 2"]["wall_s"] / medians["-n 0"]["wall_s"], 0.65, "x"
    )
    section.figures["test loop -n 2 / -n 0"] = Figure(
        medians["-n 2"]["loop_s"] / medians["-n 0"]["loop_s"], "x"
    )
    return section
