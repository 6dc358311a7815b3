"""Connecting to exporters: the ``jmp shell`` one, a leased one, or a client the test already holds.

One connection per exporter per process, shared by every test bound to it; a connection that
could not be made is tried once, and its reason given to every test that asks again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import eventloop
from .values import JUMPSTARTER_HOST

JMP_LEASE = "JMP_LEASE"
JMP_EXPORTER_LABELS = "JMP_EXPORTER_LABELS"
CLIENT_LABEL = "jumpstarter.dev/client"
#: The client of this package's drop-in driver, which also keeps a request log.
RECORDING_CLIENT = "pytest_jumpstarter_http.client.RecordingHttpServerClient"
HTTP_CLIENTS = ("jumpstarter_driver_http.client.HttpServerClient", RECORDING_CLIENT)
#: How messages name an exporter reached through a client the test holds, whose name is unknown.
ADOPTED = "the test's own client"


class ExporterUnavailable(RuntimeError):
    """No exporter can be reached from this run."""


class ExporterError(RuntimeError):
    """The exporter was reached, but cannot serve as asked."""


def labels_match(selector: str, labels: dict[str, str]) -> bool:
    """Whether ``labels`` satisfy a Jumpstarter label selector (``board=rpi4,!busy``...)."""
    from jumpstarter.client.selectors import parse_label_selector

    match_labels, expressions = parse_label_selector(selector)
    if any(labels.get(key) != value for key, value in match_labels.items()):
        return False
    return all(_holds(op, labels.get(key), values) for key, op, values in expressions)


def _holds(op: str, value: str | None, values: list[str]) -> bool:
    if op == "in":
        return value in values
    if op == "notin":
        return value not in values
    if op == "!=":
        return not values or value != values[0]
    return (value is not None) == (op == "exists")


def _env_labels() -> dict[str, str]:
    pairs = (pair.split("=", 1) for pair in os.environ.get(JMP_EXPORTER_LABELS, "").split(",") if "=" in pair)
    return {key: value for key, value in pairs if key}


@dataclass
class Connection:
    """This process's connection to an exporter: its root Jumpstarter client, and how to let go."""

    name: str
    labels: dict[str, str]
    #: The exporter's root ``DriverClient`` (``.flasher``, ``.power``, the HttpServer...).
    client: Any
    stack: ExitStack
    #: Where the connection goes (``JUMPSTARTER_HOST``, ``lease:NAME``, or ``your client``).
    address: str = ""
    #: Why the exporter stopped answering, once it has; nothing more is asked of it then.
    gone: str | None = None

    def describe(self) -> str:
        """How the run's summary names it: ``exporter 'lab-rpi4' (labels board=rpi4)``."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()) if k != CLIENT_LABEL)
        name = f"exporter {self.name!r}" if self.name != ADOPTED else ADOPTED
        return f"{name} (labels {labels or 'none'})"

    def http(self, driver_path: str | None) -> tuple[str, Any]:
        """The HttpServer driver client at dotted path ``driver`` (or the only one), with its path."""
        found: dict[str, tuple[str, Any]] = {}
        everything: list[str] = []
        for path, child in _walk(self.client):
            kind = child.labels.get(CLIENT_LABEL)
            everything.append(f"{path} ({kind or type(child).__name__})")
            if kind not in HTTP_CLIENTS:
                continue
            if path == driver_path:
                return path, _usable(path, child)
            # A ``ref:`` shows one driver under two paths: the first one is its home.
            found.setdefault(str(child.uuid), (path, child))
        path, http = self._the_one(driver_path, list(found.values()), everything)
        return path, _usable(path, http)

    def _the_one(
        self, driver_path: str | None, found: list[tuple[str, Any]], everything: list[str]
    ) -> tuple[str, Any]:
        """The one HttpServer of ``found`` when no ``driver`` path was given (or it names none)."""
        paths = ", ".join(path for path, _ in found)
        if driver_path is not None:
            raise ExporterError(
                f"exporter {self.name!r} has no HttpServer driver at {driver_path!r} (--http-driver or the "
                f"http_exporter marker's driver=); its HttpServer drivers: {paths or 'none'}."
            )
        if not found:
            raise ExporterError(
                f"exporter {self.name!r} has no jumpstarter_driver_http.driver.HttpServer driver; "
                f"add one to its config. Its drivers: {', '.join(everything) or 'none'}."
            )
        if len(found) > 1:
            raise ExporterError(
                f"exporter {self.name!r} has several HttpServer drivers ({paths}); "
                "choose one with --http-driver=PATH or @pytest.mark.http_exporter(driver=PATH)."
            )
        return found[0]

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Turn "the exporter no longer answers" into one clear ``ExporterError``.

        Jumpstarter reports a killed or unplugged exporter as a ``DriverError`` of whichever call
        came next, with a page of gRPC detail; every later call would fail the same way.
        """
        if self.gone is not None:
            raise ExporterError(self.gone)
        try:
            yield
        except Exception as exc:
            details = unavailable(exc)
            if details is None:
                raise
            address = "" if self.address in self.name else f" ({self.address})"
            self.gone = (
                f"exporter {self.name!r}{address} stopped answering during the run ({details}); "
                "is it still running?"
            )
            raise ExporterError(self.gone) from None

    def close(self) -> None:
        self.stack.close()


