"""Bounds-checked access to payload bytes, shared by the compiled parsers and protocol
inference: a view of a bytes object and the one way its bytes are read one by one."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


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
