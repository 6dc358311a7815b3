"""What the device fetched, in the test report: request log, report section, --http-fail-on."""

import textwrap
import urllib.error
import urllib.request

import pytest

FETCHES = textwrap.dedent(
    """
    import urllib.error, urllib.request

    def fetch(url, **headers):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            error.close()
            return error.code
    """
)


def with_fetch(source: str) -> str:
    return FETCHES + textwrap.dedent(source)


def fetch(url: str, **headers: str) -> bytes | int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.read()  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_requests_lists_what_this_test_fetched_in_order(http_server, served_dir):
    (served_dir / "image.raw").write_bytes(b"x" * 1000)
    fetch(http_server.url_for("image.raw"))
    fetch(http_server.url_for("image.raw"), Range="bytes=0-9")
    fetch(f"{http_server.url}/missing")
    first, ranged, missing = http_server.requests
    assert (first.method, first.path, first.status, first.bytes_sent, first.range) == (
        "GET",
        "/image.raw",
        200,
        1000,
        None,
    )
    assert (ranged.status, ranged.bytes_sent, ranged.range) == (206, 10, "bytes=0-9")
    assert (missing.path, missing.status) == ("/missing", 404)
    assert first.remote == "127.0.0.1"
    assert first.duration >= 0


def test_assert_requested_lists_what_was_requested_instead(http_server, served_dir):
    (served_dir / "a.raw").write_bytes(b"a")
    fetch(http_server.url_for("a.raw"))
    assert http_server.assert_requested("/a.raw", status=200).status == 200
    assert http_server.assert_requested("a.raw", status="2xx").path == "/a.raw"
    with pytest.raises(
        AssertionError, match=r"no request for /b.raw; the server answered:\n.*GET /a.raw -> 200"
    ):
        http_server.assert_requested("/b.raw")
    with pytest.raises(AssertionError, match=r"no request for /a\.raw answered 404"):
        http_server.assert_requested("/a.raw", status=404)


def test_a_session_server_shows_each_test_only_its_own_requests(pytester):
    pytester.makepyfile(
        with_fetch(
            """
        def test_one(http_server, served_dir):
            (served_dir / "one").write_text("1")
            fetch(http_server.url_for("one"))
            assert [r.path for r in http_server.requests] == ["/one"]

        def test_two(http_server):
            fetch(http_server.url + "/two")
            assert [r.path for r in http_server.requests] == ["/two"]
        """
        )
    )
    pytester.runpytest("--http-scope", "session").assert_outcomes(passed=2)


def test_a_failing_test_report_shows_its_request_log(pytester):
    pytester.makepyfile(
        with_fetch(
            """
        def test_flash(http_url):
            assert fetch(http_url + "/image.raw") == b"image"
        """
        )
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- Captured HTTP requests -*",
            "http://127.0.0.1:*:",
            "*:*:*.* 127.0.0.1 GET /image.raw -> 404, * bytes in * ms",
        ]
    )


def test_passing_tests_show_the_log_with_dash_r_capital_p(pytester):
    pytester.makepyfile(with_fetch("def test_it(http_url):\n    fetch(http_url + '/x')\n"))
    pytester.runpytest("-rP").stdout.fnmatch_lines(["*Captured HTTP requests*", "*GET /x -> 404*"])
    assert "Captured HTTP requests" not in pytester.runpytest().stdout.str()


def test_http_fail_on_turns_a_404_into_a_failure_naming_the_request(pytester):
    pytester.makepyfile(
        with_fetch(
            """
        def test_fetches_a_missing_file(http_url):
            assert fetch(http_url + "/typo.img") == 404
        def test_clean(http_url, served_dir):
            (served_dir / "ok").write_text("ok")
            fetch(http_url + "/ok")
        """
        )
    )
    result = pytester.runpytest("--http-fail-on", "404,5xx")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*--http-fail-on 404,5xx: http://127.0.0.1:* answered *GET /typo.img -> 404*"]
    )


def test_http_fail_on_rejects_a_malformed_status_list(pytester):
    result = pytester.runpytest("--http-fail-on", "404,abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --http-fail-on (command line): '404,abc' is not valid; give HTTP statuses*"]
    )


def test_captured_logs_hold_no_driver_chatter(pytester):
    pytester.makepyfile("def test_it(http_url):\n    assert False\n")
    result = pytester.runpytest("--log-level", "INFO")
    assert "HTTP server started" not in result.stdout.str()
