"""Does my device resume an interrupted download? Cut the first download of the image."""

import hashlib
import http.client
import urllib.error
import urllib.request

import pytest

IMAGE = bytes(range(256)) * 4096  # 1 MiB


def device_download(url: str, target) -> None:
    """Stands in for your device's updater: it resumes a cut download with a Range request."""
    for _ in range(3):
        have = target.stat().st_size if target.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response, target.open("ab") as out:
                while chunk := response.read(64 << 10):
                    out.write(chunk)
                owed = response.length  # bytes the server announced but never sent
        except (ConnectionError, urllib.error.URLError, http.client.IncompleteRead):
            owed = 1
        if not owed:
            return
        # The connection was cut: try again from where it stopped.


# The fault needs a server that can inject it: loopback, or an exporter's RecordingHttpServer.
@pytest.mark.http_loopback
def test_the_device_resumes_a_cut_download(http_server, served_dir, tmp_path):
    (served_dir / "image.raw").write_bytes(IMAGE)
    cut = http_server.inject("image.raw", cut_after=256 << 10, times=1)

    target = tmp_path / "image.raw"
    device_download(http_server.url_for("image.raw"), target)

    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(IMAGE).digest()
    assert cut.hits == 1
    first, resumed = http_server.requests
    assert (first.status, first.bytes_sent, first.complete) == (200, 256 << 10, False)
    assert (resumed.status, resumed.range) == (206, f"bytes={256 << 10}-")


@pytest.mark.http_loopback
@pytest.mark.http_fault("image.raw", status=503, times=2)
def test_the_device_retries_while_the_server_is_busy(http_server, served_dir, tmp_path):
    (served_dir / "image.raw").write_bytes(IMAGE)
    url = http_server.url_for("image.raw")
    answers = []
    for _ in range(3):  # your device's retry loop
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                answers.append(response.status)
                break
        except urllib.error.HTTPError as error:
            error.close()
            answers.append(error.code)
    assert answers == [503, 503, 200]
