"""What the device fetched, on an exporter: the recording driver's log, the stock driver's absence of one,
and the progress of a large upload. One real ``jmp shell`` runs both pytest runs (it exits 0 whatever they
do, jumpstarter#1099, so the runs' own output is what the tests read).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import pytest
from jumpstarter_helpers import RECORDING, http_driver, jmp_shell, write_exporter_config
from subprocess_runs import plain_pytest

SUITE = """
import urllib.error, urllib.request

def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        error.close()
        return error.code

def test_the_log_shows_this_tests_downloads(http_server, served_dir):
    (served_dir / "boot.cfg").write_text("console=ttyS0")
    assert fetch(http_server.url_for("boot.cfg")) == b"console=ttyS0"
    entry = http_server.assert_requested("boot.cfg", status=200)
    assert entry.bytes_sent == len("console=ttyS0")
    assert [r.path.rsplit("/", 1)[-1] for r in http_server.requests] == ["boot.cfg"]

def test_a_failing_flash_shows_what_was_fetched(http_url):
    assert fetch(http_url + "/kernel.img") == b"kernel"

def test_a_large_upload_reports_its_progress(http_server, tmp_path):
    image = tmp_path / "sdcard.img"
    image.write_bytes(b"\\0" * (64 << 20))
    assert fetch(http_server.stage(image)) == image.read_bytes()

def test_waits_for_the_devices_slow_download(http_server, served_dir):
    import threading, time

    (served_dir / "big.raw").write_bytes(bytes(64 << 20))
    url = http_server.url_for("big.raw")

    def slow_device():
        with urllib.request.urlopen(url, timeout=30) as response:
            while response.read(4 << 20):
                time.sleep(0.25)  # a slow link: about 16 MiB/s

    threading.Thread(target=slow_device).start()
    request = http_server.wait_for_request("big.raw", timeout=60)
    assert (request.bytes_sent, request.complete) == (64 << 20, True)

def test_waiting_needs_the_recording_driver(http_server):
    import pytest
    from pytest_jumpstarter_http.records import RequestLogUnavailable

    with pytest.raises(RequestLogUnavailable, match="put pytest_jumpstarter_http.driver.RecordingHttpServer"):
        http_server.wait_for_request("image.raw", timeout=600)
"""


@dataclass
class Runs:
    recording: str
    stock: str
    quiet: str


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    where = tmp_path_factory.mktemp("observability")
    (where / "test_suite.py").write_text(SUITE)
    config = write_exporter_config(
        where / "exporter.yaml",
        {
            "rec": {**http_driver(where / "rec-root"), "type": RECORDING},
            "stock": http_driver(where / "stock-root"),
        },
    )
    base = plain_pytest("-rA", "test_suite.py")

    def into(name: str, *args: str) -> list[str]:
        return ["sh", "-c", f"{shlex.join([*base, *args])} > {name}.txt 2>&1"]

    jmp_shell(
        config,
        into("recording", "--http-driver", "rec", "-k", "not needs_the_recording"),
        into("stock", "--http-driver", "stock", "-k", "failing_flash or needs_the_recording"),
        into("quiet", "--http-driver", "rec", "-q", "-k", "large_upload"),
        cwd=where,
        timeout=180,
    )
    return Runs(*((where / f"{name}.txt").read_text() for name in ("recording", "stock", "quiet")))


def test_the_recording_driver_gives_an_exporter_server_a_request_log(runs: Runs) -> None:
    assert "PASSED test_suite.py::test_the_log_shows_this_tests_downloads" in runs.recording


def test_a_failing_test_on_an_exporter_shows_its_request_log(runs: Runs) -> None:
    section = runs.recording.split("Captured HTTP requests", 1)[1]
    assert "/kernel.img -> 404" in section.split("short test summary")[0]


def test_with_the_stock_driver_the_report_says_why_there_is_no_log(runs: Runs) -> None:
    assert "FAILED test_suite.py::test_a_failing_flash_shows_what_was_fetched" in runs.stock
    assert "request log unavailable: the HttpServer driver at 'stock'" in runs.stock
    assert "put pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config" in runs.stock


def test_a_large_upload_shows_progress_in_the_terminal(runs: Runs) -> None:
    assert "PASSED test_suite.py::test_a_large_upload_reports_its_progress" in runs.recording
    assert "jumpstarter-http: staging sdcard.img (64.0 MiB) to " in runs.recording
    assert "jumpstarter-http: staged sdcard.img in " in runs.recording


def test_progress_is_silent_under_quiet(runs: Runs) -> None:
    assert "1 passed" in runs.quiet
    assert "jumpstarter-http: staging" not in runs.quiet


def test_the_recording_driver_is_registered_for_jumpstarter() -> None:
    from importlib.metadata import entry_points

    found = {entry.name: entry.value for entry in entry_points(group="jumpstarter.drivers")}
    assert found.get("RecordingHttpServer") == "pytest_jumpstarter_http.driver:RecordingHttpServer"


def test_the_run_summary_names_the_exporter_and_its_server(runs: Runs) -> None:
    assert re.search(
        r"jumpstarter-http: exporter 'jmp shell at .+' \(labels none\): HttpServer 'rec' at http://127\.0\.0\.1:\d+",
        runs.recording,
    )


def test_a_test_waits_for_the_device_on_an_exporter_with_a_progress_line(runs: Runs) -> None:
    assert "PASSED test_suite.py::test_waits_for_the_devices_slow_download" in runs.recording
    # Named relative to the handle's URL, not by its namespace's long path; the last line is its end.
    assert re.search(
        r"jumpstarter-http: 127\.0\.0\.1 is downloading big\.raw: .* of 64\.0 MiB", runs.recording
    )
    assert re.search(
        r"jumpstarter-http: 127\.0\.0\.1 downloaded big\.raw \(200\): 64\.0 MiB in ", runs.recording
    )


def test_waiting_with_the_stock_driver_fails_at_once_saying_what_to_configure(runs: Runs) -> None:
    assert "PASSED test_suite.py::test_waiting_needs_the_recording_driver" in runs.stock
