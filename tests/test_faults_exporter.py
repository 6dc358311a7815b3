"""Network faults on an exporter: the suite of ``test_faults.py``, run inside one real ``jmp shell``
on a ``RecordingHttpServer``, and what the stock driver says instead. The shell exits 0 whatever
its commands do (jumpstarter#1099): the runs' JUnit reports are what the tests read.
"""

from __future__ import annotations

import pytest
from jumpstarter_helpers import DeviceRuns, require, run_device_suite
from subprocess_runs import XDIST_ARGS
from test_faults import LEAKS, check_device_run, write_suites


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> DeviceRuns:
    require("curl", "wget")
    where = tmp_path_factory.mktemp("faults-exporter")
    sync = write_suites(where)
    return run_device_suite(
        where, sync=("FAULT_SYNC", sync), xdist_args=XDIST_ARGS, stock_tests="retries or leak_2"
    )


def test_the_device_sees_every_fault_on_an_exporter_as_on_loopback(exporter: DeviceRuns) -> None:
    check_device_run(exporter.device)


def test_faults_never_leak_into_the_next_test_of_a_session_server_on_an_exporter(
    exporter: DeviceRuns,
) -> None:
    assert set(exporter.session.outcomes().values()) == {"passed"}, exporter.session.output
    assert {case.name for case in exporter.session.cases.values()} >= set(LEAKS)


def test_xdist_workers_sharing_an_exporter_server_keep_their_faults_apart(exporter: DeviceRuns) -> None:
    exporter.xdist.assert_passed("test_one_worker_injects_a_fault", "test_the_other_worker_never_sees_it")


def test_the_stock_driver_says_to_use_the_recording_one(exporter: DeviceRuns) -> None:
    why = (
        "cannot inject network faults; put pytest_jumpstarter_http.driver.RecordingHttpServer in the "
        "exporter config instead of jumpstarter_driver_http.driver.HttpServer to use inject()"
    )
    exporter.stock.assert_outcome(
        "test_curl_retries_through_two_503s", "failed", "the HttpServer driver at 'stock'", why
    )
    exporter.stock.assert_outcome(
        "test_leak_2_a_marked_test_leaves_its_fault",
        "error",
        "@pytest.mark.http_fault: the HttpServer driver",
        why,
    )
