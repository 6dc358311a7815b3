"""Handing the test CA to each client: every tool takes it its own way."""

import getpass
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import trustme

IMAGE = bytes(range(256)) * 64  # 16 KiB


def client(*command: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a real client, as the device would, with ``env`` changed (None unsets a variable), or
    skip when this machine lacks it."""
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed here: apt-get install {PACKAGES[command[0]]}")
    changed = {**os.environ, **(env or {})}
    environment = {name: value for name, value in changed.items() if value is not None}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120, check=False)


PACKAGES = {"bmaptool": "bmap-tools", "git": "git", "ostree": "ostree", "curl": "curl", "wget": "wget"}
PACKAGES["/usr/lib/apt/apt-helper"] = "apt"


# The stock driver on an exporter serves no HTTPS; these run on loopback everywhere.
pytestmark = [pytest.mark.http_loopback, pytest.mark.http_server(tls=True)]


def test_bmaptool_takes_the_ca_only_from_ssl_cert_file(http_server, served_dir, tmp_path):
    (served_dir / "disk.img").write_bytes(IMAGE)
    url = http_server.url_for("disk.img")
    done = client(
        "bmaptool",
        "copy",
        "--nobmap",
        url,
        str(tmp_path / "disk.img"),
        env={"SSL_CERT_FILE": str(http_server.ca_cert)},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "disk.img").read_bytes() == IMAGE


def test_git_takes_the_ca_from_git_ssl_cainfo_or_http_sslcainfo(http_server, served_dir, tmp_path):
    # A bare repository served as files: git's "dumb" HTTP protocol needs no more.
    work, repo = tmp_path / "work", served_dir / "board.git"
    env = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    client("git", "init", "-q", "-b", "main", str(work), env=env)
    (work / "boot.cfg").write_text("console=ttyS0\n")
    client("git", "-C", str(work), "add", ".", env=env)
    client(
        "git",
        "-C",
        str(work),
        "-c",
        "user.name=lab",
        "-c",
        "user.email=lab@example.com",
        "commit",
        "-qm",
        "boot",
        env=env,
    )
    client("git", "clone", "-q", "--bare", str(work), str(repo), env=env)
    client("git", "-C", str(repo), "update-server-info", env=env)
    url = http_server.url_for("board.git")

    by_env = client(
        "git",
        "clone",
        "-q",
        url,
        str(tmp_path / "a"),
        env={**env, "GIT_SSL_CAINFO": str(http_server.ca_cert)},
    )
    # GIT_SSL_CAINFO beats http.sslCAInfo: unset it where a CI image sets it to the system bundle.
    unset = {**env, "GIT_SSL_CAINFO": None}
    by_option = client(
        "git",
        "-c",
        f"http.sslCAInfo={http_server.ca_cert}",
        "clone",
        "-q",
        url,
        str(tmp_path / "b"),
        env=unset,
    )

    assert by_env.returncode == 0, by_env.stderr
    assert by_option.returncode == 0, by_option.stderr
    assert (
        (tmp_path / "a" / "boot.cfg").read_text()
        == (tmp_path / "b" / "boot.cfg").read_text()
        == "console=ttyS0\n"
    )


def test_ostree_takes_the_ca_from_the_remotes_tls_ca_path(http_server, served_dir, tmp_path):
    tree, server_repo, device_repo = tmp_path / "tree", served_dir / "repo", tmp_path / "device"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "app").write_text("#!/bin/sh\necho v1\n")
    client("ostree", f"--repo={server_repo}", "init", "--mode=archive")
    client("ostree", f"--repo={server_repo}", "commit", "--branch=board/main", str(tree))
    client("ostree", f"--repo={device_repo}", "init", "--mode=archive")
    client(
        "ostree", f"--repo={device_repo}", "remote", "add", "--set=gpg-verify=false",
        f"--set=tls-ca-path={http_server.ca_cert}", "lab", http_server.url_for("repo"),
    )  # fmt: skip

    done = client("ostree", f"--repo={device_repo}", "pull", "lab", "board/main")

    assert done.returncode == 0, done.stderr
    shown = client("ostree", f"--repo={device_repo}", "cat", "lab:board/main", "/usr/bin/app")
    assert shown.stdout == "#!/bin/sh\necho v1\n"


def test_apt_takes_the_ca_from_acquire_https_cainfo(http_server, served_dir, tmp_path):
    (served_dir / "board-firmware_1.0_all.deb").write_bytes(IMAGE)
    done = client(
        "/usr/lib/apt/apt-helper",
        f"-oAcquire::https::CaInfo={http_server.ca_cert}",
        # apt fetches as the user _apt, who may not read a folder of yours; fetch as yourself.
        f"-oAPT::Sandbox::User={getpass.getuser()}",
        "download-file", http_server.url_for("board-firmware_1.0_all.deb"), str(tmp_path / "firmware.deb"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "firmware.deb").read_bytes() == IMAGE


def test_pip_takes_the_ca_from_cert_unless_requests_ca_bundle_overrides_it(http_server, served_dir, tmp_path):
    wheel_name = "board_tools-1.0-py3-none-any.whl"
    with zipfile.ZipFile(served_dir / wheel_name, "w") as wheel:
        wheel.writestr(
            "board_tools-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: board-tools\nVersion: 1.0\n"
        )
        wheel.writestr(
            "board_tools-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    url = http_server.url_for(wheel_name)
    pip = (
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-index",
        "--cert",
        str(http_server.ca_cert),
    )

    # CI images often set these to the system bundle (here: a CA that is not the test's), and pip
    # then ignores --cert; unset them for pip.
    bundle = tmp_path / "system-bundle.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    overridden = client(*pip, "-d", str(tmp_path / "a"), url, env={"REQUESTS_CA_BUNDLE": str(bundle)})
    done = client(
        *pip, "-d", str(tmp_path / "b"), url, env={"REQUESTS_CA_BUNDLE": None, "CURL_CA_BUNDLE": None}
    )

    assert overridden.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in overridden.stdout + overridden.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "b" / wheel_name).is_file()


@pytest.mark.http_server(tls="mutual")
def test_curl_and_wget_take_the_one_client_cert_file_twice_for_mutual_tls(http_server, served_dir, tmp_path):
    (served_dir / "disk.img").write_bytes(IMAGE)
    url, ca, cert = http_server.url_for("disk.img"), str(http_server.ca_cert), str(http_server.client_cert)

    by_curl = client(
        "curl", "-fsS", "--cacert", ca, "--cert", cert, "--key", cert, "-o", str(tmp_path / "a"), url
    )
    by_wget = client(
        "wget",
        "-q",
        f"--ca-certificate={ca}",
        f"--certificate={cert}",
        f"--private-key={cert}",
        "-O",
        str(tmp_path / "b"),
        url,
    )

    assert by_curl.returncode == 0, by_curl.stderr
    assert by_wget.returncode == 0, by_wget.stderr
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == IMAGE
