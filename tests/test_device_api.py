"""The device talks back (issue 21): scripted replies, device uploads and credentials, with curl as
the device.

The device-facing tests are written once, in ``SUITE`` and ``XDIST_SUITE``; this module runs them
on loopback, ``test_device_api_exporter.py`` inside a real ``jmp shell`` on a ``RecordingHttpServer``.
They run in a subprocess: they start servers, clients and threads of their own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from subprocess_runs import XDIST_ARGS, JUnit, clean_env, run_pytest, write_device_suites

from pytest_jumpstarter_http.deviceapi import AuthSpec, ReplySpec, UploadSpec
from pytest_jumpstarter_http.records import HttpRequest

SUITE = r"""
import hashlib, json, os, subprocess
from urllib.parse import urlsplit
import pytest

def curl(*args, input=None):
    return subprocess.run(["curl", "-sS", *map(str, args)], capture_output=True, timeout=60, input=input)

def code(*args):
    return curl("-o", os.devnull, "-w", "%{http_code}", *args).stdout.decode()

def sha(data):
    return hashlib.sha256(data).hexdigest()

def test_a_manifest_then_a_redirect_then_the_file(http_server, served_dir, tmp_path):
    (served_dir / "image-v2.raw").write_bytes(b"image v2")
    image = http_server.url_for("image-v2.raw")
    http_server.respond("manifest.json", json={"version": 2, "url": http_server.url + "/latest"})
    http_server.respond("latest", status=302, headers={"Location": image})
    manifest = json.loads(curl("-f", http_server.url + "/manifest.json").stdout)
    done = curl("-f", "-L", "-o", tmp_path / "image.raw", manifest["url"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "image.raw").read_bytes() == b"image v2"
    http_server.wait_for_request("image-v2.raw", status=200)
    assert [(r.name, r.status, r.answered_by) for r in http_server.requests] == [
        ("manifest.json", 200, "reply"), ("latest", 302, "reply"), ("image-v2.raw", 200, None)
    ]
    assert http_server.requests[0].line().endswith("[reply]")

def test_an_ordered_sequence_falls_through_to_the_file(http_server, served_dir):
    (served_dir / "update.bin").write_text("the update")
    url = http_server.url_for("update.bin")
    first = http_server.respond("update.bin", status=503, times=2, headers={"Retry-After": "0"})
    then = http_server.respond("update.bin", body="not yet", status=200, times=1)
    bodies = [curl("-w", " %{http_code}", url).stdout.decode() for _ in range(4)]
    assert bodies == [" 503", " 503", "not yet 200", "the update 200"]
    assert (first.hits, then.hits) == (2, 1)

def test_a_served_file_gets_the_content_type_of_the_reply(http_server, served_dir, tmp_path):
    (served_dir / "bootx64.efi").write_bytes(os.urandom(100_000))
    url = http_server.url_for("bootx64.efi")
    http_server.respond("bootx64.efi", headers={"Content-Type": "application/efi"})
    done = curl("-f", "-D", "-", "-o", tmp_path / "boot.efi", url)
    assert done.returncode == 0, done.stderr
    assert "content-type: application/efi" in done.stdout.decode().lower()
    assert sha((tmp_path / "boot.efi").read_bytes()) == sha((served_dir / "bootx64.efi").read_bytes())
    ranged = curl("-f", "-r", "0-9", "-D", "-", "-o", os.devnull, url).stdout.decode().lower()
    assert "206 partial content" in ranged and "application/efi" in ranged
    head = curl("-I", url).stdout.decode().lower()
    assert "application/efi" in head and "content-length: 100000" in head

def test_json_none_answers_json_null(http_server):
    http_server.respond("nothing.json", json=None)
    answer = curl("-f", "-D", "-", http_server.url + "/nothing.json").stdout.decode()
    assert answer.endswith("\r\n\r\nnull")
    assert "content-type: application/json" in answer.lower()


def test_a_get_reply_answers_head_without_a_body_and_another_method_is_405(http_server):
    # 405 as for every request nothing scripted answers: one answer, which the docs give (issue 26).
    http_server.respond("status.json", json={"ok": True})
    head = curl("-I", http_server.url + "/status.json")
    assert b"200 OK" in head.stdout and b'{"ok"' not in head.stdout
    assert code("-X", "POST", http_server.url + "/status.json") == "405"
    assert code("-X", "DELETE", http_server.url + "/status.json") == "405"
    http_server.respond("once", method="POST", times=1)
    assert code("-X", "POST", http_server.url + "/once") == "200"
    assert code("-X", "POST", http_server.url + "/once") == "405"  # its times used up
    assert code("-X", "POST", http_server.url + "/unscripted") == "405"

def test_a_reply_for_a_folder_url_answers_it_with_and_without_its_slash(http_server):
    # A PEP 503 index's page is a folder URL: "simple/pkg/" (issue 26).
    http_server.respond("/simple/pkg/", body="<a href='pkg-1.0.tar.gz'>pkg-1.0.tar.gz</a>")
    assert curl(http_server.url + "/simple/pkg/").stdout.startswith(b"<a href=")
    assert curl(http_server.url + "/simple/pkg").stdout.startswith(b"<a href=")

def test_replies_match_on_query_headers_and_body_first_added_first(http_server):
    # Issue 26: the request side's own words, tried in the order the replies were added.
    url = http_server.url + "/api/login"
    http_server.respond("api/login", method="POST", match_json={"user": "a"}, json={"token": "A"})
    http_server.respond("api/login", method="POST", data="user=b", body="form B")
    http_server.respond("api/login", method="POST", match_headers={"X-Board": "rpi4"}, body="rpi4")
    http_server.respond("api/login", method="POST", query_string={"v": ["2", "3"]}, body="v2 v3")
    http_server.respond("api/login", method="POST", query_string="raw=1", body="raw")
    http_server.respond("api/login", method="POST", status=403, body="nobody")
    assert curl("-d", '{"user": "a"}', url).stdout == b'{"token": "A"}'
    assert curl("-d", '{"user": "a", "x": 1}', url).stdout == b"nobody"
    assert curl("-d", "user=b", url).stdout == b"form B"
    assert curl("-d", "{}", "-H", "x-board: rpi4", url).stdout == b"rpi4"
    assert curl("-d", "{}", url + "?v=2&v=3").stdout == b"v2 v3"
    assert curl("-d", "{}", url + "?v=3&v=2").stdout == b"nobody"  # a name's values in order
    assert curl("-d", "{}", url + "?raw=1").stdout == b"raw"
    assert curl("-d", '{"user": "a"}', "-H", "x-board: rpi4", url).stdout == b'{"token": "A"}'

def test_the_request_log_has_what_the_device_sent(http_server):
    http_server.respond("api/report", method="POST", status=204)
    big = b"x" * (70 << 10)
    curl("-d", '{"temp": 41.5}', "-H", "Content-Type: application/json", "-H", "X-Serial: 0042",
         http_server.url + "/api/report?tag=a&tag=b&empty=")
    curl("--data-binary", "@-", http_server.url + "/api/report", input=big)
    small, large = http_server.requests
    assert (small.path, small.name) == ("/api/report?tag=a&tag=b&empty=", "api/report")
    assert (small.query["tag"], small.query.getall("tag"), small.query["empty"]) == ("a", ["a", "b"], "")
    assert small.headers["x-serial"] == small.headers["X-SERIAL"] == "0042"
    assert (small.json(), small.body_cut) == ({"temp": 41.5}, False)
    assert (large.body, large.body_cut) == (big[: 64 << 10], True)

def test_a_reply_may_take_any_method_and_a_204_serves_no_file(http_server, served_dir):
    (served_dir / "ping").write_text("a file")
    http_server.respond("ping", status=204)
    http_server.respond("any", method="*", body="any")
    assert curl("-D", "-", http_server.url + "/ping").stdout.startswith(b"HTTP/1.1 204")
    assert [curl("-X", m, http_server.url + "/any").stdout for m in ("GET", "PUT", "DELETE")] == [b"any"] * 3

def test_a_reply_path_may_be_a_glob(http_server):
    http_server.respond("api/v1/*", json={"any": True})
    http_server.respond("api/v1/[ab].json", json={"ab": True}, times=None)
    assert curl(http_server.url + "/api/v1/devices/42").stdout == b'{"any": true}'
    assert curl(http_server.url + "/api/v2/x").stdout != b'{"any": true}'

def test_a_handler_answers_in_the_test_process(http_server):
    from pytest_jumpstarter_http import HttpResponse
    seen = []
    def handler(request):
        seen.append((os.getpid(), request.name, request.query["id"], request.json()))
        return HttpResponse(status=201, json={"echo": request.json()}, headers={"X-Seen": str(len(seen))})
    http_server.respond("api/devices", method="POST", handler=handler)
    answer = curl("-D", "-", "-d", '{"n": 1}', http_server.url + "/api/devices?id=7").stdout.decode()
    assert answer.startswith("HTTP/1.1 201") and "x-seen: 1" in answer.lower()
    assert answer.endswith('{"echo": {"n": 1}}')
    assert seen == [(os.getpid(), "api/devices", "7", {"n": 1})]
    assert [(r.status, r.answered_by) for r in http_server.requests] == [(201, "handler")]

def test_wait_for_requests_counts_what_a_handler_answered(http_server):
    from pytest_jumpstarter_http import HttpResponse
    http_server.respond("api/ping", handler=lambda request: HttpResponse(body="pong"), times=1)
    assert curl(http_server.url + "/api/ping").stdout == b"pong"
    assert [r.answered_by for r in http_server.wait_for_requests(timeout=10)] == ["handler"]

def test_a_handler_that_raises_gives_the_device_a_500_and_is_kept_to_fail_the_test(http_server):
    def handler(request):
        raise LookupError("no such device")
    http_server.respond("api/devices", handler=handler)
    assert code(http_server.url + "/api/devices") == "500"
    [error] = http_server.handler_errors
    assert isinstance(error, LookupError)
    http_server.handler_errors.clear()  # checked here; test_handler_failures reads the report

def test_a_post_reply_and_an_upload_folder_on_one_path_store_the_body_and_answer(http_server):
    http_server.accept_uploads("logs/")
    http_server.respond("logs/*", method="POST", json={"stored": True})
    assert curl("--data-binary", "boot ok", http_server.url + "/logs/boot.log").stdout == b'{"stored": true}'
    assert [(u.name, u.read_bytes()) for u in http_server.uploads] == [("boot.log", b"boot ok")]
    assert [r.answered_by for r in http_server.requests] == ["reply"]

def test_put_post_and_multipart_uploads_arrive_byte_for_byte(http_server, served_dir, tmp_path):
    http_server.accept_uploads()
    log = tmp_path / "boot.log"
    log.write_bytes(os.urandom(3 << 20))
    core = tmp_path / "core"
    core.write_bytes(os.urandom(100_000))
    before = sorted(served_dir.rglob("*"))
    assert code("-T", log, http_server.url + "/uploads/boot.log") == "201"
    http_server.wait_for_request("uploads/boot.log", status=201)
    assert code("--data-binary", f"@{core}", http_server.url + "/uploads/crash/core") == "201"
    assert code("-F", f"log=@{log}", "-F", "note=hello", http_server.url + "/uploads/run1") == "201"
    uploads = http_server.uploads
    assert [(u.name, u.method, u.size) for u in uploads] == [
        ("boot.log", "PUT", 3 << 20), ("crash/core", "POST", 100_000), ("run1/boot.log", "POST", 3 << 20)
    ]
    assert uploads[0].read_bytes() == log.read_bytes() == uploads[2].read_bytes()
    assert uploads[1].read_bytes() == core.read_bytes() and uploads[1].sha256 == sha(core.read_bytes())
    assert sorted(served_dir.rglob("*")) == before
    assert [r.answered_by for r in http_server.requests] == ["upload"] * 3

def test_an_upload_over_max_bytes_is_413_and_nothing_is_kept(http_server, tmp_path):
    http_server.accept_uploads("dumps/", max_bytes=1000)
    (tmp_path / "big").write_bytes(b"x" * 1001)
    (tmp_path / "fits").write_bytes(b"y" * 1000)
    assert code("-T", tmp_path / "big", http_server.url + "/dumps/big") == "413"
    assert code("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{tmp_path / 'big'}",
                http_server.url + "/dumps/chunked") == "413"
    assert code("-T", tmp_path / "fits", http_server.url + "/dumps/fits") == "201"
    # A form counts its files, not its framing or other fields (up to 64 KiB of those).
    assert code("-F", f"f=@{tmp_path / 'big'}", http_server.url + "/dumps/form") == "413"
    assert code("-F", f"f=@{tmp_path / 'fits'}", "-F", "note=hi", http_server.url + "/dumps/form") == "201"
    assert code("-F", f"f=@{tmp_path / 'fits'}", "-F", "note=" + "n" * (65 << 10),
                http_server.url + "/dumps/fat") == "413"
    assert [u.name for u in http_server.uploads] == ["fits", "form/fits"]
    assert code("-T", tmp_path / "fits", http_server.url + "/elsewhere/fits") == "405"

def test_hostile_upload_names_stay_in_the_upload_folder(http_server, served_dir, tmp_path):
    http_server.accept_uploads()
    (tmp_path / "evil").write_text("evil")
    before = sorted(served_dir.rglob("*"))
    for name in ("../evil-1", "..%2fevil-2", "%2e%2e/evil-3", "a/../../evil-4", "%2e%2e%2f%2e%2e%2fevil-5"):
        assert code("--path-as-is", "-T", tmp_path / "evil", http_server.url + "/uploads/" + name)[0] == "4"
    part = "f=@" + str(tmp_path / "evil") + ";filename=../evil-6"
    posted = code("-F", part, http_server.url + "/uploads/x")
    assert posted[0] == "4"
    assert http_server.uploads == []
    assert sorted(served_dir.rglob("*")) == before

def test_basic_auth_refuses_wrong_credentials(http_server, served_dir):
    (served_dir / "secret.txt").write_text("s")
    url = http_server.url_for("secret.txt")
    http_server.require_auth("device", "s3cret")
    refused = curl("-D", "-", "-o", os.devnull, url).stdout.decode()
    assert " 401 " in refused and 'www-authenticate: basic realm=' in refused.lower()
    assert code("-u", "device:wrong", url) == "401"
    assert code("-u", "device:s3cret", url) == "200"
    assert http_server.requests[0].answered_by == "auth"

def test_bearer_auth_refuses_a_wrong_token(http_server, served_dir):
    (served_dir / "secret.txt").write_text("s")
    url = http_server.url_for("secret.txt")
    http_server.require_auth(token="t0ken")
    assert code("-H", "Authorization: Bearer nope", url) == "401"
    assert code("-H", "Authorization: Bearer t0ken", url) == "200"
    assert code("-u", "t0ken:", url) == "401"

def test_leak_1_a_test_scripts_everything_and_leaves_it(http_server, served_dir, tmp_path):
    (served_dir / "leak.txt").write_text("ok")
    http_server.respond("leak.txt", status=500)
    http_server.accept_uploads()
    (tmp_path / "up").write_text("up")
    assert code("-T", tmp_path / "up", http_server.url + "/uploads/up") == "201"
    assert code(http_server.url_for("leak.txt")) == "500"
    http_server.require_auth("a", "b")

def test_leak_2_the_next_test_sees_none_of_it(http_server, served_dir, tmp_path):
    (served_dir / "leak.txt").write_text("ok")
    assert code(http_server.url_for("leak.txt")) == "200"
    assert http_server.uploads == []
    (tmp_path / "up").write_text("up")
    assert code("-T", tmp_path / "up", http_server.url + "/uploads/up") == "405"

def test_a_reply_can_be_cleared_early(http_server, served_dir):
    (served_dir / "a.txt").write_text("file")
    reply = http_server.respond("a.txt", body="reply")
    assert curl(http_server.url_for("a.txt")).stdout == b"reply"
    reply.clear()
    assert curl(http_server.url_for("a.txt")).stdout == b"file"
    assert (reply.hits, reply.active) == (1, False)
    http_server.respond("a.txt", body="again")
    http_server.clear_replies()
    assert curl(http_server.url_for("a.txt")).stdout == b"file"

@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s: s.respond("a", body="x", json={}), ValueError, "respond(): body and json were both given"),
        (lambda s: s.respond("a", status=600), ValueError,
         "respond(): status=600 is out of range; give an HTTP status from 200 to 599"),
        (lambda s: s.respond("a", status=99), ValueError, "respond(): status=99 is out of range"),
        (lambda s: s.respond("a", status=101), ValueError, "respond(): status=101 is out of range"),
        (lambda s: s.inject("a", status=100), ValueError, "inject(): status=100 is out of range"),
        (lambda s: s.respond("a", body="abcdef", headers={"Content-Length": "1"}), ValueError,
         "respond(): header 'Content-Length' frames the body"),
        (lambda s: s.respond("a", headers={"transfer-encoding": "chunked"}), ValueError,
         "respond(): header 'transfer-encoding' frames the body"),
        (lambda s: s.respond("a", json=nested(100_000)), ValueError,
         "respond(): json is nested too deeply to encode"),
        (lambda s: s.respond("a", times=0), ValueError, "respond(): times=0 is out of range"),
        (lambda s: s.respond("a", body=3), TypeError, "respond(): body=3 is a int, not bytes or str"),
        (lambda s: s.respond("a", json={1j}), TypeError, "respond(): json={1j} is not a JSON value"),
        (lambda s: s.respond("a", body=b"x" * (1 << 20 | 1)), ValueError,
         "more than the 1048576 a reply carries"),
        (lambda s: s.respond("a", headers={"Bad Name": "x"}), ValueError, "is no valid header"),
        (lambda s: s.respond("a", method="G T"), ValueError, "respond(): method='G T' is no HTTP method"),
        (lambda s: s.respond("../a"), ValueError, "is not a valid served file name"),
        (lambda s: s.accept_uploads(max_bytes=-1), ValueError,
         "accept_uploads(): max_bytes=-1 is out of range"),
        (lambda s: s.accept_uploads(""), ValueError, "accept_uploads(): prefix='' is empty"),
        (lambda s: s.require_auth(), ValueError, "require_auth(): no credentials were given"),
        (lambda s: s.require_auth("u"), ValueError, "require_auth(): user and password go together"),
        (lambda s: s.require_auth("a:b", "c"), ValueError, "require_auth(): user='a:b' cannot be sent"),
        (lambda s: s.require_auth(token=5), TypeError, "require_auth(): the token given is a int, not"),
        (lambda s: s.require_auth("admin", "hunter2\n"), ValueError,
         "require_auth(): the password given cannot be sent"),
        (lambda s: s.require_auth(token="two words"), ValueError, "require_auth(): the token given cannot"),
        (lambda s: s.respond("a", query_string=3), TypeError, "respond(): query_string=3 is no query"),
        (lambda s: s.respond("a", match_headers=["x"]), TypeError,
         "respond(): match_headers=['x'] is not a dict of str header names to str"),
        (lambda s: s.respond("a", data=1), TypeError, "respond(): data=1 is a int, not bytes or str"),
        (lambda s: s.respond("a", match_json={2j}), TypeError,
         "respond(): match_json={2j} is not a JSON value"),
        (lambda s: s.respond("a", handler=3), TypeError, "respond(): handler=3 is not callable"),
        (lambda s: s.respond("a", data="x", match_json={}), ValueError,
         "respond(): data and match_json were both given"),
        (lambda s: HttpResponse(status=101), ValueError, "HttpResponse(): status=101 is out of range"),
        (lambda s: HttpResponse(body="x", json=1), ValueError, "HttpResponse(): body and json were both"),
        (lambda s: s.respond("a", handler=print, body="x"), ValueError,
         "respond(): a handler answers with its own status, headers and body"),
    ],
)
def test_bad_arguments_raise_in_one_sentence(http_server, call, error, message):
    with pytest.raises(error) as raised:
        call(http_server)
    assert message in str(raised.value), str(raised.value)
    assert str(raised.value).count(". ") == 0  # one sentence
    for secret in ("hunter2", "two words"):  # a refusal never shows a credential
        assert secret not in str(raised.value)

