# cython: language_level=3
"""SpanContext, compiled (issue 13): a span plus the thread-level moments the stitcher
needs, as a C struct of object fields (agent/conn/spans.py documents the fields).

Made once a span by the connection core and read once by the stitcher; as a
dataclass each construction ran a Python __init__ frame (~0.45 us) and each field read
was a descriptor lookup.  Same names, same positional constructor, same equality and
repr as the dataclass it replaces; the fields hold whatever objects they are given."""


cdef class SpanContext:
    """A span plus the thread-level moments the stitcher needs.

    For a server span: `in_tid`/`in_ns` = thread and time the request's last byte was
    read, `out_tid`/`out_ns` = thread and time the response's first byte was written.
    For a client span: `out_*` = the request written, `in_*` = the response read."""

    def __init__(self, span, conn_id, in_tid, in_ns, out_tid, out_ns, has_response):
        self.span = span
        self.conn_id = conn_id
        self.in_tid = in_tid
        self.in_ns = in_ns
        self.out_tid = out_tid
        self.out_ns = out_ns
        self.has_response = has_response

    def _astuple(self) -> tuple:
        return (self.span, self.conn_id, self.in_tid, self.in_ns, self.out_tid,
                self.out_ns, self.has_response)

    def __eq__(self, other):
        if type(other) is not SpanContext:
            return NotImplemented
        return self._astuple() == other._astuple()

    __hash__ = None  # mutable, compared by value (as the dataclass was)

    def __repr__(self) -> str:
        return (f"SpanContext(span={self.span!r}, conn_id={self.conn_id!r}, "
                f"in_tid={self.in_tid!r}, in_ns={self.in_ns!r}, out_tid={self.out_tid!r}, "
                f"out_ns={self.out_ns!r}, has_response={self.has_response!r})")

    def __reduce__(self):
        return (SpanContext, self._astuple())


cdef SpanContext new_context(object span, object conn_id, object in_tid, object in_ns,
                             object out_tid, object out_ns, object has_response):
    """A SpanContext made without a Python call (the connection core's path)."""
    cdef SpanContext c = SpanContext.__new__(SpanContext)
    c.span = span
    c.conn_id = conn_id
    c.in_tid = in_tid
    c.in_ns = in_ns
    c.out_tid = out_tid
    c.out_ns = out_ns
    c.has_response = has_response
    return c
