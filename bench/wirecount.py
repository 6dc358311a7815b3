"""Count the bytes a ``jmp shell`` command sends its exporter: ``python wirecount.py COUNTS -- COMMAND...``.

Run as the command of ``jmp shell``, it puts a relay of its own in front of the shell's socket
(``JUMPSTARTER_HOST``), runs COMMAND with ``JUMPSTARTER_HOST`` pointing at the relay, and keeps
two running totals in the 16-byte file COUNTS: bytes towards the exporter, then bytes back, each
an unsigned 64-bit little-endian integer. :func:`read` gives them to anyone, at any moment.

Why a relay and not the process's ``/proc/self/io``: ``wchar`` counts ``write()`` but not
``send()``/``sendmsg()``, which is how gRPC writes to its sockets, so it misses the transfers
entirely (a 16 MiB ``put_file`` moved it by 6 KiB). The relay sees every byte on the socket.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

FORMAT = "<QQ"
CHUNK = 1 << 20


def read(counts: Path) -> tuple[int, int]:
    """The bytes sent towards the exporter and back so far, as the relay writing ``counts`` sees them."""
    up, down = struct.unpack(FORMAT, counts.read_bytes())
    return up, down


class Totals:
    """The two running totals, kept in a memory-mapped file that other processes read."""

    def __init__(self, counts: Path) -> None:
        counts.write_bytes(bytes(struct.calcsize(FORMAT)))
        with counts.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        self._lock = threading.Lock()
        self._totals = [0, 0]

    def add(self, direction: int, count: int) -> None:
        with self._lock:
            self._totals[direction] += count
            struct.pack_into(FORMAT, self._map, 0, *self._totals)


def pump(source: socket.socket, sink: socket.socket, totals: Totals, direction: int) -> None:
    """Copy ``source`` to ``sink`` until ``source`` ends, then end ``sink``'s writing side."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while count := source.recv_into(buffer):
            sink.sendall(view[:count])
            totals.add(direction, count)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def relay(listener: socket.socket, target: str, totals: Totals) -> None:
    """Forward each connection made to ``listener`` to the unix socket ``target``."""
    while True:
        try:
            client, _ = listener.accept()
        except OSError:  # the listener was closed: the command is over
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(target)
        for source, sink, direction in ((client, upstream, 0), (upstream, client, 1)):
            threading.Thread(target=pump, args=(source, sink, totals, direction), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(f"usage: {Path(__file__).name} COUNTS -- COMMAND...", file=sys.stderr)
        return 2
    target = os.environ.get("JUMPSTARTER_HOST")
    if not target or not Path(target).is_socket():
        print(f"JUMPSTARTER_HOST={target!r} is no unix socket; run this inside jmp shell.", file=sys.stderr)
        return 2
    totals = Totals(Path(argv[0]))
    with tempfile.TemporaryDirectory(prefix="wirecount-") as private:
        path = str(Path(private) / "socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        threading.Thread(target=relay, args=(listener, target, totals), daemon=True).start()
        try:
            command = subprocess.run(argv[2:], env={**os.environ, "JUMPSTARTER_HOST": path}, check=False)
            return command.returncode
        finally:
            listener.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
