"""HTTPS and mutual TLS (issue 20), with curl, GNU wget and Python's ssl as the device.

The device-facing tests are written once, in ``SUITE``; this module runs them on loopback with
function and session scope and under ``-n 2``, ``test_tls_exporter.py`` inside a real
``jmp shell`` on a ``RecordingHttpServer``. They run in a subprocess: each run makes its own CA
and servers, and the JUnit report is what the tests read.
"""

from __future__ import annotations

import shutil
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from subprocess_runs import JUnit, run_pytest, write_inner_suite

from pytest_jumpstarter_http import HttpServerFactory, HttpServerHandle
from pytest_jumpstarter_http.records import TlsSpec

#: Run with ``--http-tls=on``: every test without a marker gets HTTPS from the option.
SUITE = """
import hashlib, os, ssl, subprocess, time, urllib.request
import pytest

BACKEND = os.environ.get("TLS_FACTORY_BACKEND", "loopback")

def curl(*args):
    return subprocess.run(["curl", "-sS", *map(str, args)], capture_output=True, text=True, timeout=60)

def sha(data):
    return hashlib.sha256(data).hexdigest()

def mine(http_server, name):
    return [r for r in http_server.requests if r.name == name]

def test_curl_verifies_the_server_with_the_ca(http_server, served_dir, tmp_path):
    assert http_server.url.startswith("https://")
    assert http_server.ca_cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert http_server.client_cert is None
    data = os.urandom(5 << 20)  # more than one 4 MiB chunk of the file response
    (served_dir / "image.raw").write_bytes(data)
    url = http_server.url_for("image.raw")
    done = curl("-f", "--cacert", http_server.ca_cert, "-o", tmp_path / "image.raw", url)
    assert done.returncode == 0, done.stderr
    assert sha((tmp_path / "image.raw").read_bytes()) == sha(data)
    entry = http_server.wait_for_request("image.raw", status=200)
    assert (entry.bytes_sent, entry.complete) == (len(data), True)

def test_ranges_and_etags_work_over_tls(http_server, served_dir, tmp_path):
    (served_dir / "fw.bin").write_bytes(bytes(range(256)) * 4)
    url = http_server.url_for("fw.bin")
    ca = http_server.ca_cert
    part = curl("-f", "--cacert", ca, "-r", "10-19", "-w", "%{http_code}", "-o", tmp_path / "part", url)
    assert part.stdout == "206"
    assert (tmp_path / "part").read_bytes() == bytes(range(10, 20))
    headers = curl("-f", "--cacert", ca, "-D", "-", "-o", os.devnull, url).stdout
    etag = next(line[5:].strip() for line in headers.splitlines() if line.lower().startswith("etag:"))
    again = curl("--cacert", ca, "-H", f"If-None-Match: {etag}", "-o", os.devnull, "-w", "%{http_code}", url)
    assert again.stdout == "304"
    assert [r.status for r in mine(http_server, "fw.bin")] == [206, 200, 304]

# What the log says of the handshakes the server refused, once it holds count of them: a client
# that refuses the server's certificate may end before the server read its alert.
def refused(http_server, count):
    deadline = time.monotonic() + 10
    while True:
        said = [r.answered_by for r in http_server.requests if (r.method, r.path, r.status) == ("-", "/", 0)]
        if len(said) >= count or time.monotonic() > deadline:
            return said
        time.sleep(0.05)

def test_curl_without_the_ca_fails_verification(http_server, served_dir):
    (served_dir / "a.txt").write_text("a")
    done = curl("-o", os.devnull, http_server.url_for("a.txt"))
    assert done.returncode == 60, done.stderr  # CURLE_PEER_FAILED_VERIFICATION
    # Refused in the handshake, before any request: the log says why (issue 27).
    said = "TLS handshake failed: the client does not trust the server's CA (give it ca_cert)"
    assert refused(http_server, 1) == [said]
    assert mine(http_server, "a.txt") == []

def test_plain_http_to_the_https_port_is_in_the_log_and_matches_no_request(http_server, served_dir):
    (served_dir / "index.html").write_text("index")
    done = curl("-f", http_server.url_for("index.html").replace("https://", "http://"))
    assert done.returncode in (52, 56), done  # the server hangs up: an empty reply, or a reset
    assert refused(http_server, 1) == ["TLS handshake failed: plain HTTP sent to the HTTPS port"]
    (entry,) = http_server.requests
    assert entry.line().endswith(" TLS handshake failed: plain HTTP sent to the HTTPS port")
    with pytest.raises(AssertionError, match="plain HTTP sent to the HTTPS port"):
        http_server.assert_requested("/")  # no request was made, not even for the URL's /

@pytest.mark.http_server(tls="mutual")
def test_a_client_without_a_certificate_or_with_another_ca_s_is_in_the_log(http_server, served_dir):
    (served_dir / "m.txt").write_text("m")
    url = http_server.url_for("m.txt")
    assert curl("-f", "--cacert", http_server.ca_cert, url).returncode in (35, 52, 56)
    # Signed by a CA the machine trusts (on the exporter, SSL_CERT_FILE names it), not the test CA.
    stranger = os.path.join(os.path.dirname(__file__), "stranger", "client.pem")
    again = curl("-f", "--cacert", http_server.ca_cert, "--cert", stranger, url)
    assert again.returncode in (35, 52, 56), again
    assert refused(http_server, 2) == [
        "TLS handshake failed: no client certificate",
        "TLS handshake failed: client certificate not signed by the test CA",
    ]
    assert mine(http_server, "m.txt") == []

def test_wget_verifies_the_server_with_the_ca(http_server, served_dir, tmp_path):
    (served_dir / "w.txt").write_text("from wget")
    url = http_server.url_for("w.txt")
    done = subprocess.run(["wget", "-nv", f"--ca-certificate={http_server.ca_cert}", url],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "w.txt").read_text() == "from wget"
    refused = subprocess.run(["wget", "-nv", "-O", os.devnull, url],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 5, refused.stderr  # SSL verification failure
    http_server.assert_requested("w.txt", status=200)

def test_python_ssl_verifies_the_server_with_the_ca(http_server, served_dir):
    (served_dir / "p.txt").write_text("from python")
    context = ssl.create_default_context(cafile=http_server.ca_cert)
    with urllib.request.urlopen(http_server.url_for("p.txt"), context=context, timeout=30) as response:
        assert response.read() == b"from python"

def test_a_cut_download_resumes_over_tls(http_server, served_dir, tmp_path):
    data = os.urandom(4 << 20)
    (served_dir / "big.raw").write_bytes(data)
    url = http_server.url_for("big.raw")
    fault = http_server.inject("big.raw", cut_after=1 << 20, times=1)
    out, ca = tmp_path / "big.raw", http_server.ca_cert
    assert curl("--cacert", ca, "-o", out, url).returncode in (18, 56)  # cut: partial file, or TLS recv
    assert out.stat().st_size == 1 << 20
    done = curl("-f", "--cacert", ca, "-C", "-", "-o", out, url)
    assert done.returncode == 0, done.stderr
    assert sha(out.read_bytes()) == sha(data)
    http_server.wait_for_request("big.raw", status=206)
    cut, resumed = mine(http_server, "big.raw")
    assert (cut.status, cut.bytes_sent, cut.complete) == (200, 1 << 20, False)
    assert (resumed.status, resumed.range, resumed.bytes_sent) == (206, "bytes=1048576-", 3 << 20)
    assert fault.hits == 1

def test_a_status_fault_answers_over_tls(http_server, served_dir):
    (served_dir / "retry.txt").write_text("ok")
    url = http_server.url_for("retry.txt")
    http_server.inject("retry.txt", status=503, times=1)
    done = curl("-f", "--cacert", http_server.ca_cert, "--retry", "2", url)
    assert done.stdout == "ok", done.stderr
    assert [r.status for r in mine(http_server, "retry.txt")] == [503, 200]

def test_a_staged_file_is_served_over_tls(http_server, tmp_path):
    source = tmp_path / "staged.bin"
    source.write_bytes(b"staged")
    url = http_server.stage(source)
    assert url.startswith("https://")
    assert curl("-f", "--cacert", http_server.ca_cert, url).stdout == "staged"

@pytest.mark.http_server(tls="mutual")
def test_mutual_tls_takes_the_client_certificate(http_server, served_dir):
    (served_dir / "m.txt").write_text("mutual")
    url = http_server.url_for("m.txt")
    ca, cert = http_server.ca_cert, http_server.client_cert
    assert "PRIVATE KEY" in cert.read_text() and "CERTIFICATE" in cert.read_text()
    done = curl("-f", "--cacert", ca, "--cert", cert, url)
    assert done.stdout == "mutual", done.stderr
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert)
    with urllib.request.urlopen(url, context=context, timeout=30) as response:
        assert response.read() == b"mutual"
    assert [r.status for r in mine(http_server, "m.txt")] == [200, 200]

@pytest.mark.http_server(tls="mutual")
def test_mutual_tls_refuses_a_client_without_a_certificate(http_server, served_dir):
    (served_dir / "m.txt").write_text("mutual")
    refused = curl("-f", "--cacert", http_server.ca_cert, http_server.url_for("m.txt"))
    # TLS 1.3 refuses after the client's handshake ends: the reply is empty or reset.
    assert refused.returncode in (35, 52, 56), refused
    assert refused.stdout == ""
    assert mine(http_server, "m.txt") == []

@pytest.mark.http_server(tls=False)
def test_the_marker_beats_the_option(http_server, served_dir):
    (served_dir / "plain.txt").write_text("plain")
    assert http_server.url.startswith("http://")
    assert (http_server.ca_cert, http_server.client_cert) == (None, None)
    assert curl("-f", http_server.url_for("plain.txt")).stdout == "plain"

def test_plain_and_tls_servers_live_in_one_test(http_server_factory):
    plain = http_server_factory(backend=BACKEND, tls=False)
    secure = http_server_factory(backend=BACKEND, tls=True)
    assert plain.url.startswith("http://") and secure.url.startswith("https://")
    for server in (plain, secure):
        (server.root / "f.txt").write_text(server.scheme)
    assert curl("-f", plain.url_for("f.txt")).stdout == "http"
    assert curl("-f", "--cacert", secure.ca_cert, secure.url_for("f.txt")).stdout == "https"
    with pytest.raises(ValueError, match="factory.tls=.*: .both. is not valid; use off, on or mutual"):
        http_server_factory(backend=BACKEND, tls="both")
"""

