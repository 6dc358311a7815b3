"""Being strict when asked (issue 26): ``assert_requested(count=)``, ordered replies, ``check()``
and ``--http-strict``, and ``wait_for_requests()``, with curl as the device.

The device-facing tests are written once, in ``SUITE`` and ``STRICT_RUN``; this module runs them on
loopback, ``test_strict_exporter.py`` inside a real ``jmp shell`` on a ``RecordingHttpServer``.
They run in a subprocess: they start servers, clients and threads of their own. Some of them
fail on purpose, after their call, as a user's test would: the outer tests read their messages.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from subprocess_runs import JUnit, python_pytest, run, write_inner_suite

from pytest_jumpstarter_http.deviceapi import ReplySpec

SUITE = r"""
import asyncio, os, subprocess, threading, time
import pytest

def code(*args):
    done = subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", *map(str, args)],
                          capture_output=True, timeout=60)
    return done.stdout.decode()

def body(url):
    return subprocess.run(["curl", "-sS", "-w", " %{http_code}", url], capture_output=True,
                          timeout=60).stdout.decode()

def later(*urls):
    # The device, busy elsewhere at first: it asks for each URL in turn, from a thread.
    def device():
        for url in urls:
            time.sleep(0.2)
            code(url)
    thread = threading.Thread(target=device)
    thread.start()
    return thread

def test_assert_requested_counts_exactly(http_server, served_dir):
    (served_dir / "a.txt").write_text("a")
    url = http_server.url_for("a.txt")
    assert [code(url), code(url), code(http_server.url + "/none")] == ["200", "200", "404"]
    assert http_server.assert_requested("a.txt", count=2).status == 200
    assert http_server.assert_requested("a.txt", count=2, status="2xx").name == "a.txt"
    assert http_server.assert_requested("b.txt", count=0) is None
    assert http_server.assert_requested("a.txt", count=0, status=404) is None
    with pytest.raises(AssertionError) as raised:
        http_server.assert_requested("a.txt", count=3)
    message = str(raised.value)
    assert message.startswith("expected 3 request(s) for /a.txt, not 2; the server answered:\n"), message
    assert message.count("\n") == 3 and "GET /none -> 404" in message
    with pytest.raises(ValueError, match=r"assert_requested\(\): count=-1 is not a number of requests"):
        http_server.assert_requested("a.txt", count=-1)

def test_ordered_replies_answer_in_their_turn(http_server, served_dir):
    (served_dir / "image.raw").write_text("image")
    http_server.respond("manifest.json", json={"v": 2}, ordered=True)
    http_server.respond("image.raw", ordered=True)
    http_server.respond("report", method="POST", status=204, ordered=True, times=2)
    http_server.respond("manifest.json", body="again", ordered=True)
    assert body(http_server.url + "/manifest.json") == '{"v": 2} 200'
    assert body(http_server.url + "/image.raw") == "image 200"
    assert code("-X", "POST", http_server.url + "/report") == "204"
    assert code("-X", "POST", http_server.url + "/report") == "204"
    assert body(http_server.url + "/manifest.json") == "again 200"
    # The sequence is complete: its paths are answered as if nothing were scripted.
    assert body(http_server.url + "/image.raw") == "image 200"
    assert [r.answered_by for r in http_server.requests] == ["reply: ordered"] * 5 + [None]
    http_server.check()

def test_an_ordered_reply_asked_out_of_its_turn_gets_500_and_fails_the_test(http_server):
    http_server.respond("first", body="1", ordered=True)
    http_server.respond("second", body="2", ordered=True)
    http_server.respond("other", body="any time")
    # The device gets its 500 at once, with the step whose turn it is.
    assert body(http_server.url + "/second") == "out of order: the next request expected is GET /first\n 500"
    assert body(http_server.url + "/other") == "any time 200"
    assert body(http_server.url + "/first") == "1 200"
    assert body(http_server.url + "/second") == "2 200"
    assert http_server.requests[0].answered_by == "reply: out of order"
    assert not http_server.requests[0].injected  # a 500 the test did not ask for shows

def test_check_lists_what_was_not_expected_and_what_is_left(http_server, served_dir, tmp_path):
    (served_dir / "served.txt").write_text("s")
    http_server.respond("twice", times=2, body="t")
    http_server.respond("step-1", ordered=True)
    http_server.respond("step-2", ordered=True)
    http_server.respond("post-only", method="POST")
    http_server.accept_uploads()
    (tmp_path / "log").write_text("log")
    assert code(http_server.url_for("served.txt")) == "200"
    assert code("-T", tmp_path / "log", http_server.url + "/uploads/log") == "201"
    assert code(http_server.url + "/twice") == "200"
    assert code(http_server.url + "/missing.txt") == "404"
    assert code(http_server.url + "/post-only") == "405"
    assert code(http_server.url + "/step-2") == "500"
    with pytest.raises(AssertionError) as raised:
        http_server.check()
    message = str(raised.value)
    title = f"http_server.check() of {http_server.label}: requests nothing expected"
    assert message.startswith(title), message
    unexpected = message.split("requests nothing expected (404 or 405):\n")[1].split("\nreplies")[0]
    assert "GET /missing.txt -> 404" in unexpected and "GET /post-only -> 405" in unexpected
    assert "served.txt" not in unexpected and "uploads" not in unexpected and "step-2" not in unexpected
    assert "replies whose times were not used up:\nGET /twice x2 (200) answered 1 of 2\n" in message
    assert "ordered replies not reached:\nGET /step-1 (200) answered 0 of 1\n" in message
    assert "\nGET /step-2 (200) answered 0 of 1\nrequests out of order" in message
    assert "requests out of order, answered 500:\n" in message
    assert message.endswith(
        "the ordered replies expected: GET /step-1, GET /step-2\n"
        "the requests they got: GET /step-2 (out of order)"
    ), message
    http_server.clear_replies()

