import urllib.request

from pytest_jumpstarter_http import HttpServerFactory


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url) as response:
        return response.read()


def test_two_servers_with_different_images(http_server_factory: HttpServerFactory, tmp_path):
    stable = http_server_factory()  # a fresh temporary root of its own
    (stable.root / "image.raw").write_bytes(b"stable")
    (tmp_path / "image.raw").write_bytes(b"candidate")
    candidate = http_server_factory(tmp_path)  # or a directory you give it
    assert stable.url != candidate.url
    assert fetch(stable.url_for("image.raw")) == b"stable"
    assert fetch(candidate.url_for("image.raw")) == b"candidate"
    # Both servers stop when the test ends.
