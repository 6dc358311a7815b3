import urllib.request

import pytest
from jumpstarter_testing.pytest import JumpstarterTest


class TestBoard(JumpstarterTest):
    selector = "board=rpi4"

    # Runs anywhere: on loopback outside `jmp shell`, next to the class's board inside it.
    def test_the_boot_script_is_served(self, http_server, served_dir):
        (served_dir / "boot.scr").write_bytes(b"boot")
        with urllib.request.urlopen(http_server.url_for("boot.scr")) as response:
            assert response.read() == b"boot"

    # Needs the board: skipped outside `jmp shell`. It takes the board from http_server rather
    # than from `client`, which pytest would set up first (it lives per class) and fail.
    @pytest.mark.http_exporter
    def test_the_board_serves_its_image(self, http_server, served_dir):
        board = http_server.exporter_client  # the class's `client` inside `jmp shell`
        assert board is not None
        (served_dir / "image.raw").write_bytes(b"image")
        with urllib.request.urlopen(http_server.url_for("image.raw")) as response:
            assert response.read() == b"image"