def test_check_passes_when_everything_went_as_scripted(http_server, served_dir):
    (served_dir / "served.txt").write_text("s")
    http_server.respond("twice", times=2, body="t")
    http_server.respond("always", body="a")
    for path in ("/served.txt", "/twice", "/twice", "/always"):
        assert code(http_server.url + path) == "200"
    http_server.inject("missing.txt", status=404)  # the test's own 404 is expected
    assert code(http_server.url + "/missing.txt") == "404"
    http_server.check()

def test_wait_for_requests_returns_one_request_per_path_in_their_order(http_server, served_dir):
    (served_dir / "kernel").write_text("k")
    (served_dir / "initrd").write_text("i")
    device = later(http_server.url + "/initrd", http_server.url + "/kernel")
    kernel, initrd = http_server.wait_for_requests("kernel", "initrd", timeout=30)
    assert (kernel.name, initrd.name) == ("kernel", "initrd")
    assert kernel.seq > initrd.seq
    device.join()
    later(http_server.url + "/kernel").join()
    [again] = asyncio.run(http_server.wait_for_requests_async("kernel", timeout=30))
    assert again.seq > kernel.seq

def test_wait_for_requests_without_a_path_waits_for_the_replies_to_be_used_up(http_server):
    http_server.respond("poll", times=3, body="p")
    http_server.respond("step-1", body="1", ordered=True)
    http_server.respond("step-2", body="2", ordered=True)
    http_server.respond("any", body="no times: not waited for")
    urls = [http_server.url + path for path in ("/poll", "/step-1", "/poll", "/step-2", "/poll")]
    device = later(*urls)
    requests = http_server.wait_for_requests(timeout=30)
    assert [r.name for r in requests] == ["poll", "step-1", "poll", "step-2", "poll"]
    assert all(r.status == 200 for r in requests)
    device.join()
    http_server.respond("async", times=1)
    later(http_server.url + "/async").join()
    assert [r.name for r in asyncio.run(http_server.wait_for_requests_async(timeout=30))][-1] == "async"

def test_wait_for_requests_fails_with_what_is_missing(http_server, served_dir):
    (served_dir / "kernel").write_text("k")
    assert code(http_server.url + "/kernel") == "200"
    with pytest.raises(AssertionError) as raised:
        http_server.wait_for_requests("kernel", "initrd", "dtb", timeout=0.3)
    message = str(raised.value)
    assert message.startswith("no request for /initrd, /dtb within 0.3 s; the server answered:\n"), message
    http_server.respond("poll", times=2)
    http_server.respond("step", ordered=True)
    with pytest.raises(AssertionError) as raised:
        asyncio.run(http_server.wait_for_requests_async(timeout=0.3))
    message = str(raised.value)
    assert message.startswith(
        "the replies were not used up within 0.3 s: GET /poll x2 (200) answered 0 of 2; "
        "GET /step (200) answered 0 of 1; the server answered:\n"
    ), message
    with pytest.raises(ValueError, match=r"wait_for_requests\(\): timeout=inf is not a time to wait"):
        http_server.wait_for_requests(timeout=float("inf"))
    http_server.clear_replies()
"""

#: Run with ``--http-strict``, then with its ini key: every test's server is checked after it.
STRICT_RUN = r"""
import os, subprocess

def code(url):
    done = subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{http_code}", url],
                          capture_output=True, timeout=60)
    return done.stdout.decode()

def test_a_request_nothing_expected_fails_the_test(http_server):
    assert code(http_server.url + "/typo.img") == "404"

def test_a_reply_not_used_up_fails_the_test(http_server):
    http_server.respond("status", times=2)

def test_a_test_that_got_what_it_scripted_passes(http_server, served_dir):
    (served_dir / "image.raw").write_text("i")
    http_server.respond("status", times=1, body="ok")
    assert code(http_server.url_for("image.raw")) == code(http_server.url + "/status") == "200"
