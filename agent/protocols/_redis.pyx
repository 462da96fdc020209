# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""Redis RESP2 and RESP3 in compiled code: commands, pipelining, errors, push messages.

The scanner is resumable at every element boundary (a stack of element counts left in
the open aggregates, here a C array), so a frame split over many syscalls is never
re-scanned and a bulk string longer than what was captured is skipped by its length,
after which the remaining elements of the same frame are parsed as usual.

This is the former Python parser (`redis.py` up to commit cc53527) on the compiled
stream plumbing every parser shares (`_stream.StreamParser`); what leaves it is the
same: `base.Record`s holding `base.Message`s, and `STATS` counters
(tests/protocols/test_compiled_equivalence_redis.py checks it against that Python
module).

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

from ._stream cimport DirStream, Pending, StreamParser, new_message, new_record, new_pending
from ._bytes cimport _Bytes, _at, _view

import re

from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    Message,
    Record,
    new_stats,
)

STATS = new_stats()
globals()["DirStream"] = DirStream  # the name redis.py exports (cimported here)

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


# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) -------------------

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


cdef class RedisParser(StreamParser):
    """One Redis connection, both directions."""

    # Pub/sub pushes ("message", "pmessage", "smessage", extra "subscribe"
    # confirmations) only exist once the client subscribed: before that, an array
    # reply that happens to start with such a word is data (LRANGE of a list).
    cdef readonly bint subscribed
    cdef _Frame f0, f1

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = "redis"
        self.counts = STATS
        self.f0 = _Frame()
        self.f1 = _Frame()
        self.pending = deque()
        self.subscribed = False

    cdef inline _Frame _frame(self, int d):
        return self.f0 if d == 0 else self.f1

    # -- contract ---------------------------------------------------------------------
    cdef list feed_raw(self, int d, bytes data, long long size, long long off, object ts,
                       object tid, object seq):
        # Fast path for the common case (whole frames at the start of a chunk, nothing
        # pending in the stream): no buffering, no resumable scanner.  Whatever follows
        # the last whole frame (a frame cut by the capture, anything unusual) goes
        # through the general machinery.
        cdef DirStream st
        cdef long long used
        cdef list out
        if d != 0 and d != 1:
            raise IndexError("chunk direction must be 0 or 1")
        st = self._st(d)
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
        while nf and (<Pending>pending[nf - 1]).msg.start_ns > ts:
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
        cdef Pending p
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
        cdef Pending p
        s = None if seq is None else (seq + start) % _SEQ_MOD
        msg = new_message(off + start, end - start, ts, ts, tid, tid, s)
        if is_req:
            self._request_spans(msg, v, a0, a1, b0, b1, "", out)
            return
        p = <Pending>self.pending.popleft()
        if e0 < 0:
            out.append(new_record("redis", p.msg, msg, p.operation, STATUS_OK, "", "",
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
        cdef Pending p
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
            out.append(self._incomplete(<Pending>self.pending.popleft(), "evicted"))
        p = new_pending(msg, op, attrs, None, inc)
        self.pending.append(p)

    cdef void _reply(self, Pending p, msg, err, str inc, list out) except *:
        cdef str text, code, status, error
        if err is not None:
            text = (<bytes>err).decode("latin-1", "replace")
            code = text.split(" ", 1)[0]
            status = STATUS_ERROR
            error = text[:256]
        else:
            code, status, error = "", STATUS_OK, ""
        out.append(new_record("redis", p.msg, msg, p.operation, status, code, error,
                          p.attributes, {}, self._why(p.incomplete, inc)))

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        self._scan(d, st, out, False)

    cdef void _scan(self, int d, DirStream st, list out, bint force) except *:
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
        self._scan(d, st, out, True)
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
        cdef Pending p
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
            if not (self.pending and (<Pending>self.pending[0]).operation.lower()
                    == first.decode("latin-1")):
                _count("push")
                return
        elif kind == 62:
            _count("push")
            return
        if not self.pending:
            self._salvage_request(out)
        if not self.pending or (<Pending>self.pending[0]).msg.start_ns > msg.start_ns:
            # Nothing asked, or it answers a request lost before the oldest one seen.
            _count("unmatched_response")
            return
        self._reply(<Pending>self.pending.popleft(), msg, f.err, inc or f.inc, out)

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
                out.append(self._incomplete(<Pending>self.pending.popleft(), "gap"))
        f.msg = None
