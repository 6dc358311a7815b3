"""HTTPS on an exporter: the suite of ``test_tls.py``, run inside one real ``jmp shell`` on a
``RecordingHttpServer`` (function and session scope, ``-n 2``), and what the stock driver says
instead. The shell exits 0 whatever its commands do (jumpstarter#1099): the runs' JUnit reports,
and the files its commands write, are what the tests read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from jumpstarter_helpers import (
    RECORDING,
    free_range,
    http_driver,
    jmp_shell,
    require,
    write_driver_port,
    write_exporter_config,
)
from subprocess_runs import PYTHON, JUnit, clean_env, python_pytest
from test_tls import check_device_run, write_suite

#: Run inside the shell after the runs: whether a port the runs' TLS sites had still listens.
PROBE = """
import socket, sys
from pathlib import Path

port = int(Path(sys.argv[1]).read_text())
with socket.socket() as probe:
    probe.settimeout(5)
    state = "listening" if probe.connect_ex(("127.0.0.1", port)) == 0 else "closed"
Path(sys.argv[1] + ".after").write_text(state)
"""

#: Written into the suite's folder: records the HTTPS port of the run's first TLS server.
CONFTEST = """
import os
from pathlib import Path
import pytest

@pytest.fixture(autouse=True)
def _record_tls_port(request):
    where = os.environ.get("TLS_PORT_FILE")
    if where and "http_server" in request.fixturenames and not Path(where).exists():
        server = request.getfixturevalue("http_server")
        if server.scheme == "https":
            Path(where).write_text(str(server.port))
"""


def write_lab_certificate(where: Path) -> dict[str, str]:
    """A lab's own CA and a certificate of it for 127.0.0.1, as files on the exporter; the config."""
    import trustme

    where.mkdir()
    ca = trustme.CA(organization_name="the lab's own CA")
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    (where / "chain.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(where / "key.pem"))
    return {
        "tls_cert_file": str(where / "chain.pem"),
        "tls_key_file": str(where / "key.pem"),
        "tls_ca_file": str(where / "ca.pem"),
    }


@dataclass
class Runs:
    function: JUnit
    session: JUnit
    xdist: JUnit
    stock: JUnit
    #: A run on a driver configured with the lab's own certificate files.
    lab: JUnit
    #: The plain port of the shared server before and after the TLS runs.
    plain_ports: tuple[str, str]
    #: Whether a run's TLS port still listened once the run had ended.
    tls_port_after: str
    #: The lab driver's ``tls_ports`` (one free port), and the HTTPS port its run served on.
    lab_tls_ports: tuple[str, str]


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    require("curl", "wget")
    where = tmp_path_factory.mktemp("tls-exporter")
    stranger_ca = write_suite(where)
    (where / "conftest.py").write_text(CONFTEST)
    (where / "probe.py").write_text(PROBE)
    lab = write_lab_certificate(where / "lab")
    lab["tls_ports"] = "{}-{}".format(*free_range(2))  # what a lab's firewall opens: "on" and "mutual"
    config = write_exporter_config(
        where / "exporter.yaml",
        {
            "rec": {**http_driver(where / "rec-root"), "type": RECORDING},
            "stock": http_driver(where / "stock-root"),
            "lab": {**http_driver(where / "lab-root", **lab), "type": RECORDING},
        },
    )
    port = write_driver_port(where)
    tls = ("--http-driver", "rec", "--http-tls=on", "test_device.py")
    jmp_shell(
        config,
        [*port, "rec", "start"],
        [
            "env",
            f"TLS_PORT_FILE={where / 'tls.port'}",
            "TLS_FACTORY_BACKEND=exporter",
            *python_pytest(*tls, junit=where / "function.xml"),
        ],
        [PYTHON, "probe.py", str(where / "tls.port")],
        python_pytest(*tls, "--http-scope=session", junit=where / "session.xml"),
        python_pytest(*tls, "-p", "xdist", "-n", "2", junit=where / "xdist.xml"),
        [*port, "rec", "show"],
        python_pytest(
            "--http-driver",
            "stock",
            "--http-tls=on",
            "-k",
            "curl_verifies",
            "test_device.py",
            junit=where / "stock.xml",
        ),
        [
            "env",
            f"TLS_PORT_FILE={where / 'lab.port'}",
            *python_pytest(
                *("--http-driver=lab", "--http-tls=on", "-k", "verifies or resumes or mutual"),
                "test_device.py",
                junit=where / "lab.xml",
            ),
        ],
        cwd=where,
        # The exporter trusts the stranger's CA, as a lab's trusts public CAs: its mutual-TLS sites
        # still take the test CA's client certificates only (jumpstarter-cli injects truststore).
        env=clean_env(SSL_CERT_FILE=str(stranger_ca)),
        timeout=600,
    )
    ports = tuple((where / f"rec.{action}.port").read_text() for action in ("start", "show"))
    after = _read(where / "tls.port.after")
    return Runs(
        *(JUnit(where / f"{name}.xml") for name in ("function", "session", "xdist", "stock", "lab")),
        plain_ports=(ports[0], ports[1]),
        tls_port_after=after,
        # Unwritten when the lab run served no HTTPS at all: its own test then says why.
        lab_tls_ports=(lab["tls_ports"], _read(where / "lab.port")),
    )


def test_real_clients_verify_https_on_an_exporter(exporter: Runs) -> None:
    check_device_run(exporter.function)


def test_a_session_server_on_an_exporter_serves_https_to_every_test(exporter: Runs) -> None:
    check_device_run(exporter.session)


def test_xdist_workers_on_one_exporter_each_serve_https_with_their_own_ca(exporter: Runs) -> None:
    check_device_run(exporter.xdist)


def test_tls_never_restarts_the_plain_server_and_its_site_ends_with_the_run(exporter: Runs) -> None:
    start, show = exporter.plain_ports
    assert start == show != "0"
    assert exporter.tls_port_after == "closed"


def test_the_stock_driver_refuses_tls_at_once_naming_the_recording_one(exporter: Runs) -> None:
    exporter.stock.assert_outcome(
        "test_curl_verifies_the_server_with_the_ca",
        "error",  # in the fixture's setup: before any device runs
        "the HttpServer driver at 'stock' serves plain HTTP only; put "
        "pytest_jumpstarter_http.driver.RecordingHttpServer in the exporter config instead of "
        "jumpstarter_driver_http.driver.HttpServer to serve HTTPS.",
    )


def test_a_lab_certificate_configured_on_the_exporter_is_served_and_its_ca_handed_out(exporter: Runs) -> None:
    # Every test of the run verified the server with http_server.ca_cert: the lab's CA, not the run's.
    assert set(exporter.lab.outcomes().values()) == {"passed"}, exporter.lab.output
    assert len(exporter.lab.cases) == 6, exporter.lab.output


def test_a_lab_s_tls_ports_are_the_ports_its_runs_serve_https_on(exporter: Runs) -> None:
    configured, served = exporter.lab_tls_ports
    first, _, last = configured.partition("-")
    assert served.isdigit(), exporter.lab.output
    assert int(first) <= int(served) <= int(last)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else f"{path.name} never written"
