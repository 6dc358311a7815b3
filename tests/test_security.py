"""Issue 6, security: what the loopback server binds, and what no request can reach.

Raw sockets send the hostile request targets, since requests and urllib would normalise them
before they left the client.
"""

import os
import socket
from pathlib import Path

import pytest

from pytest_jumpstarter_http import HttpServerHandle, LoopbackServer

SECRET = b"the secret next to the served root, 7f3a9c"
SERVED = b"served from inside the root"
PASSWD = b"root:x:0:0"


def listening_addresses(port: int) -> list[str]:
    """The local addresses with a TCP socket listening on ``port``, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                address, hexport = local.split(":")
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    packed = bytes.fromhex(address)
                    if len(packed) == 4:
                        found.append(socket.inet_ntop(socket.AF_INET, packed[::-1]))
                    else:  # four little-endian 32-bit words
                        words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                        found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


def raw_get(port: int, target: bytes, method: bytes = b"GET", body: bytes = b"") -> tuple[int, bytes]:
    """Send ``target`` exactly as given; return the status code and everything the server sent."""
    request = (
        method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
            if len(received) > 1 << 20:  # nothing here is that big; stop a runaway answer
                break
    return int(received.split(b" ", 2)[1]), received


@pytest.fixture
def fenced(tmp_path: Path, http_server_factory) -> HttpServerHandle:
    """A server on ``tmp_path/root``, with a secret beside the root and symbolic links out of it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "served.raw").write_bytes(SERVED)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "escape-dir").symlink_to(tmp_path)
    (root / "escape-relative").symlink_to("../secret.txt")
    return http_server_factory(root)


def test_the_loopback_server_listens_on_127_0_0_1_only(http_server):
    assert listening_addresses(http_server.port) == ["127.0.0.1"]


def test_a_loopback_server_made_without_pytest_also_listens_on_127_0_0_1_only(tmp_path):
    with LoopbackServer(tmp_path).start() as server:
        assert listening_addresses(server.port) == ["127.0.0.1"]


def test_the_fenced_root_serves_its_own_files(fenced):
    """The control for the hostile requests below: the same server does serve the root."""
    assert raw_get(fenced.port, b"/sub/served.raw")[0] == 200
    assert raw_get(fenced.port, b"/sub/../sub/served.raw")[0] == 200


HOSTILE = [
    pytest.param(b"/../secret.txt", id="dot-dot"),
    pytest.param(b"/sub/../../secret.txt", id="dot-dot-below-a-folder"),
    pytest.param(b"/%2e%2e/secret.txt", id="encoded-dot-dot"),
    pytest.param(b"/%2E%2E/secret.txt", id="encoded-dot-dot-upper-case"),
    pytest.param(b"/.%2e/secret.txt", id="half-encoded-dot-dot"),
    pytest.param(b"/sub/%2e%2e/%2e%2e/secret.txt", id="encoded-dot-dot-below-a-folder"),
    pytest.param(b"/%2e%2e%2fsecret.txt", id="encoded-slash"),
    pytest.param(b"/sub%2f..%2f..%2fsecret.txt", id="encoded-slashes-below-a-folder"),
    pytest.param(b"/%252e%252e/secret.txt", id="double-encoded-dot-dot"),
    pytest.param(b"/%c0%ae%c0%ae/secret.txt", id="overlong-utf8-dot-dot"),
    pytest.param(b"/..\\secret.txt", id="backslash"),
    pytest.param(b"/sub\\..\\..\\secret.txt", id="backslashes-below-a-folder"),
    pytest.param(b"/..%5csecret.txt", id="encoded-backslash"),
    pytest.param(b"//etc/passwd", id="absolute"),
    pytest.param(b"/%2fetc/passwd", id="encoded-absolute"),
    pytest.param(b"/../../../../../../../../etc/passwd", id="deep-dot-dot"),
    pytest.param(b"/%00", id="nul"),
    pytest.param(b"/sub/served.raw%00", id="nul-after-a-served-name"),
    pytest.param(b"/../secret.txt%00.raw", id="nul-after-dot-dot"),
    pytest.param(b"/" + b"a" * 10_000, id="10k-name"),
    pytest.param(b"/" + b"a" * 300, id="name-longer-than-name-max"),
    pytest.param(b"/" + b"ab/" * 2_000, id="path-longer-than-path-max"),
    pytest.param(b"/" + b"%61" * 2_000, id="encoded-long-name"),
    pytest.param(b"/escape", id="symlink-to-a-file-outside"),
    pytest.param(b"/escape-relative", id="relative-symlink-outside"),
    pytest.param(b"/escape-dir/secret.txt", id="symlink-to-a-folder-outside"),
    pytest.param(b"http://127.0.0.1/../secret.txt", id="absolute-form"),
    pytest.param(b"../secret.txt", id="no-leading-slash"),
]


