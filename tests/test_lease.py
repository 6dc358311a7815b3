"""Leasing an exporter by selector, through Jumpstarter's real client and a fake controller.

The fake runs in this process, so the tests read its state; the pytest under test runs in a
subprocess that finds the fake through a client config file (``--http-client fake``), since
Jumpstarter reads ``JMP_CLIENT_CONFIG_HOME`` when it is imported.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fake_controller import FakeController
from jumpstarter_helpers import http_device
from subprocess_runs import JUnit, clean_env, run_pytest

LEASED = """
import os, urllib.request
import pytest

def test_matched(http_server, served_dir):
    (served_dir / "hello.txt").write_text("through the lease")
    assert http_server.backend == "exporter"
    print("EXPORTER", http_server.connection.name)
    with urllib.request.urlopen(http_server.url_for("hello.txt"), timeout=30) as response:
        assert response.read() == b"through the lease"

@pytest.mark.http_exporter(selector="board=nope")
def test_unsatisfiable(http_server):
    pass
"""


@pytest.fixture
def lab(fake_controller: FakeController, tmp_path: Path) -> FakeController:
    """The fake controller with two exporters, an rpi4 and a qemu board."""
    for name, board in (("rpi4-01", "rpi4"), ("qemu-01", "qemu")):
        fake_controller.add_exporter(name, {"board": board}, device_factory=http_device(tmp_path / name))
    return fake_controller


def run_leased(folder: Path, config_home: Path, *args: str, **env: str) -> JUnit:
    """Run ``LEASED`` in a subprocess that leases ``board=rpi4`` through client config ``fake``."""
    (folder / "test_leased.py").write_text(LEASED)
    return run_pytest(
        folder,
        "-s",
        "--http-client",
        "fake",
        "--http-selector",
        "board=rpi4",
        "--http-timeout",
        "20",
        *args,
        env=clean_env(JMP_CLIENT_CONFIG_HOME=str(config_home), **env),
    )


def test_a_selector_leases_a_matching_exporter_and_releases_it_after_the_run(
    lab: FakeController, client_config_home: Path, tmp_path: Path
) -> None:
    junit = run_leased(tmp_path, client_config_home, "-k", "matched")
    junit.assert_passed("test_matched")
    assert "EXPORTER rpi4-01" in junit.output
    (lease,) = lab.leases.values()
    assert lease.selector == "board=rpi4"
    assert lease.exporter is not None
    assert lease.exporter.name == "rpi4-01"
    assert lease.ended
    assert lab.calls.count("ClientService.DeleteLease") == 1
    assert not lab.active_leases()


def test_an_unsatisfiable_selector_is_a_clear_error(
    lab: FakeController, client_config_home: Path, tmp_path: Path
) -> None:
    junit = run_leased(tmp_path, client_config_home, "-k", "unsatisfiable")
    junit.assert_outcome(
        "test_unsatisfiable",
        "error",
        "cannot lease an exporter matching 'board=nope' with client config 'fake'",
        "no exporter matches selector 'board=nope'",
    )


def test_an_inherited_jmp_lease_is_reused_and_not_released(
    lab: FakeController, client_config_home: Path, tmp_path: Path
) -> None:
    held = lab.client_config().create_lease(selector="board=rpi4", duration=timedelta(minutes=10))
    name = held.name
    junit = run_leased(tmp_path, client_config_home, "-k", "matched", JMP_LEASE=name)
    junit.assert_passed("test_matched")
    assert list(lab.leases) == [name], "the run made a lease of its own"
    assert lab.leases[name].active
    assert "ClientService.DeleteLease" not in lab.calls
