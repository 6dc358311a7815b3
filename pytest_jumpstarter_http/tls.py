"""The run's test CA, and the certificates its HTTPS servers and their clients get from it (issue 20).

Each pytest process (each xdist worker) makes one CA with ``trustme`` on its first TLS server, in
memory; what must be a file for a device's client is written to a folder of the plugin's own
below pytest's basetemp (0700): the CA certificate, and for mutual TLS one PEM file holding a
client certificate and its key (what ``curl --cert`` takes). The CA's key is never written
anywhere; a server's key is handed to the server in memory (on an exporter, through the
driver's ``serve_tls`` call), never to a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .values import TlsMode

if TYPE_CHECKING:
    import trustme

    from .records import TlsSpec


@dataclass(frozen=True)
class Tls:
    """One TLS server's side of the CA: what it serves, and the files its device's client needs."""

    #: What the server serves: its certificate for the URL's host, its key, the client CA if mutual.
    spec: TlsSpec
    #: The CA certificate (PEM) that signed the server's certificate.
    ca_cert: Path
    #: For mutual TLS, a PEM file of a client certificate and its key, signed by the same CA.
    client_cert: Path | None


class Authority:
    """This process's test CA, made on first use, and the certificates it issued, one per host."""

    def __init__(self, folder: Callable[[], Path]) -> None:
        #: Makes the folder of the CA's files, on first use: pytest decides its basetemp late.
        self._folder = folder
        self._ca: trustme.CA | None = None
        self._where: Path | None = None
        self._leaves: dict[str, tuple[str, str]] = {}
        self._client: Path | None = None

    def tls(self, mode: TlsMode, host: str) -> Tls | None:
        """What a server whose URLs name ``host`` serves in ``mode``; None for plain HTTP."""
        if mode == "off":
            return None
        from .records import TlsSpec  # loaded when a test first asks for TLS, not at start-up

        ca, where = self._made()
        cert_pem, key_pem = self._leaf(ca, host)
        mutual = mode == "mutual"
        client_ca = ca.cert_pem.bytes().decode() if mutual else None
        return Tls(
            TlsSpec(cert_pem, key_pem, client_ca),
            ca_cert=where / "ca.pem",
            client_cert=self._client_file(ca, where) if mutual else None,
        )

    def lab_ca(self, pem: str) -> Path:
        """A file of the CA certificate ``pem`` an exporter serves a lab certificate of, in this
        CA's folder (made if need be)."""
        import hashlib

        path = self._made_folder() / f"lab-ca-{hashlib.sha256(pem.encode()).hexdigest()[:12]}.pem"
        if not path.exists():
            path.write_text(pem)
        return path

    @property
    def folder(self) -> Path | None:
        """The folder of the CA's files, or None if no TLS server was asked for."""
        return self._where

    def _made(self) -> tuple[trustme.CA, Path]:
        where = self._made_folder()
        if self._ca is None:
            import trustme  # only a run that asks for TLS pays for it

            ca = trustme.CA(organization_name="pytest-jumpstarter-http test CA")
            ca.cert_pem.write_to_path(str(where / "ca.pem"))
            self._ca = ca
        return self._ca, where

    def _made_folder(self) -> Path:
        if self._where is None:
            self._where = self._folder()
        return self._where

    def _leaf(self, ca: trustme.CA, host: str) -> tuple[str, str]:
        """A certificate for ``host``: an IP address SAN for an address, a DNS SAN for a name."""
        if host not in self._leaves:
            leaf = ca.issue_cert(host.strip("[]"))
            chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
            self._leaves[host] = (chain, leaf.private_key_pem.bytes().decode())
        return self._leaves[host]

    def _client_file(self, ca: trustme.CA, where: Path) -> Path:
        if self._client is None:
            leaf = ca.issue_cert("client.pytest-jumpstarter-http.invalid")
            path = where / "client.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as file:
                for blob in (*leaf.cert_chain_pems, leaf.private_key_pem):
                    file.write(blob.bytes())
            self._client = path
        return self._client
