"""Python mirror of bpf/abi.h, defined once as ctypes and decoded with `struct`.

The ctypes definition is the single mirror (tests compare it with the C layout);
the `struct.Struct` used on the hot path is derived from it, so the two cannot drift.
"""

from __future__ import annotations

import ctypes as ct
import struct

EV_DATA, EV_CONN, EV_WAKE = 1, 2, 3

SYS_NAMES = {
    1: "write", 2: "read", 3: "writev", 4: "readv", 5: "sendto", 6: "recvfrom",
    7: "sendmsg", 8: "recvmsg", 9: "sendmmsg", 10: "recvmmsg", 11: "connect",
    12: "accept", 13: "accept4", 14: "close", 15: "tcp_close",
}
SYS_WRITE, SYS_READ, SYS_CONNECT, SYS_ACCEPT, SYS_ACCEPT4 = 1, 2, 11, 12, 13
SYS_CLOSE, SYS_STATE_CLOSE = 14, 15

DIR_EGRESS, DIR_INGRESS = 0, 1
ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER = 0, 1, 2
ROLE_NAMES = {0: "?", 1: "client", 2: "server"}

F_HAS_SEQ, F_MIDSTREAM, F_PEER_FROM_MSG, F_TRUNCATED, F_TLS = 1, 2, 4, 8, 16
F_RESUMED = 32  # close + connect/accept made by the probes where sampling resumes a socket
F_NOCAPTURE = 64  # payload capture switched off for the record's cgroup: header only
F_SHED_STAMP = 128  # data record while sampling: `offset` holds the thread's shed stamp

# A shed stamp (bpf/abi.h ZT_STAMP_*): the thread's counters of server exchanges left out
# by sampling, at the syscall's entry.
STAMP_READS_MASK = 0xFFFFFF  # request reads begun (mod 2^24), bits 0-23
STAMP_ANSWERS_SHIFT = 24  # answers begun (mod 2^24), bits 24-47
STAMP_OPEN_SHIFT = 48  # requests read on the thread not answered yet, bits 48-62
STAMP_OPEN_MASK = 0x7FFF
STAMP_LAST_READ = 1 << 63  # the thread's last such turn was a request read


def stamp(reads: int, answers: int, open_: int, last_read: bool) -> int:
    """A shed stamp as the probes pack it (bpf/data.c zt_shed_stamp)."""
    return ((reads & STAMP_READS_MASK) | ((answers & STAMP_READS_MASK) << STAMP_ANSWERS_SHIFT)
            | (min(open_, STAMP_OPEN_MASK) << STAMP_OPEN_SHIFT)
            | (STAMP_LAST_READ if last_read else 0))

DROP_SLOTS = {0: "ringbuf_full", 1: "inflight_slot_alloc", 2: "payload_read_fault",
              3: "go_wake_ringbuf_full", 4: "tls_syscall_not_followed"}
DROP_SLOT_COUNT = 5

# per-CPU counter slots (bpf/abi.h ZT_STAT_*), map "stats"
STAT_SLOTS = {0: "ring_records", 1: "ring_bytes", 2: "shed_exchanges", 3: "shed_connections",
              4: "shed_syscalls", 5: "shed_bytes", 6: "kept_exchanges", 7: "skipped_syscalls",
              8: "skipped_bytes", 9: "ring_cuts"}
STAT_SLOT_COUNT = 10
KEEP_ALL = 65536  # zt_config.keep: every exchange kept

# struct zt_wake kinds (Go goroutine hand-offs, bpf/gowake.c)
WAKE_HANDOFF, WAKE_OTHER, WAKE_RECV = 1, 2, 3
# channel-buffer records (bpf/abi.h: ZT_WAKE_ENQ ...; agent/stitch/handoff.py reads them)
WAKE_ENQ, WAKE_DEQ, WAKE_SWAP, WAKE_DIRECT, WAKE_MIXED = 4, 5, 6, 7, 8
WAKE_KIND_NAMES = {1: "handoff", 2: "other", 3: "recv", 4: "enq", 5: "deq", 6: "swap",
                   7: "direct", 8: "mixed"}

AF_INET, AF_INET6 = 2, 10
IPPROTO_TCP, IPPROTO_UDP = 6, 17


