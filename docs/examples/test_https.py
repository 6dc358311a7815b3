"""My device downloads over HTTPS: it trusts the run's test CA, handed to it over plain HTTP."""

import hashlib
import ssl
import urllib.error
import urllib.request

import pytest

UPDATE = bytes(range(256)) * 4096  # 1 MiB


def device_fetch(url: str, target, cafile=None) -> None:
    """Stands in for your device: ``curl --cacert CAFILE -o TARGET URL``."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        target.write_bytes(response.read())


# HTTPS on an exporter needs its RecordingHttpServer; the documented exporter runs the stock driver.
@pytest.mark.http_loopback
@pytest.mark.http_server(tls=True)
def test_the_device_installs_an_update_over_https(http_server, http_server_factory, served_dir, tmp_path):
    (served_dir / "update.bin").write_bytes(UPDATE)

    # A device with no CA yet fetches it from a plain server (or have it provisioned).
    plain = http_server_factory()
    device_ca = tmp_path / "lab-ca.pem"
    device_fetch(plain.stage(http_server.ca_cert, "lab-ca.pem"), device_ca)

    # Then it downloads the update over HTTPS, verifying the server against that CA.
    url = http_server.url_for("update.bin")
    assert url.startswith("https://")
    device_fetch(url, tmp_path / "update.bin", cafile=device_ca)

    assert hashlib.sha256((tmp_path / "update.bin").read_bytes()).digest() == hashlib.sha256(UPDATE).digest()
    http_server.assert_requested("update.bin", status=200)


@pytest.mark.http_loopback
@pytest.mark.http_server(tls=True)
def test_a_device_without_the_ca_refuses_the_server(http_server, served_dir, tmp_path):
    (served_dir / "update.bin").write_bytes(UPDATE)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        device_fetch(http_server.url_for("update.bin"), tmp_path / "update.bin")