"""

#: Each item's tests in ``SUITE`` that pass.
PASSING = {
    "count": ("test_assert_requested_counts_exactly",),
    "ordered": ("test_ordered_replies_answer_in_their_turn",),
    "check": (
        "test_check_lists_what_was_not_expected_and_what_is_left",
        "test_check_passes_when_everything_went_as_scripted",
    ),
    "wait": (
        "test_wait_for_requests_returns_one_request_per_path_in_their_order",
        "test_wait_for_requests_without_a_path_waits_for_the_replies_to_be_used_up",
        "test_wait_for_requests_fails_with_what_is_missing",
    ),
}
OUT_OF_ORDER = "test_an_ordered_reply_asked_out_of_its_turn_gets_500_and_fails_the_test"


def write_suites(where: Path) -> None:
    write_inner_suite(where, {"test_device.py": SUITE, "test_strict_run.py": STRICT_RUN})


@dataclass
class Runs:
    """The runs of the suites, each read when a test asks for it: a run that wrote no report
    fails the tests that read it, not every test of the module."""

    where: Path
    #: The output of each run, when it ran on its own (not inside one ``jmp shell``).
    outputs: dict[str, str] = field(default_factory=dict)

    def _read(self, name: str) -> JUnit:
        return JUnit(self.where / f"{name}.xml", self.outputs.get(name, ""))

    @property
    def device(self) -> JUnit:
        return self._read("device")

    @property
    def strict(self) -> JUnit:
        """``STRICT_RUN`` with ``--http-strict``."""
        return self._read("strict")

    @property
    def strict_ini(self) -> JUnit:
        """``STRICT_RUN`` with ``http_strict = on`` in the ini file."""
        return self._read("strict-ini")


#: Each run: its name, then its arguments (the driver's, on an exporter, go first).
RUNS = (
    ("device", ("test_device.py",)),
    ("strict", ("test_strict_run.py", "--http-strict")),
    ("strict-ini", ("-o", "http_strict=on", "test_strict_run.py")),
)


def check_out_of_order(device: JUnit) -> None:
    """The test whose device asked out of turn passed its call and failed after it, saying both sequences."""
    message = device.assert_outcome(
        OUT_OF_ORDER,
        "failed",
        ": requests out of order, answered 500:\n",
        "GET /second -> 500, ",
        "[reply: out of order]",
        "the ordered replies expected: GET /first, GET /second\n"
        "the requests they got: GET /second (out of order), GET /first, GET /second",
    )
    assert "/other" not in message.split("the requests they got")[1]


def check_strict(run: JUnit, prefix: str) -> None:
    """A strict run failed the tests that left something unexpected, after their call, and only those."""
    run.assert_outcome(
        "test_a_request_nothing_expected_fails_the_test", "failed", prefix, "GET /typo.img -> 404"
    )
    run.assert_outcome(
        "test_a_reply_not_used_up_fails_the_test",
        "failed",
        prefix,
        "replies whose times were not used up:\nGET /status x2 (200) answered 0 of 2",
    )
    run.assert_passed("test_a_test_that_got_what_it_scripted_passes")
    assert len(run.cases) == 3, run.output


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if shutil.which("curl") is None:
        pytest.skip("curl is the device here: apt-get install -y curl")
    where = tmp_path_factory.mktemp("strict")
    write_suites(where)
    outputs = {
        name: run(python_pytest(*args, junit=where / f"{name}.xml"), cwd=where, timeout=240).stdout
        for name, args in RUNS
    }
    return Runs(where, outputs)


def test_assert_requested_counts_the_requests_on_loopback(loopback: Runs) -> None:
    loopback.device.assert_passed(*PASSING["count"])


def test_ordered_replies_answer_in_turn_and_fail_a_test_out_of_it_on_loopback(loopback: Runs) -> None:
    loopback.device.assert_passed(*PASSING["ordered"])
    check_out_of_order(loopback.device)


def test_check_lists_the_unexpected_requests_and_the_replies_left_on_loopback(loopback: Runs) -> None:
    loopback.device.assert_passed(*PASSING["check"])


def test_http_strict_checks_every_test_on_loopback(loopback: Runs) -> None:
    check_strict(loopback.strict, "--http-strict: http://127.0.0.1:")
    check_strict(loopback.strict_ini, "--http-strict: http://127.0.0.1:")


def test_wait_for_requests_waits_for_several_and_for_the_replies_on_loopback(loopback: Runs) -> None:
    loopback.device.assert_passed(*PASSING["wait"])


def test_an_ordered_reply_crosses_the_wire_as_a_step_that_answers_once() -> None:
    spec = ReplySpec("a", ordered=True).under("/ns/t")
    assert spec.times == 1
    wire = {key: float(value) if type(value) is int else value for key, value in spec.as_dict().items()}
    back = ReplySpec.from_dict(wire)
    assert (back.ordered, back.times) == (True, 1)
    assert ReplySpec("a", ordered=True, times=3).times == 3
    assert not ReplySpec.from_dict(ReplySpec("a").under("/ns/t").as_dict()).ordered
    with pytest.raises(TypeError, match=r"respond\(\): ordered='yes' is not a bool; give True or False\."):
        ReplySpec("a", ordered="yes")  # type: ignore[arg-type]
