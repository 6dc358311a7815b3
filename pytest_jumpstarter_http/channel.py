"""The call channel: calls of the server API as JSON lines on one Jumpstarter stream per client.

A unary gRPC call to an exporter costs about 130 bytes up however small it is: the driver's
uuid, the method's name and HTTP/2's frames, for every namespace a test opens and closes and
every ``stage()``. On the channel a call is one line, ``[id, method, args]``, and each reply
``[id, result]`` or ``[id, null, kind, message]``, sent through one zlib stream each way and
flushed per line: a namespace token, a name or a digest already sent costs a few bytes again.
The client (:mod:`.client`) falls back to unary calls on a server without the channel.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any, Final

#: The longest line either side sends or accepts (a unary call carries at most 4 MiB): a longer
#: call or answer fails alone, and a longer line received ends the channel.
MAX_LINE: Final = 16 << 20
#: The most bytes one send carries: a gRPC message is at most 4 MiB by default.
MAX_CHUNK: Final = 1 << 20
#: How much is decompressed at a time: a small chunk may hold a great many lines.
STEP: Final = 64 << 10
#: How a server's exception crosses: the kind of Jumpstarter error the client raises for it, as
#: for a unary call.
KINDS: Final = (NotImplementedError, ValueError, TimeoutError, Exception)


class Codec:
    """One side of a channel: what it sends, compressed, and what it receives, decompressed."""

    def __init__(self) -> None:
        self._out = zlib.compressobj()
        self._in = zlib.decompressobj()
        #: The start of a line not received whole yet, and its length.
        self._pending: list[bytes] = []
        self._size = 0

    @staticmethod
    def line(message: Any) -> bytes:
        """``message`` as a line; a ``ValueError`` if it is over :data:`MAX_LINE`."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:
            raise ValueError(f"a call channel line of {len(line)} bytes is over {MAX_LINE}; it is not sent")
        return line

    def chunks(self, line: bytes) -> list[bytes]:
        """``line`` compressed, as the chunks to send in this order (one, unless it is large)."""
        data = self._out.compress(line) + self._out.flush(zlib.Z_PARTIAL_FLUSH)
        return [data[at : at + MAX_CHUNK] for at in range(0, len(data), MAX_CHUNK)]

    def decode(self, chunk: bytes) -> Iterator[Any]:
        """The messages ``chunk`` completes, one at a time as they are decompressed; a
        ``ValueError`` for a line over :data:`MAX_LINE`."""
        more = True
        while more:
            piece = self._in.decompress(chunk, STEP)
            chunk = self._in.unconsumed_tail
            more = bool(chunk) or len(piece) == STEP  # a full piece: zlib may hold more of it
            *lines, rest = piece.split(b"\n")
            for line in lines:
                yield json.loads(b"".join([*self._pending, line]))
                self._pending, self._size = [], 0
            if rest:
                self._pending.append(rest)
                self._size += len(rest)
            if self._size > MAX_LINE:
                raise ValueError(f"a call channel line is over {MAX_LINE} bytes; it is refused")


def kind_of(exc: BaseException) -> int:
    """The index in :data:`KINDS` of the first kind ``exc`` is."""
    return next(index for index, kind in enumerate(KINDS) if isinstance(exc, kind))
