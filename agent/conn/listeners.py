"""The role of a connection that was open before the agent started: server when its
local port is one its network namespace listens on, client otherwise.

The kernel tells the role at connect/accept; a connection first seen mid-way (a pool's
connections opened before the agent) has none, and the stitcher needs it: a read on a
client connection resumes the context that wrote on it.  /proc/PID/net/tcp{,6} lists
the sockets of PID's network namespace; state 0A is LISTEN.  Exact, not a guess from
port ranges: a port is a listener's or it is not.  (A client socket bound to a port
that another address of the namespace listens on would read as server: that only
withholds links.)"""

from __future__ import annotations

import time

from agent.probes import abi

_LISTEN = "0A"
_REFRESH_S = 1.0


def listening_ports(pid: int) -> set[int] | None:
    """TCP ports listened on in pid's network namespace; None if pid is gone."""
    ports: set[int] = set()
    found = False
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)  # header
                for line in f:
                    parts = line.split(None, 4)
                    if len(parts) >= 4 and parts[3] == _LISTEN:
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
            found = True
        except (OSError, ValueError, IndexError):
            continue
    return ports if found else None


class ListenerRoles:
    """Role of a mid-way TCP connection, from its namespace's listening ports (read at
    most once a second per namespace, and again when a port is not found)."""

    def __init__(self) -> None:
        self._by_netns: dict[int, tuple[float, set[int]]] = {}
        self.stats = {"server": 0, "client": 0, "unknown": 0}

    def role_of(self, pid: int, netns: int, lport: int) -> int:
        now = time.monotonic()
        hit = self._by_netns.get(netns)
        if hit is None or (lport not in hit[1] and now - hit[0] > _REFRESH_S):
            ports = listening_ports(pid)
            if ports is None:
                self.stats["unknown"] += 1
                return abi.ROLE_UNKNOWN
            hit = self._by_netns[netns] = (now, ports)
            if len(self._by_netns) > 4096:  # bounded: namespaces come and go
                self._by_netns.pop(next(iter(self._by_netns)))
        if lport in hit[1]:
            self.stats["server"] += 1
            return abi.ROLE_SERVER
        self.stats["client"] += 1
        return abi.ROLE_CLIENT
