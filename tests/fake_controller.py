"""A fake Jumpstarter 0.9 controller and router, to test the real client's lease path on loopback.

What it fakes, over one TLS port on 127.0.0.1 (the real client has no plaintext mode):

* ``jumpstarter.client.v1.ClientService``: CreateLease, GetLease, DeleteLease, ListLeases,
  UpdateLease, GetExporter, ListExporters;
* ``jumpstarter.v1.ControllerService.Dial``, the client side only: no real ``Exporter`` process
  registers here;
* ``jumpstarter.v1.RouterService.Stream``, bridged to a local exporter session.

Exporters are virtual: a name, labels and a ``device_factory`` returning a root driver. When a
lease is assigned, the fake runs a real ``jumpstarter.exporter.Session`` for a fresh device on a
temporary unix socket, as ``Exporter.session_for_lease`` does, and the router forwards each client
stream to it; releasing the lease closes the session and with it the device. Selectors are matched
with Jumpstarter's own parser. Everything after ``ClientConfigV1Alpha1.lease`` is Jumpstarter's
own client code, unchanged.

Usage::

    with FakeController() as fake:
        fake.add_exporter("rpi4-01", {"board": "rpi4"}, device_factory=make_device)
        with fake.client_config().lease(selector="board=rpi4") as lease, lease.connect() as client:
            client.http.start()
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self

import anyio
import grpc
from anyio.from_thread import BlockingPortal, start_blocking_portal
from google.protobuf import empty_pb2, timestamp_pb2
from jumpstarter.client.selectors import parse_label_selector
from jumpstarter.common import ExporterStatus
from jumpstarter.streams.common import forward_stream
from jumpstarter.streams.router import RouterStream
from jumpstarter_protocol import (
    client_pb2,
    client_pb2_grpc,
    jumpstarter_pb2,
    jumpstarter_pb2_grpc,
    kubernetes_pb2,
    router_pb2_grpc,
)

if TYPE_CHECKING:
    from jumpstarter.config.client import ClientConfigV1Alpha1

#: ``grpc.aio.ServicerContext``; grpc ships no type information.
Context = Any
NAME_LABEL = "jumpstarter.dev/name"


def self_signed_cert() -> tuple[bytes, bytes]:
    """A key and certificate (PEM) for localhost, 127.0.0.1 and ::1, trusted as their own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-jumpstarter-controller")])
    now = dt.datetime.now(dt.UTC)
    # gRPC checks the host name even against a trusted root, so the addresses go in the SAN.
    san: list[x509.GeneralName] = [x509.DNSName("localhost")]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A Kubernetes label-selector match, parsed by Jumpstarter's own parser."""
    match_labels, expressions = parse_label_selector(selector or "")
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    for key, op, values in expressions:
        value = labels.get(key)
        ok = {
            "!=": value not in values,
            "in": value is not None and value in values,
            "notin": value not in values,
            "exists": value is not None,
            "!exists": value is None,
        }[op]
        if not ok:
            return False
    return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _condition(kind: str, status: bool, reason: str, message: str = "") -> kubernetes_pb2.Condition:
    return kubernetes_pb2.Condition(
        type=kind,
        status="True" if status else "False",
        reason=reason,
        message=message,
        lastTransitionTime=kubernetes_pb2.Time(seconds=int(_now().timestamp())),
    )


