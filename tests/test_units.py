"""The package's pure functions and small classes, called directly on real files, sockets and items."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pytest_jumpstarter_http import locks
from pytest_jumpstarter_http.connect import labels_match
from pytest_jumpstarter_http.handle import format_url
from pytest_jumpstarter_http.loopback import _candidates
from pytest_jumpstarter_http.markers import Choice, choose
from pytest_jumpstarter_http.options import Settings
from pytest_jumpstarter_http.records import check_name, url_path
from pytest_jumpstarter_http.roots import Roots
from pytest_jumpstarter_http.store import Digests
from pytest_jumpstarter_http.values import PortRange

# --- the package ----------------------------------------------------------------------------------


def test_dir_of_the_package_lists_its_exports_without_importing_them():
    # A fresh interpreter: this one imported aiohttp and jumpstarter long ago.
    exports = ["Fault", "HttpRequest", "HttpServerFactory", "HttpServerHandle", "LoopbackServer"]
    code = (
        "import sys, pytest_jumpstarter_http as p; names = dir(p); "
        f"print(sorted(n for n in {exports} if n in names)); "
        "print(sorted(m for m in ('jumpstarter', 'aiohttp', 'grpc', 'anyio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [str(exports), "[]"]


def test_every_name_dir_lists_is_an_attribute_of_the_package():
    import pytest_jumpstarter_http

    assert all(hasattr(pytest_jumpstarter_http, name) for name in dir(pytest_jumpstarter_http))


# --- markers.choose -------------------------------------------------------------------------------


def item(pytester: pytest.Pytester, source: str) -> pytest.Item:
    return pytester.getitem(source)


def test_a_test_without_markers_is_served_by_the_run_s_backend(pytester):
    node = item(pytester, "def test_func(): pass")
    assert choose(node, Settings()) == Choice("function", "loopback")
    inside_jmp_shell = Settings(jumpstarter_host="/run/jmp.sock", selector="board=rpi4", driver="http")
    assert choose(node, inside_jmp_shell) == Choice("function", "exporter", "board=rpi4", "http", True)


def test_a_test_s_http_loopback_beats_its_module_s_http_exporter(pytester):
    node = item(
        pytester,
        """
        import pytest
        pytestmark = pytest.mark.http_exporter(selector="board=rpi4")

        @pytest.mark.http_loopback
        def test_func(): pass
        """,
    )
    assert choose(node, Settings(backend="exporter")) == Choice("function", "loopback")


def test_the_closest_backend_marker_wins(pytester):
    source = """
        import pytest

        @pytest.mark.http_loopback
        class TestBoard:
            @pytest.mark.http_exporter(selector="board=rpi5")
            def test_on_board(self): pass

            def test_local(self): pass
        """
    on_board, local = pytester.getitems(source)
    assert choose(on_board, Settings()).backend == "exporter"
    assert choose(on_board, Settings()).selector == "board=rpi5"
    assert choose(local, Settings(jumpstarter_host="/run/jmp.sock")).backend == "loopback"


def test_http_exporter_without_arguments_takes_the_selector_and_driver_of_the_settings(pytester):
    node = item(pytester, "import pytest\n@pytest.mark.http_exporter\ndef test_func(): pass")
    choice = choose(node, Settings(selector="board=rpi4", driver="flasher.http"))
    assert (choice.backend, choice.selector, choice.driver_path) == ("exporter", "board=rpi4", "flasher.http")


def test_http_exporter_s_own_selector_and_driver_beat_the_settings(pytester):
    node = item(
        pytester,
        "import pytest\n"
        "@pytest.mark.http_exporter(selector='board=rpi5', driver='http')\n"
        "def test_func(): pass",
    )
    choice = choose(node, Settings(selector="board=rpi4", driver="flasher.http"))
    assert (choice.selector, choice.driver_path) == ("board=rpi5", "http")


def test_the_http_server_marker_s_scope_beats_the_settings_and_its_absence_keeps_them(pytester):
    session, default = pytester.getitems(
        """
        import pytest

        @pytest.mark.http_server(scope="session")
        def test_session(): pass

        def test_default(): pass
        """
    )
    assert choose(session, Settings(scope="function")).scope == "session"
    assert choose(default, Settings(scope="session")).scope == "session"
    assert choose(default, Settings()).scope == "function"


@pytest.mark.parametrize(
    ("settings", "required"),
    [
        (Settings(), False),
        (Settings(backend="exporter"), True),
        (Settings(jumpstarter_host="/run/jmp.sock"), True),
        (Settings(backend="loopback", jumpstarter_host="/run/jmp.sock"), False),
    ],
)
def test_an_exporter_is_required_exactly_when_the_run_asked_for_one(pytester, settings, required):
    node = item(pytester, "import pytest\n@pytest.mark.http_exporter\ndef test_func(): pass")
    assert choose(node, settings).required is required


def test_a_loopback_test_never_requires_an_exporter(pytester):
    node = item(pytester, "import pytest\n@pytest.mark.http_loopback\ndef test_func(): pass")
    assert choose(node, Settings(backend="exporter")).required is False


# --- Settings.wants_exporter and run_backend --------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "backend"),
    [
        (Settings(), "loopback"),
        (Settings(jumpstarter_host="/run/user/1000/jmp.sock"), "exporter"),
        (Settings(selector="board=rpi4"), "exporter"),
        (Settings(client="lab"), "exporter"),
        (Settings(backend="exporter"), "exporter"),
        (Settings(backend="loopback", jumpstarter_host="/run/jmp.sock", selector="board=rpi4"), "loopback"),
    ],
    ids=["nothing", "jmp-shell", "selector", "client", "explicit-exporter", "explicit-loopback-wins"],
)
def test_the_run_s_backend_follows_what_the_run_asked_for(settings, backend):
    assert settings.run_backend == backend
    assert settings.wants_exporter is (backend == "exporter")


# --- connect.labels_match ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("board=rpi4", {"board": "rpi4"}, True),
        ("board=rpi4", {"board": "rpi5"}, False),
        ("board=rpi4", {}, False),
        ("board!=rpi4", {"board": "rpi5"}, True),
        ("board!=rpi4", {}, True),
        ("board!=rpi4", {"board": "rpi4"}, False),
        ("board in (rpi4,rpi5)", {"board": "rpi5"}, True),
        ("board in (rpi4,rpi5)", {"board": "bbb"}, False),
        ("board in (rpi4,rpi5)", {}, False),
        ("board notin (rpi4)", {"board": "rpi5"}, True),
        ("board notin (rpi4)", {}, True),
        ("board notin (rpi4)", {"board": "rpi4"}, False),
        ("busy", {"busy": ""}, True),
        ("busy", {}, False),
        ("!busy", {}, True),
        ("!busy", {"busy": "yes"}, False),
        ("board=rpi4,!busy", {"board": "rpi4"}, True),
        ("board=rpi4,!busy", {"board": "rpi4", "busy": "yes"}, False),
    ],
)
def test_labels_match_a_selector_as_kubernetes_reads_it(selector, labels, matches):
    assert labels_match(selector, labels) is matches


# --- loopback._candidates ---------------------------------------------------------------------------


def test_without_a_port_range_the_os_picks_the_port():
    assert _candidates(None) == [0]


def test_a_fixed_port_is_the_only_candidate():
    assert _candidates(PortRange(8080, 8080)) == [8080]


def test_the_candidates_cover_the_whole_range_once_in_turn_from_an_offset():
    ports = _candidates(PortRange(8000, 8009))
    assert sorted(ports) == list(range(8000, 8010))
    start = ports.index(8000)
    assert ports[start:] + ports[:start] == list(range(8000, 8010))


def test_processes_start_at_different_ports_of_a_range():
    code = (
        "from pytest_jumpstarter_http.loopback import _candidates; "
        "from pytest_jumpstarter_http.values import PortRange; "
        "print(_candidates(PortRange(8000, 8999))[0])"
    )
    firsts = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    # Three processes, a thousand ports: they all start at one port only if the offset is fixed.
    assert len(firsts) > 1


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["disk.raw", "images/disk.raw", "a b/ü#?.img", ".hidden", "x" * 255, "/".join(["x" * 255] * 16)]
)
def test_a_relative_path_of_plain_parts_is_a_valid_name(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "it is empty"),
        ("x/" * 2048 + "x", "it is longer than 4096 bytes"),
        ("a\0b", "it contains a NUL byte"),
        ("images\\disk.raw", "it contains a backslash"),
        ("/etc/passwd", "it is an absolute path"),
        ("../secret", "it has an empty, '.' or '..' part"),
        ("images/../../secret", "it has an empty, '.' or '..' part"),
        ("images//disk.raw", "it has an empty, '.' or '..' part"),
        ("./disk.raw", "it has an empty, '.' or '..' part"),
        ("images/", "it has an empty, '.' or '..' part"),
    ],
)
def test_a_name_that_could_leave_the_root_is_refused_in_one_sentence(name, problem):
    with pytest.raises(ValueError, match="is not a valid served file name") as info:
        check_name(name, where="stage() name")
    message = str(info.value)
    assert message.startswith("stage() name ")
    assert f": {problem}; use a relative path of plain parts" in message
    assert message.endswith(".")


def test_a_url_path_is_percent_encoded_and_keeps_its_slashes():
    assert url_path("images/disk 1.raw") == "/images/disk%201.raw"
    assert url_path("a#b?c%d") == "/a%23b%3Fc%25d"
    assert url_path("ü.img") == "/%C3%BC.img"


def test_a_url_path_checks_its_name():
    with pytest.raises(ValueError, match=r"'\.\./x' is not a valid served file name"):
        url_path("../x")


# --- handle.format_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("build.lab", "http://build.lab:8080"),
        ("::1", "http://[::1]:8080"),
        ("[::1]", "http://[::1]:8080"),
        ("2001:db8::5", "http://[2001:db8::5]:8080"),
        ("fe80::1%eth0", "http://[fe80::1%eth0]:8080"),
    ],
)
def test_a_url_brackets_an_ipv6_address_and_only_that(host, url):
    assert format_url(host, 8080) == url
    parsed = urlsplit(url)
    assert (parsed.hostname, parsed.port) == (host.strip("[]"), 8080)


# --- roots.Roots ----------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    return Roots(lambda: tmp_path / "basetemp" / "http", keep="none")


def test_a_made_root_is_a_new_empty_folder_below_basetemp_that_the_plugin_owns(roots, tmp_path):
    root = roots.make("test_flash[rpi4/with spaces]")
    assert root.is_dir()
    assert not any(root.iterdir())
    assert root.parent == tmp_path / "basetemp" / "http"
    assert roots.owns(root)
    assert roots.make("test_flash[rpi4/with spaces]") != root


def test_a_user_s_folder_is_never_owned_even_below_basetemp(roots, tmp_path):
    made = roots.make("x")
    beside = made.parent / "users-own"
    beside.mkdir()
    assert not roots.owns(beside)
    assert not roots.owns(tmp_path)


def test_a_link_to_a_made_root_is_not_owned_and_removing_it_changes_nothing(roots, tmp_path):
    root = roots.make("x")
    (root / "disk.raw").write_bytes(b"disk")
    link = tmp_path / "link"
    link.symlink_to(root, target_is_directory=True)
    assert not roots.owns(link)
    roots.remove(link)
    assert link.is_symlink()
    assert (root / "disk.raw").read_bytes() == b"disk"


def test_removing_a_folder_the_plugin_did_not_make_leaves_it_alone(roots, tmp_path):
    mine = tmp_path / "images"
    mine.mkdir()
    (mine / "disk.raw").write_bytes(b"disk")
    roots.remove(mine)
    assert (mine / "disk.raw").read_bytes() == b"disk"


def test_a_made_root_is_removed_with_its_contents_and_then_no_longer_owned(roots):
    root = roots.make("x")
    (root / "images").mkdir()
    (root / "images" / "disk.raw").write_bytes(b"disk")
    roots.remove(root)
    assert not root.exists()
    assert not roots.owns(root)
    roots.remove(root)  # twice is harmless


def test_http_keep_keeps_a_made_root_and_what_is_in_it(tmp_path):
    roots = Roots(lambda: tmp_path / "basetemp", keep="all")
    root = roots.make("x")
    (root / "disk.raw").write_bytes(b"disk")
    roots.remove(root)
    assert (root / "disk.raw").read_bytes() == b"disk"
    with roots.temporary("y") as temporary:
        pass
    assert temporary.is_dir()


def test_a_temporary_root_is_removed_after_its_block_even_when_the_block_fails(roots):
    made: list[Path] = []

    def fail_inside() -> None:
        with roots.temporary("x") as root:
            made.append(root)
            (root / "disk.raw").write_bytes(b"disk")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_inside()
    assert made
    assert not made[0].exists()


# --- locks ----------------------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> str:
    # The lock names are shared by the whole machine: one of this test's own.
    return f"test:{tmp_path}"


def test_a_held_lock_cannot_be_held_twice_and_is_free_once_let_go(key):
    first = locks.try_hold(key)
    assert first is not None
    assert locks.try_hold(key) is None
    first.close()
    again = locks.try_hold(key)
    assert again is not None
    again.close()


def test_a_lock_held_too_long_is_gone_without_after_one_warning_naming_its_purpose(key, caplog):
    # A squatter: any local user can bind a lock's name first and keep it.
    squatter = locks.try_hold(key)
    assert squatter is not None
    with squatter:
        began = time.monotonic()
        with locks.held(key, timeout=0.2, purpose="upload of image.raw") as got:
            assert got is False
        assert 0.2 <= time.monotonic() - began < 2
        [record] = caplog.records
        assert record.levelname == "WARNING"
        assert "the lock for the upload of image.raw was held by another process for over 0.2 s" in (
            record.getMessage()
        )
        assert "\n" not in record.getMessage()
        # Remembered: the rest of the run neither waits for it nor warns again.
        began = time.monotonic()
        with locks.held(key, timeout=30, purpose="upload of image.raw") as got:
            assert got is False
        assert time.monotonic() - began < 1
        assert len(caplog.records) == 1
    # Once the squatter lets go, the next use holds it again.
    with locks.held(key, timeout=30, purpose="upload of image.raw") as got:
        assert got is True
        assert locks.try_hold(key) is None


def test_a_second_holder_waits_until_the_first_lets_go(key):
    order: list[str] = []
    waiting = threading.Event()

    def second() -> None:
        waiting.set()
        with locks.held(key, timeout=30) as got:
            order.append(f"second holds: {got}")

    with locks.held(key, timeout=5):
        thread = threading.Thread(target=second)
        thread.start()
        waiting.wait()
        time.sleep(0.05)  # let it try at least once; the order below holds either way
        order.append("first lets go")
    thread.join()
    assert order == ["first lets go", "second holds: True"]


def test_the_lock_of_a_process_killed_with_sigkill_is_free(key):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pytest_jumpstarter_http import locks; "
            f"lock = locks.try_hold({key!r}); print(lock is not None, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "True"
        assert locks.try_hold(key) is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    lock = locks.try_hold(key)
    assert lock is not None, "the lock outlived the process that held it"
    lock.close()


# --- store.Digests ------------------------------------------------------------------------------


def digest(digests: Digests, path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return digests.of(fd)
    finally:
        os.close(fd)


def test_a_digest_is_the_sha256_of_the_content(tmp_path):
    import hashlib

    path = tmp_path / "disk.raw"
    path.write_bytes(b"x" * (3 << 20))
    assert digest(Digests(), path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_a_rewrite_that_keeps_size_and_mtime_gets_a_new_digest(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"aaaa")
    digests = Digests()
    first = digest(digests, path)
    before = path.stat()
    # The kernel stamps the ctime from a clock that ticks every few milliseconds: rewrite until it moved.
    deadline = time.monotonic() + 10
    while path.stat().st_ctime_ns == before.st_ctime_ns and time.monotonic() < deadline:
        time.sleep(0.005)
        with path.open("r+b") as file:  # in place: the same inode
            file.write(b"bbbb")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `cp -p` or `tar -x` would
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert digest(digests, path) != first


def read_bytes_so_far() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no rchar line")


def test_the_same_file_twice_is_read_once(tmp_path):
    if not os.access("/proc/self/io", os.R_OK):
        pytest.skip("/proc/self/io is not readable here: nothing counts the bytes read")
    path = tmp_path / "disk.raw"
    size = 16 << 20
    path.write_bytes(b"x" * size)
    time.sleep(0.2)  # a file changed this very instant is hashed again: see the next test
    digests = Digests()
    before = read_bytes_so_far()
    first = digest(digests, path)
    once = read_bytes_so_far() - before
    second = digest(digests, path)
    twice = read_bytes_so_far() - before
    assert first == second
    assert once >= size
    assert twice - once < size // 2, f"the second digest read {twice - once} bytes again"


def test_a_file_changed_within_a_clock_tick_is_hashed_again_not_remembered(tmp_path):
    # Its ctime may not move on a second write in the same tick of the kernel's clock, so a
    # remembered digest could hide that write; a file this fresh is never remembered.
    if not os.access("/proc/self/io", os.R_OK):
        pytest.skip("/proc/self/io is not readable here: nothing counts the bytes read")
    path = tmp_path / "disk.raw"
    size = 4 << 20
    path.write_bytes(b"x" * size)
    digests = Digests()
    digest(digests, path)
    before = read_bytes_so_far()
    digest(digests, path)
    assert read_bytes_so_far() - before >= size


def test_a_request_log_window_holds_the_requests_started_in_it_whatever_order_they_finish_in():
    from pytest_jumpstarter_http.records import HttpRequest
    from pytest_jumpstarter_http.serving import RequestLog

    def entry(seq: int, path: str = "/f") -> HttpRequest:
        return HttpRequest(0.0, "c", "GET", path, None, 200, 0, 0.0, seq=seq)

    log = RequestLog(limit=3)
    slow, early, late = log.start(), log.start(), log.start()  # numbered 0, 1, 2 as they start
    log.add(entry(early))
    log.add(entry(slow))  # a download of an earlier window that ends late
    log.add(entry(late, "/other"))

    assert [e.seq for e in log.since(0)] == [early, slow, late]
    assert [e.seq for e in log.since(1)] == [early, late]
    assert [e.seq for e in log.since(2)] == [late]
    assert [e.seq for e in log.since(1, "/f")] == [early]
    assert log.since(3) == []
    log.add(entry(log.start()))  # past the limit, the oldest goes
    assert [e.seq for e in log.since(0)] == [slow, late, 3]


def test_an_ended_run_s_folder_is_removed_through_no_link_even_one_inside_the_root(tmp_path):
    from pytest_jumpstarter_http.namespaces import Namespaces
    from pytest_jumpstarter_http.records import RUNS, TOP

    objects = tmp_path / TOP / "objects"
    (objects / "run-a").mkdir(parents=True)
    (objects / "run-a" / "image.raw").write_bytes(b"another run's object")
    (tmp_path / RUNS).symlink_to("objects")  # runs/ swapped for a link that stays below the root
    namespaces = Namespaces(str(tmp_path))
    owner = namespaces.add_owner(f"{RUNS}/run-a", keep=False)
    namespaces.end_owner(owner)
    namespaces.remove_folder(owner)
    assert (objects / "run-a" / "image.raw").read_bytes() == b"another run's object"

    (tmp_path / RUNS).unlink()
    (tmp_path / RUNS / "run-b").mkdir(parents=True)
    (tmp_path / RUNS / "run-b" / "f").write_bytes(b"x")
    owner = namespaces.add_owner(f"{RUNS}/run-b", keep=False)
    namespaces.end_owner(owner)
    namespaces.remove_folder(owner)
    assert not (tmp_path / RUNS).exists()  # its folder, then the empty runs/ folder


@pytest.mark.parametrize(("text", "ports"), [("8443", range(8443, 8444)), (" 8443-8445 ", range(8443, 8446))])
def test_the_driver_s_tls_ports_name_one_port_or_a_range(text, ports):
    from pytest_jumpstarter_http.tlssites import port_range

    assert port_range(text) == ports


@pytest.mark.parametrize("text", ["", "84x3", "0", "8445-8443", "65536", "1-2-3", "-5"])
def test_bad_tls_ports_stop_the_driver_at_its_start_in_one_sentence(tmp_path, text):
    from pytest_jumpstarter_http.driver import RecordingHttpServer

    with pytest.raises(
        ValueError, match=r"tls_ports: .* is not a port or a range of ports; give one such as"
    ):
        RecordingHttpServer(root_dir=str(tmp_path), host="127.0.0.1", port=0, tls_ports=text)  # type: ignore[abstract]
