# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""Redis RESP2 and RESP3 in compiled code: commands, pipelining, errors, push messages.

The scanner is resumable at every element boundary (a stack of element counts left in
the open aggregates, here a C array), so a frame split over many syscalls is never
re-scanned and a bulk string longer than what was captured is skipped by its length,
after which the remaining elements of the same frame are parsed as usual.

This is the former Python parser (`redis.py` up to commit cc53527) with the
per-connection plumbing of `base.StreamParser` carried as C-typed state, as
`_http1.pyx` does; what leaves it is the same: `base.Record`s holding `base.Message`s,
and `STATS` counters (tests/protocols/test_compiled_equivalence_redis.py checks it
against that Python module).

Payload bytes are read only through `_Bytes` views (pointer + length of a `bytes` object
the caller keeps alive) and every index is checked against that length before it is
read.  Numbers are read in C when they are plain decimals; anything else goes through
Python's `int` on the slice, as before (it takes signs, blanks and underscores).
Element counts and bulk lengths past 2**60 are clamped: they never complete either way.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcmp

import re

from .base import (
    MAX_BUFFER,
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    Message,
    Record,
    new_stats,
)

STATS = new_stats()

_AGG = frozenset(b"*%~>")
_BULK = frozenset(b"$=!")
_LINE = frozenset(b"+-:_,#(")
TYPES = _AGG | _BULK | _LINE | {ord("|")}
MAX_LINE = 4096
GRAB = 64  # bytes kept of the first elements (command name, key)
# Bulks up to this size are waited for whole; longer ones are skipped by length as
# soon as their head is in.
WAIT_BULK = 4096

cdef Py_ssize_t C_MAX_LINE = MAX_LINE
cdef Py_ssize_t C_GRAB = GRAB
cdef long long C_WAIT_BULK = WAIT_BULK
cdef Py_ssize_t C_MAX_BUFFER = MAX_BUFFER
cdef Py_ssize_t C_MAX_PENDING = MAX_PENDING
# Counts and lengths are clamped to this (2**60 elements or bytes never arrive), so the
# arithmetic on them (x2 for maps, + offsets) cannot overflow.
cdef long long BIG = 1152921504606846976

