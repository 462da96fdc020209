# cython: language_level=3, boundscheck=True, wraparound=False
"""Compiled ring-record decoding (issue 13): SocketEvent as a C struct view.

A record (struct zt_event, bpf/abi.h) is copied once (memcpy) into a C struct of the
same layout inside the object; the integer fields are read from there as C values,
by compiled code directly (agent/conn/_core.pyx) and by Python code as ints on
access.  Only the payload becomes a Python object at decode time (the parsers take
bytes); addresses and comm are decoded when asked for, as before.  Same names, same
values and the same writable fields (offset, role, flags, tid, conn_id) as the
Python class it replaces (agent/probes/events.py keeps the helpers and the wake
records); the layout is checked against agent/probes/abi.py at import."""

from libc.string cimport memcpy, memcmp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

import socket

from agent.probes import abi

cdef zt_event_c _probe
cdef Py_ssize_t _base = <Py_ssize_t>&_probe


cdef Py_ssize_t _off(void *field):
    return <Py_ssize_t>field - _base


# The C layout must be the kernel's (abi.ZtEvent mirrors bpf/abi.h): checked once.
if (sizeof(zt_event_c) != abi.EVENT_SIZE
        or _off(&_probe.laddr) != abi.ZtEvent.laddr.offset
        or _off(&_probe.raddr) != abi.ZtEvent.raddr.offset
        or _off(&_probe.comm) != abi.ZtEvent.comm.offset
        or _off(&_probe.lport) != abi.ZtEvent.lport.offset
        or _off(&_probe.flags) != abi.ZtEvent.flags.offset
        or _off(&_probe.goid) != abi.ZtEvent.goid.offset
        or _off(&_probe.captured) != abi.ZtEvent.captured.offset):
    raise ImportError("struct zt_event changed: update agent/probes/_events.pyx")

cdef Py_ssize_t HDR = sizeof(zt_event_c)
cdef bytes EMPTY = b""
cdef int AF_INET = abi.AF_INET
cdef int AF_INET6 = abi.AF_INET6
cdef int F_HAS_SEQ = abi.F_HAS_SEQ
cdef int IPPROTO_TCP = abi.IPPROTO_TCP
cdef int EV_DATA = abi.EV_DATA
cdef int F_SHED_STAMP = abi.F_SHED_STAMP
_SYS_NAMES = abi.SYS_NAMES
_inet_ntop = socket.inet_ntop
_AF4 = socket.AF_INET
_AF6 = socket.AF_INET6
cdef unsigned char V4MAPPED[12]
V4MAPPED[:] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]


cdef str _addr(int family, const unsigned char *raw):
    if family == AF_INET:
        return _inet_ntop(_AF4, (<const char *>raw)[:4])
    if family == AF_INET6:
        if memcmp(raw, V4MAPPED, 12) == 0:
            return _inet_ntop(_AF4, (<const char *>raw + 12)[:4])
        return _inet_ntop(_AF6, (<const char *>raw)[:16])
    return ""


cdef class SocketEvent:
    """One syscall's worth of socket activity (data) or a connection change (conn).

    `offset`, `role`, `conn_id` and the MIDSTREAM flag of data events are filled in by
    the connection tracker (agent/conn/tracker.py), not by the kernel."""

    def __init__(self, record, long long wall_offset=0):
        cdef bytes rec = record if type(record) is bytes else bytes(record)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(rec)
        if n < HDR:
            raise ValueError(f"a socket event record is {HDR} bytes at least, not {n}")
        memcpy(&self.ev, PyBytes_AS_STRING(rec), HDR)
        self.ts_enter = <long long>self.ev.ts_enter + wall_offset
        self.ts_exit = <long long>self.ev.ts_exit + wall_offset
        self.offset = self.ev.offset
        self.tid = self.ev.tid
        self.role = self.ev.role
        self.flags = self.ev.flags
        self.conn_id = 0  # set by the connection tracker: sock addresses get reused
        self._rec = rec
        cdef Py_ssize_t end = HDR + <Py_ssize_t>self.ev.captured
        if end > n:  # never past the record (the kernel's word is not trusted)
            end = n
        self.payload = rec[HDR:end] if end > HDR else EMPTY

    # -- the kernel's fields, read-only ---------------------------------------------
    @property
    def cgroup_id(self):
        return self.ev.cgroup_id

    @property
    def sock_id(self):
        return self.ev.sock_id

    @property
    def ret(self):
        return self.ev.ret

    @property
    def goid(self):
        return self.ev.goid

    @property
    def pid(self):
        return self.ev.pid

    @property
    def fd(self):
        return self.ev.fd

    @property
    def seq(self):
        return self.ev.seq

    @property
    def stamp(self):
        """The thread's shed stamp at the syscall's entry (abi.F_SHED_STAMP), else -1."""
        if self.ev.type == EV_DATA and self.ev.flags & F_SHED_STAMP:
            return self.ev.offset
        return -1

    @property
    def netns(self):
        return self.ev.netns

    @property
    def captured(self):
        return self.ev.captured

    @property
    def lport(self):
        return self.ev.lport

    @property
    def rport(self):
        return self.ev.rport

    @property
    def type(self):
        return self.ev.type

    @property
    def syscall(self):
        return self.ev.syscall

    @property
    def direction(self):
        return self.ev.direction

    @property
    def family(self):
        return self.ev.family

    @property
    def transport(self):
        return self.ev.transport

    # -- decoded on demand ------------------------------------------------------------
    @property
    def laddr(self) -> str:
        return _addr(self.ev.family, self.ev.laddr)

    @property
    def raddr(self) -> str:
        return _addr(self.ev.family, self.ev.raddr)

    @property
    def comm(self) -> str:
        cdef Py_ssize_t k = 0
        while k < 16 and self.ev.comm[k] != 0:
            k += 1
        return self.ev.comm[:k].decode(errors="replace")

    @property
    def syscall_name(self) -> str:
        return _SYS_NAMES.get(self.ev.syscall, str(self.ev.syscall))

    @property
    def has_seq(self) -> bool:
        return bool(self.flags & F_HAS_SEQ)

    @property
    def transport_name(self) -> str:
        return "tcp" if self.ev.transport == IPPROTO_TCP else "udp"

    def __repr__(self) -> str:
        return (f"SocketEvent({self.syscall_name} pid={self.pid} tid={self.tid} fd={self.fd} "
                f"{self.laddr}:{self.lport}->{self.raddr}:{self.rport} ret={self.ret} "
                f"dir={self.direction} seq={self.seq} off={self.offset} "
                f"payload={self.payload[:32]!r})")