def test_a_cut_short_upload_and_a_malformed_form_are_the_device_s_400s(http_server):
    import socket, time
    http_server.accept_uploads()
    base = urlsplit(http_server.url).path
    device = socket.create_connection(("127.0.0.1", http_server.port), timeout=10)
    device.sendall(f"PUT {base}/uploads/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n".encode())
    device.sendall(b"a" * 100)
    time.sleep(0.2)
    device.close()
    assert http_server.wait_for_request("uploads/cut", timeout=10).status == 400
    form = b'--B\r\nContent-Disposition: form-data; name="f"; filename="a\x00b"\r\n\r\nhi\r\n--B--\r\n'
    head = (f"POST {base}/uploads/form HTTP/1.1\r\nHost: x\r\nContent-Length: {len(form)}\r\n"
            "Content-Type: multipart/form-data; boundary=B\r\n\r\n")
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=10) as device:
        device.sendall(head.encode() + form)
        assert device.recv(100).startswith(b"HTTP/1.1 400 ")
    http_server.wait_for_request("uploads/form", timeout=10)
    assert [(r.status, r.answered_by) for r in http_server.requests] == [
        (400, "upload cut short"), (400, "upload refused")
    ]
    assert http_server.uploads == []

from pytest_jumpstarter_http import HttpResponse

