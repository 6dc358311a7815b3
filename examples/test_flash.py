"""The test every hardware suite writes: the same code runs on loopback and on an exporter."""

import hashlib
from pathlib import Path

import board

IMAGE = Path(__file__).parent / "images" / "image.raw"


def test_flash(http_url):
    assert board.flash(f"{http_url}/image.raw") == hashlib.sha256(IMAGE.read_bytes()).hexdigest()


def test_flash_a_staged_build(http_server, tmp_path):
    build = tmp_path / "build.img"
    build.write_bytes(b"\x7fELF fresh build" * 1024)
    url = http_server.stage(build, "builds/latest.img")
    assert board.flash(url) == hashlib.sha256(build.read_bytes()).hexdigest()
