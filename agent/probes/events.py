"""Decoded socket events: what the probes saw.

Decoding is on the hot path (one object per syscall): SocketEvent is compiled
(agent/probes/_events.pyx), a C struct copied from the record with its integer fields
read from there; the byte fields (addresses, comm) are decoded only when asked for.
Go wake records (WakeEvent) are few and stay Python objects."""

from __future__ import annotations

import socket

from agent.probes import _events, abi

_HDR = abi.EVENT_SIZE


def format_addr(family: int, raw: bytes) -> str:
    if family == abi.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == abi.AF_INET6:
        if raw[:12] == b"\0" * 10 + b"\xff\xff":  # v4-mapped
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


# One syscall's worth of socket activity (data) or a connection change (conn), compiled
# (issue 13): the record is copied once into a C struct, integer fields are read from
# it on access, the payload is the one Python object made per event.  The Python class
# it replaced (up to c41447f) decoded all integer fields eagerly with one struct call.
SocketEvent = _events.SocketEvent


_unpack_wake = abi.WAKE_STRUCT.unpack_from


class WakeEvent:
    """A Go scheduler record (struct zt_wake): goroutine `goid` of `pid` made runnable
    by goroutine `waker` (0: by the scheduler itself), kind abi.WAKE_HANDOFF when a
    channel value was handed to it, abi.WAKE_OTHER for any other reason; or, kind
    abi.WAKE_RECV, goroutine `goid` entering a channel receive.  `ts` is on the clock
    of SocketEvent.ts_enter/ts_exit (bpf_ktime_get_ns plus the same wall offset)."""

    __slots__ = ("ts", "waker", "goid", "thread_goid", "pid", "tid", "lost", "type", "kind")

    def __init__(self, record: bytes, wall_offset: int = 0) -> None:
        (ts, self.waker, self.goid, self.thread_goid, self.pid, self.tid, self.lost,
         self.type, self.kind) = _unpack_wake(record)
        self.ts = ts + wall_offset

    def __repr__(self) -> str:
        return (f"WakeEvent({abi.WAKE_KIND_NAMES.get(self.kind, self.kind)} pid={self.pid} "
                f"goid={self.goid} waker={self.waker} ts={self.ts})")


def decode(record: bytes, wall_offset: int = 0) -> SocketEvent | WakeEvent:
    """A ring record as what it is: wake records are the ones shorter than a zt_event."""
    if len(record) < _HDR:
        return WakeEvent(record, wall_offset)
    return SocketEvent(record, wall_offset)


class EventBatch(list):
    """What SocketTracer.poll returns: the SocketEvents in ring order, as a plain list,
    and the Go wake records of the same drain in `wakes` (kept apart so that code that
    handles socket events sees only those; the pipeline feeds `wakes` to its
    HandoffIndex)."""

    __slots__ = ("wakes",)

    def __init__(self, events: list | None = None, wakes: list | None = None) -> None:
        super().__init__(events or ())
        self.wakes: list[WakeEvent] = wakes if wakes is not None else []
