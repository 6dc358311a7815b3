"""Issue 25: a client's calls of a RecordingHttpServer go on one stream, the call channel.

The codec is checked on its own; the rest through Jumpstarter's real client and a real gRPC
session on the loopback's server (``LocalServer.client``), as an exporter's runs reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest
from jumpstarter.client.core import DriverError, DriverInvalidArgument
from jumpstarter.common.utils import serve
from jumpstarter.driver import export

from pytest_jumpstarter_http import eventloop
from pytest_jumpstarter_http.channel import MAX_CHUNK, MAX_LINE, STEP, Codec
from pytest_jumpstarter_http.client import NeverOpened, _ended
from pytest_jumpstarter_http.connect import unavailable
from pytest_jumpstarter_http.driver import RecordingHttpServer
from pytest_jumpstarter_http.loopback import LocalServer
from pytest_jumpstarter_http.namespaces import NamespaceError
from pytest_jumpstarter_http.records import OBJECTS, RUNS, TOP


def test_messages_cross_in_order_however_the_stream_cuts_them():
    sender, receiver = Codec(), Codec()
    sent = [[n, "link", ["0123456789abcdef", f"image-{n % 3}.raw", "ab" * 32]] for n in range(300)]
    data = b"".join(chunk for message in sent for chunk in sender.chunks(Codec.line(message)))
    shuffle = random.Random(25)
    got, at = [], 0
    while at < len(data):
        step = shuffle.randint(1, 40)
        got += list(receiver.decode(data[at : at + step]))
        at += step
    assert got == sent
    # A repeated call costs a few bytes: the zlib stream has seen its words.
    assert len(data) < 300 * 40


def test_a_line_many_decompression_steps_long_arrives_whole():
    sender, receiver = Codec(), Codec()
    for size in (STEP - 12, STEP, 3 * STEP, 3 * STEP + 7):
        message = [1, "x", ["a" * size]]
        assert list(receiver.decode(b"".join(sender.chunks(Codec.line(message))))) == [message]


def test_a_message_larger_than_a_grpc_message_is_sent_in_chunks():
    sender, receiver = Codec(), Codec()
    body = random.Random(1).randbytes(3 * MAX_CHUNK).hex()
    chunks = sender.chunks(Codec.line([7, "add_reply", [{"body": body}]]))
    assert len(chunks) > 1
    assert all(len(chunk) <= MAX_CHUNK for chunk in chunks)
    received = [message for chunk in chunks for message in receiver.decode(chunk)]
    assert received == [[7, "add_reply", [{"body": body}]]]


def test_a_line_longer_than_the_limit_is_refused_before_it_is_all_in_memory():
    rogue, receiver = zlib.compressobj(), Codec()  # a client that does not check its lines
    bomb = rogue.compress(b"a" * (MAX_LINE + 10)) + rogue.flush(zlib.Z_PARTIAL_FLUSH)  # a few KiB
    with pytest.raises(ValueError, match=r"is over \d+ bytes; it is refused"):
        list(receiver.decode(bomb))
    assert receiver._size <= MAX_LINE + STEP


def test_a_line_is_refused_before_it_is_sent_if_it_is_too_long():
    with pytest.raises(ValueError, match=f"is over {MAX_LINE}; it is not sent"):
        Codec.line(["a" * MAX_LINE])


@pytest.fixture
def server(tmp_path: Path):
    with LocalServer("127.0.0.1", tmp_path / "server") as running:
        yield running


def owns(server: LocalServer, owner: str) -> bool:
    try:
        server.driver.namespaces.owner(owner)
    except NamespaceError:
        return False
    return True


def test_an_owner_made_on_the_channel_ends_when_the_channel_ends(server, tmp_path: Path):
    client = server.client
    owner = client.own(f"{RUNS}/run-x", False, lambda want: None, 10)
    assert owns(server, owner)
    token = client.open_namespace(owner, [f"{RUNS}/run-x"])
    assert server.driver.namespaces.alive(token)
    client.close_calls()
    deadline = time.monotonic() + 10
    while owns(server, owner) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not owns(server, owner)
    assert not server.driver.namespaces.alive(token)
    # The client goes on with unary calls.
    assert client.get_port() == server.driver.get_port()


def test_the_server_asks_an_owner_for_a_name_through_the_channel(server):
    client = server.client
    asked: list[dict[str, Any]] = []
    done = threading.Event()

    def wanted(want: dict[str, Any]) -> None:
        asked.append(want)
        client.answer(want["namespace"], want["name"], False)
        done.set()

    owner = client.own(f"{RUNS}/run-y", False, wanted, 10)
    token = client.open_namespace(owner, [f"{RUNS}/run-y"], 10.0)
    url = f"{client.get_url()}/{TOP}/ns/{token}/missing.bin"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(url, timeout=10)
    assert done.wait(10)
    assert asked == [{"namespace": token, "name": "missing.bin"}]


def test_a_server_error_reaches_the_caller_as_a_unary_call_would_raise_it(server):
    with pytest.raises(DriverInvalidArgument, match="'not-a-digest' is no sha256; give 64 lowercase hex"):
        server.client.holds("not-a-digest")


def test_calls_from_many_threads_each_get_their_own_answer(server):
    objects = server.folder / OBJECTS
    objects.mkdir(parents=True)
    kept = {}
    for n in range(20):
        content = f"object {n}".encode()
        digest = hashlib.sha256(content).hexdigest()
        if n % 2:
            (objects / digest).write_bytes(content)
        kept[digest] = bool(n % 2)
    (objects / hashlib.sha256(b"x").hexdigest()).write_bytes(b"not x")  # a rewritten object
    kept[hashlib.sha256(b"x").hexdigest()] = False
    client = server.client
    asks = list(kept) * 10
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(client.holds, asks))
    assert answers == [kept[digest] for digest in asks]


def test_a_fifo_planted_as_an_object_is_not_held_and_holds_no_thread(server):
    objects = server.folder / OBJECTS
    objects.mkdir(parents=True)
    fifo = objects / hashlib.sha256(b"x").hexdigest()
    os.mkfifo(fifo)
    pool = ThreadPoolExecutor(1)
    try:
        assert pool.submit(server.client.holds, fifo.name).result(timeout=10) is False
    finally:  # a reader it left waiting, if any, gets a writer
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pool.shutdown()


def test_a_folder_planted_as_an_object_is_not_held_and_leaks_no_descriptor(server):
    planted = server.folder / OBJECTS / hashlib.sha256(b"x").hexdigest()
    planted.mkdir(parents=True)
    server.client.holds(planted.name)  # the first call opens what a call needs, once
    descriptors = len(os.listdir("/proc/self/fd"))
    assert [server.client.holds(planted.name) for _ in range(5)] == [False] * 5
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_a_call_too_long_for_the_channel_fails_alone_and_its_owner_lives_on(server):
    client = server.client
    owner = client.own(f"{RUNS}/run-long", False, lambda want: None, 10)
    with pytest.raises(DriverError, match=f"is over {MAX_LINE}; it is not sent"):
        client.call("api", "a" * (MAX_LINE + 10))
    assert owns(server, owner)
    assert client.get_port() == server.driver.get_port()


class WithHugeAnswer(RecordingHttpServer):
    """A RecordingHttpServer with a call whose answer is too long for one line of the channel."""

    @export
    def huge(self) -> str:
        return "a" * (MAX_LINE + 10)


def test_an_answer_too_long_for_the_channel_fails_its_call_alone(tmp_path: Path):
    driver = WithHugeAnswer(root_dir=str(tmp_path), host="127.0.0.1", port=0)
    with serve(driver) as client:
        owner = client.own(f"{RUNS}/run-huge", False, lambda want: None, 10)
        with pytest.raises(DriverError, match=f"is over {MAX_LINE}; it is not sent"):
            client.call("huge")
        driver.namespaces.owner(owner)  # the owner lives on: its channel did
        assert client.call("requests_started") == 0
        client.close_calls()


def test_a_chunk_of_many_calls_does_not_hold_the_server_from_its_downloads(server, tmp_path: Path):
    (server.folder / "small.bin").write_bytes(b"x" * 1024)
    token = server.driver.namespaces.open_local(server.owner, [server.folder])
    port = eventloop.call(server.driver.serve_namespace, token, 0, timeout=10)
    sender = Codec()
    lines = b"".join(Codec.line([n, "requests_started", []]) for n in range(1, 200_001))
    (chunk,) = sender.chunks(lines)  # 200,000 calls in one small chunk
    with server.client.stream("channel") as stream:
        stream.send(chunk)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/small.bin", timeout=20) as response:
            assert response.read() == b"x" * 1024


def rpc_error(code: grpc.StatusCode) -> anyio.BrokenResourceError:
    """What Jumpstarter's RouterStream raises when its gRPC call ends with ``code``."""
    error = anyio.BrokenResourceError()
    error.__cause__ = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")
    return error


def test_a_call_caught_by_a_server_with_no_channel_is_retried_and_one_by_an_exporter_gone_is_not():
    missing = _ended(rpc_error(grpc.StatusCode.NOT_FOUND))  # Jumpstarter: "method channel not found"
    assert isinstance(missing, NeverOpened)  # no call on it was made: call_async makes it a unary one
    gone = _ended(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert not isinstance(gone, NeverOpened)  # it may have run: it fails, and says why
    assert unavailable(gone) == "details"  # connect.answering() turns it into "stopped answering"


class WithoutChannel(RecordingHttpServer):
    """A RecordingHttpServer of a plugin version from before the call channel."""

    channel = None  # type: ignore[assignment]


def test_a_server_without_the_channel_is_called_with_unary_calls(tmp_path: Path):
    driver = WithoutChannel(root_dir=str(tmp_path), host="127.0.0.1", port=0)
    with serve(driver) as client:
        assert json.dumps(client.call("api"))  # answered: the version check can run
        client.start_unless_running()
        assert client.get_port() != 0
        client.stop()
