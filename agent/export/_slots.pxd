# Reading and writing a __slots__ member by its C offset (agent/export/_columns.pyx,
# _redact.pyx read; agent/conn/_core.pyx, agent/protocols/_stream.pyx write): the offset
# comes from the class's member descriptor, checked to be a plain object slot; callers
# check the object's type before they use an offset.
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    ctypedef struct PyTypeObject:
        pass
    PyTypeObject PyMemberDescr_Type
    PyTypeObject* Py_TYPE(object o)
    int T_OBJECT_EX


cdef inline Py_ssize_t slot_offset(object typ, object name):
    # The offset of a __slots__ member that holds any object, or -1.
    d = typ.__dict__.get(name) if typ is not None else None
    if d is None or Py_TYPE(d) != &PyMemberDescr_Type:
        return -1
    if (<PyMemberDescrObject*>d).d_member.type != T_OBJECT_EX:
        return -1
    return (<PyMemberDescrObject*>d).d_member.offset


cdef inline void put_slot(object o, Py_ssize_t off, object v):
    """Store v in the object slot at byte offset off of o (a reference is taken)."""
    cdef PyObject** p = <PyObject**>((<char*><PyObject*>o) + off)
    cdef PyObject* old = p[0]
    Py_INCREF(v)
    p[0] = <PyObject*>v
    Py_XDECREF(old)