#: How many tests ``SUITE`` holds.
CASES = SUITE.count("\ndef test_")


def write_suite(where: Path) -> Path:
    """``SUITE`` in ``where``, and a stranger's CA beside it: the CA certificate (the file returned)
    and a client certificate of it, ``stranger/client.pem``, which mutual TLS must refuse."""
    import trustme

    write_inner_suite(where, {"test_device.py": SUITE})
    (where / "stranger").mkdir()
    stranger = trustme.CA(organization_name="a CA the machine trusts")
    client = stranger.issue_cert("device.invalid")
    client.private_key_and_cert_chain_pem.write_to_path(str(where / "stranger" / "client.pem"))
    stranger.cert_pem.write_to_path(str(where / "stranger" / "ca.pem"))
    return where / "stranger" / "ca.pem"


def check_device_run(report: JUnit) -> None:
    """What the device sees: the same on both backends, both scopes and under xdist."""
    assert set(report.outcomes().values()) == {"passed"}, report.output
    assert len(report.cases) == CASES, report.output


@dataclass
class Runs:
    function: JUnit
    session: JUnit
    xdist: JUnit


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if shutil.which("curl") is None or shutil.which("wget") is None:
        pytest.skip("curl and GNU wget are the device here: apt-get install -y curl wget")
    where = tmp_path_factory.mktemp("tls")
    write_suite(where)
    args = ("--http-tls=on", "test_device.py")
    function = run_pytest(where, *args, name="function", timeout=240)
    session = run_pytest(where, *args, "--http-scope=session", name="session", timeout=240)
    xdist = run_pytest(where, *args, "-p", "xdist", "-n", "2", name="xdist", timeout=240)
    return Runs(function, session, xdist)


