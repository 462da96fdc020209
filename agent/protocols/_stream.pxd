# cython: language_level=3
"""C declarations of the stream plumbing every compiled parser shares (_stream.pyx).

A compiled parser `cimport`s these and subclasses `StreamParser`: its C fields and
methods are reached directly (no Python attribute lookups), and the hooks below are
C virtual methods the parser overrides for what its framing does differently.
"""


cdef class DirStream:
    cdef readonly bytes buf
    cdef readonly long long base
    cdef long long nxt
    cdef bint has_next
    cdef readonly long long skip
    cdef readonly bint synced
    cdef readonly bint started  # HTTP/2: the connection preface was looked for
    cdef list marks
    cdef object open  # Message whose tail is being skipped, or None
    cdef bint trunc  # the open message lost bytes

    cdef tuple mark_at(self, long long off)
    cdef object message(self, long long start, long long end)
    cdef void consume(self, Py_ssize_t n) except *
    cdef void drop(self) except *
    cdef void last_mark_end(self, object msg) except *


cdef object new_message(object offset, object size, object start_ns, object end_ns,
                        object tid, object end_tid, object seq)
cdef object new_record(object protocol, object request, object response, object operation,
                       object status, object status_code, object error, object attributes,
                       object trace_headers, object incomplete)


cdef class Pending:
    cdef object msg
    cdef str operation
    cdef dict attributes
    cdef dict trace_headers  # None: no trace headers
    cdef str incomplete


cdef Pending new_pending(object msg, str operation, dict attributes, dict trace_headers,
                         str incomplete)


cdef class StreamParser:
    cdef readonly object client_side
    cdef readonly tuple streams
    cdef readonly object pending  # deque of Pending (a dict for DNS, None for HTTP/2)
    cdef readonly bint closed
    # Messages were lost where their count is unknown: until the pending queue
    # drains, first-in-first-out matching may be off by that count.
    cdef public bint uncertain
    cdef int rdir  # direction carrying requests, -1 until known
    cdef DirStream st0, st1
    cdef str proto  # the protocol name records carry
    cdef object counts  # the module's STATS counter
    # Instance attributes stay possible, as on the Python parsers (tests replace `feed`
    # on one connection's parser).
    cdef dict __dict__

    cdef inline DirStream _st(self, int d):
        return self.st0 if d == 0 else self.st1

    cdef void _setup(self, object client_side) except *

    # -- plumbing ----------------------------------------------------------------------
    # feed(chunk) with the chunk's fields as arguments: what `feed` runs, and what the
    # connection core (agent/conn/_core.pyx) calls per data event without making a Chunk
    # or a Python call.  Parsers with a fast path override it (and not `feed`).
    cdef list feed_raw(self, int d, bytes data, long long size, long long off, object ts,
                       object tid, object seq)
    cdef void _feed(self, int d, bytes data, long long size, long long off, object ts,
                    object tid, object seq, list out) except *
    cdef void _count(self, str reason) except *
    cdef void _gap(self, int d, DirStream st, long long g, list out) except *
    cdef void _lose(self, int d, DirStream st, long long g, list out) except *
    cdef void _desync(self, int d, DirStream st, list out) except *
    cdef str _why(self, str a, str b)
    cdef object _incomplete(self, Pending p, str reason)

    # -- hooks -------------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *
    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1
    cdef Py_ssize_t _resync(self, int d, bytes data) except -2
    cdef void _on_desync(self, int d, list out) except *
    cdef void _skipped(self, int d, object ts, list out) except *
    cdef void _tail_done(self, int d, DirStream st, object msg, list out) except *
    cdef void _flush(self, object reason, list out) except *
