"""Each test's request log in pytest-html's report when that plugin is installed (issue 27)."""

import html
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("pytest_html")

FETCHING = """
import urllib.error, urllib.request

def fetch(url):
    try:
        with urllib.request.urlopen(url) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        error.close()
        return error.code

def test_flash(http_url):
    fetch(http_url + "/image.raw")

def test_boot(http_url):
    fetch(http_url + "/boot.scr")
    assert False, "the board did not boot"
"""


def html_logs(pytester: pytest.Pytester, *args: str) -> dict[str, str]:
    """Each test's log in the row of the report pytest-html wrote, as its reader sees the text."""
    pytester.runpytest("--html=report.html", *args)
    page = Path(pytester.path, "report.html").read_text()
    (blob,) = re.findall(r'data-jsonblob="([^"]*)"', page)
    tests = json.loads(html.unescape(blob))["tests"]
    return {node.split("::")[-1]: html.unescape(rows[0]["log"]) for node, rows in tests.items()}


def test_pytest_html_shows_each_tests_requests_in_its_row_passed_or_failed(pytester):
    pytester.makepyfile(FETCHING)
    logs = html_logs(pytester)
    assert "- Captured HTTP requests -" in logs["test_flash"]
    assert " GET /image.raw -> 404, " in logs["test_flash"]
    assert " GET /boot.scr -> 404, " in logs["test_boot"]


@pytest.mark.parametrize("report", ["junit", "none"])
def test_http_report_without_html_keeps_the_log_out_of_every_row(pytester, report):
    pytester.makepyfile(FETCHING)
    logs = html_logs(pytester, f"--http-report={report}")
    assert not [name for name, log in logs.items() if "Captured HTTP requests" in log]
    assert "the board did not boot" in logs["test_boot"]


def test_the_terminal_still_shows_a_failed_tests_log_without_html(pytester):
    pytester.makepyfile(FETCHING)
    result = pytester.runpytest("--html=report.html", "--http-report=none")
    result.stdout.fnmatch_lines(["*- Captured HTTP requests -*", "*GET /boot.scr -> 404*"])


def test_the_plugin_runs_without_pytest_html(pytester):
    pytester.makepyfile(FETCHING)
    result = pytester.runpytest("-p", "no:html", "--http-report=html")
    result.assert_outcomes(passed=1, failed=1)
