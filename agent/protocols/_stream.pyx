# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""The per-connection plumbing of `base.StreamParser`, compiled, shared by every
compiled parser (`_http1.pyx`, `_redis.pyx`, ...: they `cimport` it through
`_stream.pxd` and subclass `StreamParser`).

Per direction a `DirStream` keeps the unparsed bytes keyed by stream offset, the count
of bytes still to skip, whether the framing is in sync, and the marks (offset, ts, tid,
seq) of the chunks behind the buffer; `StreamParser` feeds chunks into them: overlap,
gaps and captured prefixes, skipping by length, resynchronisation, the buffer cap and
drop counters.  What a protocol's framing does differently is in the C virtual methods
it overrides (`_parse`, `_on_gap`, `_resync`, `_on_desync`, `_skipped`, `_tail_done`,
`_flush`), as the Python `base.StreamParser` documents them.  What leaves it is what
the Python parsers produced: `base.Record`s holding `base.Message`s, and the module's
`STATS` counters.
"""

from collections import deque
from dataclasses import fields as _fields

from cpython.object cimport PyObject, PyTypeObject

from agent.export._slots cimport put_slot as _put
from agent.export._slots cimport slot_offset

from .base import MAX_BUFFER, STATUS_UNSET, Message, Record

cdef extern from "Python.h":
    # What object.__new__(cls) comes down to for these classes (no argument checks).
    object _alloc "PyType_GenericAlloc"(PyTypeObject* cls, Py_ssize_t nitems)


# -- Message and Record without a Python __init__ frame ---------------------------------
# Both are slots dataclasses whose generated __init__ is a Python function that only
# stores its arguments (~1-2k instructions a call; parsers make two or three a record).
# Here a fresh instance (object.__new__) gets its slots stored at the offsets their
# member descriptors give; the field lists are checked at import, so a change of those
# classes fails loudly instead of filling the wrong slot.

cdef int _offsets(cls, tuple names, Py_ssize_t* out) except -1:
    cdef Py_ssize_t i
    if tuple(f.name for f in _fields(cls)) != names:
        raise ImportError(f"{cls.__qualname__} fields changed: update agent/protocols/_stream.pyx")
    for i in range(len(names)):
        out[i] = slot_offset(cls, names[i])
        if out[i] < 0:
            raise ImportError(f"{cls.__qualname__}.{names[i]} is not a plain slot")
    return 0


cdef Py_ssize_t _MO[7]
_offsets(Message, ("offset", "size", "start_ns", "end_ns", "tid", "end_tid", "seq"), _MO)
cdef Py_ssize_t _RO[10]
_offsets(Record, ("protocol", "request", "response", "operation", "status", "status_code",
                  "error", "attributes", "trace_headers", "incomplete"), _RO)
cdef object _MessageT = Message, _RecordT = Record
# object.__new__ would call the class's tp_alloc: PyType_GenericAlloc for both, checked here.
if (type(_MessageT).__call__ is not type.__call__ or _MessageT.__new__ is not object.__new__
        or _RecordT.__new__ is not object.__new__):
    raise ImportError("Message/Record are no longer plain slots classes: update _stream.pyx")


cdef object new_message(object offset, object size, object start_ns, object end_ns,
                        object tid, object end_tid, object seq):
    """Message(offset, size, start_ns, end_ns, tid, end_tid, seq)."""
    cdef object m = _alloc(<PyTypeObject*>_MessageT, 0)
    _put(m, _MO[0], offset)
    _put(m, _MO[1], size)
    _put(m, _MO[2], start_ns)
    _put(m, _MO[3], end_ns)
    _put(m, _MO[4], tid)
    _put(m, _MO[5], end_tid)
    _put(m, _MO[6], seq)
    return m


cdef object new_record(object protocol, object request, object response, object operation,
                       object status, object status_code, object error, object attributes,
                       object trace_headers, object incomplete):
    """Record(protocol, request, response, operation, status, status_code, error,
    attributes, trace_headers, incomplete)."""
    cdef object r = _alloc(<PyTypeObject*>_RecordT, 0)
    _put(r, _RO[0], protocol)
    _put(r, _RO[1], request)
    _put(r, _RO[2], response)
    _put(r, _RO[3], operation)
    _put(r, _RO[4], status)
    _put(r, _RO[5], status_code)
    _put(r, _RO[6], error)
    _put(r, _RO[7], attributes)
    _put(r, _RO[8], trace_headers)
    _put(r, _RO[9], incomplete)
    return r

cdef Py_ssize_t C_MAX_BUFFER = MAX_BUFFER
cdef object _SEQ_MOD = 1 << 32


cdef class DirStream:
    """One direction of a connection: unparsed bytes plus where they came from.

    `buf` holds contiguous bytes starting at stream offset `base`; `skip` counts bytes
    still to discard (the rest of a message whose length is known); `synced` is False
    after bytes were lost where the framing cannot say how many, until the parser
    finds a frame boundary again.  `marks` remembers (offset, ts, tid, seq) of the
    chunks behind `buf` so a message gets the time of its first and last byte.
    """

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
            return new_message(start, end - start, m0[1], m0[1], m0[2], m0[2], seq)
        m0 = self.mark_at(start)
        m1 = self.mark_at(end - 1) if end > start else m0
        seq = m0[3]
        if seq is not None:
            seq = (seq + start - m0[0]) % _SEQ_MOD
        return new_message(start, end - start, m0[1], m1[1], m0[2], m1[2], seq)

    cdef void consume(self, Py_ssize_t n) except *:
        """Drop the first n buffered bytes, and the marks no longer needed."""
        cdef list marks = self.marks
        cdef Py_ssize_t i
        cdef long long base
        if n:
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

    cdef void last_mark_end(self, object msg) except *:
        """msg ends with the last chunk seen."""
        cdef tuple m = <tuple>self.marks[-1]
        msg.end_ns = m[1]
        msg.end_tid = m[2]


cdef class Pending:
    """A request waiting for its response, with what the response needs to know.

    Parsers subclass it for what else their responses need (a command code, a kind)."""


cdef Pending new_pending(object msg, str operation, dict attributes, dict trace_headers,
                         str incomplete):
    """A Pending (made here: another module's Pending.__new__ takes the slower generic
    path, and requests are made once a record)."""
    cdef Pending p = Pending.__new__(Pending)
    p.msg = msg
    p.operation = operation
    p.attributes = attributes
    p.trace_headers = trace_headers
    p.incomplete = incomplete
    return p


cdef class StreamParser:
    """Base of the compiled connection parsers: both directions of one connection.

    A subclass sets `proto` and `counts` (its module's STATS) in `__init__`, after
    `StreamParser.__init__`, implements `_parse` and overrides the other hooks it
    needs; a fast path for common chunks may override `feed` and fall back on `_feed`.
    """

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)

    cdef void _setup(self, object client_side) except *:
        """What __init__ does; subclasses call it from their own __init__ (a C call,
        where `StreamParser.__init__(self, ...)` would be a Python attribute lookup and
        call once per connection)."""
        self.client_side = client_side
        self.st0 = DirStream.__new__(DirStream)
        self.st1 = DirStream.__new__(DirStream)
        self.streams = (self.st0, self.st1)
        self.rdir = -1
        if client_side is not None:
            self.rdir = 0 if client_side else 1
        self.closed = False
        self.uncertain = False

    @property
    def protocol(self):
        return self.proto

    @property
    def stats(self):
        return self.counts

    @property
    def req_dir(self):
        return None if self.rdir < 0 else self.rdir

    # -- contract ----------------------------------------------------------------------
    def feed(self, chunk) -> list:
        return self.feed_raw(chunk.direction, chunk.data, chunk.size, chunk.offset,
                             chunk.ts_ns, chunk.tid, chunk.seq)

    def flush(self, reason) -> list:
        cdef list out = []
        self._flush(reason, out)
        return out

    # -- plumbing ----------------------------------------------------------------------
    cdef list feed_raw(self, int d, bytes data, long long size, long long off, object ts,
                       object tid, object seq):
        cdef list out = []
        if d != 0 and d != 1:
            raise IndexError("chunk direction must be 0 or 1")
        self._feed(d, data, size, off, ts, tid, seq, out)
        return out

    cdef void _feed(self, int d, bytes data, long long size, long long off, object ts,
                    object tid, object seq, list out) except *:
        """A chunk of `size` bytes at stream offset `off` of direction d, of which
        `data` (a prefix) was captured."""
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
                    self._count("overlap")
                    return
                if cut >= len(data):
                    self._count("overlap")
                    self._gap(d, st, size - cut, out)
                    return
                data = data[cut:]
                off = st.nxt
            else:
                self._count("gap")
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
                    self._count("resync_skip")
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
                self._parse(d, st, out)
                if len(st.buf) > C_MAX_BUFFER:
                    self._count("buffer_overflow")
                    st.drop()
                    self._desync(d, st, out)
        if size > len(whole):
            self._count("truncated_chunk")
            self._gap(d, st, size - len(whole), out)

    cdef void _count(self, str reason) except *:
        self.counts[reason] += 1

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
            self._count("desync")
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

    cdef object _incomplete(self, Pending p, str reason):
        """The record of a request whose response will not be seen."""
        cdef str why = p.incomplete or reason
        if p.incomplete and reason and reason not in p.incomplete:
            why = p.incomplete + "," + reason
        return new_record(self.proto, p.msg, None, p.operation, STATUS_UNSET, "", "",
                      p.attributes, p.trace_headers if p.trace_headers is not None else {},
                      why)

    # -- hooks -------------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        """Consume whole frames from st.buf."""
        raise NotImplementedError

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        """Bytes lost right after st.buf: consume the head frame as truncated when its
        length is known; True if still in sync."""
        return False

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        """Index of a plausible frame start in a new chunk, or -1."""
        return -1

    cdef void _on_desync(self, int d, list out) except *:
        """Forget the state tied to the lost bytes."""
        pass

    cdef void _skipped(self, int d, object ts, list out) except *:
        """A whole chunk was dropped while looking for a frame boundary.

        If it carried responses, they answered requests sent before it: those requests
        go out incomplete rather than be matched, first in first out, with later answers.
        (Parsers matching by id, or with no queue, have nothing to undo.)
        """
        pending = self.pending
        if d == self.rdir or not isinstance(pending, deque):
            return
        while pending and (<Pending>pending[0]).msg.start_ns <= ts:
            out.append(self._incomplete(<Pending>pending.popleft(), "gap"))

    cdef void _tail_done(self, int d, DirStream st, object msg, list out) except *:
        """The skipped tail of `msg` (st.open until now) is over."""
        pass

    cdef void _flush(self, object reason, list out) except *:
        """The connection is over: requests still waiting go out incomplete."""
        while self.pending:
            out.append(self._incomplete(<Pending>self.pending.popleft(),
                                        reason or "no response"))
        self.closed = True
