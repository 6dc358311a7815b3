"""Fixtures and helpers that run the plugin against real Jumpstarter components.

* exporter configs (written as JSON, which is YAML) for ``jmp shell --exporter-config`` and ``jmp run``;
* commands run inside ``jmp shell`` (pytest runs and their reports are in ``subprocess_runs.py``);
* standalone exporters (``jmp run --tls-grpc-listener 127.0.0.1:PORT --tls-grpc-insecure``);
* the fake controller of ``fake_controller.py`` with a client config on disk, for the lease path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_controller import FakeController
from subprocess_runs import PYTHON, JUnit, clean_env, python_pytest, run

JMP = str(Path(PYTHON).with_name("jmp"))
HTTP_SERVER = "jumpstarter_driver_http.driver.HttpServer"
RECORDING = "pytest_jumpstarter_http.driver.RecordingHttpServer"
OPENDAL = "jumpstarter_driver_opendal.driver.Opendal"
#: Reads or starts the HttpServer at a dotted path of the surrounding jmp shell's exporter:
#: ``python driver_port.py PATH show|start`` prints ``PATH show-port=N`` and writes N to ``PATH.show.port``.
DRIVER_PORT = """
import sys
from pathlib import Path
from jumpstarter.common.utils import env

path, action = sys.argv[1], sys.argv[2]
with env() as client:
    http = client
    for part in path.split("."):
        http = http.children[part]
    if action == "start":
        http.start()
    port = http.get_port()
Path(f"{path}.{action}.port").write_text(str(port))
print(f"{path} {action}-port={port}", flush=True)
"""


def require(*tools: str) -> None:
    """Skip unless ``jmp`` (jumpstarter-cli, in the test extra) and each device tool are installed;
    ``.ci/run`` installs them all."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} play the device here: apt-get install -y {' '.join(missing)}")
    if not Path(JMP).exists():
        pytest.skip("jmp (jumpstarter-cli, in the test extra) is not installed")


def http_driver(root: Path, **config: Any) -> dict[str, Any]:
    """An HttpServer driver entry serving ``root`` on loopback, quiet."""
    return {
        "type": HTTP_SERVER,
        "config": {"root_dir": str(root), "host": "127.0.0.1", "port": 0, "log_level": "WARNING", **config},
    }


def storage_driver(root: Path) -> dict[str, Any]:
    """A driver that is not an HttpServer: plain opendal storage."""
    return {"type": OPENDAL, "config": {"scheme": "fs", "kwargs": {"root": str(root)}}}


