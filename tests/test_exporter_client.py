"""``http_exporter_client``: the HttpServer of the board the test already holds, one connection per board."""

from __future__ import annotations

import shutil
from pathlib import Path

from fake_controller import FakeController
from jumpstarter_helpers import http_device, http_driver, jmp_shell, write_exporter_config
from subprocess_runs import JUnit, clean_env, python_pytest, run_pytest

JUMPSTARTER_TEST = """
import urllib.request

from jumpstarter_testing.pytest import JumpstarterTest


class TestBoard(JumpstarterTest):
    def test_serves_from_the_board_the_class_holds(self, client, http_server, served_dir):
        assert http_server.backend == "exporter"
        assert http_server.exporter_client is client
        (served_dir / "boot.scr").write_bytes(b"boot")
        with urllib.request.urlopen(http_server.url_for("boot.scr"), timeout=30) as response:
            assert response.read() == b"boot"

    def test_stages_there_too(self, client, http_server, tmp_path):
        image = tmp_path / "image.raw"
        image.write_bytes(b"image")
        with urllib.request.urlopen(http_server.stage(image), timeout=30) as response:
            assert response.read() == b"image"


def test_outside_the_class_the_plugin_connects_itself(http_server):
    assert http_server.backend == "exporter"
    assert http_server.exporter_client is not None
"""


def test_a_jumpstarter_test_class_is_served_by_the_exporter_its_client_holds(tmp_path: Path) -> None:
    config = write_exporter_config(tmp_path / "board.yaml", {"http": http_driver(tmp_path / "www")})
    (tmp_path / "test_board.py").write_text(JUMPSTARTER_TEST)
    done = jmp_shell(
        config,
        python_pytest("-p", "no:randomly", junit=tmp_path / "report.xml"),
        cwd=tmp_path,
        env=clean_env(),
    )
    JUnit(tmp_path / "report.xml", done.stdout).assert_passed(
        "test_serves_from_the_board_the_class_holds",
        "test_stages_there_too",
        "test_outside_the_class_the_plugin_connects_itself",
    )


# docs/fixtures.md shows this conftest, between the markers.
OWN_LEASE_CONFTEST = """
# -- a suite's own board --
import pytest
from jumpstarter.config.client import ClientConfigV1Alpha1


@pytest.fixture(scope="session")
def board():
    config = ClientConfigV1Alpha1.load("lab")
    with config.lease(selector="board=rpi4") as lease, lease.connect() as client:
        yield client


@pytest.fixture
def http_exporter_client(board):
    return board
# -- end --
"""

OWN_LEASE_TESTS = """
import urllib.request

import pytest


@pytest.mark.parametrize("n", range(3))
def test_flash(board, http_server, served_dir, n):
    assert http_server.exporter_client is board
    (served_dir / "image.raw").write_text(f"image {n}")
    with urllib.request.urlopen(http_server.url_for("image.raw"), timeout=30) as response:
        assert response.read() == f"image {n}".encode()
"""


def test_a_suite_that_leases_its_own_board_makes_exactly_one_lease(
    fake_controller: FakeController, client_config_home: Path, tmp_path: Path
) -> None:
    fake_controller.add_exporter(
        "rpi4-01", {"board": "rpi4"}, device_factory=http_device(tmp_path / "rpi4-01")
    )
    shutil.copy(client_config_home / "clients" / "fake.yaml", client_config_home / "clients" / "lab.yaml")
    (tmp_path / "conftest.py").write_text(OWN_LEASE_CONFTEST)
    (tmp_path / "test_own.py").write_text(OWN_LEASE_TESTS)
    # --http-selector too: without the test's own client the plugin would lease a second board.
    junit = run_pytest(
        tmp_path,
        "--http-client=fake",
        "--http-selector=board=rpi4",
        "--http-timeout=20",
        env=clean_env(JMP_CLIENT_CONFIG_HOME=str(client_config_home)),
    )
    junit.assert_passed("test_flash[0]", "test_flash[1]", "test_flash[2]")
    assert len(fake_controller.leases) == 1, "the plugin leased an exporter of its own"
    assert not fake_controller.active_leases()
