# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""HTTP/1.1 in compiled code: keep-alive, pipelining, chunked bodies, 100-continue,
HEAD/204/304, body until close, upgrade, gaps, truncation and resynchronisation.

The per-connection plumbing (per-direction buffers keyed by stream offset, skip counts,
marks, gap and desync handling) is the compiled one every parser shares
(`_stream.StreamParser`), so the per-chunk path runs without Python frames; what leaves the parser is the
same as before: `base.Record`s holding `base.Message`s, and `STATS` counters.

Payload bytes are read only through `_Bytes` views (pointer + length of a `bytes`
object kept alive by the caller) and every index is checked against that length before
it is read; the rare paths (resynchronisation after garbage, odd chunk-size lines,
comma-separated Content-Length lists) use Python's `re` and `int` on slices instead.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp

from ._stream cimport DirStream, Pending, StreamParser, new_message, new_record, new_pending
from ._bytes cimport _Bytes, _at, _view

import re

from proto.span import TRACE_HEADERS

from . import redact
from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    Message,
    Record,
    checked_trace_headers,
    new_stats,
)

STATS = new_stats()
globals()["DirStream"] = DirStream  # the name the .py module exports (cimported here)

METHODS = frozenset(
    b"GET POST PUT DELETE HEAD OPTIONS PATCH CONNECT TRACE PROPFIND PROPPATCH MKCOL COPY "
    b"MOVE LOCK UNLOCK SEARCH REPORT PURGE".split()
)
_METHOD_NAMES = {m: m.decode() for m in METHODS}
_REQ_LINE = re.compile(
    rb"(?:^|\r\n)((?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE|PURGE) "
    rb"[^\s]{1,8192} HTTP/1\.[01]\r\n)"
)
_RESP_LINE = re.compile(rb"(?:^|\r\n)(HTTP/1\.[01] [1-5]\d\d[ \r])")
_RESP_START = re.compile(rb"HTTP/1\.[01] [1-5]\d\d")
MAX_HEAD = 32 * 1024

# Body framing modes.
cdef enum:
    M_HEAD = 0
    M_CHUNKED = 1
    M_UNTIL_CLOSE = 2
    M_WAIT = 3
# Chunked sub-states.
cdef enum:
    CH_SIZE = 0
    CH_TRAILER = 1
HEAD, CHUNKED, UNTIL_CLOSE, WAIT = M_HEAD, M_CHUNKED, M_UNTIL_CLOSE, M_WAIT

# Lengths past this are clamped for the skip arithmetic (2**62 bytes never arrive);
# the attribute keeps the declared value.
cdef long long BIG = 4611686018427387904

cdef dict _CODES = {c: str(c) for c in range(100, 1000)}
# Shared, never mutated: records copy trace headers before adding to them.
cdef dict _NO_TRACE = {}
cdef str _MASK = redact.MASK

# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) -------------------

cdef Py_ssize_t _crlf(_Bytes v, Py_ssize_t start, Py_ssize_t stop):
    """Index of the first CRLF in v[start:stop], or -1 (memchr: memmem's set-up costs
    more than the search on lines this short)."""
    cdef const void *hit
    cdef Py_ssize_t i
    if start < 0:
        start = 0
    if stop > v.n:
        stop = v.n
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


cdef Py_ssize_t _blank(_Bytes v, Py_ssize_t start, Py_ssize_t stop):
    """Index of the first CRLF CRLF (a head's end) in v[start:stop], or -1."""
    cdef const void *hit
    cdef Py_ssize_t i
    if start < 0:
        start = 0
    if stop > v.n:
        stop = v.n
    while stop - start >= 4:
        hit = memchr(v.p + start, 13, <size_t>(stop - start - 3))
        if hit == NULL:
            return -1
        i = <const unsigned char *>hit - v.p
        if v.p[i + 1] == 10 and v.p[i + 2] == 13 and v.p[i + 3] == 10:
            return i
        start = i + 1
    return -1


cdef inline bint _starts(_Bytes v, Py_ssize_t at, const char *s, Py_ssize_t k):
    return 0 <= at and at + k <= v.n and memcmp(v.p + at, s, <size_t>k) == 0


cdef inline bint _space(int c):
    # bytes.strip()'s whitespace
    return c == 32 or (9 <= c <= 13)


cdef inline bint _upper(int c):
    return 65 <= c <= 90


cdef inline bint _digit(int c):
    return 48 <= c <= 57


