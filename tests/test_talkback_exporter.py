"""The device talks back on an exporter: the suite of ``test_talkback.py``, run inside one real
``jmp shell`` on a ``RecordingHttpServer``, and what the stock driver says instead. The shell exits
0 whatever its commands do (jumpstarter#1099): the runs' JUnit reports are what the tests read.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from jumpstarter_helpers import JMP, http_driver, jmp_shell, write_exporter_config
from subprocess_runs import JUnit, python_pytest
from test_talkback import LEAKS, XDIST_ARGS, check_device_run, write_suites

RECORDING = "pytest_jumpstarter_http.driver.RecordingHttpServer"


@dataclass
class Runs:
    where: Path
    device: JUnit
    session: JUnit
    xdist: JUnit
    stock: JUnit


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if shutil.which("curl") is None:
        pytest.skip("curl is the device here: apt-get install -y curl")
    if not Path(JMP).exists():
        pytest.skip("jmp (jumpstarter-cli, in the test extra) is not installed")
    where = tmp_path_factory.mktemp("talkback-exporter")
    sync = write_suites(where)
    config = write_exporter_config(
        where / "exporter.yaml",
        {
            "rec": {**http_driver(where / "rec-root"), "type": RECORDING},
            "stock": http_driver(where / "stock-root"),
        },
    )
    rec = ("--http-driver", "rec")
    jmp_shell(
        config,
        python_pytest(*rec, "test_device.py", junit=where / "device.xml"),
        python_pytest(
            *rec, "--http-scope=session", "-k", "leak", "test_device.py", junit=where / "session.xml"
        ),
        ["env", f"TALK_SYNC={sync}", *python_pytest(*rec, *XDIST_ARGS, junit=where / "xdist.xml")],
        python_pytest(
            "--http-driver", "stock", "-k", "manifest or leak_1", "test_device.py", junit=where / "stock.xml"
        ),
        cwd=where,
        timeout=420,
    )
    return Runs(where, *(JUnit(where / f"{name}.xml") for name in ("device", "session", "xdist", "stock")))


def test_the_device_talks_back_on_an_exporter_as_on_loopback(exporter: Runs) -> None:
    check_device_run(exporter.device, exporter.where)


def test_nothing_scripted_leaks_into_the_next_test_of_a_session_server_on_an_exporter(exporter: Runs) -> None:
    assert set(exporter.session.outcomes().values()) == {"passed"}, exporter.session.output
    assert {case.name for case in exporter.session.cases.values()} >= set(LEAKS)


def test_xdist_workers_sharing_an_exporter_server_keep_their_replies_apart(exporter: Runs) -> None:
    exporter.xdist.assert_passed(
        "test_one_worker_scripts_a_reply_and_credentials", "test_the_other_worker_never_sees_them"
    )


def test_the_uploads_went_with_the_run_that_received_them(exporter: Runs) -> None:
    runs = exporter.where / "rec-root" / "pytest-jumpstarter-http" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_the_stock_driver_says_to_use_the_recording_one(exporter: Runs) -> None:
    why = (
        "cannot script replies, uploads or credentials; put "
        "pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config instead of "
        "jumpstarter_driver_http.driver.HttpServer to use respond()"
    )
    exporter.stock.assert_outcome(
        "test_a_manifest_then_a_redirect_then_the_file", "failed", "the HttpServer driver at 'stock'", why
    )
