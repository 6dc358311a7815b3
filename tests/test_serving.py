"""The fixtures themselves, against real sockets and real HTTP clients."""

import hashlib
import socket
import urllib.request
from pathlib import Path

import pytest
import requests

from pytest_jumpstarter_http import HttpServerHandle
from pytest_jumpstarter_http.handle import format_url

DATA = bytes(range(256)) * 64  # 16 KiB


def get(url: str, **kwargs: object) -> requests.Response:
    with requests.get(url, timeout=10, **kwargs) as response:  # type: ignore[arg-type]
        response.content  # read it before the connection closes  # noqa: B018
        return response


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def test_http_url_serves_what_the_test_writes_into_served_dir(http_url, served_dir):
    (served_dir / "image.raw").write_bytes(DATA)
    response = get(f"{http_url}/image.raw")
    assert response.status_code == 200
    assert response.content == DATA


def test_the_handle_describes_a_loopback_server(http_server: HttpServerHandle, http_url, served_dir):
    assert http_server.backend == "loopback"
    assert http_server.url == http_url == f"http://127.0.0.1:{http_server.port}"
    assert http_server.host == "127.0.0.1"
    assert http_server.root == served_dir
    assert not http_url.endswith("/")


def test_range_requests_and_etags_come_from_the_driver(http_url, served_dir):
    (served_dir / "image.raw").write_bytes(DATA)
    response = get(f"{http_url}/image.raw", headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == DATA[100:200]
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    assert response.headers["ETag"]


def test_a_missing_file_is_a_404_and_there_is_no_directory_listing(http_url, served_dir):
    (served_dir / "sub").mkdir()
    (served_dir / "sub" / "a").write_text("a")
    assert get(f"{http_url}/missing").status_code == 404
    assert get(f"{http_url}/sub/").status_code in (403, 404)
    assert get(f"{http_url}/").status_code in (403, 404)


def test_url_for_percent_encodes_names(http_server, served_dir):
    (served_dir / "my image #1.raw").write_bytes(b"x")
    url = http_server.url_for("my image #1.raw")
    assert url == f"{http_server.url}/my%20image%20%231.raw"
    assert get(url).content == b"x"


# A leading slash is relative to the URL, as everywhere (issue 27): "/abs" and "" are names now,
# see test_a_leading_slash_changes_no_name_and_url_for_of_the_root_is_the_base_url.
@pytest.mark.parametrize("name", ["../etc/passwd", "/../abs", "a\\b", "a\0b", "a//b", "./a"])
def test_url_for_refuses_names_that_leave_the_root(http_server, name):
    with pytest.raises(ValueError, match="not a valid served file name"):
        http_server.url_for(name)


def test_stage_links_a_file_into_the_root_and_serves_it(http_server, tmp_path):
    build = tmp_path / "build.img"
    build.write_bytes(DATA)
    url = http_server.stage(build, "nested/dir/disk.img")
    assert url == f"{http_server.url}/nested/dir/disk.img"
    assert hashlib.sha256(get(url).content).digest() == hashlib.sha256(DATA).digest()
    assert http_server.stage(build) == f"{http_server.url}/build.img"


def test_stage_of_a_file_already_in_the_root_serves_it_in_place(http_server, served_dir):
    (served_dir / "in.raw").write_bytes(b"in")
    assert http_server.stage(served_dir / "in.raw") == f"{http_server.url}/in.raw"
    assert (served_dir / "in.raw").read_bytes() == b"in"


def test_stage_never_replaces_a_file_it_did_not_create(http_server, served_dir, tmp_path):
    (served_dir / "mine.raw").write_bytes(b"user's")
    other = tmp_path / "other.raw"
    other.write_bytes(b"other")
    with pytest.raises(FileExistsError, match="did not create"):
        http_server.stage(other, "mine.raw")
    assert (served_dir / "mine.raw").read_bytes() == b"user's"


def test_stage_never_replaces_a_file_of_a_staging_folder_it_was_given(tmp_path):
    from pytest_jumpstarter_http.loopback import LoopbackServer

    root, staging = tmp_path / "root", tmp_path / "staged"
    root.mkdir()
    staging.mkdir()
    (staging / "x.bin").write_bytes(b"not the server's")
    (tmp_path / "build.bin").write_bytes(b"a build")
    with (
        LoopbackServer(root, staging=staging).start() as server,
        pytest.raises(FileExistsError, match="did not create"),
    ):
        server.stage(tmp_path / "build.bin", "x.bin")
    assert (staging / "x.bin").read_bytes() == b"not the server's"


def test_stage_refuses_a_missing_source(http_server, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a file"):
        http_server.stage(tmp_path / "nope.img")


def test_stage_of_a_name_too_long_for_a_path_below_the_root_is_refused_and_writes_nothing(
    http_server, served_dir, tmp_path
):
    source = tmp_path / "image.raw"
    source.write_bytes(b"image")
    # Each part is a valid name and the whole is within 4096 bytes; below the root it is not.
    name = "/".join(["d" * 250] * 16) + "/image.raw"
    with pytest.raises(ValueError, match=r"^stage\(\): the name of 4025 bytes is too long to serve below "):
        http_server.stage(source, name)
    assert list(served_dir.iterdir()) == []


def test_a_leading_slash_changes_no_name_and_url_for_of_the_root_is_the_base_url(
    http_server, served_dir, tmp_path
):
    # pytest-httpserver's idiom, and the rule of respond() and assert_requested() (issue 27).
    (served_dir / "a.raw").write_bytes(b"a")
    assert http_server.url_for("/") == http_server.url_for("") == http_server.url + "/"
    assert http_server.url_for("/a.raw") == http_server.url_for("a.raw") == http_server.url + "/a.raw"
    source = tmp_path / "b.raw"
    source.write_bytes(b"b")
    assert http_server.stage(source, "/sub/b.raw") == http_server.url_for("sub/b.raw")
    with pytest.raises(ValueError, match="not a valid served file name"):
        http_server.url_for("/../x")


def test_client_is_jumpstarters_http_server_client(http_server):
    from jumpstarter_driver_http.client import HttpServerClient

    assert isinstance(http_server.client, HttpServerClient)
    # The process's one server, of which the handle is a namespace on a port of its own.
    assert http_server.client.get_host() == "127.0.0.1"
    assert http_server.client.get_port() not in (0, http_server.port)


def test_the_factory_starts_independent_servers_and_stops_them_at_teardown(http_server_factory, tmp_path):
    first, second = http_server_factory(), http_server_factory(tmp_path)
    (first.root / "f").write_text("first")
    (tmp_path / "f").write_text("second")
    assert first.port != second.port
    assert get(first.url_for("f")).text == "first"
    assert get(second.url_for("f")).text == "second"
    http_server_factory.close()
    assert not listening(first.port)
    assert not listening(second.port)
    assert not first.root.exists()
    assert (tmp_path / "f").read_text() == "second"


def test_the_factory_refuses_a_root_that_is_not_a_directory(http_server_factory, tmp_path):
    with pytest.raises(NotADirectoryError, match="not a directory"):
        http_server_factory(tmp_path / "missing")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("::1", "http://[::1]:8000"),
        ("[::1]", "http://[::1]:8000"),
        ("fe80::1%eth0", "http://[fe80::1%eth0]:8000"),
        ("board.lab", "http://board.lab:8000"),
    ],
)
def test_urls_bracket_ipv6_literals(host, url):
    assert format_url(host, 8000) == url


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_server_on_ipv6_loopback_has_a_bracketed_url(pytester):
    pytester.makepyfile(
        """
        import urllib.request
        def test_it(http_url, served_dir):
            (served_dir / "x").write_text("6")
            assert http_url.startswith("http://[::1]:")
            assert urllib.request.urlopen(http_url + "/x").read() == b"6"
        """
    )
    pytester.runpytest("--http-host", "::1").assert_outcomes(passed=1)


