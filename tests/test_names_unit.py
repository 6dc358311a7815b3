"""Issue 17: names a storage would alter, too long, or not UTF-8 are refused before anything is copied."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from pytest_jumpstarter_http import LoopbackServer
from pytest_jumpstarter_http.records import check_name, url_path

LATIN1 = os.fsdecode("caf\xe9.img".encode("latin-1"))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("image.raw ", "a part begins or ends with whitespace, which an exporter's storage strips"),
        (" image.raw", "a part begins or ends with whitespace, which an exporter's storage strips"),
        ("images /disk.raw", "a part begins or ends with whitespace, which an exporter's storage strips"),
        ("image.raw\t", "a part begins or ends with whitespace, which an exporter's storage strips"),
        ("x" * 256, "it has a part longer than 255 bytes"),
        ("ü" * 128, "it has a part longer than 255 bytes"),
        ("/".join(["x" * 255] * 17), "it is longer than 4096 bytes"),
        (LATIN1, "it is not valid UTF-8 (a file name in another encoding)"),
    ],
)
def test_a_name_the_storage_would_alter_or_refuse_is_refused_in_one_sentence(name, problem):
    with pytest.raises(ValueError, match="is not a valid served file name") as info:
        check_name(name, where="stage() name")
    assert str(info.value) == (
        f"stage() name {name!r} is not a valid served file name: {problem}; "
        "use a relative path of plain parts separated by '/', like 'images/disk.raw'."
    )


@pytest.mark.parametrize("name", ["x" * 255, "ü" * 127 + "x", "/".join(["x" * 255] * 16)])
def test_a_name_at_the_limits_is_valid(name):
    assert check_name(name) == name


def test_a_url_path_of_a_name_in_another_encoding_is_a_value_error_not_a_unicode_error():
    with pytest.raises(ValueError, match="not valid UTF-8") as info:
        url_path(LATIN1)
    assert not isinstance(info.value, UnicodeError)


@pytest.fixture
def loopback(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    with LoopbackServer(root, staging=root).start() as server:
        yield server


def test_a_255_byte_name_is_staged_and_served_on_loopback(loopback, tmp_path):
    source = tmp_path / "source.img"
    source.write_bytes(b"long name")
    url = loopback.stage(source, "x" * 251 + ".img")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"long name"
    assert [path.name for path in loopback.root.iterdir()] == ["x" * 251 + ".img"]


@pytest.mark.parametrize("name", ["image.raw ", "x" * 256 + "/a", "sub/" + LATIN1])
def test_a_refused_name_copies_nothing_on_loopback(loopback, tmp_path, name):
    source = tmp_path / "source.img"
    source.write_bytes(b"an imposter")
    (loopback.root / "image.raw").write_bytes(b"the real image")
    with pytest.raises(ValueError, match="is not a valid served file name"):
        loopback.stage(source, name)
    assert sorted(path.name for path in loopback.root.iterdir()) == ["image.raw"]
    assert (loopback.root / "image.raw").read_bytes() == b"the real image"
