# The C view of a ring record (struct zt_event, bpf/abi.h), for compiled readers
# (agent/conn/_core.pyx): same field order and types, so the same layout; checked
# against agent/probes/abi.py when agent/probes/_events is imported.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

ctypedef struct zt_event_c:
    uint64_t ts_enter
    uint64_t ts_exit
    uint64_t cgroup_id
    uint64_t sock_id
    uint64_t offset
    int64_t ret
    uint64_t goid
    uint32_t pid
    uint32_t tid
    int32_t fd
    uint32_t seq
    uint32_t netns
    uint32_t captured
    uint16_t lport
    uint16_t rport
    uint8_t type
    uint8_t syscall
    uint8_t direction
    uint8_t role
    uint8_t family
    uint8_t transport
    uint8_t flags
    uint8_t _pad
    uint8_t laddr[16]
    uint8_t raddr[16]
    char comm[16]


cdef class SocketEvent:
    cdef zt_event_c ev
    cdef public long long ts_enter, ts_exit, tid
    cdef public unsigned long long offset, conn_id
    cdef public int role, flags
    cdef public bytes payload, _rec
