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
from typing import Any, Final

#: The longest line either side accepts, decompressed (a unary call carries at most 4 MiB).
MAX_LINE: Final = 16 << 20
#: The most bytes one send carries: a gRPC message is at most 4 MiB by default.
MAX_CHUNK: Final = 1 << 20
#: How a server's exception crosses: the kind of Jumpstarter error the client raises for it, as
#: for a unary call.
KINDS: Final = (NotImplementedError, ValueError, TimeoutError, Exception)


class Codec:
    """One side of a channel: what it sends, compressed, and what it receives, decompressed."""

    def __init__(self) -> None:
        self._out = zlib.compressobj()
        self._in = zlib.decompressobj()
        self._line = b""

    def encode(self, message: Any) -> list[bytes]:
        """``message`` as the chunks to send, in order (one, unless it is large)."""
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        data = self._out.compress(line) + self._out.flush(zlib.Z_PARTIAL_FLUSH)
        return [data[at : at + MAX_CHUNK] for at in range(0, len(data), MAX_CHUNK)]

    def decode(self, chunk: bytes) -> list[Any]:
        """The messages ``chunk`` completes; a ``ValueError`` for a line over :data:`MAX_LINE`."""
        messages = []
        while chunk:
            self._line += self._in.decompress(chunk, MAX_LINE + 1 - len(self._line))
            chunk = self._in.unconsumed_tail
            *lines, self._line = self._line.split(b"\n")
            messages += [json.loads(line) for line in lines]
            if len(self._line) > MAX_LINE:
                raise ValueError(f"a call channel line is over {MAX_LINE} bytes; it is refused")
        return messages


def kind_of(exc: BaseException) -> int:
    """The index in :data:`KINDS` of the first kind ``exc`` is."""
    return next(index for index, kind in enumerate(KINDS) if isinstance(exc, kind))