def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value

def test_a_bearer_header_that_is_no_utf8_is_refused_with_401(http_server, served_dir):
    import http.client
    (served_dir / "a.txt").write_text("a")
    http_server.require_auth(token="secret")
    connection = http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=10)
    connection.putrequest("GET", urlsplit(http_server.url_for("a.txt")).path)
    connection.putheader("Authorization", b"Bearer \xff\xfe")
    connection.endheaders()
    response = connection.getresponse()
    challenge = response.getheader("WWW-Authenticate")
    assert (response.status, challenge) == (401, 'Bearer realm="pytest-jumpstarter-http"')
    connection.close()
    assert [(r.status, r.headers["authorization"]) for r in http_server.requests] == [
        (401, "Bearer \ufffd\ufffd")
    ]
"""

#: Two files xdist gives to two workers: one scripts a reply and asks for credentials, and holds
#: them while the other fetches the same name from its own server (or namespace of the shared one).
XDIST_SUITE = {
    "test_xa.py": """
import os, subprocess, time
from pathlib import Path

SYNC = Path(os.environ["TALK_SYNC"])

def wait_for(name):
    deadline = time.monotonic() + 60
    while not (SYNC / name).exists():
        assert time.monotonic() < deadline, f"no {name}: did both files run on one worker?"
        time.sleep(0.05)

