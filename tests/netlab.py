"""A simulated lab: Linux network namespaces joined by veth pairs, each party in its own.

Two topologies, as module-scoped fixtures:

* ``exporter_lab``: ``testhost`` --control net 198.51.100.0/30-- ``exporter`` --device net
  203.0.113.0/30-- ``device``. A real ``jmp run`` serves gRPC on the exporter's control address and
  its HttpServer driver listens on the exporter's device-side address; pytest runs in ``testhost``.
* ``laptop_lab``: ``laptop`` --198.51.100.0/30-- ``device``, a board on the laptop's USB ethernet;
  pytest runs in ``laptop`` with the loopback backend.

There are no default routes and no forwarding, so the device reaches nothing but its own link.
The device downloads with real clients (curl, busybox wget): the inner tests run them themselves
through ``ip netns exec DEVICE`` (helpers in ``lab_device.py``, written next to them), so every
download happens while the inner run, and the server it uses, is live.

Namespace and interface names carry this process's pid and a random token, so parallel runs and
xdist workers never collide. ``Lab.close()`` kills every process in the namespaces and deletes them,
on failure and on KeyboardInterrupt too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
from jumpstarter_helpers import JMP, http_driver, write_exporter_config
from subprocess_runs import PYTHON, JUnit, clean_env, python_pytest

#: The only ranges the lab uses (RFC 5737 documentation networks); never 192.0.2.0/24.
CONTROL_NET = ipaddress.ip_network("198.51.100.0/24")
DEVICE_NET = ipaddress.ip_network("203.0.113.0/24")
TESTHOST_IP = "198.51.100.1"
EXPORTER_CONTROL_IP = "198.51.100.2"
EXPORTER_DEVICE_IP = "203.0.113.1"
DEVICE_IP = "203.0.113.2"
LAPTOP_IP = "198.51.100.1"
BOARD_IP = "198.51.100.2"
#: The exporter's gRPC port; its namespace is private to one lab, so a fixed port is free.
GRPC_PORT = 7100
TOOLS = {"ip": "iproute2", "curl": "curl", "busybox": "busybox", "timeout": "coreutils"}

#: Helpers the inner tests import: what the device does, and a record the outer tests read.
LAB_DEVICE = '''
"""What the device does: download with real clients inside the device's network namespace."""
import hashlib, json, os, subprocess
from pathlib import Path

DEVICE = os.environ["LAB_DEVICE"]
WORK = Path(os.environ["WORK"])


def on_device(*command):
    """``command`` run inside the device's network namespace."""
    return ["ip", "netns", "exec", DEVICE, *command]


def curl_command(url, out, *options):
    return on_device(
        "curl", "--fail", "--silent", "--show-error", "--connect-timeout", "5", "--max-time", "60",
        *options, "--output", str(out), url,
    )


def curl(url, out):
    return subprocess.run(curl_command(url, out), capture_output=True, text=True, timeout=90)


def wget(url, out):
    # Debian's busybox 1.35 is built without wget -T (given anyway, it segfaults): bound it outside.
    command = on_device("timeout", "30", "busybox", "wget", "-q", "-O", str(out), url)
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, folder, expected):
    """The device fetches ``url`` with curl and with busybox wget; both get the expected bytes."""
    for name, fetch in (("curl", curl), ("wget", wget)):
        out = folder / f"device-{name}.out"
        done = fetch(url, out)
        assert done.returncode == 0, f"{name} on the device could not fetch {url}: {done.stderr}"
        assert sha256(out) == expected, f"{name} on the device got other bytes from {url}"


