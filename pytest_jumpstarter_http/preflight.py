"""Checks of the machine before any test runs: can the address and port be bound, is a value
given in a form pytest misreads. Run once, by the controller of a run (xdist workers skip them).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .options import OPTIONS, Settings, Source, raw_value
from .values import PortRange


def check(settings: Settings, config: pytest.Config) -> None:
    """Refuse a port or address that cannot work, and warn of a value pytest took for a test path."""
    if hasattr(config, "workerinput"):  # the controller checked and warned
        return
    _check_address(settings, config)
    _warn_of_space_form(config)


def _check_address(settings: Settings, config: pytest.Config) -> None:
    """Refuse a port or address that cannot work before any test runs."""
    port = settings.port
    if port is not None:
        _check_privileged(port, raw_value(config, "port")[1])
    if port is None or not port.fixed:
        if settings.host != Settings.host:  # the default always binds; the check costs start-up time
            _try_bind(settings.host, 0)
        return
    workers = getattr(config.option, "numprocesses", None)
    if workers not in (None, 0, 1):
        raise pytest.UsageError(
            f"--http-port: the fixed port {port} cannot be shared by {workers} xdist workers; "
            "give a range A-B with at least one port per worker, or 0 for any free port."
        )
    _try_bind(settings.host, port.first)


def _check_privileged(port: PortRange, source: Source) -> None:
    """Refuse ports below the first one this process may bind without privilege."""
    start = unprivileged_port_start()
    if port.first >= start:
        return
    need = f"ports below {start} need root or CAP_NET_BIND_SERVICE here"
    if port.last < start:
        raise source.error(str(port), f"{need}; give a port from {start} to 65535, or 0 for any free port")
    # A server takes the range's ports in an order of its own: the low ones would fail some tests.
    raise source.error(str(port), f"{need}; give {PortRange(start, port.last)}")


def unprivileged_port_start() -> int:
    """The lowest port this process may bind: 0 with the privilege to bind any, else the system's start.

    Linux: ``net.ipv4.ip_unprivileged_port_start`` (1024 when the kernel predates it) and the
    CAP_NET_BIND_SERVICE capability. Elsewhere 0: macOS and Windows have no privileged ports, and
    the fixed port's trial bind catches the rest.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    effective = re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.MULTILINE)
    cap_net_bind_service = 10
    if effective and int(effective.group(1), 16) >> cap_net_bind_service & 1:
        return 0
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _try_bind(host: str, port: int) -> None:
    """Refuse an address this machine cannot bind, or a fixed port already taken, before any test."""
    import socket

    valid = "give an address of this machine, like 127.0.0.1"
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise pytest.UsageError(f"--http-host: {host!r} is not valid ({exc.strerror}); {valid}.") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise pytest.UsageError(
                    f"--http-port: port {port} on {host} is already in use; "
                    "free it, or give a range A-B or 0 for any free port."
                ) from None
            if exc.errno == errno.EACCES and port:
                # A privileged port, never the address: the address is checked on port 0 first.
                raise pytest.UsageError(
                    f"--http-port: this user may not bind port {port} ({exc.strerror}); "
                    "give a port this user may bind, like 8080, or 0 for any free port."
                ) from None
            problem = f"this machine cannot bind it ({exc.strerror})"
            raise pytest.UsageError(f"--http-host: {host!r} is not valid; {problem}; {valid}.") from None


def _warn_of_space_form(config: pytest.Config) -> None:
    """Warn of ``--http-root DIR``: pytest chose the rootdir and ini file taking DIR for a test path.

    pytest finds its rootdir and ini file before it knows a plugin's options, so the value of
    ``--http-x VALUE`` counts as a test path then when it names an existing file or folder: the
    rootdir moves, and the project's ini file may be ignored. ``--http-x=VALUE`` is safe.
    """
    for flag, value in _space_form(config):
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                f"{flag} {value} was given as two arguments, so pytest took {value!r} for a test path "
                f"when it chose the rootdir ({config.rootpath}) and the ini file "
                f"({config.inipath or 'none'}); write {flag}={value} instead."
            ),
            stacklevel=2,
        )


def _space_form(config: pytest.Config) -> Iterator[tuple[str, str]]:
    """The ``--http-*`` options given as ``FLAG VALUE`` where VALUE names an existing path."""
    import itertools
    import shlex

    flags = {option.flag for option in OPTIONS}
    # PYTEST_ADDOPTS is read before the rootdir is chosen; the ini file's addopts after.
    args = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    for flag, value in itertools.pairwise(args):
        if flag in flags and not value.startswith("-") and _exists(config.invocation_params.dir, value):
            yield flag, value


def _exists(base: Path, arg: str) -> bool:
    """Whether pytest would take ``arg`` for a test path (its ``get_dirs_from_args``)."""
    try:
        return (base / arg.split("::", maxsplit=1)[0]).exists()
    except (OSError, ValueError):
        return False