def write_exporter_config(path: Path, export: dict[str, Any]) -> Path:
    """Write an ExporterConfig with these drivers; JSON is YAML, so no YAML writer is needed."""
    config = {
        "apiVersion": "jumpstarter.dev/v1alpha1",
        "kind": "ExporterConfig",
        "metadata": {"namespace": "default", "name": path.stem},
        "export": export,
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def jmp_shell(
    config: Path,
    *commands: Sequence[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """Run ``commands`` one after the other inside one ``jmp shell --exporter-config config``."""
    script = " ; ".join(shlex.join(command) for command in commands)
    shell = [
        JMP,
        "--log-level",
        "WARNING",
        "shell",
        "--exporter-config",
        str(config),
        "--",
        "sh",
        "-c",
        script,
    ]
    return run(shell, cwd=cwd, env=env, timeout=timeout)


def write_driver_port(folder: Path) -> list[str]:
    """Write the ``driver_port.py`` script into ``folder``; return the command that runs it."""
    (folder / "driver_port.py").write_text(DRIVER_PORT)
    return [PYTHON, str(folder / "driver_port.py")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


class StandaloneExporter:
    """``jmp run`` serving an exporter config on a loopback TCP port, without a controller."""

    def __init__(self, config: Path, log: Path, **env: str) -> None:
        self.config, self.log = config, log
        #: What the exporter's own environment has beyond the clean one (``PYTHONPATH``...).
        self._env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a client of this exporter runs in."""
        return clean_env(
            JUMPSTARTER_HOST=self.address, JMP_GRPC_INSECURE="1", JMP_DRIVERS_ALLOW="UNSAFE", **extra
        )

    def start(self) -> StandaloneExporter:
        self.port = free_port()  # jmp run refuses port 0
        command = [JMP, "--log-level", "WARNING", "run", "--exporter-config", str(self.config)]
        command += ["--tls-grpc-listener", self.address, "--tls-grpc-insecure"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=clean_env(**self._env))
        process = self.process
        wait_listening(self.port, 20, lambda: process.poll() is None)
        return self

    def kill(self) -> None:
        """Kill it at once, like a power cut: ``jmp run`` serves from a child in its own group."""
        if self.process is None:
            return
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for child in children.read_text().split() if children.exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(child), signal.SIGKILL)
        self.process.kill()
        self.process.wait(10)
        self.process = None


@pytest.fixture
def standalone_exporter(tmp_path: Path) -> Iterator[Callable[..., StandaloneExporter]]:
    """Start ``jmp run`` exporters from exporter config files (and environment variables of their
    own); all are killed at teardown."""
    started: list[StandaloneExporter] = []

    def start(config: Path, **env: str) -> StandaloneExporter:
        exporter = StandaloneExporter(config, tmp_path / f"jmp-run-{len(started)}.log", **env)
        started.append(exporter)
        return exporter.start()

    yield start
    for exporter in started:
        exporter.kill()


def http_device(root: Path) -> Callable[[], Any]:
    """A device factory for the fake controller: a composite with one HttpServer, ``http``."""

    def make() -> Any:
        from jumpstarter_driver_composite.driver import Composite
        from jumpstarter_driver_http.driver import HttpServer

        http = HttpServer(root_dir=str(root), host="127.0.0.1", port=0, log_level="WARNING")  # type: ignore[abstract]
        return Composite(children={"http": http})  # type: ignore[abstract]

    return make


@pytest.fixture
def fake_controller() -> Iterator[FakeController]:
    """A fake Jumpstarter controller in this process; pytest runs under test reach it as client ``fake``."""
    # The fake leaves the exporter side of ControllerService (Register, Listen...) unimplemented.
    with FakeController() as fake:  # type: ignore[abstract]
        yield fake


@pytest.fixture
def client_config_home(tmp_path: Path, fake_controller: FakeController) -> Path:
    """A ``JMP_CLIENT_CONFIG_HOME`` holding ``clients/fake.yaml`` for ``fake_controller``."""
    from jumpstarter.config.client import ClientConfigV1Alpha1

    home = tmp_path / "jumpstarter-config"
    config = fake_controller.client_config()
    ClientConfigV1Alpha1.save(config, home / "clients" / "fake.yaml")
    return home


@dataclass
class DeviceRuns:
    """A device suite's four runs inside one ``jmp shell``: on a ``RecordingHttpServer`` per test,
    per session (its leak tests) and with two xdist workers, then on the stock driver."""

    where: Path
    device: JUnit
    session: JUnit
    xdist: JUnit
    stock: JUnit


def run_device_suite(
    where: Path, *, sync: tuple[str, Path], xdist_args: Sequence[str], stock_tests: str
) -> DeviceRuns:
    """Run ``test_device.py`` (and the xdist files) of ``where`` as :class:`DeviceRuns` says, on an
    exporter with a ``RecordingHttpServer`` at ``rec`` and the stock driver at ``stock``.

    ``sync`` is the environment variable and folder the two xdist workers meet in;
    ``stock_tests`` the ``-k`` expression of the tests run on the stock driver.
    The shell exits 0 whatever its commands do (jumpstarter#1099): read the reports.
    """
    config = write_exporter_config(
        where / "exporter.yaml",
        {
            "rec": {**http_driver(where / "rec-root"), "type": RECORDING},
            "stock": http_driver(where / "stock-root"),
        },
    )
    rec = ("--http-driver", "rec")
    variable, folder = sync
    jmp_shell(
        config,
        python_pytest(*rec, "test_device.py", junit=where / "device.xml"),
        python_pytest(
            *rec, "--http-scope=session", "-k", "leak", "test_device.py", junit=where / "session.xml"
        ),
        ["env", f"{variable}={folder}", *python_pytest(*rec, *xdist_args, junit=where / "xdist.xml")],
        python_pytest(
            "--http-driver", "stock", "-k", stock_tests, "test_device.py", junit=where / "stock.xml"
        ),
        cwd=where,
        timeout=420,
    )
    return DeviceRuns(
        where, *(JUnit(where / f"{name}.xml") for name in ("device", "session", "xdist", "stock"))
    )


def free_range(size: int) -> tuple[int, int]:
    """A run of ``size`` consecutive loopback ports that are free right now."""
    for first in range(20000, 60000, 997):
        sockets = []
        try:
            for port in range(first, first + size):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return first, first + size - 1
    raise AssertionError(f"no {size} consecutive free ports")
