"""The private APIs of aiohttp and Jumpstarter the plugin relies on, each checked against the real library.

Each test names the plugin code that depends on the API. When an upgrade moves one or changes
what it means, the test here fails with a message saying what to fix, instead of a server that
quietly waits 60 s at shutdown, records nothing, or misreads ``JUMPSTARTER_HOST``.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

#: Seconds a test waits for something that takes milliseconds; only a broken API reaches it.
PATIENCE = 20.0


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[Any, str]]:
    """An aiohttp ``AppRunner`` on ``app``, listening on a free loopback port: the runner and its URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield runner, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), PATIENCE * 2))


# --- aiohttp AppRunner._shutdown_timeout (driver.py, RecordingHttpServer.start) ---------------


def test_an_app_runner_keeps_its_shutdown_timeout_in_the_private_attribute_the_driver_sets():
    from aiohttp import web

    async def main() -> None:
        async with serving(web.Application()) as (runner, _):
            assert getattr(runner, "_shutdown_timeout", None) == 60.0, (
                "aiohttp's AppRunner no longer keeps its graceful-shutdown timeout in _shutdown_timeout "
                "(default 60 s): RecordingHttpServer.start() in driver.py sets it to bound a stopping "
                "server; find where this aiohttp version keeps it."
            )

    run(main)