def record(**values):
    """Append one line to this process's record for the outer test to read."""
    values["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with (WORK / f"record-{os.getpid()}.jsonl").open("a") as file:
        file.write(json.dumps(values) + "\\n")
'''

#: ``python -c`` this with HOST PORT DEADLINE: exit 0 once a TCP connect succeeds, 1 at the deadline.
CONNECT = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((host, port), timeout=1).close()
        sys.exit(0)
    except OSError as error:
        if time.monotonic() > deadline:
            sys.exit(f"{host}:{port}: {error}")
        time.sleep(0.05)
"""


def lab_unavailable() -> str | None:
    """Why this machine cannot run the lab, or None when it can."""
    if os.geteuid() != 0:
        return "the lab tests need root to create network namespaces"
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return f"the lab tests need {', '.join(missing)}: apt-get install {' '.join(missing)}"
    applets = subprocess.run(["busybox", "--list"], capture_output=True, text=True, check=False).stdout
    if "wget" not in applets.split():
        return "the lab tests need busybox's wget applet, which this busybox lacks"
    host = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False)
    for line in host.stdout.splitlines():
        fields = line.split()
        if "inet" not in fields:
            continue
        address = ipaddress.ip_interface(fields[fields.index("inet") + 1])
        for net in (CONTROL_NET, DEVICE_NET):
            if address.network.overlaps(net):
                return f"the lab uses {net}, which clashes with {address} on this machine's {fields[1]}"
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def in_netns(netns: str, *command: str) -> list[str]:
    """``command`` run inside the network namespace ``netns``."""
    return ["ip", "netns", "exec", netns, *command]


class Lab:
    """Network namespaces joined by veth pairs; ``close()`` removes them and what runs in them."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.links = 0

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def namespace(self, role: str) -> str:
        """A new namespace with only ``lo``, up, and forwarding off."""
        name = f"jh-{role}-{os.getpid()}-{self.token}"
        self.namespaces.append(name)
        try:
            ip("netns", "add", name)
        except RuntimeError as error:
            self.namespaces.remove(name)
            if not self.namespaces:
                pytest.skip(f"this machine cannot create network namespaces: {error}")
            raise
        ip("-n", name, "link", "set", "lo", "up")
        done = subprocess.run(
            in_netns(name, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"), check=False
        )
        assert done.returncode == 0, f"could not turn forwarding off in {name}"
        return name

    def link(self, one: str, one_address: str, other: str, other_address: str) -> None:
        """A veth pair from namespace ``one`` to ``other``, with addresses like ``198.51.100.1/30``."""
        self.links += 1
        # At most 15 characters: "jh" + 6 hex + link number + side.
        ends = (f"jh{self.token}{self.links}a", f"jh{self.token}{self.links}b")
        # Both ends are made inside their namespaces: nothing appears on this machine's own stack.
        ip("link", "add", ends[0], "netns", one, "type", "veth", "peer", "name", ends[1], "netns", other)
        for netns, end, address in ((one, ends[0], one_address), (other, ends[1], other_address)):
            ip("-n", netns, "addr", "add", address, "dev", end)
            ip("-n", netns, "link", "set", end, "up")

    def start(
        self, netns: str, command: list[str], log: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` inside ``netns`` in its own process group, output to ``log``."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                in_netns(netns, *command), stdout=out, stderr=out, env=env, start_new_session=True
            )
        self.processes.append(process)
        return process

    def wait_listening(self, netns: str, host: str, port: int, timeout: float) -> None:
        """Wait until ``host:port`` accepts a TCP connection seen from ``netns``."""
        done = subprocess.run(
            in_netns(netns, PYTHON, "-c", CONNECT, host, str(port), str(timeout)),
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
        assert done.returncode == 0, f"nothing answers on {host}:{port} from {netns}: {done.stderr}"

    def close(self) -> None:
        """Kill what runs in the namespaces, then delete them; raise the first failure at the end."""
        failures: list[str] = []
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self.processes.clear()
        for netns in reversed(self.namespaces):
            # Processes that left their group (jmp run's server child, an inner run's curl) are
            # found by namespace; kill them one by one, not by group: a group may be ours.
            for _ in range(20):
                pids = subprocess.run(
                    ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False
                ).stdout.split()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.05)
            else:
                failures.append(f"processes in {netns} survived SIGKILL")
            try:
                ip("netns", "del", netns)
            except RuntimeError as error:
                failures.append(str(error))
        self.namespaces.clear()
        if failures:
            raise RuntimeError("; ".join(failures))


def write_lab_device(work: Path) -> None:
    """Put ``lab_device.py`` where the inner tests import it from."""
    (work / "lab_device.py").write_text(LAB_DEVICE)


def run_in(netns: str, work: Path, *args: str, env: dict[str, str], name: str, timeout: float = 120) -> JUnit:
    """Run pytest in ``work`` inside ``netns`` and read its junit report."""
    junit = work / f"{name}.xml"
    junit.unlink(missing_ok=True)
    done = subprocess.run(
        in_netns(netns, *python_pytest(*args, junit=junit)),
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return JUnit(junit, done.stdout)


@dataclass
class ExporterLab:
    """The exporter topology, its exporter running: what an outer test needs to drive it."""

    lab: Lab
    testhost: str
    exporter: str
    device: str
    work: Path
    #: The exporter's HttpServer root_dir, on the exporter.
    www: Path
    log: Path

    @property
    def control(self) -> str:
        """The exporter's gRPC address on the control net: testhost's ``JUMPSTARTER_HOST``."""
        return f"{EXPORTER_CONTROL_IP}:{GRPC_PORT}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a pytest run in testhost that uses this exporter."""
        return clean_env(
            JUMPSTARTER_HOST=self.control,
            JMP_GRPC_INSECURE="1",
            JMP_DRIVERS_ALLOW="UNSAFE",
            LAB_DEVICE=self.device,
            WORK=str(self.work),
            **extra,
        )

    def pytest(self, *args: str, name: str, **extra: str) -> JUnit:
        """Run pytest in ``work`` inside testhost against the exporter, ``extra`` in its environment."""
        return run_in(self.testhost, self.work, *args, env=self.env(**extra), name=name)


@dataclass
class LaptopLab:
    """The laptop topology: a board on the laptop's USB ethernet."""

    lab: Lab
    laptop: str
    device: str
    work: Path

    def pytest(self, *args: str, name: str, **extra: str) -> JUnit:
        """Run pytest in ``work`` inside the laptop namespace, on the loopback backend."""
        env = clean_env(LAB_DEVICE=self.device, WORK=str(self.work), **extra)
        return run_in(self.laptop, self.work, "--http-backend=loopback", *args, env=env, name=name)


def require_lab() -> None:
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module", name="exporter_lab")
def exporter_lab_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterLab]:
    """testhost, exporter and device namespaces, with ``jmp run`` serving in the exporter's.

    The exporter's HttpServer listens on its device-side address, port 0, root in a temporary folder.
    Lives for the module; namespaces and processes are gone after it.
    """
    require_lab()
    work = tmp_path_factory.mktemp("exporter-lab")
    www = work / "www"
    write_lab_device(work)
    with Lab() as lab:
        testhost, exporter, device = (lab.namespace(role) for role in ("testhost", "exporter", "device"))
        lab.link(testhost, f"{TESTHOST_IP}/30", exporter, f"{EXPORTER_CONTROL_IP}/30")
        lab.link(exporter, f"{EXPORTER_DEVICE_IP}/30", device, f"{DEVICE_IP}/30")
        config = write_exporter_config(work / "lab.yaml", {"http": http_driver(www, host=EXPORTER_DEVICE_IP)})
        listener = f"{EXPORTER_CONTROL_IP}:{GRPC_PORT}"
        command = [JMP, "--log-level", "WARNING", "run", "--exporter-config", str(config)]
        command += ["--tls-grpc-listener", listener, "--tls-grpc-insecure"]
        log = work / "jmp-run.log"
        lab.start(exporter, command, log, clean_env())
        lab.wait_listening(testhost, EXPORTER_CONTROL_IP, GRPC_PORT, 30)
        yield ExporterLab(lab, testhost, exporter, device, work, www, log)


@pytest.fixture(scope="module", name="laptop_lab")
def laptop_lab_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaptopLab]:
    """laptop and device namespaces on one veth, like a board on the laptop's USB ethernet.

    Lives for the module; the namespaces and what ran in them are gone after it.
    """
    require_lab()
    work = tmp_path_factory.mktemp("laptop-lab")
    write_lab_device(work)
    with Lab() as lab:
        laptop, device = lab.namespace("laptop"), lab.namespace("device")
        lab.link(laptop, f"{LAPTOP_IP}/30", device, f"{BOARD_IP}/30")
        yield LaptopLab(lab, laptop, device, work)


def connect_from(netns: str, host: str, port: int) -> subprocess.CompletedProcess[str]:
    """One bounded curl from ``netns`` to ``host:port``: did anything there answer?"""
    command = in_netns(netns, "curl", "--silent", "--connect-timeout", "3", "--max-time", "5")
    return subprocess.run(
        [*command, f"http://{host}:{port}/"], capture_output=True, text=True, timeout=15, check=False
    )