def test_real_clients_verify_https_on_loopback(loopback: Runs) -> None:
    check_device_run(loopback.function)


def test_a_session_server_serves_https_to_every_test(loopback: Runs) -> None:
    check_device_run(loopback.session)


def test_each_xdist_worker_serves_https_with_its_own_ca(loopback: Runs) -> None:
    check_device_run(loopback.xdist)


@pytest.mark.http_server(tls=True)
def test_the_fixture_serves_https_that_python_verifies(
    http_server: HttpServerHandle, served_dir: Path
) -> None:
    (served_dir / "a.txt").write_text("secure")
    assert http_server.ca_cert is not None
    context = ssl.create_default_context(cafile=http_server.ca_cert)
    with urllib.request.urlopen(http_server.url_for("a.txt"), context=context, timeout=30) as response:
        assert response.read() == b"secure"
    assert http_server.assert_requested("a.txt", status=200).bytes_sent == 6


@pytest.mark.http_server(tls="mutual")
def test_the_test_ca_key_is_never_written_and_the_client_key_is_private(
    http_server: HttpServerHandle, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert http_server.ca_cert is not None
    assert http_server.client_cert is not None
    basetemp = tmp_path_factory.getbasetemp()
    assert http_server.ca_cert.is_relative_to(basetemp)
    keys = [path for path in basetemp.rglob("*.pem") if b"PRIVATE KEY" in path.read_bytes()]
    keys = [path for path in keys if "stranger" not in path.parts]  # write_suite()'s, for the device
    assert keys == [http_server.client_cert]
    assert http_server.client_cert.stat().st_mode & 0o777 == 0o600
    assert http_server.ca_cert.parent.stat().st_mode & 0o777 == 0o700


def test_a_certificate_names_the_url_host_given_as_a_dns_name(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import ssl, urllib.request
        from cryptography import x509

        def test_localhost(http_server, served_dir):
            (served_dir / "a.txt").write_text("by name")
            assert http_server.url.startswith("https://localhost:")
            context = ssl.create_default_context(cafile=http_server.ca_cert)
            with urllib.request.urlopen(http_server.url_for("a.txt"), context=context) as response:
                assert response.read() == b"by name"
            pem = ssl.get_server_certificate(("127.0.0.1", http_server.port))
            names = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
            assert names.get_values_for_type(x509.DNSName) == ["localhost"]
            assert names.get_values_for_type(x509.IPAddress) == []
        """
    )
    result = pytester.runpytest("--http-tls=on", "--http-url-host=localhost")
    result.assert_outcomes(passed=1)


def test_a_certificate_names_an_address_as_an_ip_san(http_server_factory: HttpServerFactory) -> None:
    from cryptography import x509

    server = http_server_factory(tls=True)
    pem = ssl.get_server_certificate(("127.0.0.1", server.port))
    names = (
        x509.load_pem_x509_certificate(pem.encode())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == []


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--http-tls=maybe"],
            "",
            "--http-tls (command line): 'maybe' is not valid; use off, on or mutual "
            "(in Python: False, True or 'mutual').",
        ),
        (
            [],
            "http_tls = both",
            "ini key http_tls: 'both' is not valid; use off, on or mutual "
            "(in Python: False, True or 'mutual').",
        ),
    ],
)
def test_a_bad_tls_mode_stops_the_run_with_one_sentence(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_never_runs(): raise AssertionError")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str()


def test_a_bad_tls_marker_fails_its_test_with_one_sentence(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.http_server(tls="both")
        def test_bad(http_server):
            pass

        def test_good(http_server):
            assert http_server.url.startswith("http://")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.http_server(tls=...): 'both' is not valid; use off, on or mutual "
            "(in Python: False, True or 'mutual').*"
        ]
    )
    assert "markers.py" not in result.stdout.str()


def test_the_header_and_the_marker_name_tls(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--http-tls=mutual", "--co")
    result.stdout.fnmatch_lines(["jumpstarter-http: backend=loopback*, tls=mutual"])
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.http_server(*, scope=None, root=None, tls=None):*"])


def test_a_server_refuses_a_tls_spec_that_holds_no_pem() -> None:
    with pytest.raises(ValueError, match=r"^serve_tls\(\): key_pem is not a PEM private key; give the PEM"):
        TlsSpec("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----", "not a key")
    spec = TlsSpec("x CERTIFICATE-----", "x PRIVATE KEY-----", None)
    assert TlsSpec.from_dict(spec.as_dict()) == spec


def test_a_plain_run_never_imports_trustme(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_plain(http_server):
            assert http_server.url.startswith("http://")
            assert "trustme" not in sys.modules
        """
    )
    # A subprocess: this process imported trustme for the tests before.
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_a_refused_handshake_is_in_the_report_and_no_status_for_http_fail_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import contextlib, http.client
        import pytest

        def knock(server):  # plain HTTP to the HTTPS port: the server hangs up
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            with contextlib.suppress(http.client.RemoteDisconnected, ConnectionResetError):
                connection.request("GET", "/image.raw")
                connection.getresponse()
            connection.close()

        @pytest.mark.http_server(tls=True)
        def test_passes(http_server):
            knock(http_server)

        @pytest.mark.http_server(tls=True)
        def test_fails(http_server):
            knock(http_server)
            assert False
        """
    )
    result = pytester.runpytest("--http-fail-on=4xx,5xx")
    result.assert_outcomes(passed=1, failed=1)  # status 0: no answer, so no status --http-fail-on lists
    result.stdout.fnmatch_lines(
        [
            "*- Captured HTTP requests -*",
            "https://127.0.0.1:*:",
            "??:??:??.??? TLS handshake failed: plain HTTP sent to the HTTPS port",
        ]
    )
    assert "(no requests)" not in result.stdout.str()
