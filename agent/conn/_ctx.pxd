# cython: language_level=3
# The C view of SpanContext (agent/conn/_ctx.pyx): the stitcher (agent/stitch/_stitcher.pyx)
# and the connection core (agent/conn/_core.pyx) read and fill its fields directly.

cdef class SpanContext:
    cdef public object span
    cdef public object conn_id
    cdef public object in_tid
    cdef public object in_ns
    cdef public object out_tid
    cdef public object out_ns
    cdef public object has_response


cdef SpanContext new_context(object span, object conn_id, object in_tid, object in_ns,
                             object out_tid, object out_ns, object has_response)