def test_a_wildcard_bind_still_gets_a_concrete_url(pytester):
    pytester.makepyfile(
        """
        def test_it(http_server):
            assert http_server.host == "0.0.0.0"
            assert "0.0.0.0" not in http_server.url
        """
    )
    pytester.runpytest("--http-host", "0.0.0.0").assert_outcomes(passed=1)


def test_url_host_names_the_host_the_device_uses(pytester):
    pytester.makepyfile(
        """
        def test_it(http_server, http_url):
            assert http_url == f"http://lab-host.example:{http_server.port}"
        """
    )
    pytester.runpytest("--http-url-host", "lab-host.example").assert_outcomes(passed=1)


def test_loopback_server_works_without_pytest(tmp_path: Path):
    from pytest_jumpstarter_http import LoopbackServer

    (tmp_path / "a").write_text("plain")
    with LoopbackServer(tmp_path).start() as server:
        assert urllib.request.urlopen(server.url_for("a"), timeout=10).read() == b"plain"
    assert not listening(server.port)


def test_a_file_that_shrinks_while_it_is_served_ends_the_connection_after_the_short_body(
    http_server, served_dir
):
    """The server sent what the file still held, then kept the connection open: the client waited
    for the rest of the Content-Length until it gave up."""
    big = served_dir / "big"
    with open(big, "wb") as file:
        file.truncate(256 << 20)
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=30) as conn:
        conn.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # HTTP/1.1: kept alive unless told
        first = conn.recv(1 << 20)
        assert first.startswith(b"HTTP/1.1 200")
        big.write_bytes(b"")  # the file shrinks under the download
        received = len(first)
        while chunk := conn.recv(1 << 20):  # until the server ends the connection (or 30 s pass)
            received += len(chunk)
    assert received < 256 << 20