def test_setting_the_shutdown_timeout_bounds_how_long_a_stopping_runner_waits_for_a_download():
    import aiohttp
    from aiohttp import web

    entered = asyncio.Event()
    cancelled: list[bool] = []

    async def never_answers(request: web.Request) -> web.Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        raise AssertionError("unreachable")

    async def fetch(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(url + "/slow") as response:
                    await response.read()
            except aiohttp.ClientError:
                pass  # the server cut the request: what a bounded shutdown does

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/slow", never_answers)
        async with serving(app) as (runner, url):
            client = asyncio.create_task(fetch(url))
            await asyncio.wait_for(entered.wait(), PATIENCE)
            runner._shutdown_timeout = 0.1
            try:
                await asyncio.wait_for(runner.cleanup(), PATIENCE)
            except TimeoutError:
                pytest.fail(
                    "aiohttp ignored AppRunner._shutdown_timeout = 0.1: cleanup() still waited for a request "
                    f"in flight after {PATIENCE:g} s, so RecordingHttpServer's shutdown_grace (driver.py) "
                    "no longer bounds a stopping server; find this aiohttp version's way to bound it."
                )
            await client
        assert cancelled, "the request in flight was not cancelled when the bounded shutdown ended"

    run(main)


# --- aiohttp Server._kwargs["access_log_class"] (serving.install) ---------------------------


def test_an_access_log_class_put_in_the_servers_kwargs_after_start_logs_every_new_request():
    import aiohttp
    from aiohttp import web
    from aiohttp.abc import AbstractAccessLogger

    logged: list[tuple[str, int]] = []

    class Recorder(AbstractAccessLogger):
        def log(self, request: Any, response: Any, duration: float) -> None:
            logged.append((request.path, response.status))

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/hello", hello)
        async with serving(app) as (runner, url):
            kwargs = getattr(runner.server, "_kwargs", None)
            assert isinstance(kwargs, dict), (
                "aiohttp's web.Server no longer keeps the request handlers' keyword arguments in a dict "
                "_kwargs: serving.install() puts its access logger there; find where this aiohttp "
                "version takes access_log_class from."
            )
            kwargs["access_log_class"] = Recorder
            async with aiohttp.ClientSession() as session, session.get(url + "/hello") as response:
                assert await response.text() == "hello"
            # The access log runs once the response is sent; let the server's task get there.
            for _ in range(100):
                if logged:
                    break
                await asyncio.sleep(0.01)
        assert logged == [("/hello", 200)], (
            "an access_log_class put in runner.server._kwargs after start no longer logs new requests: "
            "serving.install() would record nothing; find this aiohttp version's way to log them."
        )

    run(main)


# --- jumpstarter.client.client._is_tcp_address (connect._probe) --------------------------------


def test_jumpstarter_tells_a_host_and_port_from_a_socket_path_with_is_tcp_address(tmp_path: Path):
    try:
        from jumpstarter.client.client import _is_tcp_address
    except ImportError:
        pytest.fail(
            "jumpstarter.client.client._is_tcp_address is gone: connect._probe() uses it to tell "
            "JUMPSTARTER_HOST=host:port from a socket path as Jumpstarter's client does; find its new home."
        )
    sock_path = tmp_path / "jumpstarter.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(sock_path))
        answers = {
            "127.0.0.1:1": _is_tcp_address("127.0.0.1:1"),
            "localhost:8082": _is_tcp_address("localhost:8082"),
            str(sock_path): _is_tcp_address(str(sock_path)),
        }
    assert answers == {"127.0.0.1:1": True, "localhost:8082": True, str(sock_path): False}, (
        f"_is_tcp_address changed meaning: {answers}; connect._probe() relies on it being True for "
        "host:port and False for a socket path."
    )


def test_jumpstarter_s_client_still_decides_tcp_or_socket_with_is_tcp_address():
    from jumpstarter.client import client

    # connect._probe() must open the channel the same way the client it probes for will.
    source = inspect.getsource(client)
    assert "_is_tcp_address(path)" in source, (
        "jumpstarter.client.client no longer decides between a TCP and a Unix-socket channel with "
        "_is_tcp_address(path): connect._probe() may now disagree with the client about "
        "JUMPSTARTER_HOST; read the new client code and follow it."
    )


def steps_gone(function: Callable[..., Any], *steps: str) -> list[str]:
    """The ``steps`` (lines of code) that the source of ``function`` no longer holds."""
    source = inspect.getsource(function)
    return [step for step in steps if step not in source]


# --- jumpstarter's DriverClient.resource_async (client._resource, a copy less its progress bar) --


def test_resource_async_still_opens_a_resource_stream_as_the_client_s_copy_of_it_does():
    from jumpstarter.client.core import AsyncDriverClient

    changed = steps_gone(
        AsyncDriverClient.resource_async,
        "ResourceStreamRequest(uuid=self.uuid, x_jmp_content_encoding=content_encoding)",
        "MetadataStream(stream=RouterStream(context=context), metadata=metadata)",
        "ResourceMetadata(**rstream.extra(MetadataStreamAttributes.metadata))",
        "forward_stream(ProgressStream(stream=stream), rstream)",
        'metadata.resource.model_dump(mode="json")',
    )
    assert not changed, (
        f"Jumpstarter's resource_async no longer does {changed}: client._resource() copies it, less "
        "its ProgressStream, to send a file without a progress bar; read the new one and follow it."
    )


# --- jumpstarter's Driver.DriverCall (driver.RecordingHttpServer.exported, the call channel's copy) --


def test_driver_call_still_looks_up_an_exported_method_and_runs_a_plain_one_in_a_thread():
    from jumpstarter.driver import Driver

    changed = steps_gone(
        Driver.DriverCall,
        "MARKER_DRIVERCALL",
        "if iscoroutinefunction(method):",
        "result = await method(*args)",
        "result = await to_thread.run_sync(method, *args)",
        "except NotImplementedError as e:",
        "except ValueError as e:",
        "except TimeoutError as e:",
    )
    assert not changed, (
        f"Jumpstarter's DriverCall no longer does {changed}: RecordingHttpServer.exported() makes a call "
        "of the call channel as DriverCall makes a unary one, and channel.KINDS maps its exceptions as "
        "DriverCall does; read the new one and follow it."
    )


# --- aiohttp FileResponse._sendfile(request, fobj, offset, count) (serving.py) ------------------


def test_file_response_sendfile_takes_the_request_an_open_file_an_offset_and_a_count():
    from aiohttp import web

    method = getattr(web.FileResponse, "_sendfile", None)
    assert inspect.iscoroutinefunction(method), (
        "aiohttp's FileResponse has no coroutine _sendfile any more: serving.py overrides it to send "
        "a file opened beneath the served root; find how this aiohttp version sends a file."
    )
    parameters = list(inspect.signature(method).parameters)
    assert parameters == ["self", "request", "fobj", "offset", "count"], (
        f"aiohttp's FileResponse._sendfile now takes {parameters}, not (self, request, fobj, offset, "
        "count): serving.py calls and overrides it with those; adapt it to the new signature."
    )


def test_file_response_sends_a_range_through_sendfile_with_its_offset_and_count(tmp_path: Path):
    import aiohttp
    from aiohttp import web

    served = tmp_path / "disk.raw"
    served.write_bytes(bytes(range(256)) * 4)
    calls: list[tuple[str, int, int]] = []

    class Watched(web.FileResponse):
        async def _sendfile(self, request: Any, fobj: Any, offset: int, count: int) -> Any:
            calls.append((Path(fobj.name).name, offset, count))
            return await super()._sendfile(request, fobj, offset, count)

    async def handler(request: web.Request) -> web.StreamResponse:
        return Watched(served)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/disk.raw", handler)
        async with serving(app) as (_, url), aiohttp.ClientSession() as session:
            headers = {"Range": "bytes=100-199"}
            async with session.get(url + "/disk.raw", headers=headers) as response:
                assert response.status == 206
                assert await response.read() == served.read_bytes()[100:200]

    run(main)
    assert calls == [("disk.raw", 100, 100)], (
        f"aiohttp's FileResponse no longer sends a file through _sendfile(request, fobj, offset, count) "
        f"(calls: {calls}): serving.py's override would be bypassed; find how it sends files now."
    )


# --- aiohttp FileResponse's steps (serving.py, ServedFile._prepare_here) -------------------------


def test_a_file_response_decides_its_answer_in_the_private_steps_served_file_calls_on_the_loop():
    from aiohttp.web import FileResponse
    from aiohttp.web_fileresponse import _FileResponseResult

    steps = {
        "_make_response": ["self", "request", "accept_encoding"],
        "_prepare_open_file": ["self", "request", "fobj", "st", "file_encoding"],
        "_precondition_failed": ["self", "request"],
        "_not_modified": ["self", "request", "etag_value", "last_modified"],
    }
    for name, parameters in steps.items():
        method = getattr(FileResponse, name, print)
        assert list(inspect.signature(method).parameters) == parameters, (
            f"aiohttp's FileResponse.{name} moved or changed its parameters: ServedFile._prepare_here "
            "in serving.py calls it to answer without executor hops; follow aiohttp's prepare() again."
        )
    assert {result.name for result in _FileResponseResult} >= {
        "SEND_FILE",
        "NOT_ACCEPTABLE",
        "PRE_CONDITION_FAILED",
        "NOT_MODIFIED",
    }, "aiohttp's _FileResponseResult changed: ServedFile._prepare_here in serving.py branches on it."


# --- aiohttp's Server.request_factory, sites' _server (serving.reach_by_port, tlssites.open_site) ---


def test_a_request_factory_set_after_setup_makes_the_requests_of_new_connections(tmp_path: Path):
    import urllib.request

    from aiohttp import web

    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=request.raw_path)

    async def main() -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            server: Any = runner.server
            make = server.request_factory

            def factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> Any:
                seen.append(protocol.transport.get_extra_info("sockname")[1])
                return make(message._replace(path="/moved" + message.path), payload, protocol, writer, task)

            server.request_factory = factory
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{port}/a?b"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
            assert (body, seen) == (b"/moved/a?b", [port]), (
                "aiohttp no longer builds each request with Server.request_factory, read by a connection "
                "as it opens, from a message with _replace(): serving.reach_by_port rewrites the path of "
                "a request that arrives on a loopback namespace's own port there."
            )
        finally:
            await runner.cleanup()

    run(main)


