import urllib.request

from pytest_jumpstarter_http import LoopbackServer


def test_a_server_without_the_fixtures(tmp_path):
    (tmp_path / "image.raw").write_bytes(b"image")
    with (
        LoopbackServer(tmp_path).start() as server,  # stopped when the block ends
        urllib.request.urlopen(server.url_for("image.raw")) as response,
    ):
        assert response.read() == b"image"