class ZtEvent(ct.Structure):
    """struct zt_event (bpf/abi.h)."""

    _fields_ = [
        ("ts_enter", ct.c_uint64),
        ("ts_exit", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("sock_id", ct.c_uint64),
        ("offset", ct.c_uint64),
        ("ret", ct.c_int64),
        ("goid", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("fd", ct.c_int32),
        ("seq", ct.c_uint32),
        ("netns", ct.c_uint32),
        ("captured", ct.c_uint32),
        ("lport", ct.c_uint16),
        ("rport", ct.c_uint16),
        ("type", ct.c_uint8),
        ("syscall", ct.c_uint8),
        ("direction", ct.c_uint8),
        ("role", ct.c_uint8),
        ("family", ct.c_uint8),
        ("transport", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("_pad", ct.c_uint8),
        ("laddr", ct.c_uint8 * 16),
        ("raddr", ct.c_uint8 * 16),
        ("comm", ct.c_char * 16),
    ]


class ZtConfig(ct.Structure):
    """struct zt_config (bpf/abi.h)."""

    _fields_ = [
        ("self_pid", ct.c_uint32),
        ("enabled", ct.c_uint8),
        ("track_goid", ct.c_uint8),
        ("_pad", ct.c_uint8 * 2),
        ("filter_pid", ct.c_uint8),
        ("filter_cgroup", ct.c_uint8),
        ("filter_port", ct.c_uint8),
        ("filter_netns", ct.c_uint8),
        ("wakeup_events", ct.c_uint32),
        ("keep", ct.c_uint32),
        ("shed_gen", ct.c_uint32),
        ("shed_mode", ct.c_uint8),
        ("skip_hints", ct.c_uint8),
        ("ring_cut", ct.c_uint8),
        ("_pad2", ct.c_uint8 * 1),
    ]


class ZtWake(ct.Structure):
    """struct zt_wake (bpf/abi.h): a Go goroutine woken, or entering a receive."""

    _fields_ = [
        ("ts", ct.c_uint64),
        ("waker", ct.c_uint64),
        ("goid", ct.c_uint64),
        ("thread_goid", ct.c_uint64),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("lost", ct.c_uint32),
        ("type", ct.c_uint8),
        ("kind", ct.c_uint8),
        ("_pad", ct.c_uint8 * 2),
    ]


class ZtGoRuntime(ct.Structure):
    """struct zt_go_runtime (bpf/abi.h): Go runtime struct offsets of one process."""

    _fields_ = [
        ("goid", ct.c_uint32),
        ("g_m", ct.c_uint32),
        ("m_g0", ct.c_uint32),
        ("m_curg", ct.c_uint32),
        ("sudog_g", ct.c_uint32),
        ("hchan_elemsize", ct.c_uint32),
    ]


_CODES = {
    ct.c_uint64: "Q", ct.c_int64: "q", ct.c_uint32: "I", ct.c_int32: "i",
    ct.c_uint16: "H", ct.c_uint8: "B",
}


def struct_format(cls: type[ct.Structure]) -> str:
    """A `struct` format equal to the ctypes layout (byte arrays become `Ns`)."""
    fmt, pos = "<", 0
    for name, typ in cls._fields_:
        off = getattr(cls, name).offset
        if off > pos:
            fmt += f"{off - pos}x"
        if name.startswith("_"):
            fmt += f"{ct.sizeof(typ)}x"  # padding: not decoded
        elif typ in _CODES:
            fmt += _CODES[typ]
        else:  # arrays of bytes / chars
            fmt += f"{ct.sizeof(typ)}s"
        pos = off + ct.sizeof(typ)
    if ct.sizeof(cls) > pos:
        fmt += f"{ct.sizeof(cls) - pos}x"
    return fmt


EVENT_STRUCT = struct.Struct(struct_format(ZtEvent))
EVENT_SIZE = EVENT_STRUCT.size
EVENT_FIELDS = tuple(name for name, _ in ZtEvent._fields_ if not name.startswith("_"))
assert EVENT_SIZE == ct.sizeof(ZtEvent)

WAKE_STRUCT = struct.Struct(struct_format(ZtWake))
WAKE_SIZE = WAKE_STRUCT.size
assert WAKE_SIZE == ct.sizeof(ZtWake) < EVENT_SIZE  # records are told apart by length
