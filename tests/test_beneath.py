"""open_beneath(): names below a root open, names leading out of it do not, by either lookup."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_jumpstarter_http import beneath
from pytest_jumpstarter_http.beneath import EscapesRoot, OpenFolder, open_beneath

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX descriptors only")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with a file, a folder, links staying inside and links leading out; outside/ beside it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "d" / "e").mkdir(parents=True)
    outside.mkdir()
    (root / "f").write_text("inside")
    (root / "d" / "g").write_text("deep")
    (outside / "f").write_text("secret")
    (root / "to-f").symlink_to("f")
    (root / "d" / "up").symlink_to("../f")
    (root / "to-d").symlink_to("d")
    (root / "abs-in").symlink_to(root.resolve() / "d" / "g")
    (root / "abs-out").symlink_to(outside.resolve() / "f")
    (root / "rel-out").symlink_to("../outside/f")
    (root / "dir-out").symlink_to("../outside")
    (root / "loop").symlink_to("loop")
    return root


@pytest.fixture
def held(tree: Path) -> Iterator[OpenFolder]:
    with OpenFolder(tree) as root:
        yield root


def read(root: OpenFolder | Path | int, name: str) -> str:
    fd = open_beneath(root, name)
    with os.fdopen(fd) as file:
        return file.read()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("f", "inside"),
        ("/f", "inside"),
        ("d//g", "deep"),
        ("./d/./g/", "deep"),
        ("d/../f", "inside"),
        ("to-f", "inside"),
        ("d/up", "inside"),
        ("to-d/g", "deep"),
        ("to-d/../f", "inside"),
        ("abs-in", "deep"),
    ],
)
def test_names_below_the_root_open(lookup: str, held: OpenFolder, name: str, content: str) -> None:
    assert read(held, name) == content


@pytest.mark.parametrize(
    "name", ["..", "../outside/f", "d/../../outside/f", "abs-out", "rel-out", "dir-out/f"]
)
def test_names_leading_out_of_the_root_escape(lookup: str, held: OpenFolder, name: str) -> None:
    with pytest.raises(EscapesRoot) as caught:
        open_beneath(held, name)
    assert caught.value.errno == errno.EXDEV


@pytest.mark.parametrize(
    ("name", "error"),
    [("missing", FileNotFoundError), ("missing/f", FileNotFoundError), ("f/x", NotADirectoryError)],
)
def test_missing_names_raise_the_usual_errors(lookup: str, held: OpenFolder, name: str, error: type) -> None:
    with pytest.raises(error):
        open_beneath(held, name)


def test_a_link_loop_is_eloop(lookup: str, held: OpenFolder) -> None:
    with pytest.raises(OSError, match="loop") as caught:
        open_beneath(held, "loop")
    assert caught.value.errno == errno.ELOOP


def test_the_root_itself_opens_as_a_folder(lookup: str, held: OpenFolder) -> None:
    fd = open_beneath(held, "", beneath.PROBE | os.O_DIRECTORY)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(held.real))
    finally:
        os.close(fd)


def test_o_nofollow_opens_a_final_link_itself(lookup: str, held: OpenFolder) -> None:
    if not hasattr(os, "O_PATH"):
        pytest.skip("O_PATH is Linux's")
    fd = open_beneath(held, "to-f", os.O_PATH | os.O_NOFOLLOW)
    try:
        assert os.path.islink(held.real + "/to-f")
        assert os.fstat(fd).st_size == len("f")  # the link, not the file it names
    finally:
        os.close(fd)


def test_a_descriptor_root_knows_no_real_path_so_absolute_links_escape(lookup: str, tree: Path) -> None:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read(fd, "to-d/g") == "deep"
        with pytest.raises(EscapesRoot):
            open_beneath(fd, "abs-in")
    finally:
        os.close(fd)


def test_a_path_root_is_opened_for_the_call_only(lookup: str, tree: Path) -> None:
    before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else None
    assert read(tree, "abs-in") == "deep"
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


def test_a_nul_in_the_name_is_refused(lookup: str, held: OpenFolder) -> None:
    with pytest.raises(ValueError, match="NUL"):
        open_beneath(held, "f\0")


def test_the_kernel_and_the_walk_agree_on_every_name(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not beneath.settings.openat2:
        pytest.skip("no openat2(2) on this system")
    names = [str(path.relative_to(tree)) for path in tree.rglob("*")] + ["..", "d/..", "to-d/..", "d/up/x"]

    def outcomes() -> list[str]:
        found = []
        with OpenFolder(tree) as root:
            for name in names:
                try:
                    fd = open_beneath(root, name, beneath.PROBE)
                except OSError as exc:
                    found.append(f"{name}: {type(exc).__name__} {exc.errno}")
                else:
                    found.append(f"{name}: {os.fstat(fd).st_ino}")
                    os.close(fd)
        return found

    kernel = outcomes()
    monkeypatch.setattr(beneath.settings, "openat2", False)
    assert outcomes() == kernel


def test_closing_a_root_waits_for_the_lookup_holding_it(tree: Path) -> None:
    root = OpenFolder(tree)
    with root.held() as fd:
        root.close()
        assert read(fd, "f") == "inside"  # still the root's descriptor
    with pytest.raises(OSError, match="closed"):
        open_beneath(root, "f")
