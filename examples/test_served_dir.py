"""Write the files a test needs into served_dir; here served_dir is overridden to a fresh folder."""

import urllib.error
import urllib.request

import pytest


@pytest.fixture
def served_dir(tmp_path):
    """Serve this module's own temporary folder instead of --http-root."""
    return tmp_path


def test_serves_what_the_test_wrote(served_dir, http_server):
    (served_dir / "boot.cfg").write_text("console=ttyS0\n")
    with urllib.request.urlopen(http_server.url_for("boot.cfg")) as response:
        assert response.read() == b"console=ttyS0\n"


def test_a_missing_file_is_a_404(http_url):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{http_url}/not-there.img")
    info.value.close()
    assert info.value.code == 404
