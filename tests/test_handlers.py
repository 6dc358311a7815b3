"""Issue 26: a handler of ``respond(handler=)`` that fails fails its test, with its own traceback;
one that takes longer than ``--http-timeout`` gets the device a 504. The same handlers answer on an
exporter (``test_device_api.py``'s suite, run by ``test_device_api_exporter.py``)."""

from __future__ import annotations

import pytest

HANDLERS = """
import time, urllib.error, urllib.request
from pytest_jumpstarter_http import HttpResponse

def status(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code

def lookup(request):
    return {"rpi4": 1}[request.query["board"]]

def test_raises(http_server):
    http_server.respond("api/board", handler=lambda request: HttpResponse(body=str(lookup(request))))
    assert status(http_server.url + "/api/board?board=x86") == 500

def test_returns_no_response(http_server):
    http_server.respond("api/board", handler=lambda request: "200 OK")
    assert status(http_server.url + "/api/board") == 500

def test_fails_itself_and_its_handler_raised(http_server):
    http_server.respond("api/board", handler=lambda request: 1 / 0)
    assert status(http_server.url + "/api/board") == 200

def test_slow(http_server):
    http_server.respond("api/board", handler=lambda request: time.sleep(3) or HttpResponse())
    assert status(http_server.url + "/api/board") == 504
    assert [(r.status, r.answered_by) for r in http_server.requests] == [(504, "handler: no answer in time")]

def test_answers(http_server):
    http_server.respond("api/board", handler=lambda request: HttpResponse(body=str(lookup(request))))
    assert status(http_server.url + "/api/board?board=rpi4") == 200
"""


def test_a_handler_that_fails_fails_its_test_with_the_handler_s_own_traceback(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_device_handlers=HANDLERS)
    result = pytester.runpytest("-p", "no:randomly", "--http-timeout=1")
    result.assert_outcomes(failed=3, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_raises _*",
            "a handler of respond() raised; the device got a 500:",
            '>       return {"rpi4": 1}[request.query["board"]]',
            "E       KeyError: 'x86'",
            "*_ test_returns_no_response _*",
            "TypeError: respond(): the handler returned str, not an HttpResponse; return *",
            "*_ test_fails_itself_and_its_handler_raised _*",
            "E       AssertionError: assert 500 == 200",
            "*- a handler of respond() raised -*",
            "E   ZeroDivisionError: division by zero",
        ]
    )
    assert "pytest_jumpstarter_http/" not in result.stdout.str()
