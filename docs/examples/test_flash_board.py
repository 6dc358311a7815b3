"""Flash the board with a fresh build: the same test on loopback, in `jmp shell` and on a lease."""

import hashlib

import board  # your flasher: here a stand-in that downloads the image itself


def test_the_board_flashes_a_fresh_build(http_server, tmp_path):
    build = tmp_path / "sdcard.img"
    build.write_bytes(b"\x7fELF new build" * 4096)
    url = http_server.stage(build, "builds/sdcard.img")  # on an exporter: uploaded next to the board
    assert board.flash(url) == hashlib.sha256(build.read_bytes()).hexdigest()
