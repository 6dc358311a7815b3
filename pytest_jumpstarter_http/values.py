"""The plain values settings are made of: port ranges, what to keep, TLS modes, ``jmp shell``'s variable.

Shared by every layer and importing nothing of the package: the plugin reads them at every
pytest start-up, before any server is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

#: What ``--http-keep`` keeps of the plugin's folders after their scope.
Keep = Literal["none", "failed", "all"]
#: How a server speaks: plain HTTP, HTTPS, or HTTPS that refuses a client without a certificate.
TlsMode = Literal["off", "on", "mutual"]
TLS_MODES: Final[tuple[TlsMode, ...]] = ("off", "on", "mutual")
#: Set by ``jmp shell`` (and by hand, for a ``jmp run`` exporter): the exporter to serve from.
JUMPSTARTER_HOST: Final = "JUMPSTARTER_HOST"


@dataclass(frozen=True)
class PortRange:
    """The ports a server may bind: ``first == last`` for a fixed port."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    @property
    def fixed(self) -> bool:
        return self.first == self.last