# Commands whose first argument names a subcommand.
_SUBCOMMANDS = frozenset(
    b"CONFIG CLIENT CLUSTER COMMAND OBJECT MEMORY XINFO XGROUP SCRIPT FUNCTION ACL "
    b"PUBSUB DEBUG MODULE SLOWLOG LATENCY".split()
)
# Commands whose first argument is not a key (or is a secret): never shown.
_NO_KEY = frozenset(
    b"AUTH HELLO PING ECHO SELECT MULTI EXEC DISCARD INFO QUIT DBSIZE FLUSHDB FLUSHALL "
    b"TIME SAVE BGSAVE MIGRATE SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUBLISH EVAL "
    b"EVALSHA FCALL WAIT SCAN".split()
)
_PUBSUB_PUSH = frozenset((b"message", b"pmessage", b"smessage"))
_SUBSCRIBE = frozenset((b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"))
_REQ_RESYNC = re.compile(rb"\*\d{1,7}\r\n\$\d{1,10}\r\n")

cdef object _SEQ_MOD = 1 << 32
cdef frozenset _C_AGG = _AGG, _C_BULK = _BULK, _C_LINE = _LINE, _C_TYPES = TYPES
cdef frozenset _C_SUBCOMMANDS = _SUBCOMMANDS, _C_NO_KEY = _NO_KEY
cdef frozenset _C_PUBSUB_PUSH = _PUBSUB_PUSH, _C_SUBSCRIBE = _SUBSCRIBE

# Type bytes as a table: 1 aggregate, 2 bulk, 3 line, 4 attribute ('|'), 0 not a type.
cdef enum:
    T_NONE = 0
    T_AGG = 1
    T_BULK = 2
    T_LINE = 3
    T_ATTR = 4
cdef unsigned char _KIND[256]
for _c in range(256):
    _KIND[_c] = T_NONE
for _c in _AGG:
    _KIND[_c] = T_AGG
for _c in _BULK:
    _KIND[_c] = T_BULK
for _c in _LINE:
    _KIND[_c] = T_LINE
_KIND[124] = T_ATTR


# -- bounds-checked byte access -----------------------------------------------------

cdef struct _Bytes:
    const unsigned char *p
    Py_ssize_t n


cdef inline _Bytes _view(bytes b):
    cdef _Bytes v
    v.p = <const unsigned char *>PyBytes_AS_STRING(b)
    v.n = PyBytes_GET_SIZE(b)
    return v


cdef inline int _at(_Bytes v, Py_ssize_t i):
    """Byte i of v, or -1 outside it: the one way payload bytes are read one by one."""
    if i < 0 or i >= v.n:
        return -1
    return v.p[i]


cdef Py_ssize_t _crlf(_Bytes v, Py_ssize_t start):
    """Index of the first CRLF in v[start:], or -1 (bytes.find(b"\\r\\n", start))."""
    cdef const void *hit
    cdef Py_ssize_t i, stop = v.n
    if start < 0:
        start = 0
    while stop - start >= 2:
        # The '\r' is looked for where a '\n' can still follow it inside the range.
        hit = memchr(v.p + start, 13, <size_t>(stop - start - 1))
        if hit == NULL:
            return -1
        i = <const unsigned char *>hit - v.p
        if v.p[i + 1] == 10:
            return i
        start = i + 1
    return -1


cdef inline Py_ssize_t _lf(_Bytes v, Py_ssize_t start):
    """Index of the first LF in v[start:], or -1."""
    cdef const void *hit
    if start < 0:
        start = 0
    if start >= v.n:
        return -1
    hit = memchr(v.p + start, 10, <size_t>(v.n - start))
    if hit == NULL:
        return -1
    return <const unsigned char *>hit - v.p


cdef inline bytes _slice(_Bytes v, Py_ssize_t a, Py_ssize_t b):
    """bytes v[a:b] for 0 <= a, clamped to v as Python slices are."""
    if a < 0:
        a = 0
    if b > v.n:
        b = v.n
    if b <= a:
        return b""
    return PyBytes_FromStringAndSize(<const char *>v.p + a, b - a)


cdef inline long long _clamp(object n):
    if n > BIG:
        return BIG
    if n < -BIG:
        return -BIG
    return <long long>n


cdef int _number(bytes buf, _Bytes v, Py_ssize_t a, Py_ssize_t b, long long *out) except -2:
    """int(buf[a:b]) into *out (clamped to +-BIG); -1 where int() raises ValueError.

    Plain decimals (an optional '-', 1-18 digits) are read here; anything else goes
    through Python's int as before."""
    cdef Py_ssize_t i = a, k
    cdef bint neg = False
    cdef long long x = 0
    cdef int c
    if b > v.n:
        b = v.n
    if a < b and v.p[a] == 45:  # '-'
        neg = True
        i += 1
    k = b - i
    if 0 < k <= 18:
        while i < b:
            c = v.p[i]
            if c < 48 or c > 57:
                break
            x = x * 10 + (c - 48)
            i += 1
        else:
            out[0] = -x if neg else x
            return 0
    try:
        big = int(_slice(v, a, b))
    except ValueError:
        return -1
    out[0] = _clamp(big)
    return 0


# -- per-connection state -------------------------------------------------------------

cdef class DirStream:
    """One direction of a connection: unparsed bytes plus where they came from.

    `buf` holds contiguous bytes starting at stream offset `base`; `skip` counts bytes
    still to discard (the rest of a bulk whose length is known); `synced` is False
    after bytes were lost where the framing cannot say how many, until the parser
    finds a frame boundary again.  `marks` remembers (offset, ts, tid, seq) of the
    chunks behind `buf` so a message gets the time of its first and last byte.
    """

    cdef readonly bytes buf
    cdef readonly long long base
    cdef long long nxt
    cdef bint has_next
    cdef readonly long long skip
    cdef readonly bint synced
    cdef list marks
    cdef object open  # Message whose tail is being skipped, or None
    cdef bint trunc  # the open message lost bytes

    def __cinit__(self):
        self.buf = b""
        self.synced = True
        self.marks = []
        self.open = None

    @property
    def next(self):
        return self.nxt if self.has_next else None

    cdef tuple mark_at(self, long long off):
        cdef list marks = self.marks
        cdef Py_ssize_t i, n = len(marks)
        if n == 1:
            return <tuple>marks[0]
        for i in range(n - 1, -1, -1):
            if <long long>(<tuple>marks[i])[0] <= off:
                return <tuple>marks[i]
        return <tuple>marks[0]

    cdef object message(self, long long start, long long end):
        """A Message for stream bytes [start, end) of this direction."""
        cdef tuple m0, m1
        if len(self.marks) == 1:
            m0 = <tuple>self.marks[0]
            seq = m0[3]
            if seq is not None:
                seq = (seq + start - m0[0]) % _SEQ_MOD
            return Message(start, end - start, m0[1], m0[1], m0[2], m0[2], seq)
        m0 = self.mark_at(start)
        m1 = self.mark_at(end - 1) if end > start else m0
        seq = m0[3]
        if seq is not None:
            seq = (seq + start - m0[0]) % _SEQ_MOD
        return Message(start, end - start, m0[1], m1[1], m0[2], m1[2], seq)

    cdef void consume(self, Py_ssize_t n) except *:
        """Drop the first n buffered bytes, and the marks no longer needed."""
        cdef list marks = self.marks
        cdef Py_ssize_t i
        cdef long long base
        self.buf = self.buf[n:]
        self.base += n
        if len(marks) > 1:
            base = self.base
            i = 0
            while i + 1 < len(marks) and <long long>(<tuple>marks[i + 1])[0] <= base:
                i += 1
            if i:
                del marks[:i]

    cdef void drop(self) except *:
        self.base += len(self.buf)
        self.buf = b""
        if len(self.marks) > 1:
            del self.marks[:-1]


cdef class _Pending:
    """A request waiting for its response."""
    cdef object msg
    cdef str operation
    cdef dict attributes
    cdef str incomplete


cdef class _Frame:
    """Scan state of one direction: the frame in progress, if any."""
    cdef long long *stack  # element counts left in the open aggregates
    cdef Py_ssize_t depth, cap
    cdef object msg
    cdef list args
    cdef int kind
    cdef object err  # bytes or None
    cdef str inc

    def __cinit__(self):
        self.stack = NULL
        self.depth = self.cap = 0
        self.msg = None
        self.args = []
        self.err = None
        self.inc = ""

    def __dealloc__(self):
        free(self.stack)

    cdef int push(self, long long v) except -1:
        cdef long long *grown
        cdef Py_ssize_t cap
        if self.depth == self.cap:
            cap = self.cap * 2 if self.cap else 8
            grown = <long long *>realloc(self.stack, <size_t>cap * sizeof(long long))
            if grown == NULL:
                raise MemoryError()
            self.stack = grown
            self.cap = cap
        self.stack[self.depth] = v
        self.depth += 1
        return 0

    cdef inline void pop_done(self):
        """Close the aggregates whose elements are all in."""
        while self.depth and self.stack[self.depth - 1] == 0:
            self.depth -= 1


cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef object _incomplete_record(_Pending p, str reason):
    """The record of a request whose response will not be seen."""
    cdef str why = p.incomplete or reason
    if p.incomplete and reason and reason not in p.incomplete:
        why = p.incomplete + "," + reason
    return Record("redis", p.msg, None, p.operation, STATUS_UNSET, "", "",
                  p.attributes, {}, why)


# raw command name (bytes) -> (upper-cased name, operation, flags); flags: 1 subscribe,
# 2 names a subcommand, 4 first argument not shown.  A handful of names per agent.
cdef dict _cmd_cache = {}


cdef tuple _command(bytes raw):
    cdef tuple hit = _cmd_cache.get(raw)
    cdef int flags = 0
    if hit is not None:
        return hit
    cmd = raw.upper()
    if cmd in _C_SUBSCRIBE:
        flags |= 1
    if cmd in _C_SUBCOMMANDS:
        flags |= 2
    if cmd in _C_NO_KEY:
        flags |= 4
    hit = (cmd, cmd.decode("latin-1"), flags)
    if len(_cmd_cache) >= 4096:
        _cmd_cache.clear()
    _cmd_cache[raw] = hit
    return hit


cdef class RedisParser:
    """One Redis connection, both directions."""

    cdef readonly object client_side
    cdef readonly tuple streams
    cdef readonly object pending  # deque of _Pending
    cdef readonly bint closed
    # Pub/sub pushes ("message", "pmessage", "smessage", extra "subscribe"
    # confirmations) only exist once the client subscribed: before that, an array
    # reply that happens to start with such a word is data (LRANGE of a list).
    cdef readonly bint subscribed
    cdef int rdir  # direction carrying requests, -1 until known
    # Messages were lost where their count is unknown: until the pending queue
    # drains, first-in-first-out matching may be off by that count.
    cdef bint uncertain
    cdef DirStream st0, st1
    cdef _Frame f0, f1
    # Instance attributes stay possible, as on the Python parsers.
    cdef dict __dict__

    def __init__(self, client_side=None):
        self.client_side = client_side
        self.st0 = DirStream()
        self.st1 = DirStream()
        self.streams = (self.st0, self.st1)
        self.f0 = _Frame()
        self.f1 = _Frame()
        self.pending = deque()
        self.rdir = -1
        if client_side is not None:
            self.rdir = 0 if client_side else 1
        self.closed = False
        self.uncertain = False
        self.subscribed = False

    @property
    def protocol(self):
        return "redis"

    @property
    def stats(self):
        return STATS

    @property
    def req_dir(self):
        return None if self.rdir < 0 else self.rdir

    cdef inline DirStream _st(self, int d):
        return self.st0 if d == 0 else self.st1

    cdef inline _Frame _frame(self, int d):
        return self.f0 if d == 0 else self.f1

    # -- contract ---------------------------------------------------------------------
    def feed(self, chunk) -> list:
        # Fast path for the common case (whole frames at the start of a chunk, nothing
        # pending in the stream): no buffering, no resumable scanner.  Whatever follows
        # the last whole frame (a frame cut by the capture, anything unusual) goes
        # through the general machinery.
        cdef int d = chunk.direction
        cdef DirStream st
        cdef bytes data
        cdef long long off, size, used
        cdef list out
        if d != 0 and d != 1:
            raise IndexError("chunk direction must be 0 or 1")
        st = self._st(d)
        data = chunk.data
        off = chunk.offset
        size = chunk.size
        ts = chunk.ts_ns
        tid = chunk.tid
        seq = chunk.seq
        out = []
        if (st.has_next and off == st.nxt and not st.buf and not st.skip and st.synced
                and not self._frame(d).depth and not self.closed
                and self.rdir >= 0 and not self.uncertain):
            used = self._fast(d == self.rdir, data, off, ts, tid, seq, out)
            if used >= 0:
                st.nxt = st.base = off + used
                if st.marks:
                    st.marks.clear()
                if used < size:
                    if seq is not None:
                        seq = (seq + used) % _SEQ_MOD
                    self._feed(d, data[used:], size - used, off + used, ts, tid, seq, out)
                return out
        self._feed(d, data, size, off, ts, tid, seq, out)
        return out

    def flush(self, reason) -> list:
        cdef list out = []
        self._flush(reason, out)
        return out

    cdef long long _fast(self, bint is_req, bytes data, long long off, ts, tid, seq,
                         list out) except -2:
        """Records of the whole frames at the start of the chunk; the length of those
        frames, or -1 when there are none (nothing was done)."""
        cdef _Bytes v = _view(data)
        cdef Py_ssize_t nf = 0, k
        if is_req:
            # Requests are registered as they are found: nothing about them depends on
            # what follows in the chunk.
            k = self._fast_scan(True, data, v, -1, off, ts, tid, seq, out, &nf)
            return k if nf else -1
        # Replies: how many whole frames there are, then how many of them answer
        # pending requests, then those.
        self._fast_scan(False, data, v, -1, off, ts, tid, seq, None, &nf)
        pending = self.pending
        k = len(pending)
        if nf > k:
            nf = k
        while nf and (<_Pending>pending[nf - 1]).msg.start_ns > ts:
            nf -= 1
        if not nf:
            return -1
        return self._fast_scan(False, data, v, nf, off, ts, tid, seq, out, &k)

    cdef Py_ssize_t _fast_scan(self, bint is_req, bytes data, _Bytes v, Py_ssize_t limit,
                               long long off, ts, tid, seq, list out,
                               Py_ssize_t *count) except -2:
        """Scan whole frames at the start of data (at most `limit` when >= 0), emitting
        them when `out` is given; their number in *count, their end returned."""
        cdef Py_ssize_t n = v.n, i = 0, start, j, s, end = 0, a0, a1, b0, b1, nargs
        cdef long long cnt, ln, e
        cdef int t
        cdef Py_ssize_t nf = 0
        cdef bint bad
        cdef _Pending p
        while i < n and (limit < 0 or nf < limit):
            start = i
            t = v.p[i]
            j = _crlf(v, i)
            if j < 0:
                break
            a0 = a1 = b0 = b1 = -1
            if t == 42:  # '*'
                if _number(data, v, i + 1, j, &cnt) < 0:
                    break
                i = j + 2
                nargs = 0
                bad = False
                while cnt > 0:
                    cnt -= 1
                    if _at(v, i) != 36:  # '$'
                        bad = True
                        break
                    j = _crlf(v, i)
                    if j < 0:
                        bad = True
                        break
                    if _number(data, v, i + 1, j, &ln) < 0:
                        # int() raised: the scan ends (the frames before stay whole).
                        i = -1
                        break
                    s = j + 2
                    e = s + ln + 2
                    if e > n or ln < 0:
                        bad = True
                        break
                    i = <Py_ssize_t>e
                    if nargs == 0:
                        a0 = s
                        a1 = s + (ln if ln <= C_GRAB else C_GRAB)
                        nargs = 1
                    elif nargs == 1:
                        b0 = s
                        b1 = s + (ln if ln <= C_GRAB else C_GRAB)
                        nargs = 2
                if i < 0:
                    break
                if bad:
                    break
                if not is_req and nargs and self.subscribed and self._push_word(v, a0, a1):
                    break
                nf += 1
                end = i
                if out is not None:
                    self._fast_emit(is_req, data, v, start, i, a0, a1, b0, b1, -1, -1,
                                    off, ts, tid, seq, out)
            elif is_req:
                break
            elif t == 43 or t == 58 or t == 95 or t == 35 or t == 44:  # + : _ # ,
                i = j + 2
                nf += 1
                end = i
                if out is not None:
                    self._fast_emit(False, data, v, start, i, -1, -1, -1, -1, -1, -1,
                                    off, ts, tid, seq, out)
            elif t == 45:  # '-'
                i = j + 2
                nf += 1
                end = i
                if out is not None:
                    self._fast_emit(False, data, v, start, i, -1, -1, -1, -1, start + 1, j,
                                    off, ts, tid, seq, out)
            elif t == 36:  # '$'
                if _number(data, v, i + 1, j, &ln) < 0:
                    break
                e = j + 2 + (ln + 2 if ln >= 0 else 0)
                if e > n:
                    break
                i = <Py_ssize_t>e
                nf += 1
                end = i
                if out is not None:
                    self._fast_emit(False, data, v, start, i, -1, -1, -1, -1, -1, -1,
                                    off, ts, tid, seq, out)
            else:
                break
        count[0] = nf
        return end

    cdef bint _push_word(self, _Bytes v, Py_ssize_t a0, Py_ssize_t a1):
        """The first element v[a0:a1] is a pub/sub push's kind (or a subscribe
        confirmation's)."""
        cdef Py_ssize_t k = a1 - a0
        if a1 > v.n or a0 < 0:
            return False
        if k >= 9 and memcmp(v.p + a1 - 9, b"subscribe", 9) == 0:
            return True
        if k == 7 and memcmp(v.p + a0, b"message", 7) == 0:
            return True
        if k == 8 and (memcmp(v.p + a0, b"pmessage", 8) == 0
                       or memcmp(v.p + a0, b"smessage", 8) == 0):
            return True
        return False

    cdef void _fast_emit(self, bint is_req, bytes data, _Bytes v, Py_ssize_t start,
                         Py_ssize_t end, Py_ssize_t a0, Py_ssize_t a1, Py_ssize_t b0,
                         Py_ssize_t b1, Py_ssize_t e0, Py_ssize_t e1, long long off, ts,
                         tid, seq, list out) except *:
        cdef list args
        cdef _Pending p
        s = None if seq is None else (seq + start) % _SEQ_MOD
        msg = Message(off + start, end - start, ts, ts, tid, tid, s)
        if is_req:
            self._request_spans(msg, v, a0, a1, b0, b1, "", out)
            return
        p = <_Pending>self.pending.popleft()
        if e0 < 0:
            out.append(Record("redis", p.msg, msg, p.operation, STATUS_OK, "", "",
                              p.attributes, {}, p.incomplete))
        else:
            self._reply(p, msg, _slice(v, e0, e1), "", out)

    cdef void _request_spans(self, msg, _Bytes v, Py_ssize_t a0, Py_ssize_t a1,
                             Py_ssize_t b0, Py_ssize_t b1, str inc, list out) except *:
        """_request for a command whose first two elements are v[a0:a1], v[b0:b1]
        (-1: absent)."""
        cdef list args
        if a0 < 0:
            args = []
        elif b0 < 0:
            args = [_slice(v, a0, a1)]
        else:
            args = [_slice(v, a0, a1), _slice(v, b0, b1)]
        self._request(msg, args, inc, out)

    cdef void _request(self, msg, list args, str inc, list out) except *:
        cdef tuple c
        cdef int flags = 0
        cdef str op
        cdef dict attrs
        cdef _Pending p
        cdef bytes key
        cdef Py_ssize_t nargs = len(args)
        if nargs:
            c = _command(<bytes>args[0])
            op = <str>c[1]
            flags = c[2]
        else:
            op = ""
        if flags & 1:
            self.subscribed = True
        if flags & 2 and nargs > 1:
            op = op + " " + (<bytes>args[1]).upper().decode("latin-1")
        attrs = {"db.system": "redis", "db.operation.name": op}
        if nargs > 1 and not (flags & 6):
            key = <bytes>args[1]
            attrs["db.query.text"] = op + " " + PyUnicode_DecodeLatin1(
                PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), NULL)
        elif op:
            attrs["db.query.text"] = op
        if len(self.pending) >= C_MAX_PENDING:
            _count("pending_overflow")
            out.append(_incomplete_record(<_Pending>self.pending.popleft(), "evicted"))
        p = _Pending.__new__(_Pending)
        p.msg = msg
        p.operation = op
        p.attributes = attrs
        p.incomplete = inc
        self.pending.append(p)

    cdef void _reply(self, _Pending p, msg, err, str inc, list out) except *:
        cdef str text, code, status, error
        if err is not None:
            text = (<bytes>err).decode("latin-1", "replace")
            code = text.split(" ", 1)[0]
            status = STATUS_ERROR
            error = text[:256]
        else:
            code, status, error = "", STATUS_OK, ""
        out.append(Record("redis", p.msg, msg, p.operation, status, code, error,
                          p.attributes, {}, self._why(p.incomplete, inc)))

    # -- stream plumbing (base.StreamParser) ------------------------------------------
    cdef void _feed(self, int d, bytes data, long long size, long long off, ts, tid, seq,
                    list out) except *:
        cdef DirStream st
        cdef bytes whole = data
        cdef long long cut, end, k
        cdef Py_ssize_t i
        if self.closed:
            return
        st = self._st(d)
        if not st.has_next:
            # Offsets count from the connection's first byte: a first chunk further on
            # means what came before was lost (or the connection was seen midway).
            st.has_next = True
            st.nxt = st.base = 0
        if off != st.nxt:
            if off < st.nxt:
                # Retransmitted or overlapping bytes: keep only what is new.
                cut = st.nxt - off
                if cut >= size:
                    _count("overlap")
                    return
                if cut >= len(data):
                    _count("overlap")
                    self._gap(d, st, size - cut, out)
                    return
                data = data[cut:]
                off = st.nxt
            else:
                _count("gap")
                self._gap(d, st, off - st.nxt, out)
        end = off + len(data)
        marks = st.marks
        if not st.buf and marks:
            marks.clear()
        marks.append((off, ts, tid, seq))
        st.nxt = end
        if st.skip:
            k = st.skip if st.skip < len(data) else len(data)
            st.skip -= k
            data = data[k:]
            st.base = off + k
            o = st.open
            if o is not None:
                o.end_ns = ts
                o.end_tid = tid
                o.size += k
            if not st.skip:
                st.open = None
                self._tail_done(d, st, o, out)
        if data:
            if not st.synced:
                i = self._resync(d, data)
                if i < 0:
                    _count("resync_skip")
                    st.base = end
                    data = b""
                    self._skipped(d, ts, out)
                else:
                    st.synced = True
                    data = data[i:]
                    st.base = end - len(data)
            if data:
                if st.buf:
                    st.buf += data
                else:
                    st.buf = data
                    st.base = end - len(data)
                self._parse(d, st, out, False)
                if len(st.buf) > C_MAX_BUFFER:
                    _count("buffer_overflow")
                    st.drop()
                    self._desync(d, st, out)
        if size > len(whole):
            _count("truncated_chunk")
            self._gap(d, st, size - len(whole), out)

    cdef void _gap(self, int d, DirStream st, long long g, list out) except *:
        """`g` bytes right after what was received are missing."""
        st.nxt = (st.nxt if st.has_next else 0) + g
        st.has_next = True
        self._lose(d, st, g, out)

    cdef void _lose(self, int d, DirStream st, long long g, list out) except *:
        """Account for `g` lost bytes (st.nxt already moved past them)."""
        if st.skip:
            o = st.open
            if st.skip >= g:
                if o is not None:
                    o.size += g
                st.skip -= g
                st.base += g
                st.trunc = True
                if not st.skip:
                    st.open = None
                    self._tail_done(d, st, o, out)
                return
            # The skipped message ends inside the hole; what follows is unknown.
            g -= st.skip
            if o is not None:
                o.size += st.skip
            st.skip = 0
            st.trunc = True
            st.open = None
            self._tail_done(d, st, o, out)
        if st.synced and self._on_gap(d, st, g, out):
            return
        st.drop()
        st.base = st.nxt
        self.uncertain = True
        if st.synced:
            _count("desync")
            self._desync(d, st, out)

    cdef void _desync(self, int d, DirStream st, list out) except *:
        self.uncertain = True
        st.synced = False
        st.skip = 0
        st.open = None
        st.buf = b""
        st.base = st.nxt if st.has_next else 0
        self._on_desync(d, out)

    cdef str _why(self, str a, str b):
        """Incomplete reasons of a matched record, with the doubt a lost request casts."""
        cdef str why
        if a and b:
            why = a + "," + b
        else:
            why = a or b
        if self.uncertain:
            if not why:
                why = "gap"
            if not self.pending:
                self.uncertain = False
        return why

    cdef void _skipped(self, int d, ts, list out) except *:
        """A whole chunk was dropped while looking for a frame boundary.

        If it carried responses, they answered requests sent before it: those requests
        go out incomplete rather than be matched, first in first out, with later answers.
        """
        pending = self.pending
        if d == self.rdir:
            return
        while pending and (<_Pending>pending[0]).msg.start_ns <= ts:
            out.append(_incomplete_record(<_Pending>pending.popleft(), "gap"))

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out, bint force) except *:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0, j, s, cap
        cdef long long val, e, end
        cdef int t, kind
        cdef bint is_req
        cdef _Frame f
        cdef tuple m
        if self.rdir < 0:
            t = _at(v, 0)
            self.rdir = d if (t == 42 or (65 <= t <= 122 and t != 95)) else 1 - d
        is_req = d == self.rdir
        f = self._frame(d)
        while pos < n:
            if not f.depth:
                t = v.p[pos]
                if _KIND[t] == T_NONE:
                    if is_req and 65 <= t <= 122:
                        j = _lf(v, pos)
                        if j < 0:
                            if n - pos > C_MAX_LINE:
                                self._bad(d, st, out)
                                return
                            break
                        words = _slice(v, pos, j).split(None, 2)
                        f.msg = st.message(st.base + pos, st.base + j + 1)
                        f.args = words[:2]
                        f.kind = t
                        pos = j + 1
                        self._done(d, f, st, out, "")
                        continue
                    self._bad(d, st, out)
                    return
                f.push(1)
                f.inc = ""
                f.msg = st.message(st.base + pos, st.base + pos + 1)
                f.args = []
                f.kind = t
                f.err = None
            t = v.p[pos]
            kind = _KIND[t]
            j = _crlf(v, pos)
            if j < 0:
                if n - pos > C_MAX_LINE:
                    self._bad(d, st, out)
                    return
                break
            val = 0
            if kind == T_AGG or kind == T_BULK or kind == T_ATTR:
                if _number(buf, v, pos + 1, j, &val) < 0:
                    self._bad(d, st, out)
                    return
            f.stack[f.depth - 1] -= 1
            if kind == T_BULK:
                if val < 0:
                    pos = j + 2
                else:
                    s = j + 2
                    e = s + val + 2
                    if e > n and val <= C_WAIT_BULK and not force:
                        f.stack[f.depth - 1] += 1  # not taken yet: wait for the whole bulk
                        break
                    cap = <Py_ssize_t>(val if val <= C_GRAB else C_GRAB)
                    if f.depth <= 2 and len(f.args) < 2:
                        f.args.append(_slice(v, s, s + cap))
                    if t == 33 and f.depth == 1:
                        cap = <Py_ssize_t>(val if val <= 512 else 512)
                        f.err = _slice(v, s, s + cap)
                    if e > n:
                        # The bulk runs past what is buffered: skip the rest by length.
                        st.consume(n)
                        st.skip = e - n
                        st.open = f.msg
                        m = <tuple>st.marks[-1]
                        f.msg.end_ns = m[1]
                        f.msg.end_tid = m[2]
                        return
                    pos = <Py_ssize_t>e
            elif kind == T_AGG:
                pos = j + 2
                if t == 37:
                    val *= 2
                if val > 0:
                    f.push(val)
            elif kind == T_ATTR:
                # An attribute map annotates the value that follows it.
                f.stack[f.depth - 1] += 1
                pos = j + 2
                if val > 0:
                    f.push(val * 2)
            elif kind == T_LINE:
                if t == 45:
                    if f.depth == 1:
                        f.err = _slice(v, pos + 1, j)
                elif t == 43 and f.depth <= 2 and len(f.args) < 2:
                    f.args.append(_slice(v, pos + 1, j))
                pos = j + 2
            else:
                self._bad(d, st, out)
                return
            f.pop_done()
            if not f.depth:
                msg = f.msg
                end = st.base + pos
                msg.size = end - msg.offset
                m = st.mark_at(end - 1)
                msg.end_ns = m[1]
                msg.end_tid = m[2]
                self._done(d, f, st, out, "")
        st.consume(pos)

    cdef void _bad(self, int d, DirStream st, list out) except *:
        _count("bad_frame")
        _count("desync")
        self._desync(d, st, out)

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        if not st.buf:
            return False
        # A bulk cut by the hole is skipped by its length; then the frame goes on.
        self._parse(d, st, out, True)
        if not st.skip or not st.synced:
            return False
        self._lose(d, st, g, out)
        return True

    cdef void _tail_done(self, int d, DirStream st, msg, list out) except *:
        cdef _Frame f = self._frame(d)
        f.pop_done()
        if st.trunc:
            st.trunc = False
            f.inc = "truncated"
        if not f.depth and f.msg is not None:
            f.msg.size = st.base - f.msg.offset
            self._done(d, f, st, out, "")

    cdef void _done(self, int d, _Frame f, DirStream st, list out, str inc) except *:
        cdef int kind
        cdef bytes first
        cdef _Pending p
        msg = f.msg
        f.msg = None
        f.depth = 0
        if d == self.rdir:
            self._request(msg, f.args, inc or f.inc, out)
            return
        kind = f.kind
        first = <bytes>f.args[0] if f.args and (kind == 42 or kind == 62) else b""
        if not self.subscribed and kind != 62:
            first = b""
        if first in _C_PUBSUB_PUSH:
            _count("push")
            return
        if first.endswith(b"subscribe"):
            # One confirmation per channel: the first answers the command, the rest
            # answer nothing.
            if not (self.pending and (<_Pending>self.pending[0]).operation.lower()
                    == first.decode("latin-1")):
                _count("push")
                return
        elif kind == 62:
            _count("push")
            return
        if not self.pending:
            self._salvage_request(out)
        if not self.pending or (<_Pending>self.pending[0]).msg.start_ns > msg.start_ns:
            # Nothing asked, or it answers a request lost before the oldest one seen.
            _count("unmatched_response")
            return
        self._reply(<_Pending>self.pending.popleft(), msg, f.err, inc or f.inc, out)

    cdef void _salvage_request(self, list out) except *:
        """A reply came while a command is still being read: the server replies to
        whole commands only, so the rest of that one was lost.  Take it as it is."""
        cdef int d = self.rdir
        cdef _Frame f = self._frame(d)
        cdef DirStream st = self._st(d)
        cdef long long size
        if f.msg is None or not st.synced or (not f.depth and not st.buf):
            return
        if not f.depth and st.buf:
            return  # between frames: nothing of the command was parsed yet
        size = st.base + len(st.buf) - f.msg.offset
        if f.msg.size < size:
            f.msg.size = size
        self._done(d, f, st, out, "truncated")
        st.drop()
        st.skip = 0
        st.open = None
        st.synced = False
        _count("salvaged_request")

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        cdef _Bytes v = _view(data)
        cdef int c
        if d == self.rdir or self.rdir < 0:
            m = _REQ_RESYNC.search(data)
            return m.start() if m is not None else -1
        # Responses carry no marker: accept a chunk that starts like a reply.
        c = _at(v, 0)
        if c >= 0 and _KIND[c] != T_NONE:
            if v.n > C_MAX_LINE:
                v.n = C_MAX_LINE  # b"\r\n" in data[:MAX_LINE]
            if _crlf(v, 0) >= 0:
                return 0
        return -1

    cdef void _on_desync(self, int d, list out) except *:
        cdef _Frame f = self._frame(d)
        f.depth = 0
        if d == self.rdir:
            if f.msg is not None and f.args:
                if f.msg.size < 1:
                    f.msg.size = 1
                self._done(d, f, self._st(d), out, "gap")
        else:
            f.msg = None
            while self.pending:
                out.append(_incomplete_record(<_Pending>self.pending.popleft(), "gap"))
        f.msg = None

    cdef void _flush(self, reason, list out) except *:
        while self.pending:
            out.append(_incomplete_record(<_Pending>self.pending.popleft(),
                                          reason or "no response"))
        self.closed = True
