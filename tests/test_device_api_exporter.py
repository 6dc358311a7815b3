"""The device talks back on an exporter: the suite of ``test_device_api.py``, run inside one real
``jmp shell`` on a ``RecordingHttpServer``, and what the stock driver says instead. The shell exits
0 whatever its commands do (jumpstarter#1099): the runs' JUnit reports are what the tests read.
"""

from __future__ import annotations

import pytest
from jumpstarter_helpers import DeviceRuns, require, run_device_suite
from subprocess_runs import XDIST_ARGS
from test_device_api import LEAKS, check_device_run, write_suites


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> DeviceRuns:
    require("curl")
    where = tmp_path_factory.mktemp("device-api-exporter")
    sync = write_suites(where)
    return run_device_suite(
        where, sync=("TALK_SYNC", sync), xdist_args=XDIST_ARGS, stock_tests="manifest or leak_1"
    )


def test_the_device_talks_back_on_an_exporter_as_on_loopback(exporter: DeviceRuns) -> None:
    check_device_run(exporter.device, exporter.where)


def test_nothing_scripted_leaks_into_the_next_test_of_a_session_server_on_an_exporter(
    exporter: DeviceRuns,
) -> None:
    assert set(exporter.session.outcomes().values()) == {"passed"}, exporter.session.output
    assert {case.name for case in exporter.session.cases.values()} >= set(LEAKS)


def test_xdist_workers_sharing_an_exporter_server_keep_their_replies_apart(exporter: DeviceRuns) -> None:
    exporter.xdist.assert_passed(
        "test_one_worker_scripts_a_reply_and_credentials", "test_the_other_worker_never_sees_them"
    )


def test_the_uploads_went_with_the_run_that_received_them(exporter: DeviceRuns) -> None:
    runs = exporter.where / "rec-root" / "pytest-jumpstarter-http" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_the_stock_driver_says_to_use_the_recording_one(exporter: DeviceRuns) -> None:
    why = (
        "cannot script replies, uploads or credentials; put "
        "pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config instead of "
        "jumpstarter_driver_http.driver.HttpServer to use respond()"
    )
    exporter.stock.assert_outcome(
        "test_a_manifest_then_a_redirect_then_the_file", "failed", "the HttpServer driver at 'stock'", why
    )
