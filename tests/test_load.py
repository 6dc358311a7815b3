"""Issue 6, load: many concurrent downloads, ranges, and files past 4 GiB, with and without sendfile."""

import hashlib
import http.client
import os
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

LOAD_CLIENTS = 32
LOAD_SIZE = 64 << 20
SPARSE_SIZE = (4 << 30) + (1 << 20)
MARKER_AT = (4 << 30) + 123
MARKER = b"past 4 GiB"


def download_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ranged(url: str, header: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with ``Range: header``; http.client, so nothing retries or rewrites it."""
    host, port = url.removeprefix("http://").split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, "/" + url.split("/", 3)[3], headers={"Range": header} if header else {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_aiohttp_sendfile_is_off_exactly_when_aiohttp_nosendfile_is_set():
    """Proves which path the checks below took: the run under AIOHTTP_NOSENDFILE=1 repeats them."""
    from aiohttp import web_fileresponse

    assert bool(os.environ.get("AIOHTTP_NOSENDFILE")) == web_fileresponse.NOSENDFILE


def test_32_concurrent_downloads_of_a_64_mib_file_all_arrive_intact(http_server, served_dir):
    data = os.urandom(LOAD_SIZE)
    (served_dir / "load.raw").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    del data
    url = http_server.url_for("load.raw")
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        digests = list(pool.map(download_sha256, [url] * LOAD_CLIENTS))
    assert digests == [expected] * LOAD_CLIENTS


@pytest.fixture
def image(http_server, served_dir) -> tuple[str, bytes]:
    data = os.urandom(1 << 20) + bytes(range(256))
    (served_dir / "image.raw").write_bytes(data)
    return http_server.url_for("image.raw"), data


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        pytest.param("bytes=0-99", 0, 99, id="first-bytes"),
        pytest.param("bytes=-100", -100, -1, id="last-bytes"),
        pytest.param("bytes=400000-400999", 400000, 400999, id="middle-slice"),
        pytest.param("bytes=1048000-", 1048000, -1, id="open-ended"),
        pytest.param("bytes=-99999999", 0, -1, id="suffix-longer-than-the-file"),
        pytest.param("bytes=1048570-99999999", 1048570, -1, id="end-past-the-file"),
    ],
)
def test_range_requests_serve_exactly_the_asked_bytes(image, header, first, last):
    url, data = image
    size = len(data)
    first, last = first % size, last % size
    status, headers, body = ranged(url, header)
    assert status == 206
    assert body == data[first : last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert int(headers["Content-Length"]) == last - first + 1


@pytest.mark.parametrize("header", ["bytes=1048832-", "bytes=99999999-100000000"])
def test_an_unsatisfiable_range_is_a_416_naming_the_size(image, header):
    url, data = image
    status, headers, body = ranged(url, header)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(data)}"
    assert data[:16] not in body


def test_a_download_without_range_is_the_whole_file(image):
    url, data = image
    status, headers, body = ranged(url, "")
    assert status == 200
    assert body == data
    assert int(headers["Content-Length"]) == len(data)


@pytest.fixture
def sparse(http_server, served_dir: Path) -> str:
    path = served_dir / "huge.raw"
    with open(path, "wb") as huge:
        huge.truncate(SPARSE_SIZE)
        huge.seek(MARKER_AT)
        huge.write(MARKER)
        huge.seek(SPARSE_SIZE - len(MARKER))
        huge.write(MARKER)
    if path.stat().st_blocks * 512 >= SPARSE_SIZE:
        path.unlink()
        pytest.skip(f"the file system of {served_dir} has no sparse files; a 4 GiB test file would be real")
    return http_server.url_for("huge.raw")


def test_a_file_past_4_gib_has_the_right_length(sparse):
    status, headers, _ = ranged(sparse, "", method="HEAD")
    assert status == 200
    assert int(headers["Content-Length"]) == SPARSE_SIZE


def test_a_file_past_4_gib_serves_the_right_bytes_past_4_gib(sparse):
    status, headers, body = ranged(sparse, f"bytes={MARKER_AT - 3}-{MARKER_AT + len(MARKER) + 2}")
    assert status == 206
    assert body == b"\0\0\0" + MARKER + b"\0\0\0"
    assert headers["Content-Range"] == f"bytes {MARKER_AT - 3}-{MARKER_AT + len(MARKER) + 2}/{SPARSE_SIZE}"
    status, _, body = ranged(sparse, f"bytes=-{len(MARKER)}")
    assert (status, body) == (206, MARKER)


def test_every_check_above_passes_without_sendfile(pytester, monkeypatch):
    # aiohttp reads AIOHTTP_NOSENDFILE once, at import (web_fileresponse.NOSENDFILE): a process
    # of its own. The project's own ini applies (its asyncio key needs pytest-asyncio loaded).
    monkeypatch.setenv("AIOHTTP_NOSENDFILE", "1")
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:cacheprovider")
    result = pytester.runpytest_subprocess(__file__, "-k", "not without_sendfile")
    result.assert_outcomes(passed=13)
