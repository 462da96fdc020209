"""Per-connection state: role, stream offsets, life.

The kernel reports the TCP sequence number of each syscall's first byte, and on
connect/accept the base sequence number of each direction.  Offsets within a
direction's stream are `seq - base` (extended past 2^32), which stays right when
events are lost, unlike counting bytes.  A connection first seen mid-way takes its
first seen seq as base and is flagged MIDSTREAM: its offsets are relative."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from agent.conn.listeners import ListenerRoles
from agent.probes import abi
from agent.probes.events import SocketEvent

_MASK = 0xFFFFFFFF
_NOT_MASK = ~_MASK
_WRAP = 1 << 32
_HALF = _WRAP >> 1
_EV_CONN = abi.EV_CONN
_OPENS = (abi.SYS_CONNECT, abi.SYS_ACCEPT, abi.SYS_ACCEPT4)
_UDP = abi.IPPROTO_UDP
_F_HAS_SEQ = abi.F_HAS_SEQ
_F_MIDSTREAM = abi.F_MIDSTREAM


@dataclass(slots=True)
class Conn:
    sock_id: int
    conn_id: int  # unique per connection instance: the kernel reuses sock addresses
    role: int = abi.ROLE_UNKNOWN
    midstream: bool = True
    base: list = field(default_factory=lambda: [None, None])  # per direction: base seq
    last: list = field(default_factory=lambda: [0, 0])  # per direction: last offset seen
    udp_bytes: list = field(default_factory=lambda: [0, 0])
    pid: int = 0


class ConnTracker:
    """Fills offset/role/MIDSTREAM of data events; forgets connections on close."""

    def __init__(self, max_conns: int = 65536, roles: ListenerRoles | None = None) -> None:
        self.conns: OrderedDict[int, Conn] = OrderedDict()
        # the role of TCP connections first seen mid-way, from listening ports
        self.roles = roles
        self.max_conns = max_conns
        self.stats = {"evicted": 0, "closed": 0, "midstream": 0}
        self._serial = 0

    def _new(self, sock_id: int) -> Conn:
        self._serial += 1
        c = self.conns[sock_id] = Conn(sock_id, self._serial)
        if len(self.conns) > self.max_conns:
            self.conns.popitem(last=False)
            self.stats["evicted"] += 1
        return c

    def closed(self, sock_id: int) -> Conn | None:
        c = self.conns.pop(sock_id, None)
        if c is not None:
            self.stats["closed"] += 1
        return c

    def update(self, e: SocketEvent) -> Conn | None:
        """Annotate e in place; returns its connection (None for closes)."""
        sid = e.sock_id
        if e.type == _EV_CONN:
            if e.syscall in _OPENS:
                c = self._new(sid)  # a new connection, even if the address was seen
                c.role, c.midstream, c.pid = e.role, False, e.pid
                e.conn_id = c.conn_id
                if e.flags & _F_HAS_SEQ:
                    c.base = [e.seq, e.offset & _MASK]
                    c.last = [0, 0]
                return c
            c = self.conns.get(sid)
            if c is not None:
                e.conn_id = c.conn_id
            return None  # close / tcp_close: the caller flushes, then calls closed()
        c = self.conns.get(sid)
        if c is None:
            c = self._new(sid)
            c.pid = e.pid
            if e.transport == _UDP:
                c.midstream = False  # datagrams: no stream start to have missed
            else:
                self.stats["midstream"] += 1
                if self.roles is not None:
                    c.role = self.roles.role_of(e.pid, e.netns, e.lport)
        d = e.direction
        e.role = c.role
        e.conn_id = c.conn_id
        flags = e.flags
        if c.midstream:
            e.flags = flags = flags | _F_MIDSTREAM
        if flags & _F_HAS_SEQ:
            seq = e.seq
            base = c.base[d]
            if base is None:
                base = c.base[d] = seq
            last = c.last[d]
            off = (last & _NOT_MASK) | ((seq - base) & _MASK)
            # nearest to the last offset: wrapped forward, or a slightly late event
            if off < last - _HALF:
                off += _WRAP
            elif off > last + _HALF and off >= _WRAP:
                off -= _WRAP
            e.offset = off
            if off > last:
                c.last[d] = off
        else:
            e.offset = c.udp_bytes[d]
            c.udp_bytes[d] += e.ret
        return c

    def update_all(self, events: list[SocketEvent]) -> None:
        """update() each event, and forget connections their close events end."""
        for e in events:
            self.update(e)
            if e.type == abi.EV_CONN and e.syscall in (abi.SYS_CLOSE, abi.SYS_STATE_CLOSE):
                self.closed(e.sock_id)