def test_a_site_started_on_a_kept_runner_listens_where_its_server_says(tmp_path: Path):
    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            for _ in range(2):  # a site per test, on one runner
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                server: Any = site._server
                assert [server.sockets[0].getsockname()] == runner.addresses, (
                    "aiohttp sites no longer keep their asyncio server in _server: "
                    "tlssites.open_site reads the port from it."
                )
                await site.stop()
        finally:
            await runner.cleanup()

    run(main)


# --- pytest's config._tmp_path_factory (plugin.py, _basetemp) ------------------------------------


def test_pytest_attaches_its_temp_path_factory_to_the_config_for_plugins(pytester: pytest.Pytester):
    pytester.makeconftest(
        """
        import pytest

        def pytest_sessionstart(session):
            factory = session.config._tmp_path_factory
            assert isinstance(factory, pytest.TempPathFactory)
        """
    )
    pytester.makepyfile("def test_it(): pass")
    result = pytester.runpytest("-p", "no:jumpstarter_http")
    assert result.ret == 0, (
        "pytest no longer attaches its TempPathFactory to config._tmp_path_factory: plugin.py's "
        "_basetemp reads it to put the plugin's folders below pytest's basetemp."
    )


# --- pytest's request._fixturemanager.getfixturedefs (plugin.py, _may_hold_a_board) -------------


def test_pytest_tells_which_definition_of_a_fixture_a_test_sees(pytester: pytest.Pytester):
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def shadowed():
            return "conftest"
        """
    )
    pytester.makepyfile(
        """
        import pytest

        class TestOverride:
            @pytest.fixture
            def shadowed(self):
                return "class"

            def test_it(self, request):
                definitions = request._fixturemanager.getfixturedefs("shadowed", request.node)
                assert [d.func.__module__ for d in definitions] == ["conftest", __name__]
                assert definitions[-1].func.__qualname__ == "TestOverride.shadowed"

        def test_outside(request):
            definitions = request._fixturemanager.getfixturedefs("shadowed", request.node)
            assert [d.func.__module__ for d in definitions] == ["conftest"]
        """
    )
    result = pytester.runpytest("-p", "no:jumpstarter_http")
    assert result.ret == 0, (
        "pytest's request._fixturemanager.getfixturedefs(name, node) changed: plugin.py's "
        "_may_hold_a_board reads it to tell an overridden http_exporter_client from the plugin's.\n"
        + result.stdout.str()
    )
