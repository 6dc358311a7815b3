"""HTTPS beside a running server: a TLS site of the same app, on a port of its own, per holder.

An exporter's server is shared by every run that reaches it, each with a CA of its own, so TLS
never replaces the plain site: each holder (a run's owner token, or a loopback handle) gets a
site of its own with its certificate (an ``aiohttp.web.TCPSite`` with an SSL context) added to
the running ``AppRunner``. The same app answers on it, so namespaces, the request log and
faults are the plain server's. A site closes when its holder lets go (:meth:`TlsSites.close`)
or when the server stops, whose runner closes every site it has.

The key is loaded from memory (a ``memfd``): it never touches the exporter's disk. This module
runs in the server and never imports pytest.
"""

from __future__ import annotations

import errno
import os
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

from .records import TlsSpec


def port_range(text: str) -> range:
    """The ports the driver's ``tls_ports`` names (``"8443"``, ``"8443-8463"``); a ``ValueError`` in
    one sentence for anything else: it stops the exporter at its start."""
    low, _, high = str(text).strip().partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        first = last = 0
    if not 1 <= first <= last <= 65535:
        raise ValueError(
            f"tls_ports: {text!r} in the driver's config is not a port or a range of ports; "
            "give one such as 8443 or 8443-8463."
        )
    return range(first, last + 1)


def lab_certificate(
    spec: TlsSpec, cert_file: str | None, key_file: str | None, ca_file: str | None
) -> tuple[TlsSpec, str | None]:
    """What to serve for a run that sent ``spec``, and the CA (PEM) its devices must trust instead of
    the run's own (None: the run's own): a lab's certificate files on the exporter, when configured."""
    if cert_file is None:
        return spec, None
    if ca_file is None:
        raise ValueError(
            "serve_tls(): the driver's tls_cert_file is set but not its tls_ca_file; give the CA "
            "certificate that signed it, which tests hand to the device."
        )
    chain = Path(cert_file).read_text()
    key = Path(key_file).read_text() if key_file else chain
    return TlsSpec(chain, key, spec.client_ca_pem), Path(ca_file).read_text()


def server_context(spec: TlsSpec) -> ssl.SSLContext:
    """The server side of ``spec``: its certificate and key, and a client certificate demanded if
    it names a client CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, spec.cert_pem, spec.key_pem)
    if spec.client_ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=spec.client_ca_pem)
    return context


def _load_chain(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """``load_cert_chain`` from memory: OpenSSL reads only files, so hand it an anonymous one."""
    data = (cert_pem + "\n" + key_pem).encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("pytest-jumpstarter-http-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as folder:  # made 0700: no one else reads the key
        path = Path(folder) / "chain.pem"
        path.write_bytes(data)
        context.load_cert_chain(path)


async def open_site(
    runner: Any, host: str | None, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[Any, int]:
    """A new site of ``runner``'s app on ``host`` and ``port`` (0: any free one), and the port it
    got; an ``OSError`` if the port is taken."""
    from aiohttp.web import TCPSite

    site = TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:  # aiohttp registers a site before it binds: a port taken leaves it
        await site.stop()
        raise
    server: Any = site._server  # as the driver reads its own port
    return site, int(server.sockets[0].getsockname()[1])


async def _open_first(
    runner: Any, host: str | None, ports: range | int, context: ssl.SSLContext
) -> tuple[Any, int]:
    """A TLS site of ``runner``'s app on ``ports`` (a port), or on the first free one of the
    driver's ``tls_ports`` (a range), and that port."""
    if isinstance(ports, int):
        return await open_site(runner, host, ports, context)
    for port in ports:
        try:
            return await open_site(runner, host, port, context)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(
        errno.EADDRINUSE,
        f"serve_tls(): every port of the driver's tls_ports ({ports.start}-{ports.stop - 1}) on {host} "
        "is taken, by other runs' HTTPS sites or other programs; widen tls_ports in the exporter config.",
    )


class TlsSites:
    """The TLS sites of one server, by holder; changed from the server's loop, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Holder -> its (runner, site) pairs: a site belongs to the runner it was added to.
        self._sites: dict[str, list[tuple[Any, Any]]] = {}

    async def add(
        self, runner: Any, host: str | None, holder: str, spec: TlsSpec, ports: range | int = 0
    ) -> int:
        """Serve ``runner``'s app over TLS with ``spec`` on ``host`` and the first free port of
        ``ports`` (0: any free one) until ``holder`` lets go; the port. An ``OSError`` if every one
        is taken."""
        site, bound = await _open_first(runner, host, ports, server_context(spec))
        with self._lock:
            self._sites.setdefault(holder, []).append((runner, site))
        return bound

    async def close(self, holder: str) -> None:
        """Stop listening on ``holder``'s sites; its connections end with their requests."""
        with self._lock:
            sites = self._sites.pop(holder, [])
        for runner, site in sites:
            if site in runner.sites:  # a stopped server's runner closed it already
                await site.stop()  # no await inside: a cancelled caller still stops it

    def forget_all(self) -> None:
        """The server stopped, and its runner with every site."""
        with self._lock:
            self._sites.clear()