@pytest.mark.parametrize("target", HOSTILE)
def test_no_request_reaches_a_byte_outside_the_served_root(fenced, target):
    status, received = raw_get(fenced.port, target)
    assert status in (400, 403, 404)
    assert SECRET not in received
    assert PASSWD not in received


def test_the_secret_path_itself_is_looked_up_inside_the_root(fenced, tmp_path):
    secret = str(tmp_path / "secret.txt").encode()
    for target in (b"/" + secret, b"//" + secret.lstrip(b"/"), b"/" + secret.replace(b"/", b"%2f")):
        status, received = raw_get(fenced.port, target)
        assert status == 404
        assert SECRET not in received


@pytest.mark.parametrize("target", [b"/", b"/sub", b"/sub/", b"/.", b"/sub/.", b"/escape-dir/"])
def test_no_folder_is_ever_listed(fenced, target):
    status, received = raw_get(fenced.port, target)
    # A folder without its slash is redirected to the URL with it (issue 26), which is then 403.
    assert status in (301, 403, 404)
    assert b"served.raw" not in received
    assert b"secret" not in received


@pytest.mark.parametrize("method", [b"PUT", b"POST", b"DELETE", b"PATCH", b"MKCOL", b"MOVE"])
def test_nothing_can_write_or_delete_through_the_server(fenced, method):
    before = sorted(fenced.root.rglob("*"))
    assert raw_get(fenced.port, b"/sub/served.raw", method, b"overwritten")[0] == 405
    assert raw_get(fenced.port, b"/new.raw", method, b"created")[0] == 405
    assert sorted(fenced.root.rglob("*")) == before
    assert (fenced.root / "sub" / "served.raw").read_bytes() == SERVED


# A leading slash is relative to the URL, as everywhere (issue 27): "/abs" stages "abs".
BAD_NAMES = [
    "../x",
    "a/../../x",
    "/../abs",
    "//../abs",
    "a\\b",
    "..\\x",
    "a\0b",
    "a//b",
    "./a",
    "a/",
    "a" * 1025,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_stage_refuses_names_that_leave_the_root_and_writes_nothing(http_server, tmp_path, name):
    source = tmp_path / "build.img"
    source.write_bytes(SERVED)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="not a valid served file name"):
        http_server.stage(source, name)
    assert sorted(tmp_path.rglob("*")) == before
    assert not any(http_server.root.iterdir())


@pytest.mark.parametrize(
    ("name", "error", "says"),
    [
        ("out/x.img", ValueError, "leads outside the served root"),
        ("out/new/x.img", ValueError, "leads outside the served root"),
        ("dangling", FileExistsError, "the plugin did not create it"),  # a name the root holds
    ],
)
def test_stage_refuses_a_name_that_leads_out_through_a_symbolic_link(
    http_server_factory, tmp_path, name, error, says
):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "dangling").symlink_to(outside / "not-yet")
    source = tmp_path / "build.img"
    source.write_bytes(SERVED)
    server = http_server_factory(root)
    with pytest.raises(error, match=says):
        server.stage(source, name)
    assert not any(outside.iterdir())


def test_url_for_refuses_a_name_too_long_for_any_file(http_server):
    with pytest.raises(ValueError, match="longer than"):
        http_server.url_for("a" * 1025)


def test_a_name_that_looks_encoded_is_served_literally_from_inside_the_root(fenced):
    (fenced.root / "%2e%2e").mkdir()
    (fenced.root / "%2e%2e" / "secret.txt").write_bytes(b"the literal one")
    url = fenced.url_for("%2e%2e/secret.txt")
    assert url.endswith("/%252e%252e/secret.txt")
    status, received = raw_get(fenced.port, url.removeprefix(fenced.url).encode())
    assert status == 200
    assert received.endswith(b"\r\n\r\nthe literal one")


def test_a_symbolic_link_inside_the_root_to_a_file_inside_it_is_served(fenced):
    """Links inside the root are how --http-root trees share files; only links out are refused."""
    os.symlink("sub/served.raw", fenced.root / "alias.raw")
    status, received = raw_get(fenced.port, b"/alias.raw")
    assert status == 200
    assert received.endswith(SERVED)
