import urllib.request


def test_serves_this_folders_images(http_url):
    with urllib.request.urlopen(f"{http_url}/boot.cfg") as response:
        assert response.read() == b"console=ttyAMA0\n"