cdef inline int _lower(int c):
    return c + 32 if 65 <= c <= 90 else c


cdef bytes _strip(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    """bytes v[i:j].strip()"""
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    while i < j and _space(v.p[i]):
        i += 1
    while j > i and _space(v.p[j - 1]):
        j -= 1
    if j <= i:
        return b""
    return PyBytes_FromStringAndSize(<const char *>v.p + i, j - i)


# -- head scan ------------------------------------------------------------------------
# Header names looked up, lower case with their colon.  A header is found where the
# lower-cased head has "\r\n" + name + ":" (the first such place), exactly what
# `low.find(b"\r\nname:")` found on a lower-cased copy, but in one pass over the lines.
cdef enum:
    K_HOST = 0
    K_UA = 1
    K_CL = 2
    K_TE = 3
    K_EXPECT = 4
    K_AUTH = 5
    K_COOKIE = 6
    K_SET_COOKIE = 7
    K_TRACE = 8  # the trace headers follow, in TRACE_HEADERS order
    K_MAX = 24

cdef list _KEYS = [b"host:", b"user-agent:", b"content-length:", b"transfer-encoding:",
                   b"expect:", b"authorization:", b"cookie:", b"set-cookie:"]
cdef list _TRACE_NAMES = list(TRACE_HEADERS)
_KEYS += [(n + ":").encode() for n in _TRACE_NAMES]
cdef Py_ssize_t _NKEYS = len(_KEYS)
if _NKEYS > K_MAX:
    raise ImportError("too many HTTP header keys for the compiled head scan")
# The keys as C strings (the bytes objects live in _KEYS for the module's lifetime).
cdef const unsigned char *_KP[K_MAX]
cdef Py_ssize_t _KL[K_MAX]
for _k in range(_NKEYS):
    _KP[_k] = <const unsigned char *>PyBytes_AS_STRING(_KEYS[_k])
    _KL[_k] = PyBytes_GET_SIZE(_KEYS[_k])


cdef void _scan(_Bytes v, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t *found):
    """found[k] = index just past key k's "name:" in v[start:stop] (first line that
    starts with it), or -1."""
    cdef Py_ssize_t i, r, ls, k, klen, m
    cdef int c
    cdef const unsigned char *key
    cdef _Bytes blk
    for k in range(_NKEYS):
        found[k] = -1
    # A view limited to the block, so no key or value is read past its end.
    blk.p = v.p
    blk.n = stop if stop < v.n else v.n
    i = start
    while True:
        r = _crlf(blk, i, blk.n)
        if r < 0:
            return
        ls = r + 2
        i = ls
        c = _lower(_at(blk, ls))
        if c < 0:
            continue
        for k in range(_NKEYS):
            key = _KP[k]
            if key[0] != c or found[k] >= 0:
                continue
            klen = _KL[k]
            if ls + klen > blk.n:
                continue
            for m in range(1, klen):
                if _lower(blk.p[ls + m]) != key[m]:
                    break
            else:
                found[k] = ls + klen


cdef inline bytes _value(_Bytes v, Py_ssize_t i, Py_ssize_t stop):
    """The stripped value of a header whose name ends at i (the line ends at CRLF)."""
    cdef Py_ssize_t j = _crlf(v, i, stop)
    return _strip(v, i, j if j >= 0 else stop)


cdef dict _host_cache = {}


cdef tuple _host(bytes v):
    """Host header value -> (address, port or None): a handful of values per agent,
    parsed once."""
    hit = _host_cache.get(v)
    if hit is not None:
        return <tuple>hit
    host = v.decode("latin-1")
    port = None
    if host[-1:].isdigit() and ":" in host and not host.endswith("]"):
        h, _, p = host.rpartition(":")
        if p.isascii() and p.isdigit() and (h[:1] != "[" or h[-1:] == "]"):
            host, port = h, int(p)
    if len(_host_cache) >= 4096:
        _host_cache.clear()
    res = (host, port)
    _host_cache[v] = res
    return res


cdef class _Info:
    """What a head says: operation or status, attributes, trace headers, framing."""
    cdef int code
    cdef str op
    cdef dict attrs
    cdef dict th
    cdef bint has_length
    cdef long long length
    cdef bint chunked


cdef long long _clamp(object n):
    return BIG if n > BIG else <long long>n


cdef object _framing(_Bytes v, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t *found,
                     bint *chunked):
    """Content-Length (a Python int) or None; chunked? in *chunked."""
    cdef Py_ssize_t i
    cdef bytes te, val
    chunked[0] = False
    if found[K_TE] >= 0:
        te = _value(v, found[K_TE], stop)
        if te.lower().endswith(b"chunked"):
            chunked[0] = True
            return None
    i = found[K_CL]
    if i < 0:
        return None
    val = _value(v, i, stop)
    if not val.isdigit():
        # "5, 5": a list of one repeated value is that value (RFC 9110 8.6).
        vals = {x.strip() for x in val.split(b",")}
        if len(vals) != 1:
            return None
        val = vals.pop()
        if not val.isdigit():
            return None
    return int(val)


cdef dict _trace(_Bytes v, Py_ssize_t stop, Py_ssize_t *found):
    cdef Py_ssize_t k
    cdef dict th = None
    for k in range(K_TRACE, _NKEYS):
        if found[k] >= 0:
            if th is None:
                th = {}
            th[_TRACE_NAMES[k - K_TRACE]] = _value(v, found[k], stop).decode("latin-1")
    if th is None:
        return _NO_TRACE
    return checked_trace_headers(th, STATS)


cdef inline str _method(_Bytes v, Py_ssize_t start, Py_ssize_t stop):
    if stop - start == 3 and _starts(v, start, b"GET", 3):
        return "GET"
    if stop - start == 4 and _starts(v, start, b"POST", 4):
        return "POST"
    mb = PyBytes_FromStringAndSize(<const char *>v.p + start, stop - start)
    name = _METHOD_NAMES.get(mb)
    return name if name is not None else mb.decode()


cdef _Info _request_info(bytes data, Py_ssize_t start, Py_ssize_t stop):
    """A request head data[start:stop] (ending with the CRLF of its last line, without
    the blank line), or None if it is not one."""
    cdef _Bytes v = _view(data)
    cdef Py_ssize_t j, k, path0, path1, q0 = -1, q1 = -1
    cdef Py_ssize_t found[K_MAX]
    cdef int c
    cdef bint chunked
    cdef _Info info
    if stop > v.n:
        stop = v.n
    v.n = stop  # nothing past the head is read
    # Request line: ([A-Z][A-Z-]{2,15}) ([^ ?]*)(?:\?([^ ]*))? HTTP/(1\.[01])\r\n
    if not _upper(_at(v, start)):
        return None
    j = start + 1
    while True:
        c = _at(v, j)
        if not (_upper(c) or c == 45):
            break
        j += 1
    if not (2 <= j - start - 1 <= 15) or _at(v, j) != 32:
        return None
    method = _method(v, start, j)
    k = path0 = j + 1
    while True:
        c = _at(v, k)
        if c < 0 or c == 32 or c == 63:
            break
        k += 1
    path1 = k
    if c == 63:
        k += 1
        q0 = k
        while True:
            c = _at(v, k)
            if c < 0 or c == 32:
                break
            k += 1
        q1 = k
    if not _starts(v, k, b" HTTP/1.", 8):
        return None
    c = _at(v, k + 8)
    if (c != 48 and c != 49) or _at(v, k + 9) != 13 or _at(v, k + 10) != 10:
        return None
    path = PyBytes_FromStringAndSize(<const char *>v.p + path0, path1 - path0).decode("latin-1")
    attrs = {"http.request.method": method, "url.path": path,
             "network.protocol.version": "1.1" if c == 49 else "1.0"}
    if q0 >= 0:
        attrs["url.query"] = PyBytes_FromStringAndSize(
            <const char *>v.p + q0, q1 - q0).decode("latin-1")
    _scan(v, start, stop, found)
    if found[K_HOST] >= 0:
        host, port = _host(_value(v, found[K_HOST], stop))
        if port is not None:
            attrs["server.port"] = port
        attrs["server.address"] = host
    if found[K_UA] >= 0:
        attrs["user_agent.original"] = _value(v, found[K_UA], stop).decode("latin-1")
    # Redacted: the value is never even sliced out.
    if found[K_AUTH] >= 0:
        attrs["http.request.header.authorization"] = _MASK if redact.REDACT else \
            _value(v, found[K_AUTH], stop).decode("latin-1")
    if found[K_COOKIE] >= 0:
        attrs["http.request.header.cookie"] = _MASK if redact.REDACT else \
            _value(v, found[K_COOKIE], stop).decode("latin-1")
    th = _trace(v, stop, found)
    length = _framing(v, start, stop, found, &chunked)
    if length is None and not chunked:
        length = 0
    if length is not None:
        attrs["http.request.body.size"] = length
    if found[K_EXPECT] >= 0 and _value(v, found[K_EXPECT], stop) == b"100-continue":
        attrs["http.request.expect_continue"] = True
    info = _Info.__new__(_Info)
    info.op = method + " " + path
    info.attrs = attrs
    info.th = th
    info.has_length = length is not None
    info.length = _clamp(length) if length is not None else 0
    info.chunked = chunked
    return info


cdef inline int _code_at(_Bytes v, Py_ssize_t i):
    """The status code of "HTTP/1.x NNN" at i (100-999), or -1."""
    cdef int a = _at(v, i + 9), b = _at(v, i + 10), c = _at(v, i + 11)
    if not (49 <= a <= 57 and _digit(b) and _digit(c)):
        return -1
    return (a - 48) * 100 + (b - 48) * 10 + (c - 48)


cdef _Info _response_info(bytes data, Py_ssize_t start, Py_ssize_t stop, str req_op):
    """A response head data[start:stop] answering `req_op`, or None if it is not one."""
    cdef _Bytes v = _view(data)
    cdef Py_ssize_t found[K_MAX]
    cdef int code
    cdef bint chunked = False
    cdef _Info info
    if stop > v.n:
        stop = v.n
    v.n = stop
    if stop - start < 12 or not _starts(v, start, b"HTTP/1.", 7) or _at(v, start + 8) != 32:
        return None
    code = _code_at(v, start)
    if code < 0:
        return None
    info = _Info.__new__(_Info)
    info.code = code
    if code < 200 and code != 101:
        info.attrs = {}
        info.th = {}
        info.has_length = True
        info.length = 0
        info.chunked = False
        return info
    _scan(v, start, stop, found)
    length = _framing(v, start, stop, found, &chunked)
    if code == 204 or code == 304 or code == 101 or req_op.startswith("HEAD "):
        length, chunked = 0, False
    elif code < 300 and req_op.startswith("CONNECT "):
        length, chunked = 0, False
    attrs = {"http.response.status_code": code}
    if found[K_SET_COOKIE] >= 0:
        attrs["http.response.header.set-cookie"] = _MASK if redact.REDACT else \
            _value(v, found[K_SET_COOKIE], stop).decode("latin-1")
    th = _trace(v, stop, found)
    if length is not None:
        attrs["http.response.body.size"] = length
    info.attrs = attrs
    info.th = th
    info.has_length = length is not None
    info.length = _clamp(length) if length is not None else 0
    info.chunked = chunked
    return info


cdef bint _req_start(_Bytes v, Py_ssize_t i):
    """[A-Z][A-Z-]{2,15} [^\\s] at i: a request line's start."""
    cdef Py_ssize_t j
    cdef int c
    if not _upper(_at(v, i)):
        return False
    j = i + 1
    while True:
        c = _at(v, j)
        if not (_upper(c) or c == 45):
            break
        j += 1
    if not (2 <= j - i - 1 <= 15) or c != 32:
        return False
    c = _at(v, j + 1)
    return c >= 0 and not _space(c)


# -- per-connection state -------------------------------------------------------------

cdef class _Side:
    """Framing state of one direction."""
    cdef int mode
    cdef int chunk_state
    cdef object msg  # Message whose body is being read, or None
    cdef Pending req  # request side: the request being read
    # response side: what the response head said
    cdef int code
    cdef dict rattrs
    cdef dict rth
    cdef str trunc

    def __cinit__(self):
        self.msg = None
        self.trunc = ""


cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef inline str _status(int code, int req_dir):
    if code >= 500 or (code >= 400 and req_dir == 0):
        return STATUS_ERROR
    if code < 400:
        return STATUS_OK
    return STATUS_UNSET


cdef class Http1Parser(StreamParser):
    """One HTTP/1.x connection, both directions."""

    cdef _Side side0, side1

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = "http"
        self.counts = STATS
        self.side0 = _Side()
        self.side1 = _Side()
        self.pending = deque()

    cdef inline _Side _side(self, int d):
        return self.side0 if d == 0 else self.side1

    # -- contract ---------------------------------------------------------------------
    cdef list feed_raw(self, int d, bytes data, long long size, long long off, object ts,
                       object tid, object seq):
        # Fast path for the common case: a chunk that starts with a whole head, nothing
        # buffered, and holds exactly one message or the start of one whose body runs
        # on (or past the captured prefix).  Anything else: the general machinery.
        cdef DirStream st
        cdef _Side side
        cdef Py_ssize_t n, e
        cdef long long end
        cdef _Info info
        cdef Pending p
        cdef list out
        if d != 0 and d != 1:
            raise IndexError("chunk direction must be 0 or 1")
        st = self._st(d)
        side = self._side(d)
        n = len(data)
        if not (st.has_next and off == st.nxt and not st.buf and not st.skip and st.synced
                and side.mode == M_HEAD and not self.closed and self.rdir >= 0
                and not self.uncertain):
            return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
        e = _blank(_view(data), 0, n)
        if e < 0:
            return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
        pending = self.pending
        if d == self.rdir:
            info = _request_info(data, 0, e + 2)
            if info is None or info.chunked or len(pending) >= MAX_PENDING:
                return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
            end = e + 4 + info.length
            if end < n or (size > n and end < size):
                return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
            msg = new_message(off, n, ts, ts, tid, tid, seq)
            p = new_pending(msg, info.op, info.attrs, info.th, "")
            pending.append(p)
            if end > n:
                out = []
                side.req = p
                self._start_skip(d, st, side, n, size, off, msg, end - n, out)
                return out
        else:
            if not _starts(_view(data), 0, b"HTTP/1.", 7) or not pending \
                    or (<Pending>pending[0]).msg.start_ns > ts:
                return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
            info = _response_info(data, 0, e + 2, (<Pending>pending[0]).operation)
            if info is None or info.code < 200 or info.code == 101 or info.chunked \
                    or not info.has_length:
                return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
            end = e + 4 + info.length
            if end < n or (size > n and end < size):
                return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
            msg = new_message(off, n, ts, ts, tid, tid, seq)
            if end > n:
                out = []
                side.code = info.code
                side.rattrs = info.attrs
                side.rth = info.th
                self._start_skip(d, st, side, n, size, off, msg, end - n, out)
                return out
            p = <Pending>pending.popleft()
            self._answered_early(p)
            p.attributes.update(info.attrs)
            th = info.th
            trace = {**th, **p.trace_headers} if th else p.trace_headers
            st.nxt = st.base = off + n
            if st.marks:
                st.marks.clear()
            return [new_record("http", p.msg, msg, p.operation, _status(info.code, self.rdir),
                           _CODES[info.code], "", p.attributes, trace, p.incomplete)]
        st.nxt = st.base = off + n
        if st.marks:
            st.marks.clear()
        return []

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0, e, new
        cdef _Side side = self._side(d)
        cdef bint is_req
        cdef int mode
        if self.rdir < 0:
            self.rdir = 1 - d if _starts(v, 0, b"HTTP/", 5) else d
        is_req = d == self.rdir
        while pos < n:
            mode = side.mode
            if mode == M_HEAD:
                e = _blank(v, pos, n)
                if e < 0:
                    if n - pos >= 16 and not (_req_start(v, pos) if is_req
                                              else _starts(v, pos, b"HTTP/1.", 7)):
                        _count("bad_frame")
                        pos = self._garbage(d, st, buf, pos + 1, out)
                        if pos < 0:
                            return
                        continue
                    if n - pos > MAX_HEAD:
                        _count("head_too_long")
                        pos = self._garbage(d, st, buf, pos + 1, out)
                        if pos < 0:
                            return
                        continue
                    break
                if is_req:
                    new = self._request_head(d, st, side, buf, pos, e + 4, out)
                else:
                    new = self._response_head(d, st, side, buf, pos, e + 4, out)
                if new < 0:
                    _count("bad_frame")
                    pos = self._garbage(d, st, buf, pos + 1, out)
                    if pos < 0:
                        return
                    continue
                pos = new
            elif mode == M_CHUNKED:
                pos = self._chunked(d, st, side, buf, pos, n, out)
                if pos < 0:
                    return
                if side.mode == M_CHUNKED:
                    break
            elif mode == M_UNTIL_CLOSE:
                side.msg.size += n - pos
                st.last_mark_end(side.msg)
                pos = n
            else:
                break
        st.consume(pos)

    cdef Py_ssize_t _garbage(self, int d, DirStream st, bytes buf, Py_ssize_t start,
                             list out) except -2:
        """Index of the next frame start in buf after garbage; -1 when none (desync)."""
        cdef Py_ssize_t i, j
        cdef _Bytes v = _view(buf)
        i = self._resync(d, buf[start:])
        if i >= 0:
            return start + i
        # A syscall boundary is a likely message boundary too.
        for mark in st.marks:
            j = <long long>(<tuple>mark)[0] - st.base
            if start <= j < v.n:
                if d == self.rdir:
                    if _req_start(v, j):
                        return j
                elif _RESP_START.match(buf, j):
                    return j
        _count("desync")
        self._desync(d, st, out)
        return -1

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        rx = _RESP_LINE if (self.rdir >= 0 and d != self.rdir) else _REQ_LINE
        m = rx.search(data)
        if m is None and self.rdir < 0:
            m = _RESP_LINE.search(data)
        return m.start(1) if m is not None else -1

    cdef Py_ssize_t _request_head(self, int d, DirStream st, _Side side, bytes buf,
                                  Py_ssize_t pos, Py_ssize_t end, list out) except -2:
        cdef _Info info = _request_info(buf, pos, end - 2)
        cdef Pending p
        if info is None:
            return -1
        msg = st.message(st.base + pos, st.base + end)
        p = new_pending(msg, info.op, info.attrs, info.th, "")
        if len(self.pending) >= MAX_PENDING:
            _count("pending_overflow")
            out.append(self._incomplete(<Pending>self.pending.popleft(), "evicted"))
        self.pending.append(p)
        side.req = p
        return self._body(d, st, side, msg, info.has_length, info.length, info.chunked,
                          buf, end, out)

    cdef void _start_skip(self, int d, DirStream st, _Side side, long long n,
                          long long size, long long off, msg, long long rest,
                          list out) except *:
        """The body runs past this chunk's n captured bytes (of size, at stream offset
        off): skip the rest by length."""
        st.nxt = st.base = off + n
        if st.marks:
            st.marks.clear()
        side.mode = M_WAIT
        side.msg = msg
        side.trunc = ""
        st.skip = rest
        st.open = msg
        if size > n:
            _count("truncated_chunk")
            self._gap(d, st, size - n, out)

    cdef Py_ssize_t _response_head(self, int d, DirStream st, _Side side, bytes buf,
                                   Py_ssize_t pos, Py_ssize_t end, list out) except -2:
        cdef Pending req = <Pending>self.pending[0] if self.pending else None
        cdef _Info info = _response_info(buf, pos, end - 2,
                                         req.operation if req is not None else "")
        cdef Py_ssize_t new
        if info is None:
            return -1
        if info.code < 200 and info.code != 101:
            # Interim (100 Continue, 103 Early Hints): the final response follows.
            if req is not None:
                req.attributes["http.response.interim_status_code"] = info.code
            return end
        msg = st.message(st.base + pos, st.base + end)
        side.code = info.code
        side.rattrs = info.attrs
        side.rth = info.th
        if not info.has_length and not info.chunked:
            side.mode = M_UNTIL_CLOSE
            side.msg = msg
            side.trunc = ""
            return end
        new = self._body(d, st, side, msg, info.has_length, info.length, info.chunked,
                         buf, end, out)
        if info.code == 101:
            # Upgraded (WebSocket, h2c): what follows is no longer HTTP/1.
            _count("upgrade")
            self.closed = True
        return new

    cdef Py_ssize_t _body(self, int d, DirStream st, _Side side, msg, bint has_length,
                          long long length, bint chunked, bytes buf, Py_ssize_t end,
                          list out) except -2:
        """Start reading a body; completes the message now if it is all there."""
        cdef long long avail
        cdef tuple m
        side.msg = msg
        side.trunc = ""
        if chunked:
            side.mode = M_CHUNKED
            side.chunk_state = CH_SIZE
            return end
        if has_length and length:
            avail = len(buf) - end
            if avail < length:
                # The rest arrives later (or was not captured): the stream skips it.
                msg.size += avail
                st.skip = length - avail
                st.open = msg
                side.mode = M_WAIT
                st.last_mark_end(msg)
                return len(buf)
            msg.size += length
            m = st.mark_at(st.base + end + length - 1)
            msg.end_ns = m[1]
            msg.end_tid = m[2]
        else:
            length = 0
        self._complete(d, side, out)
        return end + length

    cdef Py_ssize_t _chunked(self, int d, DirStream st, _Side side, bytes buf,
                             Py_ssize_t pos, Py_ssize_t n, list out) except -2:
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t j, e, stop
        cdef long long size, need, avail
        cdef tuple m
        msg = side.msg
        if n > v.n:
            n = v.n
        while pos < n:
            if side.chunk_state == CH_SIZE:
                j = _crlf(v, pos, n)
                size = -1
                if j < 0:
                    if n - pos <= 64:
                        return pos
                else:
                    size = self._chunk_size(v, buf, pos, j)
                if size < 0:
                    _count("bad_chunk")
                    side.trunc = "gap"
                    self._desync(d, st, out)
                    return -1
                msg.size += j + 2 - pos
                pos = j + 2
                if size == 0:
                    side.chunk_state = CH_TRAILER
                    continue
                need = size + 2
                avail = n - pos
                if avail < need:
                    msg.size += avail
                    st.skip = need - avail
                    st.open = msg
                    st.last_mark_end(msg)
                    return n
                msg.size += need
                pos += need
            else:
                if _starts(v, pos, b"\r\n", 2):
                    stop = pos + 2
                else:
                    e = _blank(v, pos, n)
                    if e < 0:
                        return pos
                    stop = e + 4
                msg.size += stop - pos
                m = st.mark_at(st.base + stop - 1)
                msg.end_ns = m[1]
                msg.end_tid = m[2]
                side.chunk_state = CH_SIZE
                self._complete(d, side, out)
                return stop
        return pos

    cdef long long _chunk_size(self, _Bytes v, bytes buf, Py_ssize_t pos,
                               Py_ssize_t j) except -2:
        """The size on the chunk-size line buf[pos:j] (extensions after ';'), -1 if
        it is not one.  Plain hex digits are read here; anything else goes through
        int(..., 16) as before (it takes signs, blanks and underscores)."""
        cdef Py_ssize_t i, stop = j
        cdef long long size = 0
        cdef int c, h
        for i in range(pos, j):
            if _at(v, i) == 59:  # ';'
                stop = i
                break
        if 0 < stop - pos <= 15:
            for i in range(pos, stop):
                c = _at(v, i)
                if 48 <= c <= 57:
                    h = c - 48
                elif 97 <= c <= 102:
                    h = c - 87
                elif 65 <= c <= 70:
                    h = c - 55
                else:
                    break
                size = size * 16 + h
            else:
                return size
        try:
            big = int(buf[pos:stop], 16)
        except ValueError:
            return -1
        if big < 0:
            return -1
        return _clamp(big)

    # -- completion and matching -------------------------------------------------------
    cdef void _complete(self, int d, _Side side, list out) except *:
        """The message in `side` is whole (or as whole as it will get)."""
        side.mode = M_HEAD
        if d == self.rdir:
            if side.trunc and side.req is not None:
                side.req.incomplete = side.trunc
            side.msg = None
            return
        self._emit(side, out)

    cdef void _emit(self, _Side side, list out) except *:
        cdef int code = side.code
        cdef dict attrs = side.rattrs, th = side.rth, trace
        cdef Pending p
        cdef str inc
        msg = side.msg
        side.msg = None
        if not self.pending and not self._salvage_request():
            _count("unmatched_response")
            return
        if (<Pending>self.pending[0]).msg.start_ns > msg.start_ns:
            # It answers a request lost before the oldest one seen.
            _count("unmatched_response")
            return
        p = <Pending>self.pending.popleft()
        self._answered_early(p)
        p.attributes.update(attrs)
        trace = p.trace_headers
        if th:
            trace = {**th, **trace}
        inc = self._why(p.incomplete, side.trunc) if (p.incomplete or side.trunc
                                                       or self.uncertain) else ""
        out.append(new_record("http", p.msg, msg, p.operation, _status(code, self.rdir),
                          _CODES[code] if 100 <= code < 1000 else str(code), "",
                          p.attributes, trace, inc))

    cdef void _answered_early(self, Pending p) except *:
        """p is answered before the rest of its body was seen: those bytes never came."""
        cdef DirStream rst = self._st(self.rdir)
        if rst.skip and rst.open is p.msg:
            p.incomplete = p.incomplete or "truncated"
            rst.open = None

    cdef void _tail_done(self, int d, DirStream st, msg, list out) except *:
        cdef _Side side = self._side(d)
        if st.trunc:
            side.trunc = "truncated"
            st.trunc = False
        if side.mode == M_WAIT:
            self._complete(d, side, out)
        # CHUNKED: more chunk-size lines follow; the parse loop carries on.

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        cdef _Side side = self._side(d)
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef int code
        if side.mode == M_HEAD and buf and d == self.rdir:
            self._partial_request(d, st, side, g, out)
        elif side.mode == M_HEAD and buf and d != self.rdir:
            if _starts(v, 0, b"HTTP/1.", 7) and v.n >= 12 and _digit(_at(v, 9)) \
                    and _digit(_at(v, 10)) and _digit(_at(v, 11)):
                code = (_at(v, 9) - 48) * 100 + (_at(v, 10) - 48) * 10 + _at(v, 11) - 48
                if code >= 200 and self.pending:
                    msg = st.message(st.base, st.base + v.n)
                    msg.size += g
                    side.code = code
                    side.rattrs = {"http.response.status_code": code}
                    side.rth = None
                    side.msg = msg
                    side.trunc = "truncated"
                    self._emit(side, out)
                    side.trunc = ""
        elif side.mode == M_UNTIL_CLOSE:
            side.msg.size += g
            side.trunc = "truncated"
            return True
        elif side.mode == M_CHUNKED and side.msg is not None:
            side.trunc = "gap"
            if d == self.rdir:
                if side.req is not None:
                    side.req.incomplete = "gap"
            else:
                self._emit(side, out)
            side.mode = M_HEAD
            side.trunc = ""
        return False

    cdef bint _partial_request(self, int d, DirStream st, _Side side, long long g,
                               list out) except -1:
        """A head cut short (longer than the captured prefix, or lost bytes): keep the
        request line and the headers seen, so the response still has a request."""
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t eol, cut, before
        cdef bint ok = False
        cdef Pending p
        eol = _crlf(v, 0, v.n)
        if eol > 0:
            cut = buf.rfind(b"\r\n")
            fake = buf[:cut] + b"\r\n\r\n"
            before = len(self.pending)
            if self._request_head(d, st, side, fake, 0, len(fake), out) >= 0 \
                    and len(self.pending) > before:
                p = <Pending>self.pending[-1]
                p.incomplete = "truncated"
                p.msg.size = len(buf) + g
                st.last_mark_end(p.msg)
                ok = True
            st.skip = 0
            st.open = None
        side.mode = M_HEAD
        side.msg = None
        return ok

    cdef bint _salvage_request(self) except -1:
        """A response came while its request's head is still incomplete: the rest of
        that head was lost.  Take what there is, and resync the request direction."""
        cdef int d = self.rdir
        cdef DirStream st = self._st(d)
        cdef _Side side = self._side(d)
        cdef bint ok
        if side.mode != M_HEAD or not st.buf or not st.synced:
            return False
        ok = self._partial_request(d, st, side, 0, [])
        st.drop()
        st.synced = False
        _count("salvaged_request")
        return ok

    cdef void _skipped(self, int d, object ts, list out) except *:
        # A response chunk dropped while resynchronising: the request head still being
        # read is done (its rest was lost), then the base undoes the pending requests.
        if d != self.rdir and self.rdir >= 0:
            self._salvage_request()
        StreamParser._skipped(self, d, ts, out)

    cdef void _on_desync(self, int d, list out) except *:
        cdef _Side side = self._side(d)
        if side.mode == M_UNTIL_CLOSE:
            return
        if side.mode == M_CHUNKED and side.msg is not None and d != self.rdir:
            side.trunc = "gap"
            self._emit(side, out)
        side.mode = M_HEAD
        side.msg = None
        side.trunc = ""
        if d != self.rdir:
            # Responses were lost: which requests they answered is unknown.
            if self.rdir >= 0:
                self._salvage_request()
            while self.pending:
                out.append(self._incomplete(<Pending>self.pending.popleft(), "gap"))

    cdef void _flush(self, reason, list out) except *:
        cdef int d
        cdef _Side side
        for d in range(2):
            side = self._side(d)
            if side.mode == M_UNTIL_CLOSE and d != self.rdir and side.msg is not None:
                self._emit(side, out)
                side.mode = M_HEAD
        while self.pending:
            out.append(self._incomplete(<Pending>self.pending.popleft(),
                                          reason or "no response"))
        self.closed = True
