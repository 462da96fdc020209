# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, infer_types=False
"""Compiled hop-record path (issue 18): the TC ring drained straight into a C index.

The Python path cost ~1.7 us a record (a bytes object per record from the ring, a
struct unpack, a tuple key, dict lookups, a Sighting per message and hook; bench_tc:
17-29 us of agent CPU a wrk request of 8 records, the largest cost of tracing hops).
Here a record is read in place from the ring's mapped memory and becomes one 72-byte
C struct; no Python object exists per record.  Python objects (`Sighting`s,
agent/net/sighting.py) are made only for the messages a span asks for (`path`,
`response_key`), i.e. per span, as before.

`HopIndex` keeps the records of recent messages, named by message key
(writer netns, writer local port, writer remote port, seq):
- messages in a ring of `max_messages` slots, created in arrival order: a new message
  takes the oldest's slot (the oldest goes first, as the OrderedDict it replaces);
- records in a ring of `max_records` (4 per message by default: a message is seen at
  each hook of its path, about 4 on a node); each record links to the previous
  record of its message.  When the ring comes round to a record whose message is
  still indexed, that message goes whole: a path is never partial;
- two chained hash tables over the message slots: by whole key (`path`) and by seq
  alone (`response_key`: the response's writer key differs behind NAT).

`HopRing` reads the kernel's BPF ring (kernel/bpf/ringbuf.c layout: a consumer page,
the producer page, the data pages mapped once; a record that wraps is joined into a
local copy) and advances the consumer position once per batch, without the GIL.
Every record read is bounds-checked: a header's length against the ring, the
record's against struct zt_hop (shorter ones are skipped, counted in `short`).

Not thread-safe: the caller serialises (agent/net/live.py holds NetHops._lock around
the drain and every read).  Records are the kernel's native byte order (little-endian
on the machines bcc runs here); agent/probes/tc.py checks the size against its
struct HOP, tests/net/test_hop_index.py every field against HOP.pack.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport calloc, malloc, free
from libc.errno cimport errno
from cpython.unicode cimport PyUnicode_DecodeASCII
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport Py_TYPE, descrsetfunc
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

import dataclasses
import mmap as _mmap
import os
import time

from agent.net.sighting import Sighting

# A Sighting is made per hook of each path a span asks for: through its slots' member
# descriptors (a C call each) rather than the dataclass __init__ (~1.3 us, a third of
# path() on a 4-hook path).  Only for the field list below; else Sighting(...).
_S_FIELDS = ("hook", "times", "flags", "zero_window", "dport", "text", "addr")
cdef bint _s_fast = tuple(f.name for f in dataclasses.fields(Sighting)) == _S_FIELDS and all(
    type(Sighting.__dict__.get(n)).__name__ == "member_descriptor" for n in _S_FIELDS)
cdef tuple _s_descr = tuple(Sighting.__dict__[n] for n in _S_FIELDS) if _s_fast else ()
cdef object _new = object.__new__


cdef inline int _dset(object descr, object obj, object value) except -1:
    cdef descrsetfunc f = Py_TYPE(descr).tp_descr_set
    return f(descr, obj, value)


cdef object _sighting(hook, times, flags, zero_window, dport, text, addr):
    """Sighting(hook, times, flags, zero_window, dport, text, addr), without __init__."""
    if not _s_fast:
        return Sighting(hook, times, flags, zero_window, dport, text, addr)
    s = _new(Sighting)
    _dset(_s_descr[0], s, hook)
    _dset(_s_descr[1], s, times)
    _dset(_s_descr[2], s, flags)
    _dset(_s_descr[3], s, zero_window)
    _dset(_s_descr[4], s, dport)
    _dset(_s_descr[5], s, text)
    _dset(_s_descr[6], s, addr)
    return s

cdef extern from *:
    """
    #include <stdint.h>
    static inline uint64_t zt_acq64(const void *p)
    { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
    static inline uint32_t zt_acq32(const void *p)
    { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
    static inline void zt_rel64(void *p, uint64_t v)
    { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }
    /* a message key's bucket: the four fields mixed (splitmix64 finaliser) */
    static inline uint32_t zt_khash(uint32_t wns, uint16_t wl, uint16_t wr, uint32_t seq,
                                    uint32_t mask)
    {
        uint64_t x = ((uint64_t)wns << 32 | seq) ^
                     (((uint64_t)wl << 16 | wr) * 0x9E3779B97F4A7C15ULL);
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ULL; x ^= x >> 27;
        x *= 0x94D049BB133111EBULL; x ^= x >> 31;
        return (uint32_t)x & mask;
    }
    static inline uint32_t zt_shash(uint32_t seq, uint32_t mask)
    { return (uint32_t)(((uint64_t)seq * 0x9E3779B97F4A7C15ULL) >> 32) & mask; }
    """
    uint64_t zt_acq64(const void *p) nogil
    uint32_t zt_acq32(const void *p) nogil
    void zt_rel64(void *p, uint64_t v) nogil
    uint32_t zt_khash(uint32_t wns, uint16_t wl, uint16_t wr, uint32_t seq,
                      uint32_t mask) nogil
    uint32_t zt_shash(uint32_t seq, uint32_t mask) nogil

# struct zt_hop of bpf/tc.c: size and the offsets of the fields read here
cdef enum:
    ZT_HOP_SIZE = 88
    O_TS = 0
    O_NETNS = 8
    O_SEQ = 24
    O_IFINDEX = 28
    O_WNS = 32
    O_SADDR = 36
    O_DADDR = 52
    O_SPORT = 72
    O_DPORT = 74
    O_WL = 76
    O_WR = 78
    O_DIR = 82
    O_FLAGS = 83
    O_WINDOW = 84
    O_FAMILY = 87

# kernel/bpf/ringbuf.c record header
cdef enum:
    RB_HDR = 8
cdef uint32_t RB_BUSY = 1u << 31
cdef uint32_t RB_DISCARD = 1u << 30

RECORD_SIZE = ZT_HOP_SIZE
MAX_INDEX = 1 << 30  # slots are int32 and the hash tables twice the messages


cdef struct Rec:
    uint64_t ts
    uint64_t serial      # its message's serial (slot = serial % max_messages)
    uint32_t netns
    uint32_t ifindex
    int32_t prev         # the message's previous record, -1: none
    uint16_t sport
    uint16_t dport
    uint8_t direction
    uint8_t flags
    uint8_t zero_window
    uint8_t family
    uint8_t saddr[16]
    uint8_t daddr[16]


cdef struct Msg:
    uint64_t serial      # 0: a free slot (serials start at 1)
    uint32_t wns
    uint32_t seq
    uint16_t wl
    uint16_t wr
    int32_t last         # its newest record, -1: none
    int32_t knext        # next message in the same key bucket, -1: none
    int32_t snext        # next message in the same seq bucket
    uint32_t nrec


cdef inline uint32_t _u32(const uint8_t *p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint16_t _u16(const uint8_t *p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline uint64_t _u64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef class HopIndex:
    """Hop records of recent messages, grouped by message; bounded (oldest go first)."""

    cdef Msg *msgs
    cdef Rec *recs
    cdef int32_t *kb
    cdef int32_t *sb
    cdef uint32_t mcap, rcap, bmask, rnext, live
    cdef uint64_t serial
    cdef readonly Py_ssize_t max_messages, max_records
    cdef readonly uint64_t evicted  # messages dropped to make room (either bound)

    def __cinit__(self, Py_ssize_t max_messages=65536, max_records=None):
        cdef Py_ssize_t mr = 4 * max_messages if max_records is None else max_records
        if not 1 <= max_messages <= MAX_INDEX or not 1 <= mr <= MAX_INDEX:
            raise ValueError(f"max_messages {max_messages}, max_records {mr}: "
                             f"each must be 1 .. {MAX_INDEX}")
        cdef size_t nb = 1
        while nb < <size_t>(2 * max_messages):
            nb <<= 1
        self.max_messages, self.max_records = max_messages, mr
        self.mcap, self.rcap, self.bmask = <uint32_t>max_messages, <uint32_t>mr, <uint32_t>(nb - 1)
        self.msgs = <Msg *>calloc(max_messages, sizeof(Msg))
        self.recs = <Rec *>calloc(mr, sizeof(Rec))
        self.kb = <int32_t *>malloc(nb * sizeof(int32_t))
        self.sb = <int32_t *>malloc(nb * sizeof(int32_t))
        if not (self.msgs and self.recs and self.kb and self.sb):
            raise MemoryError()
        memset(self.kb, 0xff, nb * sizeof(int32_t))  # -1: empty bucket
        memset(self.sb, 0xff, nb * sizeof(int32_t))

    def __dealloc__(self):
        free(self.msgs)
        free(self.recs)
        free(self.kb)
        free(self.sb)

    def __len__(self) -> int:
        """Messages indexed now."""
        return self.live

    def __contains__(self, key) -> bool:
        return self._lookup(key) >= 0

    cdef int32_t _find(self, uint32_t wns, uint16_t wl, uint16_t wr,
                       uint32_t seq) noexcept nogil:
        cdef int32_t i = self.kb[zt_khash(wns, wl, wr, seq, self.bmask)]
        cdef Msg *m
        while i >= 0:
            m = &self.msgs[i]
            if m.seq == seq and m.wns == wns and m.wl == wl and m.wr == wr:
                return i
            i = m.knext
        return -1

    cdef void _unlink(self, int32_t slot) noexcept nogil:
        """Forget message `slot` (its records stay in the ring, owned by no message)."""
        cdef Msg *m = &self.msgs[slot]
        cdef int32_t *p = &self.kb[zt_khash(m.wns, m.wl, m.wr, m.seq, self.bmask)]
        while p[0] >= 0:
            if p[0] == slot:
                p[0] = m.knext
                break
            p = &self.msgs[p[0]].knext
        p = &self.sb[zt_shash(m.seq, self.bmask)]
        while p[0] >= 0:
            if p[0] == slot:
                p[0] = m.snext
                break
            p = &self.msgs[p[0]].snext
        m.serial = 0
        self.live -= 1
        self.evicted += 1

    cdef int32_t _new(self, uint32_t wns, uint16_t wl, uint16_t wr,
                      uint32_t seq) noexcept nogil:
        self.serial += 1
        cdef int32_t slot = <int32_t>(self.serial % self.mcap)
        if self.msgs[slot].serial:  # the oldest message: it goes first
            self._unlink(slot)
        cdef Msg *m = &self.msgs[slot]
        m.serial = self.serial
        m.wns, m.wl, m.wr, m.seq = wns, wl, wr, seq
        m.last = -1
        m.nrec = 0
        cdef uint32_t h = zt_khash(wns, wl, wr, seq, self.bmask)
        m.knext = self.kb[h]
        self.kb[h] = slot
        h = zt_shash(seq, self.bmask)
        m.snext = self.sb[h]
        self.sb[h] = slot
        self.live += 1
        return slot

    cdef void _add(self, const uint8_t *p) noexcept nogil:
        """Index one struct zt_hop at p (the caller checked it has ZT_HOP_SIZE bytes)."""
        # the record slot is the oldest record's: a message still indexed that owns it
        # goes whole first, so that no path is ever missing its first hooks
        cdef uint32_t r = self.rnext
        self.rnext = r + 1 if r + 1 < self.rcap else 0
        cdef Rec *rec = &self.recs[r]
        cdef int32_t owner
        if rec.serial:
            owner = <int32_t>(rec.serial % self.mcap)
            if self.msgs[owner].serial == rec.serial:
                self._unlink(owner)
        cdef uint32_t wns = _u32(p + O_WNS), seq = _u32(p + O_SEQ)
        cdef uint16_t wl = _u16(p + O_WL), wr = _u16(p + O_WR)
        cdef int32_t slot = self._find(wns, wl, wr, seq)
        if slot < 0:
            slot = self._new(wns, wl, wr, seq)
        cdef Msg *m = &self.msgs[slot]
        rec.ts = _u64(p + O_TS)
        rec.serial = m.serial
        rec.netns = _u32(p + O_NETNS)
        rec.ifindex = _u32(p + O_IFINDEX)
        rec.prev = m.last
        rec.sport = _u16(p + O_SPORT)
        rec.dport = _u16(p + O_DPORT)
        rec.direction = p[O_DIR]
        rec.flags = p[O_FLAGS]
        rec.zero_window = _u16(p + O_WINDOW) == 0
        rec.family = p[O_FAMILY]
        memcpy(rec.saddr, p + O_SADDR, 16)
        memcpy(rec.daddr, p + O_DADDR, 16)
        m.last = <int32_t>r
        m.nrec += 1

    def add_raw(self, raws) -> int:
        """Add ring records given as bytes (struct zt_hop each); returns how many were
        added (shorter ones are skipped)."""
        cdef Py_ssize_t n = 0
        cdef bytes b
        for raw in raws:
            b = raw
            if PyBytes_GET_SIZE(b) < ZT_HOP_SIZE:
                continue
            self._add(<const uint8_t *>PyBytes_AS_STRING(b))
            n += 1
        return n

    def add(self, records) -> None:
        """Add decoded records (agent/probes/tc.HopRecord: tests, tools)."""
        import socket

        from agent.probes.tc import HOP

        raws = []
        for r in records:
            fam = socket.AF_INET6 if r.family == 6 else socket.AF_INET
            raws.append(HOP.pack(
                r.ts, r.netns, r.start_ts, r.seq, r.ifindex, r.writer_netns,
                socket.inet_pton(fam, r.saddr), socket.inet_pton(fam, r.daddr), r.length,
                r.sport, r.dport, r.writer_lport, r.writer_rport, r.payload, r.direction,
                r.tcp_flags, r.window, r.role, r.family))
        self.add_raw(raws)

    cdef int32_t _lookup(self, key) except -2:
        """The slot of message `key` (writer netns, lport, rport, seq), -1: none."""
        wns, wl, wr, seq = key
        if wns is None or wl is None or wr is None or seq is None:
            return -1
        if not (0 <= wns <= 0xffffffff and 0 <= wl <= 0xffff and 0 <= wr <= 0xffff
                and 0 <= seq <= 0xffffffff):
            return -1  # no record can carry it
        return self._find(<uint32_t>wns, <uint16_t>wl, <uint16_t>wr, <uint32_t>seq)

    cdef list _sightings(self, int32_t slot):
        """The message's records grouped by hook, in the order it first reached them."""
        cdef Msg *m = &self.msgs[slot]
        cdef uint32_t n = m.nrec
        cdef int32_t *order = <int32_t *>malloc(max(n, 1) * sizeof(int32_t))
        if not order:
            raise MemoryError()
        cdef int32_t r = m.last
        cdef Py_ssize_t i = n
        cdef Rec *rec
        cdef Py_ssize_t j
        by_hook = {}
        out = []
        try:
            while r >= 0 and i > 0:  # newest first: stored in arrival order
                i -= 1
                order[i] = r
                r = self.recs[r].prev
            for j in range(i, n):
                rec = &self.recs[order[j]]
                hk = (rec.netns, rec.ifindex, rec.direction)
                s = by_hook.get(hk)
                if s is None:
                    if rec.family == 6:  # formatted when asked (inet_ntop): rare
                        s = _sighting(hk, [rec.ts], rec.flags, rec.zero_window != 0,
                                      rec.dport, "", (6, (<char *>rec.saddr)[:16],
                                                      rec.sport, (<char *>rec.daddr)[:16],
                                                      rec.dport))
                    else:  # the packet text from C ints: a fifth of inet_ntoa's cost
                        s = _sighting(hk, [rec.ts], rec.flags, rec.zero_window != 0,
                                      rec.dport, _text4(rec), None)
                    by_hook[hk] = s
                    out.append(s)
                else:  # a retransmitted copy
                    s.times.append(rec.ts)
                    s.flags |= rec.flags
                    if rec.zero_window:
                        s.zero_window = True
        finally:
            free(order)
        # sorts skipped when there is nothing to sort (one copy; hooks already in
        # order of first time): a stable sort of a sorted list leaves it as it is
        cdef bint ordered = True
        cdef list t
        prev = None
        for s in out:
            t = s.times
            if len(t) > 1:
                t.sort()
            if prev is not None and t[0] < prev:
                ordered = False
            prev = t[0]
        if not ordered:
            out.sort(key=_first)  # stable: first arrival breaks ties
        return out

    cdef int _reached(self, int32_t slot, netns, port) except -2:
        """1 when the message's first record at some hook in `netns` was addressed to
        `port` (a Sighting's dport is its first record's), else 0; -1 when the message
        passed more than 32 hooks (the caller checks on Sightings).  No Python object
        is made: this runs for every candidate response of every client span."""
        if not (0 <= netns <= 0xffffffff and 0 <= port <= 0xffff):
            return 0
        cdef uint32_t ns = <uint32_t>netns
        cdef uint16_t p = <uint16_t>port
        cdef Msg *m = &self.msgs[slot]
        cdef uint32_t n = m.nrec
        cdef int32_t *order = <int32_t *>malloc(max(n, 1) * sizeof(int32_t))
        if not order:
            raise MemoryError()
        cdef uint32_t seen_ns[32]
        cdef uint32_t seen_if[32]
        cdef uint8_t seen_dir[32]
        cdef int nseen = 0, k, res = 0
        cdef int32_t r = m.last
        cdef Py_ssize_t i = n, j
        cdef Rec *rec
        cdef bint first
        while r >= 0 and i > 0:  # newest first: stored in arrival order
            i -= 1
            order[i] = r
            r = self.recs[r].prev
        for j in range(i, n):
            rec = &self.recs[order[j]]
            first = True
            for k in range(nseen):
                if (seen_ns[k] == rec.netns and seen_if[k] == rec.ifindex
                        and seen_dir[k] == rec.direction):
                    first = False
                    break
            if not first:
                continue
            if nseen == 32:
                res = -1
                break
            seen_ns[nseen], seen_if[nseen], seen_dir[nseen] = (
                rec.netns, rec.ifindex, rec.direction)
            nseen += 1
            if rec.netns == ns and rec.dport == p:
                res = 1
                break
        free(order)
        return res

    def path(self, key) -> list:
        """The hooks the message passed (Sightings), in the order it first reached them."""
        cdef int32_t slot = self._lookup(key)
        return [] if slot < 0 else self._sightings(slot)

    def response_key(self, seq, client_netns, client_port):
        """The response message with this seq that reached the client's netns addressed
        to its port; None when there is none or more than one (never a guess)."""
        if seq is None or not 0 <= seq <= 0xffffffff:
            return None
        cdef uint32_t s32 = <uint32_t>seq
        cdef int32_t i = self.sb[zt_shash(s32, self.bmask)]
        cdef int r
        found = []
        while i >= 0:
            if self.msgs[i].seq == s32:
                r = self._reached(i, client_netns, client_port)
                if r < 0:  # too many hooks for the C check: the same rule on Sightings
                    r = any(s.hook[0] == client_netns and s.dport == client_port
                            for s in self._sightings(i))
                if r:
                    found.append(i)
            i = self.msgs[i].snext
        if len(found) != 1:
            return None
        cdef Msg *m = &self.msgs[<int32_t>found[0]]
        return (m.wns, m.wl, m.wr, m.seq)


def _first(s):
    return s.times[0]


cdef inline Py_ssize_t _dec(char *out, unsigned v) noexcept nogil:
    """v in decimal at out (v < 100000: 5 digits at most); returns the digits written."""
    cdef char tmp[5]
    cdef Py_ssize_t n = 0, i
    while True:
        tmp[n] = <char>(48 + v % 10)  # '0' + digit
        n += 1
        v //= 10
        if v == 0 or n == 5:
            break
    for i in range(n):
        out[i] = tmp[n - 1 - i]
    return n


cdef inline Py_ssize_t _addr4(char *out, const uint8_t *a, uint16_t port) noexcept nogil:
    """`a.b.c.d:port` at out (21 bytes at most); returns its length."""
    cdef Py_ssize_t n = 0, i
    for i in range(4):
        n += _dec(out + n, a[i])
        out[n] = 46 if i < 3 else 58  # '.' between the bytes, ':' before the port
        n += 1
    return n + _dec(out + n, port)


cdef str _text4(Rec *r):
    """`saddr:sport>daddr:dport` of an IPv4 record (Sighting.packet's form), written
    digit by digit: snprintf was a third of path() (perf), the f-string before it too."""
    cdef char buf[48]  # the longest: 255.255.255.255:65535>255.255.255.255:65535 = 43
    cdef Py_ssize_t n = _addr4(buf, r.saddr, r.sport)
    buf[n] = 62  # '>'
    n += 1
    n += _addr4(buf + n, r.daddr, r.dport)
    return PyUnicode_DecodeASCII(buf, n, NULL)


cdef class HopRing:
    """Reader of the TC probes' BPF ring (`hops`), given its map fd and data size."""

    cdef uint8_t *cons_page  # the consumer position, ours to write
    cdef uint8_t *prod       # the producer page, then the data pages
    cdef size_t page, size, mask
    cdef bint busy           # a drain runs without the GIL: close() waits for it
    cdef readonly uint64_t short  # records shorter than struct zt_hop, skipped

    def __cinit__(self, int map_fd, size_t size):
        if size == 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        self.page = _mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        cdef void *p = mmap(NULL, self.page, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, f"mmap of the ring's consumer page: {os.strerror(errno)}")
        self.cons_page = <uint8_t *>p
        # the data pages once: the kernel populates the whole mapping when it is made,
        # so its second (wrap-around) copy would double the ring in resident memory
        p = mmap(NULL, self.page + size, PROT_READ, MAP_SHARED, map_fd, self.page)
        if p == MAP_FAILED:
            munmap(self.cons_page, self.page)
            self.cons_page = NULL
            raise OSError(errno, f"mmap of the ring's data: {os.strerror(errno)}")
        self.prod = <uint8_t *>p

    def __dealloc__(self):
        self._unmap()

    cdef void _unmap(self) noexcept:
        if self.cons_page:
            munmap(self.cons_page, self.page)
            self.cons_page = NULL
        if self.prod:
            munmap(self.prod, self.page + self.size)
            self.prod = NULL

    def close(self) -> None:
        """Unmap the ring, after a drain another thread runs (without the GIL) ends."""
        while self.busy:
            time.sleep(0.001)
        self._unmap()

    def pending(self) -> int:
        """Bytes the kernel has reserved and we have not consumed."""
        if not self.prod:
            return 0
        return zt_acq64(self.prod) - zt_acq64(self.cons_page)

    cdef int _next(self, uint64_t *pcons, uint64_t prod, uint8_t *tmp,
                   const uint8_t **out) noexcept nogil:
        """1: a record's first ZT_HOP_SIZE bytes are at *out; 0: a record skipped
        (discarded, or short); -1: stop (nothing committed next, or a bad header)."""
        cdef uint64_t cons = pcons[0]
        if cons >= prod:
            return -1
        # headers are 8-byte aligned in a ring of whole pages: never split
        cdef size_t start = self.page + <size_t>(cons & self.mask)
        cdef uint32_t hdr = zt_acq32(self.prod + start)
        if hdr & RB_BUSY:
            return -1  # reserved, not committed yet: later records wait behind it
        cdef uint32_t n = hdr & ~(RB_BUSY | RB_DISCARD)
        if n > self.size - RB_HDR:
            return -1  # no record is that long: stop rather than read past the ring
        pcons[0] = cons + ((n + RB_HDR + 7) & ~(<uint64_t>7))
        if hdr & RB_DISCARD:
            return 0
        if n < ZT_HOP_SIZE:
            self.short += 1
            return 0
        cdef size_t lo = start + RB_HDR, end = self.page + self.size, head
        if lo + ZT_HOP_SIZE <= end:
            out[0] = self.prod + lo
        else:  # the record wraps: its tail is at the start of the data pages
            head = end - lo
            memcpy(tmp, self.prod + lo, head)
            memcpy(tmp + head, self.prod + self.page, ZT_HOP_SIZE - head)
            out[0] = tmp
        return 1

    def drain_into(self, HopIndex index not None, Py_ssize_t max_records=1 << 20) -> int:
        """Index every committed record (up to max_records) and release their space;
        returns how many were indexed.  Runs without the GIL."""
        if not self.prod:
            raise ValueError("the ring is closed")
        cdef uint8_t tmp[ZT_HOP_SIZE]
        cdef const uint8_t *rec = NULL
        cdef Py_ssize_t got = 0
        cdef int st
        cdef uint64_t cons, prod
        self.busy = True
        with nogil:
            cons = zt_acq64(self.cons_page)
            prod = zt_acq64(self.prod)
            while got < max_records:
                st = self._next(&cons, prod, tmp, &rec)
                if st < 0:
                    break
                if st > 0:
                    index._add(rec)
                    got += 1
            zt_rel64(self.cons_page, cons)
        self.busy = False
        return got

    def drain_raw(self, Py_ssize_t max_records=1 << 20) -> list:
        """Every committed record as bytes (struct zt_hop), their space released."""
        if not self.prod:
            raise ValueError("the ring is closed")
        cdef uint8_t tmp[ZT_HOP_SIZE]
        cdef const uint8_t *rec = NULL
        cdef int st
        cdef uint64_t cons = zt_acq64(self.cons_page), prod = zt_acq64(self.prod)
        out = []
        while len(out) < max_records:
            st = self._next(&cons, prod, tmp, &rec)
            if st < 0:
                break
            if st > 0:
                out.append((<const char *>rec)[:ZT_HOP_SIZE])
        zt_rel64(self.cons_page, cons)
        return out