def fetch(url):
    return subprocess.run(["curl", "-sS", "-w", " %{http_code}", url], capture_output=True, text=True,
                          timeout=60).stdout

def test_one_worker_scripts_a_reply_and_credentials(http_server, served_dir):
    (served_dir / "shared.txt").write_text("a")
    url = http_server.url_for("shared.txt")
    http_server.respond("shared.txt", body="scripted")
    http_server.accept_uploads()
    (SYNC / "scripted").write_text(os.environ["PYTEST_XDIST_WORKER"])
    wait_for("fetched")
    assert fetch(url) == "scripted 200"
    http_server.require_auth(token="x")
    assert fetch(url) == " 401"
""",
    "test_xb.py": """
import os
from test_xa import SYNC, fetch, wait_for

def test_the_other_worker_never_sees_them(http_server, served_dir):
    (served_dir / "shared.txt").write_text("b")
    url = http_server.url_for("shared.txt")
    wait_for("scripted")
    assert (SYNC / "scripted").read_text() != os.environ["PYTEST_XDIST_WORKER"]
    try:
        assert fetch(url) == "b 200"
        assert http_server.uploads == []
    finally:
        (SYNC / "fetched").write_text("")
""",
}

LEAKS = ("test_leak_1_a_test_scripts_everything_and_leaves_it", "test_leak_2_the_next_test_sees_none_of_it")
#: The tests of SUITE, parametrized ones counted once per case.
CASES = 56


def write_suites(where: Path) -> Path:
    """Write the suites and an ini file into ``where``; return the folder the xdist runs sync in."""
    return write_device_suites(where, SUITE, XDIST_SUITE)


def check_device_run(report: JUnit, where: Path) -> None:
    """What the device sees: the same on both backends; no hostile name wrote anything anywhere."""
    assert set(report.outcomes().values()) == {"passed"}, report.output
    assert len(report.cases) == CASES, report.output
    assert not list(where.rglob("evil-*")), "an upload left its folder"


def test_an_upload_is_written_to_disk_off_the_loop_that_serves_every_download(http_server, monkeypatch):
    import os
    import threading
    import urllib.request

    write, threads = os.write, []

    def watched(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):  # the upload's temporary file
            threads.append(threading.current_thread().name)
        return write(fd, data)

    monkeypatch.setattr(os, "write", watched)
    http_server.accept_uploads()
    body = os.urandom(3 << 20)
    request = urllib.request.Request(http_server.url + "/uploads/boot.log", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
    assert http_server.uploads[0].read_bytes() == body
    assert threads, "no write of the upload was seen"
    assert "pytest-jumpstarter-http loop" not in threads, threads


@dataclass
class Runs:
    where: Path
    device: JUnit
    session: JUnit
    xdist: JUnit


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if shutil.which("curl") is None:
        pytest.skip("curl is the device here: apt-get install -y curl")
    where = tmp_path_factory.mktemp("device-api")
    sync = write_suites(where)
    device = run_pytest(where, "test_device.py", f"--basetemp={where / 'tmp'}", name="device", timeout=240)
    session = run_pytest(where, "test_device.py", "--http-scope=session", "-k", "leak", name="session")
    xdist = run_pytest(where, *XDIST_ARGS, env=clean_env(TALK_SYNC=str(sync)), name="xdist")
    return Runs(where, device, session, xdist)


def test_the_device_talks_back_on_loopback(loopback: Runs) -> None:
    check_device_run(loopback.device, loopback.where)


def test_nothing_scripted_leaks_into_the_next_test_of_a_session_server(loopback: Runs) -> None:
    assert set(loopback.session.outcomes().values()) == {"passed"}, loopback.session.output
    assert len(loopback.session.cases) == 2


def test_each_xdist_worker_keeps_its_replies_to_itself(loopback: Runs) -> None:
    loopback.xdist.assert_passed(
        "test_one_worker_scripts_a_reply_and_credentials", "test_the_other_worker_never_sees_them"
    )


def test_a_reply_crosses_the_wire_and_answers_every_spelling_of_its_path() -> None:
    spec = ReplySpec("boot/x.efi", body=b"\xff\x00", status=201, times=2).under("/ns/t%5Bx%5D")
    wire = {key: float(value) if isinstance(value, int) else value for key, value in spec.as_dict().items()}
    back = ReplySpec.from_dict(wire)
    assert (back.payload, back.status, back.times, back.target) == (
        b"\xff\x00",
        201,
        2,
        "/ns/t[[]x]/boot/x.efi",  # a glob of the path, the handle's URL taken as it is
    )
    assert back.answers("GET", "/ns/t[x]//boot/./x.efi")
    assert back.answers("HEAD", "/ns/t[x]/boot/x.efi")
    assert not back.answers("POST", "/ns/t[x]/boot/x.efi")
    assert not back.answers("GET", "/ns/other/boot/x.efi")
    assert not back.answers("GET", "/ns/tx/boot/x.efi")


def test_what_a_reply_matches_on_crosses_the_wire() -> None:
    from pytest_jumpstarter_http.deviceapi import Asked

    spec = ReplySpec(
        "api/*",
        method="POST",
        query_string={"v": "2"},
        match_headers={"X-Board": "rpi4"},
        match_json={"n": 1, "f": 0.5},
        handler_wait=3,
    ).under("/ns/a")
    back = ReplySpec.from_dict({**spec.as_dict(), "handler_wait": 3.0})
    assert back == spec
    asked = Asked("POST", "/ns/a/api/x", "v=2", {"x-board": "rpi4"}, b'{"f": 0.5, "n": 1}')
    assert back.fits(asked)
    assert not back.fits(Asked("POST", "/ns/a/api/x", "v=2", {"x-board": "rpi4"}, b'{"n": 1.5}'))
    assert not back.fits(Asked("POST", "/ns/a/api/x", "v=3", {"x-board": "rpi4"}, asked.body))
    assert not back.fits(Asked("POST", "/ns/a/api/x", "v=2", {}, asked.body))
    assert (
        ReplySpec.from_dict(ReplySpec("a", method="PUT", data=b"\xff").under("/n").as_dict()).data == b"\xff"
    )


def test_an_upload_folder_and_credentials_cross_the_wire() -> None:
    upload = UploadSpec("logs/", max_bytes=10).under("/ns/a")
    assert UploadSpec.from_dict({**upload.as_dict(), "max_bytes": 10.0}) == upload
    assert (upload.name_of("/ns/a/logs/x/y"), upload.name_of("/ns/b/logs/x")) == ("x/y", None)
    auth = AuthSpec("u", "p", token="t").under("/ns/a")
    assert AuthSpec.from_dict(auth.as_dict()) == auth
    assert auth.accepts("Basic dTpw")
    assert auth.accepts("Bearer t")
    assert not auth.accepts("Basic dTpx")
    assert auth.covers("/ns/a/x")
    assert not auth.covers("/ns/b/x")


def test_the_request_log_shows_what_the_device_api_did() -> None:
    entry = HttpRequest(0.0, "127.0.0.1", "GET", "/a", None, 302, 0, 0.001, answered_by="reply")
    assert entry.line().endswith("-> 302, 0 bytes in 1.0 ms [reply]")
    assert HttpRequest.from_dict(entry.as_dict()) == entry
    sent = HttpRequest.from_dict(
        {**entry.as_dict(), "headers": [["X-A", "1"], ["x-a", "2"]], "body_size": 3.0}
    )
    assert (sent.headers["x-A"], sent.headers.getall("X-A"), sent.body_size) == ("1", ["1", "2"], 3)
    assert sent.body == b""  # read from the server through a handle only
