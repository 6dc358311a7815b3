"""Each test's request log in JUnit XML, where lab CI looks (issue 27): properties, or system-out."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_report_html import FETCHING as HTML_FETCHING

from pytest_jumpstarter_http.reports import MAX_REQUESTS

# The inner suite of the pytest-html tests, and one test that uses no server.
FETCHING = (
    HTML_FETCHING
    + """
def test_no_server():
    pass
"""
)


def run_junit(pytester: pytest.Pytester, *args: str) -> ET.Element:
    pytester.runpytest("--junitxml=junit.xml", *args)
    return ET.parse(Path(pytester.path, "junit.xml")).getroot()


def case_named(root: ET.Element, name: str) -> ET.Element:
    (case,) = [case for case in root.iter("testcase") if case.get("name") == name]
    return case


def properties(case: ET.Element) -> list[tuple[str, str]]:
    return [(prop.get("name", ""), prop.get("value", "")) for prop in case.iter("property")]


def test_each_tests_requests_are_properties_of_its_testcase_passed_or_failed(pytester):
    pytester.makepyfile(FETCHING)
    root = run_junit(pytester)
    flash = properties(case_named(root, "test_flash"))
    assert [name for name, _ in flash] == ["http_server", "http_request"]
    assert flash[0][1].startswith("http://127.0.0.1:")
    assert " GET /image.raw -> 404, " in flash[1][1]
    boot = properties(case_named(root, "test_boot"))
    assert " GET /boot.scr -> 404, " in boot[1][1]
    assert properties(case_named(root, "test_no_server")) == []


def test_junit_logging_puts_the_log_in_system_out_instead(pytester):
    pytester.makepyfile(FETCHING)
    pytester.makeini("[pytest]\njunit_logging = system-out\n")
    root = run_junit(pytester)
    for name, path in (("test_flash", "/image.raw"), ("test_boot", "/boot.scr")):
        case = case_named(root, name)
        assert properties(case) == []
        out = "".join(element.text or "" for element in case.iter("system-out"))
        assert "Captured HTTP requests:\nhttp://127.0.0.1:" in out
        assert f" GET {path} -> 404, " in out


def test_junit_logging_all_keeps_the_tests_own_output_beside_the_log(pytester):
    pytester.makepyfile("def test_it(http_url):\n    print('the test speaks')\n")
    pytester.makeini("[pytest]\njunit_logging = all\n")
    out = "".join(element.text or "" for element in run_junit(pytester).iter("system-out"))
    assert "the test speaks" in out
    assert "Captured HTTP requests:\nhttp://127.0.0.1:" in out
    assert "(no requests)" in out


def test_with_junit_log_passing_tests_off_the_log_stays_in_properties(pytester):
    # junitxml then writes only a failed call's output, from a report made before the plugin adds
    # to it: the properties are where every test's log still goes.
    pytester.makepyfile(FETCHING)
    pytester.makeini("[pytest]\njunit_logging = system-out\njunit_log_passing_tests = false\n")
    root = run_junit(pytester)
    assert " GET /image.raw -> 404, " in properties(case_named(root, "test_flash"))[1][1]


@pytest.mark.parametrize("report", ["html", "none", "off"])
def test_http_report_without_junit_keeps_the_log_out_of_the_xml(pytester, report):
    pytester.makepyfile(FETCHING)
    pytester.makeini("[pytest]\njunit_logging = all\n")
    xml = ET.tostring(run_junit(pytester, f"--http-report={report}"), encoding="unicode")
    assert "http_request" not in xml
    assert "Captured HTTP requests" not in xml


def test_a_test_with_many_requests_lists_its_first_and_last_fifty(pytester):
    pytester.makepyfile(
        """
        import urllib.error, urllib.request

        def test_chunks(http_url):
            for n in range(130):
                try:
                    urllib.request.urlopen(f"{http_url}/chunk-{n}").close()
                except urllib.error.HTTPError as error:
                    error.close()
        """
    )
    requests = [value for name, value in properties(case_named(run_junit(pytester), "test_chunks"))[1:]]
    assert len(requests) == MAX_REQUESTS + 1
    assert " GET /chunk-0 -> 404" in requests[0]
    assert requests[50] == "… 30 requests not shown (http_server.requests has them all) …"
    assert " GET /chunk-129 -> 404" in requests[-1]


def test_a_long_name_is_cut_in_the_report(pytester):
    pytester.makepyfile(
        """
        import urllib.error, urllib.request

        def test_long(http_url):
            try:
                urllib.request.urlopen(http_url + "/" + "a" * 2000).close()
            except urllib.error.HTTPError as error:
                error.close()
        """
    )
    (_, line) = properties(case_named(run_junit(pytester), "test_long"))[1]
    assert len(line) == 500
    assert line.endswith("…")


def test_xdist_workers_send_the_properties_back_to_the_xml(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(FETCHING)
    root = run_junit(pytester, "-n", "2")
    assert " GET /image.raw -> 404, " in properties(case_named(root, "test_flash"))[1][1]
    assert " GET /boot.scr -> 404, " in properties(case_named(root, "test_boot"))[1][1]


def test_the_plugin_runs_without_pytests_junitxml(pytester):
    pytester.makepyfile(FETCHING)
    pytester.runpytest("-p", "no:junitxml").assert_outcomes(passed=2, failed=1)
