"""--http-keep says where it kept the run's folders, in one line of the run's summary (issue 27)."""

import fnmatch
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from jumpstarter_helpers import (
    HTTP_SERVER,
    RECORDING,
    StandaloneExporter,
    http_driver,
    require,
    write_exporter_config,
)
from subprocess_runs import plain_pytest, run

TESTS = """
def test_passes(served_dir, http_server):
    (served_dir / "image.raw").write_text("passes")

def test_fails(served_dir, http_server):
    (served_dir / "image.raw").write_text("fails")
    assert False
"""


def kept_line(result: pytest.RunResult) -> str:
    (line,) = [line for line in result.outlines if "--http-keep" in line]
    return line


def test_http_keep_failed_says_where_it_kept_the_failed_tests_folder(pytester):
    pytester.makepyfile(TESTS)
    line = kept_line(pytester.runpytest("--http-keep=failed"))
    match = re.fullmatch(r"jumpstarter-http: --http-keep=failed kept 1 folder in (.*)", line)
    assert match, line
    (kept,) = Path(match[1]).iterdir()
    assert kept.name.startswith("test_fails")
    assert (kept / "image.raw").read_text() == "fails"


def test_http_keep_all_counts_every_folder_it_kept(pytester):
    pytester.makepyfile(TESTS)
    line = kept_line(pytester.runpytest("--http-keep=all"))
    match = re.fullmatch(r"jumpstarter-http: --http-keep=all kept 2 folders in (.*)", line)
    assert match, line
    assert sorted(path.name[:10] for path in Path(match[1]).iterdir()) == ["test_fails", "test_passe"]


def test_http_keep_failed_says_it_kept_nothing_when_no_test_failed(pytester):
    pytester.makepyfile("def test_passes(http_server): pass")
    line = kept_line(pytester.runpytest("--http-keep=failed", "-q"))
    assert line == "jumpstarter-http: --http-keep=failed kept no folders (no test that had one failed)"


def test_a_run_that_keeps_nothing_says_nothing_of_it(pytester):
    pytester.makepyfile(TESTS)
    assert "--http-keep" not in pytester.runpytest().stdout.str()


def test_under_xdist_the_controller_says_once_where_each_worker_kept_its_folders(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(
        "\n".join(f"def test_{n}(served_dir):\n    (served_dir / 'x').write_text('{n}')\n" for n in range(8))
    )
    result = pytester.runpytest("--http-keep=all", "-n", "2")
    line = kept_line(result)
    match = re.fullmatch(
        r"jumpstarter-http: --http-keep=all kept 8 folders (?:in|below) (\S+)(?:, in (.*))?", line
    )
    assert match, line
    folders = [Path(match[1]) / part for part in match[2].split(", ")] if match[2] else [Path(match[1])]
    assert sum(len(list(folder.iterdir())) for folder in folders) == 8


#: RecordingHttpServer of this API from before api() said whether its storage removes what a
#: session wrote: it cannot tell the run.
OLDER = """
from jumpstarter.driver import export

from pytest_jumpstarter_http.driver import RecordingHttpServer
from pytest_jumpstarter_http.records import API_VERSION


class Silent(RecordingHttpServer):
    @export
    def api(self):
        return {"api": API_VERSION, "version": "0.0.9"}
"""

STAGES = """
def test_stages(http_server, tmp_path):
    (tmp_path / "image.raw").write_text("image")
    http_server.stage(tmp_path / "image.raw")
"""

#: The one line the run's summary adds when the exporter's driver removes what --http-keep kept.
REMOVED = (
    "jumpstarter-http: what --http-keep keeps on exporter '*' (HttpServer 'removes') is removed when "
    "the Jumpstarter session ends, by the driver's remove_created_on_close; set "
    "remove_created_on_close: false in the exporter config to keep it."
)


def test_http_keep_on_an_exporter_that_removes_what_a_session_wrote_says_so_once(
    tmp_path: Path, standalone_exporter: Callable[..., StandaloneExporter]
) -> None:
    require()
    (tmp_path / "older.py").write_text(OLDER)
    drivers = {
        "removes": {**http_driver(tmp_path / "removes"), "type": RECORDING},  # on by default
        "keeps": {**http_driver(tmp_path / "keeps", remove_created_on_close=False), "type": RECORDING},
        "silent": {**http_driver(tmp_path / "silent"), "type": "older.Silent"},
    }
    # The exporter imports older.py, and the plugin from where this run does.
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    exporter = standalone_exporter(
        write_exporter_config(tmp_path / "exporter.yaml", drivers), PYTHONPATH=path
    )
    (tmp_path / "test_stages.py").write_text(STAGES)

    def said(*args: str) -> list[str]:
        done = run(
            plain_pytest("-p", "no:cacheprovider", *args, "test_stages.py"), cwd=tmp_path, env=exporter.env()
        )
        assert done.returncode == 0, done.stdout
        return [line for line in done.stdout.splitlines() if "remove_created_on_close" in line]

    (line,) = said("--http-keep=all", "--http-driver=removes")
    assert fnmatch.fnmatch(line, REMOVED), line
    pytest.importorskip("xdist")
    (line,) = said("--http-keep=failed", "--http-driver=removes", "-p", "xdist", "-n", "2")  # once for both
    assert fnmatch.fnmatch(line, REMOVED), line
    assert said("--http-driver=removes") == []  # nothing kept, nothing to say
    assert said("--http-keep=all", "--http-driver=keeps") == []
    assert said("--http-keep=all", "--http-driver=silent") == []  # a server that cannot tell


@pytest.mark.parametrize("driver_type", [RECORDING, HTTP_SERVER])
def test_http_keep_all_says_where_it_kept_the_folders_on_the_exporter(
    tmp_path: Path, standalone_exporter: Callable[..., StandaloneExporter], driver_type: str
) -> None:
    """It said "kept no folders" of a run whose only kept folders were on the exporter: with
    ``--http-root``, no folder of this machine is the plugin's to keep."""
    require()
    root_dir = tmp_path / "exporter-root"
    driver = {**http_driver(root_dir, remove_created_on_close=False), "type": driver_type}
    exporter = standalone_exporter(write_exporter_config(tmp_path / "exporter.yaml", {"http": driver}))
    (tmp_path / "test_stages.py").write_text(STAGES)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "index.html").write_text("hi")
    done = run(
        plain_pytest("-p", "no:cacheprovider", "--http-keep=all", "--http-root=images", "test_stages.py"),
        cwd=tmp_path,
        env=exporter.env(),
    )
    assert done.returncode == 0, done.stdout
    (line,) = [line for line in done.stdout.splitlines() if "--http-keep=all kept" in line]
    match = re.fullmatch(
        r"jumpstarter-http: --http-keep=all kept 1 folder in (\S+) "
        r"on exporter '.*' \(HttpServer 'http'\)",
        line,
    )
    assert match, line
    (kept,) = (root_dir / match[1]).glob("h-*")
    assert [path.name for path in kept.iterdir()] == ["image.raw"]
    # What was kept is the tests' files: no folder the plugin worked in is left behind empty.
    folders = [path for path in (root_dir / match[1]).rglob("*") if path.is_dir()]
    assert [folder for folder in folders if not any(folder.iterdir())] == []
