import urllib.request


def test_the_device_downloads_its_image(served_dir, http_server):
    (served_dir / "image.raw").write_bytes(b"\x00" * 4096)
    url = http_server.url_for("image.raw")  # on an exporter, this uploads the file first
    with urllib.request.urlopen(url) as response:  # your device's download goes here
        assert len(response.read()) == 4096
