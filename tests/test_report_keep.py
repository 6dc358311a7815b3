"""--http-keep says where it kept the run's folders, in one line of the run's summary (issue 27)."""

import re
from pathlib import Path

import pytest

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
