"""Issue 27: a user's mistake in a public call fails the test with its one sentence, at the user's
own line, and no frame of the plugin: pytest's own helpers fail so (``__tracebackhide__``)."""

from __future__ import annotations

import pytest

MISTAKES = """
import pytest

def test_respond(http_server):
    http_server.respond("a", status=204, body="x")

def test_stage(http_server, tmp_path):
    http_server.stage(tmp_path / "nope.img")

def test_url_for(http_server):
    http_server.url_for("../x")

def test_inject(http_server):
    http_server.inject("a", delay=-1)

def test_require_auth(http_server):
    http_server.require_auth("admin", "hunter2\\n")

def test_factory(http_server_factory, tmp_path):
    http_server_factory(tmp_path / "nope")

def test_fault_hits_are_read_after_it_was_cleared(http_server):
    fault = http_server.inject("a", status=503)
    fault.clear()
    assert fault.hits == 0
    http_server.wait_for_request("a", timeout=-1)
"""


def test_a_mistake_in_a_public_call_fails_with_its_sentence_at_the_user_s_line_only(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_mistakes=MISTAKES)
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(failed=7)
    result.stdout.fnmatch_lines(
        [
            "E   *ValueError: respond(): status=204 carries no body; give no body or another status.",
            "E   *FileNotFoundError: stage(): '*nope.img' is not a file; give the path of a file to serve.",
            "E   *ValueError: url_for() name '../x' is not a valid served file name*",
            "E   *ValueError: inject(): delay=-1 is out of range*",
            "E   *ValueError: require_auth(): the password given cannot be sent*",
            "E   *NotADirectoryError: http_server_factory: root '*nope' is not a directory.",
            "E   *ValueError: wait_for_request(): timeout=-1 is not a time to wait*",
        ]
    )
    output = result.stdout.str()
    assert "pytest_jumpstarter_http/" not in output
    assert "<string>" not in output  # a dataclass's generated __init__ is the plugin's too
