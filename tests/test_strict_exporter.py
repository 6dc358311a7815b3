"""Being strict when asked on an exporter: the suites of ``test_strict.py``, run inside one real
``jmp shell`` on a ``RecordingHttpServer``, where the order of replies lives on the server. The
shell exits 0 whatever its commands do (jumpstarter#1099): the runs' JUnit reports are what the
tests read.
"""

from __future__ import annotations

import pytest
from jumpstarter_helpers import RECORDING, http_driver, jmp_shell, require, write_exporter_config
from subprocess_runs import python_pytest
from test_strict import PASSING, RUNS, Runs, check_out_of_order, check_strict, write_suites

#: How a failure names a handle of the exporter's server: its own URL namespace.
EXPORTER_LABEL = "http://127.0.0.1:"


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    require("curl")
    where = tmp_path_factory.mktemp("strict-exporter")
    write_suites(where)
    config = write_exporter_config(
        where / "exporter.yaml", {"rec": {**http_driver(where / "rec-root"), "type": RECORDING}}
    )
    rec = ("--http-driver", "rec")
    commands = [python_pytest(*rec, *args, junit=where / f"{name}.xml") for name, args in RUNS]
    jmp_shell(config, *commands, cwd=where, timeout=300)
    return Runs(where)


def test_assert_requested_counts_the_requests_on_an_exporter(exporter: Runs) -> None:
    exporter.device.assert_passed(*PASSING["count"])


def test_ordered_replies_answer_in_turn_and_fail_a_test_out_of_it_on_an_exporter(exporter: Runs) -> None:
    exporter.device.assert_passed(*PASSING["ordered"])
    check_out_of_order(exporter.device)


def test_check_lists_the_unexpected_requests_and_the_replies_left_on_an_exporter(exporter: Runs) -> None:
    exporter.device.assert_passed(*PASSING["check"])


def test_http_strict_checks_every_test_on_an_exporter(exporter: Runs) -> None:
    check_strict(exporter.strict, f"--http-strict: {EXPORTER_LABEL}")
    check_strict(exporter.strict_ini, f"--http-strict: {EXPORTER_LABEL}")
    assert (
        "/pytest-jumpstarter-http/ns/" in exporter.strict["test_a_reply_not_used_up_fails_the_test"].message
    )


def test_wait_for_requests_waits_for_several_and_for_the_replies_on_an_exporter(exporter: Runs) -> None:
    exporter.device.assert_passed(*PASSING["wait"])
