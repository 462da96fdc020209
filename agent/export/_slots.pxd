# Reading a __slots__ member of a span by its C offset (agent/export/_columns.pyx,
# _redact.pyx): the offset comes from the class's member descriptor, checked to be a
# plain object slot; callers check the object's type before they use an offset.
from cpython.object cimport PyObject


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
