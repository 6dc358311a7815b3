"""Issue 25: the server API of a RecordingHttpServer on a real exporter, called as the wire calls it.

A script in the exporter's environment (``JUMPSTARTER_HOST`` of a ``jmp run`` exporter) drives the
driver through Jumpstarter's own client, as two runs sharing one exporter would: each holds the
server as an owner of its own, with a namespace of its own.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from jumpstarter_helpers import StandaloneExporter, http_driver, write_exporter_config
from subprocess_runs import PYTHON, plain_pytest, run
from test_exporter_ownership import exporter_backend

from pytest_jumpstarter_http.records import API_VERSION

TWO_OWNERS = """
import json, urllib.request
from jumpstarter.common.utils import env
from pytest_jumpstarter_http.exporter import OwnerStream
from pytest_jumpstarter_http.records import NS, RUNS, FaultSpec
from pytest_jumpstarter_http.deviceapi import ReplySpec, UploadSpec

def attempt(call, *args):
    try:
        return call(*args)
    except Exception as exc:
        return f"refused: {exc}"

with env() as client:
    http = client.children["http"]
    http.start_unless_running()
    a = OwnerStream(http, f"{RUNS}/run-a", False, 30)
    b = OwnerStream(http, f"{RUNS}/run-b", False, 30)
    ns_a = http.open_namespace(a.id, [f"{RUNS}/run-a"])
    ns_b = http.open_namespace(b.id, [f"{RUNS}/run-b"])
    base = f"/{NS}/{ns_a}"
    reply = http.add_reply(ReplySpec("hello", body=b"from a").under(base).as_dict(), ns_a)
    fault = http.inject_fault(FaultSpec("slow", rate=1e6).under((base,)).as_dict(), ns_a)
    up = http.accept_uploads(UploadSpec("up/", 1 << 20).under(base).as_dict(), ns_a)
    seen = {
        "b_ends_reply": attempt(http.end, reply, ns_b),
        "b_ends_fault": attempt(http.end, fault, ns_b),
        "b_ends_uploads": attempt(http.end, up, ns_b),
        "nobody_ends_reply": attempt(http.end, reply, None),
        "b_counts_reply": attempt(http.hits, reply, ns_b),
        "b_lists_uploads": attempt(http.get_uploads, up, ns_b),
    }
    with urllib.request.urlopen(http.get_url() + base + "/hello", timeout=10) as response:
        seen["a_gets"] = response.read().decode()
    seen["a_counts_reply"] = http.hits(reply, ns_a)
    seen["a_counts_fault"] = http.hits(fault, ns_a)
    seen["a_lists_uploads"] = http.get_uploads(up, ns_a)
    seen["a_ends_reply"] = http.end(reply, ns_a)
    a.close()
    b.close()
print(json.dumps(seen))
"""


def test_one_owner_never_ends_reads_or_counts_what_another_owner_set(
    tmp_path: Path, standalone_exporter: Callable[[Path], StandaloneExporter]
) -> None:
    exporter = exporter_backend(tmp_path, standalone_exporter).exporter
    assert exporter is not None
    (tmp_path / "two_owners.py").write_text(TWO_OWNERS)
    done = run([PYTHON, "two_owners.py"], cwd=tmp_path, env=exporter.env(), timeout=120)
    assert done.returncode == 0, done.stdout
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # Another owner's calls with the first owner's ids change nothing and learn nothing.
    assert seen["b_ends_reply"] == seen["b_ends_fault"] == seen["b_ends_uploads"] == 0
    assert seen["nobody_ends_reply"] == 0
    assert seen["b_counts_reply"].startswith("refused:"), seen
    assert seen["b_lists_uploads"].startswith("refused:"), seen
    # What the first owner set is still there, and still its own.
    assert seen["a_gets"] == "from a"
    assert seen["a_counts_reply"] == 1
    assert seen["a_counts_fault"] == 0
    assert seen["a_lists_uploads"] == []
    assert seen["a_ends_reply"] == 1


#: RecordingHttpServers of other versions: one from before api() (the call is not exported), one
#: that speaks a later server API.
OTHER_VERSIONS = """
from jumpstarter.driver import export

from pytest_jumpstarter_http.driver import RecordingHttpServer


class Older(RecordingHttpServer):
    def api(self):
        raise AssertionError("not exported: no client reaches it")


class Newer(RecordingHttpServer):
    @export
    def api(self):
        return {"api": 99, "version": "9.0"}


class BeforeTheChannel(RecordingHttpServer):
    channel = None  # no call channel: its client calls it with unary calls

    @export
    def api(self):
        return {"api": 3, "version": "0.0.3"}
"""

ONE_TEST = """
def test_serves(http_server):
    assert http_server.url
"""


@pytest.mark.parametrize(
    ("driver", "sentence"),
    [
        (
            "Older",
            "*: its RecordingHttpServer at 'http' runs pytest-jumpstarter-http older than this check "
            f"(server API 1) and this machine * (server API {API_VERSION}); upgrade pytest-jumpstarter-http "
            "on the exporter.",
        ),
        (
            "BeforeTheChannel",
            "*: its RecordingHttpServer at 'http' runs pytest-jumpstarter-http 0.0.3 (server API 3) and "
            f"this machine * (server API {API_VERSION}); upgrade pytest-jumpstarter-http on the exporter.",
        ),
        (
            "Newer",
            "*: its RecordingHttpServer at 'http' runs pytest-jumpstarter-http 9.0 (server API 99) and "
            f"this machine * (server API {API_VERSION}); upgrade pytest-jumpstarter-http on this machine.",
        ),
    ],
)
def test_an_exporter_on_another_server_api_fails_the_run_in_one_sentence_naming_the_side_to_upgrade(
    tmp_path: Path, standalone_exporter: Callable[..., StandaloneExporter], driver: str, sentence: str
) -> None:
    (tmp_path / "other_versions.py").write_text(OTHER_VERSIONS)
    root_dir = tmp_path / "exporter-root"
    root_dir.mkdir()
    config = write_exporter_config(
        tmp_path / "exporter.yaml", {"http": {**http_driver(root_dir), "type": f"other_versions.{driver}"}}
    )
    exporter = standalone_exporter(config, PYTHONPATH=str(tmp_path))
    (tmp_path / "test_one.py").write_text(ONE_TEST)
    done = run(plain_pytest("-p", "no:cacheprovider", "test_one.py"), cwd=tmp_path, env=exporter.env())
    assert done.returncode == 1, done.stdout
    assert fnmatch.filter(done.stdout.splitlines(), "exporter 'jmp shell at *'" + sentence[1:]), done.stdout
    assert "DriverError" not in done.stdout
    assert "Traceback" not in done.stdout
