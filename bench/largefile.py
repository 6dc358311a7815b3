"""Section 3: one large file downloaded with curl from four servers on 127.0.0.1, alone and concurrently."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from common import (
    BENCH_DIR,
    PYTHON,
    SUBPROCESS_TIMEOUT,
    Config,
    Figure,
    MiB,
    Section,
    alternate,
    at_least,
    child_env,
)

OURS = "jumpstarter-http"
NGINX = "nginx"
FILE_NAME = "large.bin"
READY_TIMEOUT = 30.0
NGINX_CONF = """\
{user}worker_processes auto;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        {listen}
        root {root};
    }}
}}
"""


@dataclass(frozen=True)
class Running:
    """A server process serving the large file's directory."""

    name: str
    url: str
    process: subprocess.Popen[str]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited {process.returncode} before listening on port {port}"
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{process.args!r} did not listen on port {port} within {READY_TIMEOUT:g} s")


def read_url(process: subprocess.Popen[str]) -> str:
    """The first line ``serve.py`` prints, waited for at most ``READY_TIMEOUT``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
    line = process.stdout.readline().strip() if ready else ""
    if not line.startswith("http://"):
        raise RuntimeError(f"{process.args!r} printed no URL within {READY_TIMEOUT:g} s")
    return line


@contextmanager
def spawn(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    """Run ``argv`` for the duration of the block, then stop it (closing stdin first, then SIGTERM)."""
    process = subprocess.Popen(argv, text=True, env=child_env(), **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        else:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def python_server(name: str, root: Path, tmp: Path) -> Iterator[Running]:
    argv = [PYTHON, str(BENCH_DIR / "serve.py"), name, str(root)]
    with spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
        yield Running(name, read_url(process), process)


@contextmanager
def http_server_module(name: str, root: Path, tmp: Path) -> Iterator[Running]:
    port = free_port()
    argv = [PYTHON, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)]
    with spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        wait_listening(port, process)
        yield Running(name, f"http://127.0.0.1:{port}", process)


@contextmanager
def nginx(name: str, root: Path, tmp: Path) -> Iterator[Running]:
    port = free_port()
    argv = [str(nginx_binary()), "-p", str(tmp), "-c", str(nginx_conf(tmp, port, root))]
    with spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        wait_listening(port, process)
        yield Running(name, f"http://127.0.0.1:{port}", process)


def nginx_conf(tmp: Path, port: int, root: Path, tls: Path | None = None) -> Path:
    """Write an nginx config serving ``root`` on 127.0.0.1:``port`` (over TLS with ``tls``'s
    ``cert.pem`` and ``key.pem``) into ``tmp``; its path."""
    listen = f"listen 127.0.0.1:{port};"
    if tls is not None:
        listen = (
            f"listen 127.0.0.1:{port} ssl;\n        ssl_certificate {tls}/cert.pem;\n"
            f"        ssl_certificate_key {tls}/key.pem;"
        )
    # Run as root, nginx hands requests to workers running as nobody, who cannot read a private temp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / ("nginx-tls.conf" if tls is not None else "nginx.conf")
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp, listen=listen, root=root))
    return conf


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx serves from its worker processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for child in children for p in process_tree(int(child))]


def memory_mib(pid: int, field: str) -> float:
    """The largest ``field`` (``VmHWM``, ``VmRSS``) among ``pid``'s process tree, in MiB."""
    values = [0.0]
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                values.append(int(line.split()[1]) / 1024)
    return max(values)


def curl_argv(url: str) -> list[str]:
    return [
        "curl",
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        str(int(SUBPROCESS_TIMEOUT)),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        url,
    ]


def download(url: str, size: int, count: int) -> float:
    """MiB/s of ``count`` simultaneous curl downloads of ``url``: total bytes over the wall time of all."""
    start = time.perf_counter()
    curls = [
        subprocess.Popen(curl_argv(url), stdout=subprocess.PIPE, text=True, env=child_env())
        for _ in range(count)
    ]
    received = [int(curl.communicate(timeout=SUBPROCESS_TIMEOUT)[0] or 0) for curl in curls]
    elapsed = time.perf_counter() - start
    if received != [size] * count or any(curl.returncode for curl in curls):
        raise RuntimeError(f"curl {url}: received {received} bytes, expected {size} each")
    return size * count / MiB / elapsed


def write_large_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with path.open("wb") as file:
        for _ in range(size // MiB):
            file.write(block)


Starter = Callable[[str, Path, Path], AbstractContextManager[Running]]
STARTERS: dict[str, Starter] = {
    OURS: python_server,
    NGINX: nginx,
    "pytest-httpserver": python_server,
    "http.server": http_server_module,
}


def large_file(config: Config, workdir: Path) -> Section:
    section = Section("large_file", f"Serving one {config.large_size // MiB} MiB file on 127.0.0.1")
    if shutil.which("curl") is None:
        section.skipped = "curl is not installed (apt-get install curl)"
        return section
    names = [name for name in STARTERS if name != NGINX or nginx_binary()]
    if NGINX not in names:
        section.notes.append(
            "nginx is not installed (apt-get install nginx); its column and ratios are missing"
        )
    root = workdir / "large-root"
    root.mkdir(parents=True, exist_ok=True)
    try:
        write_large_file(root / FILE_NAME, config.large_size)
        measure_servers(section, config, root, names)
    finally:
        shutil.rmtree(root)
    return section


def measure_servers(section: Section, config: Config, root: Path, names: list[str]) -> None:
    with ExitStack() as stack:
        servers = {}
        for name in names:
            tmp = root.parent / f"{name}-tmp"
            tmp.mkdir(exist_ok=True)
            servers[name] = stack.enter_context(STARTERS[name](name, root, tmp))
        start_rss = {name: memory_mib(s.process.pid, "VmRSS") for name, s in servers.items()}
        runs = {name: downloads(s.url + "/" + FILE_NAME, config) for name, s in servers.items()}
        medians = alternate(runs, config.large_rounds)
        peak_rss = {name: memory_mib(s.process.pid, "VmHWM") for name, s in servers.items()}
    report(section, config, medians, start_rss, peak_rss)


def downloads(url: str, config: Config) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        return {
            "single": download(url, config.large_size, 1),
            "concurrent": download(url, config.large_size, config.concurrency),
        }

    return run


def report(
    section: Section,
    config: Config,
    medians: dict[str, dict[str, float]],
    start_rss: dict[str, float],
    peak_rss: dict[str, float],
) -> None:
    figures = section.figures
    for name, metrics in medians.items():
        figures[f"{name}: single MiB/s"] = Figure(metrics["single"], "MiB/s")
        figures[f"{name}: {config.concurrency} concurrent MiB/s"] = Figure(metrics["concurrent"], "MiB/s")
        figures[f"{name}: peak RSS MiB"] = Figure(peak_rss[name], "MiB")
        section.samples[f"{name}: RSS at start MiB"] = start_rss[name]
        section.samples[f"{name}: peak RSS MiB"] = peak_rss[name]
    figures[f"{OURS}: RSS growth while serving MiB"] = Figure(peak_rss[OURS] - start_rss[OURS], "MiB")
    ours = medians[OURS]
    if NGINX in medians:
        figures["single / nginx"] = at_least(ours["single"] / medians[NGINX]["single"], 0.9, "x")
        figures[f"{config.concurrency} concurrent / nginx"] = at_least(
            ours["concurrent"] / medians[NGINX]["concurrent"], 0.8, "x"
        )
    for other in ("pytest-httpserver", "http.server"):
        figures[f"single / {other}"] = Figure(ours["single"] / medians[other]["single"], "x")
