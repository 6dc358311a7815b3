"""Section 3b: one large file over HTTPS from jumpstarter-http and from nginx, with one certificate.

Both servers serve the same file with the same certificate (ECDSA, from a ``trustme`` CA made for
the run) and curl verifies both with ``--cacert``, so the ratio is what the plugin's TLS path
(asyncio's sendfile fallback: read, encrypt, write) costs against nginx's.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from common import BENCH_DIR, PYTHON, SUBPROCESS_TIMEOUT, Config, Figure, MiB, Section, alternate, child_env
from largefile import (
    FILE_NAME,
    NGINX,
    OURS,
    free_port,
    nginx_binary,
    nginx_conf,
    spawn,
    wait_listening,
    write_large_file,
)


def write_certificate(tls: Path) -> None:
    """A CA, and a certificate for 127.0.0.1 both servers serve: ``ca.pem``, ``cert.pem``, ``key.pem``."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    (tls / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tls / "key.pem"))


@contextmanager
def ours(root: Path, tls: Path, tmp: Path) -> Iterator[str]:
    argv = [PYTHON, str(BENCH_DIR / "serve.py"), "jumpstarter-https", str(root)]
    process = subprocess.Popen(
        argv, text=True, env=child_env(BENCH_TLS_DIR=str(tls)), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("https://"):
            raise RuntimeError(f"{argv!r} printed no https URL")
        yield url
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)


@contextmanager
def nginx_tls(root: Path, tls: Path, tmp: Path) -> Iterator[str]:
    port = free_port()
    argv = [str(nginx_binary()), "-p", str(tmp), "-c", str(nginx_conf(tmp, port, root, tls))]
    with spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        wait_listening(port, process)
        yield f"https://127.0.0.1:{port}"


def download(url: str, ca: Path, size: int) -> float:
    """MiB/s of one curl download of ``url`` over TLS, the server verified with ``ca``."""
    argv = ["curl", "-sS", "--noproxy", "*", "--cacert", str(ca), "-o", "/dev/null", "-w", "%{size_download}"]
    start = time.perf_counter()
    done = subprocess.run(
        [*argv, "--max-time", str(int(SUBPROCESS_TIMEOUT)), url],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode or int(done.stdout or 0) != size:
        raise RuntimeError(f"curl {url}: exit {done.returncode}, {done.stdout} bytes: {done.stderr}")
    return size / MiB / elapsed


def large_file_tls(config: Config, workdir: Path) -> Section:
    section = Section(
        "large_file_tls", f"Serving one {config.large_size // MiB} MiB file over HTTPS on 127.0.0.1"
    )
    if shutil.which("curl") is None:
        section.skipped = "curl is not installed (apt-get install curl nginx)"
        return section
    if nginx_binary() is None:
        section.skipped = "nginx is not installed (apt-get install nginx): the ratio needs it"
        return section
    root = workdir / "tls-root"
    root.mkdir(parents=True, exist_ok=True)
    try:
        write_large_file(root / FILE_NAME, config.large_size)
        measure(section, config, root, workdir / "tls-tmp")
    finally:
        shutil.rmtree(root)
    return section


def measure(section: Section, config: Config, root: Path, tmp: Path) -> None:
    """Both servers' single-download MiB/s over TLS, alternated, and their ratio."""
    tls = tmp / "certs"
    tls.mkdir(parents=True, exist_ok=True)
    write_certificate(tls)
    with ExitStack() as stack:
        urls = {
            OURS: stack.enter_context(ours(root, tls, tmp)),
            NGINX: stack.enter_context(nginx_tls(root, tls, tmp)),
        }
        runs: dict[str, Callable[[], dict[str, float]]] = {
            name: (
                lambda url=url: {"single": download(f"{url}/{FILE_NAME}", tls / "ca.pem", config.large_size)}
            )
            for name, url in urls.items()
        }
        medians = alternate(runs, config.large_rounds)
    for name, metrics in medians.items():
        section.figures[f"{name} over TLS: single MiB/s"] = Figure(metrics["single"], "MiB/s")
        section.samples[f"{name} over TLS: single MiB/s"] = metrics["single"]
    ratio = medians[OURS]["single"] / medians[NGINX]["single"]
    section.figures["TLS single / nginx TLS"] = Figure(ratio, "x")
