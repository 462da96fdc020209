"""Decoded socket events: what the probes saw, as plain Python objects."""

from __future__ import annotations

import socket
import time

from agent.probes import abi

_unpack = abi.EVENT_STRUCT.unpack_from
_HDR = abi.EVENT_SIZE


def monotonic_to_wall_offset() -> int:
    """Nanoseconds to add to bpf_ktime_get_ns() (CLOCK_MONOTONIC) to get Unix time."""
    best = None
    for _ in range(5):  # the tightest bracket wins
        a = time.time_ns()
        m = time.monotonic_ns()
        b = time.time_ns()
        if best is None or b - a < best[0]:
            best = (b - a, (a + b) // 2 - m)
    return best[1]


def format_addr(family: int, raw: bytes) -> str:
    if family == abi.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == abi.AF_INET6:
        if raw[:12] == b"\0" * 10 + b"\xff\xff":  # v4-mapped
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


class SocketEvent:
    """One syscall's worth of socket activity (data) or a connection change (conn)."""

    __slots__ = (
        "ts_enter", "ts_exit", "cgroup_id", "sock_id", "offset", "ret", "pid", "tid", "fd",
        "seq", "netns", "captured", "lport", "rport", "type", "syscall", "direction", "role",
        "family", "transport", "flags", "_laddr", "_raddr", "_comm", "payload",
    )

    def __init__(self, record: bytes | memoryview, wall_offset: int = 0) -> None:
        (self.ts_enter, self.ts_exit, self.cgroup_id, self.sock_id, self.offset, self.ret,
         self.pid, self.tid, self.fd, self.seq, self.netns, self.captured, self.lport,
         self.rport, self.type, self.syscall, self.direction, self.role, self.family,
         self.transport, self.flags, self._laddr, self._raddr, self._comm) = _unpack(record)
        self.ts_enter += wall_offset
        self.ts_exit += wall_offset
        self.payload = bytes(record[_HDR:_HDR + self.captured])

    # Text forms are computed on demand: most consumers never need them.
    @property
    def laddr(self) -> str:
        return format_addr(self.family, self._laddr)

    @property
    def raddr(self) -> str:
        return format_addr(self.family, self._raddr)

    @property
    def comm(self) -> str:
        return self._comm.split(b"\0", 1)[0].decode(errors="replace")

    @property
    def syscall_name(self) -> str:
        return abi.SYS_NAMES.get(self.syscall, str(self.syscall))

    @property
    def has_seq(self) -> bool:
        return bool(self.flags & abi.F_HAS_SEQ)

    @property
    def transport_name(self) -> str:
        return "tcp" if self.transport == abi.IPPROTO_TCP else "udp"

    def __repr__(self) -> str:
        return (f"SocketEvent({self.syscall_name} pid={self.pid} tid={self.tid} fd={self.fd} "
                f"{self.laddr}:{self.lport}->{self.raddr}:{self.rport} ret={self.ret} "
                f"dir={self.direction} seq={self.seq} off={self.offset} "
                f"payload={self.payload[:32]!r})")