def unavailable(exc: BaseException) -> str | None:
    """The gRPC details of ``exc`` if it means the exporter does not answer, else None."""
    import grpc

    rpc = exc if isinstance(exc, grpc.aio.AioRpcError) else exc.__cause__
    if isinstance(rpc, grpc.aio.AioRpcError) and rpc.code() == grpc.StatusCode.UNAVAILABLE:
        return str(rpc.details())
    return None


def _walk(client: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, child in client.children.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path, child
        yield from _walk(child, path)


def _usable(path: str, client: Any) -> Any:
    from jumpstarter.client.base import StubDriverClient

    if isinstance(client, StubDriverClient):
        raise ExporterError(
            f"the HttpServer driver at {path!r} is not usable here: its client is not installed or "
            "not allowed (install jumpstarter-driver-http, or allow it with JMP_DRIVERS_ALLOW)."
        )
    return client


async def _probe(host: str, timeout: float) -> None:
    """Fail fast, with the address, when JUMPSTARTER_HOST does not answer.

    A listener that accepts but never speaks gRPC would otherwise hold the connect for 20 s, and
    grpc-aio turns an anyio timeout into a bare CancelledError, so probe on a channel of our own.
    """
    import asyncio

    import grpc

    # Private, but the very test Jumpstarter's own client uses to tell a socket path from host:port;
    # tests/test_private_apis.py fails loudly if it moves.
    from jumpstarter.client.client import _is_tcp_address
    from jumpstarter.common.grpc import ssl_channel_credentials
    from jumpstarter.config.tls import TLSConfigV1Alpha1

    insecure = "1" in (os.environ.get("JMP_GRPC_INSECURE"), os.environ.get("JUMPSTARTER_GRPC_INSECURE"))
    if not _is_tcp_address(host):
        if not Path(host).exists():
            raise ExporterUnavailable(
                f"{JUMPSTARTER_HOST}={host!r}: no such socket; is the jmp shell still running?"
            )
        channel = grpc.aio.secure_channel(
            f"unix://{host}", grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
        )
    elif insecure:
        channel = grpc.aio.insecure_channel(host)
    else:
        channel = grpc.aio.secure_channel(host, await ssl_channel_credentials(host, TLSConfigV1Alpha1()))

    async def ready() -> None:
        state = channel.get_state(try_to_connect=True)
        while state != grpc.ChannelConnectivity.READY:
            if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                raise ExporterUnavailable(
                    f"{JUMPSTARTER_HOST}={host!r} does not answer: nothing listens there."
                )
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    async with channel:
        try:
            await asyncio.wait_for(ready(), timeout)
        except TimeoutError:
            raise ExporterUnavailable(
                f"{JUMPSTARTER_HOST}={host!r} accepted a connection but did not answer within "
                f"{timeout:g} s (--http-timeout)."
            ) from None


def open_shell(host: str, timeout: float) -> Connection:
    """Connect to the exporter of the surrounding ``jmp shell`` (``JUMPSTARTER_HOST``)."""
    from jumpstarter.utils.env import env_async

    portal = eventloop.portal()
    portal.call(_probe, host, timeout)
    stack = ExitStack()
    try:
        client = stack.enter_context(portal.wrap_async_context_manager(env_async(portal, stack)))
    except BaseException as exc:
        stack.close()
        raise ExporterError(f"{JUMPSTARTER_HOST}={host!r}: cannot open a Jumpstarter session: {exc}") from exc
    name = os.environ.get("JMP_EXPORTER") or f"jmp shell at {host}"
    return Connection(name=name, labels=_env_labels(), client=client, stack=stack, address=host)


def _current_client() -> str:
    """The client config ``jmp config client use`` chose, as ``jmp shell`` would take it."""
    from jumpstarter.config.user import UserConfigV1Alpha1

    try:
        current = UserConfigV1Alpha1.load().config.current_client
    except Exception:  # no user config yet, or one this version cannot read
        current = None
    return current.alias if current is not None else "default"


def open_lease(client_name: str | None, selector: str, timeout: float) -> Connection:
    """Lease an exporter matching ``selector`` through a client config; released on close."""
    alias = client_name or _current_client()
    config = _client_config(alias, selector)
    # An inherited JMP_LEASE is reused, never released (the lease belongs to whoever made it);
    # asking again by selector would make the client create a second lease it then never releases.
    reused = os.environ.get(JMP_LEASE) or None
    portal = eventloop.portal()
    stack = ExitStack()
    try:
        lease = stack.enter_context(
            portal.wrap_async_context_manager(
                config.lease_async(
                    None if reused else selector,
                    None,
                    reused,
                    timedelta(hours=4),
                    portal,
                    acquisition_timeout=timedelta(seconds=timeout),
                )
            )
        )
        client = stack.enter_context(portal.wrap_async_context_manager(lease.connect_async(stack)))
    except BaseException as exc:
        stack.close()
        raise ExporterUnavailable(
            f"cannot lease an exporter matching {selector!r} with client config {alias!r} within "
            f"{timeout:g} s (--http-timeout): {exc}"
        ) from exc
    labels = dict(getattr(lease, "exporter_labels", None) or {})
    name = lease.exporter_name or "leased exporter"
    connection = Connection(name=name, labels=labels, client=client, stack=stack, address=f"lease:{name}")
    if reused and labels and not labels_match(selector, labels):
        connection.close()
        raise ExporterUnavailable(
            f"{JMP_LEASE}={reused!r} holds exporter {name!r} whose labels do not match {selector!r}."
        )
    return connection


def _client_config(alias: str, selector: str) -> Any:
    """The client config ``alias``, or why there is none to lease with."""
    from jumpstarter.config.client import ClientConfigV1Alpha1

    try:
        return ClientConfigV1Alpha1.load(alias)
    except FileNotFoundError as exc:
        raise ExporterUnavailable(
            f"no Jumpstarter client config {alias!r} (--http-client) to lease an exporter matching "
            f"{selector!r}: {exc} Create one with `jmp config client create`, or run inside `jmp shell`."
        ) from None


def adopt(client: Any) -> Connection:
    """A connection over a Jumpstarter client the test already holds; closing it leaves the client open.

    A client knows its driver's labels, not its exporter's: the name comes from ``jmp shell``'s
    environment when there is one.
    """
    name = os.environ.get("JMP_EXPORTER") or ADOPTED
    return Connection(
        name=name, labels=_env_labels(), client=client, stack=ExitStack(), address="your client"
    )


class Connections:
    """The exporters this process is connected to, by selector (inside ``jmp shell``: just one)."""

    def __init__(self, client_name: str | None, jumpstarter_host: str | None, timeout: float) -> None:
        self._client_name = client_name
        self._host = jumpstarter_host
        self._timeout = timeout
        self._open: dict[str | None, Connection] = {}
        #: Why a connection could not be made: tried once, not again by every test.
        self._failures: dict[str | None, ExporterUnavailable | ExporterError] = {}

    def get(self, selector: str | None, client: Any = None) -> Connection:
        """The connection for ``selector``, or over ``client`` when the test gives its own."""
        if client is not None:  # the test's, for as long as the test keeps it: never kept here
            return adopt(client)
        key = None if self._host else selector
        if key in self._failures:
            raise self._failures[key]
        if key not in self._open:
            try:
                self._open[key] = self._connect(selector)
            except (ExporterUnavailable, ExporterError) as exc:
                self._failures[key] = exc
                raise
        connection = self._open[key]
        if (
            self._host
            and os.environ.get(JMP_EXPORTER_LABELS)
            and selector
            and not labels_match(selector, connection.labels)
        ):
            raise ExporterUnavailable(
                f"the jmp shell exporter {connection.name!r} (labels {os.environ[JMP_EXPORTER_LABELS]}) "
                f"does not match selector {selector!r}."
            )
        return connection

    def _connect(self, selector: str | None) -> Connection:
        if self._host:
            return open_shell(self._host, self._timeout)
        if selector:
            return open_lease(self._client_name, selector, self._timeout)
        raise ExporterUnavailable(
            "no Jumpstarter exporter: run pytest inside `jmp shell`, or give --http-selector=LABELS "
            "(or @pytest.mark.http_exporter(selector=...)) to lease one."
        )

    def close(self) -> None:
        connections, self._open = list(self._open.values()), {}
        for connection in connections:
            connection.close()
