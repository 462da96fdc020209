"""One message start's sightings at one hook, as a hop span reads them (agent/net/hops.py).

Made by the compiled hop index (agent/net/_hops.pyx) only for the messages a span asks
for; the records themselves stay C structs there."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

HookKey = tuple[int, int, int]  # netns inode, ifindex, direction


@dataclass(slots=True)
class Sighting:
    """Every time one message start passed one hook."""

    hook: HookKey
    times: list[int] = field(default_factory=list)
    flags: int = 0
    zero_window: bool = False
    dport: int = 0
    text: str = ""  # "saddr:sport>daddr:dport", made from `addr` when first asked for
    addr: tuple | None = None  # (family, saddr bytes, sport, daddr bytes, dport)

    @property
    def first(self) -> int:
        return self.times[0]

    @property
    def packet(self) -> str:
        """`saddr:sport>daddr:dport` at this hook (IPv6 in brackets): shows NAT rewrites.
        Formatted only for the hops a span asks for, not per record."""
        if not self.text and self.addr is not None:
            fam, sa, sp, da, dp = self.addr
            if fam == 6:
                self.text = (f"[{socket.inet_ntop(socket.AF_INET6, sa)}]:{sp}>"
                             f"[{socket.inet_ntop(socket.AF_INET6, da)}]:{dp}")
            else:
                self.text = f"{socket.inet_ntoa(sa[:4])}:{sp}>{socket.inet_ntoa(da[:4])}:{dp}"
        return self.text
