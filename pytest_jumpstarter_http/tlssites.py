"""Sites beside a running server: the same app on ports of its own, HTTPS among them.

An exporter's server is shared by every run that reaches it, each with a CA of its own, so TLS
never replaces the plain site: each owner (a run) gets a site of its own with its certificate
(an ``aiohttp.web.TCPSite`` with an SSL context) added to the running ``AppRunner``; a loopback
handle's namespace gets a plain or HTTPS one of its own (``RecordingHttpServer.serve_namespace``).
The same app answers on each, so namespaces, the request log and faults are the plain server's.
:class:`Sites` keeps them by key; a site closes when its key does (:meth:`Sites.close`: the owner
ended, the namespace ended) or when the server stops, whose runner closes every site it has.

A handshake a site refuses (plain HTTP sent to its port, a client certificate missing or of
another CA, a client that does not trust the server's) reaches no handler, so the site's context
tells its owner what was wrong (:class:`SiteContext`), for the request log (issue 27).

The key is loaded from memory (a ``memfd``): it never touches the exporter's disk. This module
runs in the server and never imports pytest.
"""

from __future__ import annotations

import errno
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .records import NO_REQUEST, HttpRequest, TlsSpec


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


#: What was wrong with a handshake, by OpenSSL's reason for refusing it: the mistakes a device's
#: client makes, in a few words. Any other reason is given in OpenSSL's own words.
_REASONS: Final = {
    "HTTP_REQUEST": "plain HTTP sent to the HTTPS port",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server's CA (give it ca_cert)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the client refused the server's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the client refused the server's certificate",
}
#: OpenSSL's verify codes of a certificate no CA the server trusts has issued (X509_V_ERR_...).
_UNKNOWN_ISSUER: Final = frozenset({2, 18, 19, 20, 21})


def refusal(exc: ssl.SSLError) -> str:
    """What was wrong with a handshake the server refused with ``exc``, in a few words."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        if exc.verify_code in _UNKNOWN_ISSUER:
            return "client certificate not signed by the test CA"
        return f"client certificate refused: {exc.verify_message}"
    reason = str(exc.reason or "")
    return _REASONS.get(reason) or reason.lower().replace("_", " ") or str(exc)


def refused_handshake(path: str, words: str, seq: int) -> HttpRequest:
    """The request log's entry of a handshake refused for ``words``, numbered ``seq``, at the URL
    path ``path`` of a handle the site served: a handshake names no path of its own."""
    return HttpRequest(
        time=time.time(),
        remote=NO_REQUEST,  # the SSL object that refused knows no address
        method=NO_REQUEST,
        path=path,
        range=None,
        status=0,
        bytes_sent=0,
        duration=0.0,
        answered_by=f"TLS handshake failed: {words}",
        seq=seq,
    )


class _Noted(ssl.SSLObject):
    """One connection's TLS, as asyncio drives it: a handshake it refuses is told to its context."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not refused: more bytes to come
        except ssl.SSLError as exc:
            context = self.context
            if isinstance(context, SiteContext):
                context.refused(refusal(exc))
            raise


def _python_s_own() -> type[ssl.SSLContext]:
    """Python's own ``ssl.SSLContext``, even where truststore replaced it, as jumpstarter-cli does
    in every exporter: a truststore context loads the system's CAs into each connection's, so a
    mutual-TLS site would take a client certificate of any CA the exporter trusts."""
    return next(
        kind for kind in ssl.SSLContext.__mro__ if (kind.__module__, kind.__name__) == ("ssl", "SSLContext")
    )


if TYPE_CHECKING:
    _SSLContext = ssl.SSLContext
else:
    _SSLContext = _python_s_own()


class SiteContext(_SSLContext):
    """The server context of one HTTPS site, which calls ``refused`` with what was wrong with each
    handshake it refuses, on the server's loop. Only the handshake is watched: the bytes of a
    download go through OpenSSL as with any context. It trusts the client CA it is given and no
    other, wherever it runs."""

    sslobject_class = _Noted

    def __init__(self, protocol: int, *, refused: Callable[[str], None]) -> None:
        # ssl.SSLContext takes its protocol in __new__, which ignores ``refused``.
        self.refused = refused

    def demand_certificate(self, ca_pem: str) -> None:
        """Refuse a client without a certificate that the CA ``ca_pem`` signed."""
        # ssl.SSLContext's own setter names the ssl module's SSLContext, which truststore replaced
        # (and recurses for ever then): set it on the class below, as that setter does.
        vars(_SSLContext.__mro__[1])["verify_mode"].__set__(self, ssl.CERT_REQUIRED)
        self.load_verify_locations(cadata=ca_pem)


def server_context(spec: TlsSpec, refused: Callable[[str], None] = lambda words: None) -> ssl.SSLContext:
    """The server side of ``spec``: its certificate and key, and a client certificate demanded if
    it names a client CA; ``refused`` hears what was wrong with each handshake it refuses."""
    # What ssl.create_default_context(Purpose.CLIENT_AUTH) makes (but for SSLKEYLOGFILE), of a
    # class that notes refusals.
    context = SiteContext(ssl.PROTOCOL_TLS_SERVER, refused=refused)
    _load_chain(context, spec.cert_pem, spec.key_pem)
    if spec.client_ca_pem is not None:
        context.demand_certificate(spec.client_ca_pem)
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
    runner: Any, host: str | None, ports: range | int, context: ssl.SSLContext | None
) -> tuple[Any, int]:
    """A site of ``runner``'s app on ``ports`` (a port), or on the first free one of the driver's
    ``tls_ports`` (a range), and that port."""
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


class Sites:
    """The sites one server's runner serves beside its own, by key: an owner's HTTPS site, a
    loopback namespace's own port. Opened and closed on the server's loop, read from any thread;
    the runner closes every one of them when the server stops (:meth:`forget_all`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Key -> its (runner, site, port): a site belongs to the runner it was added to.
        self._sites: dict[str, list[tuple[Any, Any, int]]] = {}

    async def add(
        self, key: str, runner: Any, host: str | None, ports: range | int, context: ssl.SSLContext | None
    ) -> int:
        """Serve ``runner``'s app on ``host`` and ``ports`` (a port, 0: any free one; or the first
        free one of a range of the driver's ``tls_ports``), over TLS with ``context``, until ``key``
        is closed; the port. An ``OSError`` if it, or every port of the range, is taken."""
        site, bound = await _open_first(runner, host, ports, context)
        with self._lock:
            self._sites.setdefault(key, []).append((runner, site, bound))
        return bound

    def ports(self, key: str) -> list[int]:
        """The ports of ``key``'s sites that still listen, oldest first."""
        with self._lock:
            sites = list(self._sites.get(key, []))
        return [port for runner, site, port in sites if site in runner.sites]

    async def close(self, key: str) -> set[int]:
        """Stop listening on ``key``'s sites; their ports. Their connections end with their requests."""
        with self._lock:
            sites = self._sites.pop(key, [])
        for runner, site, _ in sites:
            if site in runner.sites:  # a stopped server's runner closed it already
                await site.stop()  # no await inside: a cancelled caller still stops it
        return {port for _, _, port in sites}

    def forget_all(self) -> None:
        """The server stopped, or started again: its runner closed every site."""
        with self._lock:
            self._sites.clear()