class Abort(Exception):
    """Raised in a handler to end the RPC with a status code (grpc-aio handlers cannot just raise)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class FakeExporter:
    name: str
    labels: dict[str, str]
    device_factory: Callable[[], Any]
    online: bool = True
    enabled: bool = True


@dataclass
class FakeLease:
    name: str
    selector: str
    requested_exporter: str
    duration: dt.timedelta
    client: str
    tags: dict[str, str]
    conditions: list[kubernetes_pb2.Condition] = field(default_factory=list)
    exporter: FakeExporter | None = None
    begin: dt.datetime | None = None
    end: dt.datetime | None = None
    socket_path: str | None = None
    released: anyio.Event | None = None
    session_closed: anyio.Event | None = None

    @property
    def ended(self) -> bool:
        return self.end is not None

    @property
    def active(self) -> bool:
        """Assigned to an exporter and not ended."""
        return self.exporter is not None and not self.ended


class FakeController(
    client_pb2_grpc.ClientServiceServicer,
    jumpstarter_pb2_grpc.ControllerServiceServicer,
    router_pb2_grpc.RouterServiceServicer,
):
    """The controller and router, on ``127.0.0.1:<free port>``; its public API is synchronous.

    ``unmatched`` says what CreateLease does when no exporter matches the selector:
    ``"unsatisfiable"`` ends the lease (the client raises ``LeaseError`` at once); ``"pending"``
    keeps it pending, so the client polls every 5 s until its acquisition timeout. A matching
    exporter that is already leased always leaves the lease pending until it is free.
    """

    def __init__(
        self,
        *,
        namespace: str = "default",
        client_name: str = "test-client",
        token: str = "fake-token",
        unmatched: Literal["unsatisfiable", "pending"] = "unsatisfiable",
    ) -> None:
        self.host, self.port = "127.0.0.1", 0
        self.namespace, self.client_name, self.token = namespace, client_name, token
        self.unmatched = unmatched
        self.exporters: dict[str, FakeExporter] = {}
        self.leases: dict[str, FakeLease] = {}
        #: Every RPC served, in order, e.g. ``"ClientService.DeleteLease"``.
        self.calls: list[str] = []
        self._router_tokens: dict[str, str] = {}
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None
        self._server: grpc.aio.Server | None = None
        self.key_pem, self.cert_pem = self_signed_cert()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def add_exporter(
        self, name: str, labels: dict[str, str], device_factory: Callable[[], Any]
    ) -> FakeExporter:
        """Register an exporter whose device ``device_factory()`` builds afresh for each lease."""
        labels = {NAME_LABEL: name, **labels}
        self.exporters[name] = FakeExporter(name, labels, device_factory)
        return self.exporters[name]

    def client_config(self, *, name: str | None = None, alias: str = "fake") -> ClientConfigV1Alpha1:
        """A client config that trusts this fake and allows every driver; nothing is written to disk."""
        from jumpstarter.config.client import ClientConfigV1Alpha1, ClientConfigV1Alpha1Drivers
        from jumpstarter.config.common import ObjectMeta
        from jumpstarter.config.tls import TLSConfigV1Alpha1

        return ClientConfigV1Alpha1(
            alias=alias,
            metadata=ObjectMeta(namespace=self.namespace, name=name or self.client_name),
            endpoint=self.endpoint,
            token=self.token,
            tls=TLSConfigV1Alpha1(ca=base64.b64encode(self.cert_pem).decode()),
            drivers=ClientConfigV1Alpha1Drivers(allow=[], unsafe=True),
        )

    def active_leases(self) -> list[FakeLease]:
        return [lease for lease in self.leases.values() if lease.active]

    def start(self) -> Self:
        self._portal = self._stack.enter_context(start_blocking_portal())
        self.port = self._portal.call(self._start)
        return self

    def stop(self) -> None:
        try:
            if self._portal is not None:
                self._portal.call(self._stop)
        finally:
            self._stack.close()
            self._portal = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _start(self) -> int:
        _hide_benign_race()
        self._server = server = grpc.aio.server()
        client_pb2_grpc.add_ClientServiceServicer_to_server(self, server)
        jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(self, server)
        router_pb2_grpc.add_RouterServiceServicer_to_server(self, server)
        credentials = grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)])
        port = server.add_secure_port(f"{self.host}:0", credentials)
        await server.start()
        return int(port)

    async def _stop(self) -> None:
        for lease in list(self.leases.values()):
            await self._end(lease, "Released")
        if self._server is not None:
            await self._server.stop(grace=0.5)

    def _auth(self, context: Context, rpc: str) -> dict[str, str]:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.calls.append(rpc)
        if metadata.get("authorization") != f"Bearer {self.token}":
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        return metadata

    def _lease_pb(self, lease: FakeLease) -> client_pb2.Lease:
        ns = self.namespace
        pb = client_pb2.Lease(
            name=f"namespaces/{ns}/leases/{lease.name}",
            selector=lease.selector,
            client=f"namespaces/{ns}/clients/{lease.client}",
            exporter=f"namespaces/{ns}/exporters/{lease.exporter.name}" if lease.exporter else "",
            exporter_name=lease.requested_exporter,
            conditions=lease.conditions,
        )
        pb.duration.FromTimedelta(lease.duration)
        pb.tags.update(lease.tags)
        if lease.begin:
            pb.effective_begin_time.CopyFrom(_timestamp(lease.begin))
        if lease.end:
            pb.effective_end_time.CopyFrom(_timestamp(lease.end))
            pb.effective_duration.FromTimedelta(lease.end - (lease.begin or lease.end))
        return pb

    def _exporter_pb(self, exporter: FakeExporter) -> client_pb2.Exporter:
        busy = any(lease.exporter is exporter for lease in self.active_leases())
        status = ExporterStatus.LEASE_READY if busy else ExporterStatus.AVAILABLE
        return client_pb2.Exporter(
            name=f"namespaces/{self.namespace}/exporters/{exporter.name}",
            labels=exporter.labels,
            online=exporter.online,
            enabled=exporter.enabled,
            status=(status if exporter.online else ExporterStatus.OFFLINE).to_proto(),
        )

    async def _reconcile(self, lease: FakeLease) -> None:
        """Move ``lease`` on: expire it, assign it a free matching exporter, or leave it pending."""
        if lease.ended:
            return
        if lease.exporter is not None:
            if lease.begin and _now() >= lease.begin + lease.duration:
                await self._end(lease, "Expired")
            return
        matching = [
            exporter
            for exporter in self.exporters.values()
            if (not lease.requested_exporter or exporter.name == lease.requested_exporter)
            and (not lease.selector or selector_matches(lease.selector, exporter.labels))
        ]
        if not matching and self.unmatched == "unsatisfiable":
            # Not reason NoExporter: the 0.9 client takes that one as "retry CreateLease in 5 s".
            lease.conditions = [
                _condition("Pending", False, "NoMatch"),
                _condition(
                    "Unsatisfiable", True, "NoMatch", f"no exporter matches selector {lease.selector!r}"
                ),
            ]
            lease.end = _now()
            return
        busy = {other.exporter.name for other in self.active_leases() if other.exporter}
        free = [e for e in matching if e.online and e.enabled and e.name not in busy]
        if not free:
            lease.conditions = [_condition("Pending", True, "NotAvailable", "no matching exporter is free")]
            return
        lease.exporter = free[0]
        await self._open_session(lease)
        lease.begin = _now()
        # The client reads conditions[-1] as the lease's status: Ready goes last.
        lease.conditions = [
            _condition("Pending", False, "Ready"),
            _condition("Ready", True, "Ready", f"leased {free[0].name}"),
        ]

    async def _open_session(self, lease: FakeLease) -> None:
        """Serve a fresh device of the lease's exporter in a real exporter Session until the lease ends."""
        from jumpstarter.exporter import Session

        assert lease.exporter is not None
        exporter = lease.exporter
        released = lease.released = anyio.Event()
        closed = lease.session_closed = anyio.Event()
        ready = anyio.Event()

        async def serve() -> None:
            try:
                # mypy takes the servicer methods the exporter fills in later (Reset) as abstract.
                device = exporter.device_factory()
                with Session(labels=exporter.labels, root_device=device) as session:  # type: ignore[abstract,no-untyped-call]
                    async with session.serve_unix_async() as path:
                        # Without LEASE_READY the session refuses driver calls (FAILED_PRECONDITION).
                        session.update_status(ExporterStatus.LEASE_READY)
                        lease.socket_path = str(path)
                        ready.set()
                        await released.wait()
                        session.update_status(ExporterStatus.AVAILABLE)
            finally:
                ready.set()
                closed.set()

        # The session outlives the RPC that assigned the lease: it is a task of the fake's loop.
        _background.add(task := asyncio.get_running_loop().create_task(serve()))
        task.add_done_callback(_background.discard)
        await ready.wait()

    async def _end(self, lease: FakeLease, reason: str) -> None:
        if lease.end is None:
            lease.end = _now()
            lease.conditions = [c for c in lease.conditions if c.type != "Ready"]
            lease.conditions.append(_condition("Ready", False, reason, f"lease {reason.lower()}"))
        if lease.released is not None and not lease.released.is_set():
            lease.released.set()
            assert lease.session_closed is not None
            await lease.session_closed.wait()
        for token in [t for t, name in self._router_tokens.items() if name == lease.name]:
            del self._router_tokens[token]

    def _lease(self, resource_name: str) -> FakeLease:
        name = resource_name.rsplit("/", 1)[-1]
        if name not in self.leases:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"lease {name} not found")
        return self.leases[name]

    async def CreateLease(self, request: Any, context: Context) -> client_pb2.Lease:
        metadata = self._auth(context, "ClientService.CreateLease")
        wanted = request.lease
        if not wanted.selector and not wanted.exporter_name:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "one of selector or exporter_name is required")
        name = request.lease_id or str(uuid.uuid4())
        if name in self.leases and not self.leases[name].ended:
            raise Abort(grpc.StatusCode.ALREADY_EXISTS, f"lease {name} exists")
        self.leases[name] = lease = FakeLease(
            name=name,
            selector=wanted.selector,
            requested_exporter=wanted.exporter_name,
            duration=wanted.duration.ToTimedelta(),
            client=metadata.get("jumpstarter-name") or self.client_name,
            tags=dict(wanted.tags),
            conditions=[_condition("Pending", True, "Created")],
        )
        await self._reconcile(lease)
        return self._lease_pb(lease)

    async def GetLease(self, request: Any, context: Context) -> client_pb2.Lease:
        self._auth(context, "ClientService.GetLease")
        lease = self._lease(request.name)
        await self._reconcile(lease)
        return self._lease_pb(lease)

    async def DeleteLease(self, request: Any, context: Context) -> empty_pb2.Empty:
        self._auth(context, "ClientService.DeleteLease")
        await self._end(self._lease(request.name), "Released")
        return empty_pb2.Empty()

    async def ListLeases(self, request: Any, context: Context) -> client_pb2.ListLeasesResponse:
        self._auth(context, "ClientService.ListLeases")
        leases = []
        for lease in list(self.leases.values()):
            await self._reconcile(lease)
            if not (request.only_active and lease.ended):
                leases.append(self._lease_pb(lease))
        return client_pb2.ListLeasesResponse(leases=leases)

    async def UpdateLease(self, request: Any, context: Context) -> client_pb2.Lease:
        self._auth(context, "ClientService.UpdateLease")
        lease = self._lease(request.lease.name)
        if "duration" in request.update_mask.paths:
            lease.duration = request.lease.duration.ToTimedelta()
        return self._lease_pb(lease)

    async def GetExporter(self, request: Any, context: Context) -> client_pb2.Exporter:
        self._auth(context, "ClientService.GetExporter")
        name = request.name.rsplit("/", 1)[-1]
        if name not in self.exporters:
            raise Abort(grpc.StatusCode.NOT_FOUND, f"exporter {name} not found")
        return self._exporter_pb(self.exporters[name])

    async def ListExporters(self, request: Any, context: Context) -> client_pb2.ListExportersResponse:
        self._auth(context, "ClientService.ListExporters")
        found = [
            self._exporter_pb(e)
            for e in self.exporters.values()
            if selector_matches(request.filter, e.labels)
        ]
        return client_pb2.ListExportersResponse(exporters=found, next_page_token="")

    async def Dial(self, request: Any, context: Context) -> jumpstarter_pb2.DialResponse:
        metadata = self._auth(context, "ControllerService.Dial")
        lease = self.leases.get(request.lease_name)
        if lease is None:
            raise Abort(grpc.StatusCode.NOT_FOUND, "lease not found")
        await self._reconcile(lease)
        if lease.ended:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, "lease has ended")
        if metadata.get("jumpstarter-name", lease.client) != lease.client:
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, "permission denied: lease held by another client")
        if lease.socket_path is None:
            # What the real controller answers; the client retries until its dial timeout.
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION, "exporter not ready")
        token = secrets.token_urlsafe(24)
        self._router_tokens[token] = lease.name
        return jumpstarter_pb2.DialResponse(router_endpoint=self.endpoint, router_token=token)

    async def Stream(self, request_iterator: AsyncIterator[Any], context: Context) -> None:  # type: ignore[override]
        """The router: forward the client's raw stream to the lease's exporter session."""
        self.calls.append("RouterService.Stream")
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        token = metadata.get("authorization", "").removeprefix("Bearer ")
        lease = self.leases.get(self._router_tokens.get(token, ""))
        if lease is None or lease.ended or not lease.socket_path:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "invalid router token")
            return
        exporter = await anyio.connect_unix(lease.socket_path)
        async with RouterStream(context=context) as client, forward_stream(client, exporter):
            done = anyio.Event()
            context.add_done_callback(lambda _: done.set())
            await done.wait()


_background: set[asyncio.Task[None]] = set()


def _timestamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _hide_benign_race() -> None:
    """Drop one harmless asyncio log line on the fake's loop.

    anyio 4's ``UNIXSocketStream.aclose()`` can race a queued ``add_reader`` callback, and asyncio
    then logs "Exception in callback Future.set_result(None)" with an ``InvalidStateError``.
    """
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, asyncio.InvalidStateError) and "set_result" in str(context.get("handle", "")):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _aborting(
    handler: Callable[[Any, Any, Context], Awaitable[Any]],
) -> Callable[[Any, Any, Context], Awaitable[Any]]:
    async def wrapper(self: Any, request: Any, context: Context) -> Any:
        try:
            return await handler(self, request, context)
        except Abort as exc:
            await context.abort(exc.code, exc.message)

    wrapper.__name__ = handler.__name__
    return wrapper


for _rpc in (
    "CreateLease",
    "GetLease",
    "DeleteLease",
    "ListLeases",
    "UpdateLease",
    "GetExporter",
    "ListExporters",
    "Dial",
):
    setattr(FakeController, _rpc, _aborting(getattr(FakeController, _rpc)))
