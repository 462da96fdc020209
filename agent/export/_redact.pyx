# cython: language_level=3, boundscheck=True, wraparound=False, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""The per-span loop of `agent.protocols.redact.spans` in compiled code.

What gets masked, and how, stays in redact.py: this module only walks a batch and
decides, for each value, whether redact.py's functions must see it, by the same tests
`redact.spans`/`redact.attributes` make (a value shorter than `text()` looks at and
not by-key; a value's result already in redact.py's cache).  Results of the pure
functions are cached as redact.py caches them; a span that changes is copied (the
copy made in C: a new object of the same class with every slot of the original, then
the four redacted fields) when its class is a plain __slots__ class, else by
redact.py's `_copy`.  tests/export/test_redact_compiled.py checks it against the
Python loop (`redact.reference_spans`) on the recorded demo stream and on generated
spans with hostile values.
"""

from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact
from libc.stdlib cimport free, malloc


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


cdef Py_ssize_t _slot_offset(object typ, object name):
    # The offset of a __slots__ member that holds any object, or -1.
    d = typ.__dict__.get(name)
    if d is None or Py_TYPE(d) != &PyMemberDescr_Type:
        return -1
    if (<PyMemberDescrObject*>d).d_member.type != T_OBJECT_EX:
        return -1
    return (<PyMemberDescrObject*>d).d_member.offset


cdef inline PyObject** _at(object o, Py_ssize_t off):
    return <PyObject**>((<char*><PyObject*>o) + off)


cdef class Redactor:
    """Redacts batches of spans as `redact.reference_spans` does.

    `mod`: the agent.protocols.redact module (its functions, caches and limits);
    `span_type`: the class whose copies are made in C (its dataclass fields must
    all be plain slots).
    """
    cdef object mod
    cdef dict value_cache
    cdef object value_fn  # redact._value(key, value): cached scrub
    cdef object scrub_fn  # redact._scrub(key, value)
    cdef object text_fn
    cdef object url_query_fn
    cdef object copy_fn
    cdef frozenset keyed
    cdef dict op_cache
    cdef Py_ssize_t short, cache_len, cache_max, op_cache_max
    cdef object span_type
    cdef object descrs  # the slot descriptors the offsets come from
    cdef Py_ssize_t* offs
    cdef Py_ssize_t noffs
    cdef Py_ssize_t o_attrs, o_res, o_err, o_op
    cdef list names

    def __cinit__(self):
        self.offs = NULL
        self.noffs = 0

    def __dealloc__(self):
        free(self.offs)

    def __init__(self, object mod, object span_type):
        import dataclasses

        self.mod = mod
        self.value_cache = mod._VALUE_CACHE
        self.value_fn = mod._value
        self.scrub_fn = mod._scrub
        self.text_fn = mod.text
        self.url_query_fn = mod.url_query
        self.copy_fn = mod._copy
        self.keyed = mod._KEYED
        self.short = 12  # text() leaves shorter values alone
        self.cache_len = 256  # _value caches values up to this long
        self.cache_max = 8192
        self.op_cache = {}
        self.op_cache_max = 8192
        self.span_type = span_type
        self.o_attrs = self.o_res = self.o_err = self.o_op = -1
        fs = dataclasses.fields(span_type)
        names = [f.name for f in fs]
        offs = [_slot_offset(span_type, n) for n in names]
        if (all(f.init for f in fs) and min(offs) >= 0
                and not hasattr(span_type, "__post_init__")
                and span_type.__dictoffset__ == 0 and span_type.__weakrefoffset__ == 0):
            self.noffs = len(offs)
            self.offs = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * self.noffs)
            if self.offs == NULL:
                raise MemoryError()
            for i in range(self.noffs):
                self.offs[i] = offs[i]
            self.o_attrs = offs[names.index("attributes")]
            self.o_res = offs[names.index("resource")]
            self.o_err = offs[names.index("error")]
            self.o_op = offs[names.index("operation")]
            self.descrs = [span_type.__dict__[n] for n in names]
            self.names = names

    cdef bint _fast_copy(self):
        # The C copy holds while the class's slots are those it was built from.
        cdef Py_ssize_t i
        if self.offs == NULL:
            return False
        d = self.span_type.__dict__
        for i in range(self.noffs):
            if d.get(self.names[i]) is not self.descrs[i]:
                return False
        return True

    cdef object _copy(self, object s, object attrs, object res, object error, object op):
        # A new object of the span's class with every slot of `s` (all set: a slot
        # left unset goes the Python way), then the four redacted fields.
        cdef Py_ssize_t i
        cdef PyObject** src
        cdef PyObject** dst
        cdef PyObject* old
        for i in range(self.noffs):
            if _at(s, self.offs[i])[0] == NULL:
                return self.copy_fn(s, attrs, res, error, op)
        new = self.span_type.__new__(self.span_type)
        for i in range(self.noffs):
            src = _at(s, self.offs[i])
            dst = _at(new, self.offs[i])
            old = dst[0]
            Py_INCREF(<object>src[0])
            dst[0] = src[0]
            Py_XDECREF(old)
        _set(new, self.o_attrs, attrs)
        _set(new, self.o_res, res)
        _set(new, self.o_err, error)
        _set(new, self.o_op, op)
        return new

    cdef object attributes(self, object attrs):
        """redact.attributes(attrs): the same dict when nothing changes."""
        cdef Py_ssize_t pos = 0
        cdef PyObject* kp
        cdef PyObject* vp
        cdef object k, v, new, hit
        cdef object out = attrs
        cdef list changes = None
        if type(attrs) is not dict:
            return self.mod.attributes(attrs)
        while PyDict_Next(attrs, &pos, &kp, &vp):
            k = <object>kp
            v = <object>vp
            if not PyUnicode_CheckExact(v):
                if not PyUnicode_Check(v) or not v:  # str subclasses: as before
                    continue
            elif len(v) < self.short and k not in self.keyed:
                continue  # too short for text() to change, not a by-key value
            if len(v) <= self.cache_len:
                # redact._value, with its cache read here first.
                hit = self.value_cache.get((k, v))
                new = hit if hit is not None else self.value_fn(k, v)
            else:
                new = self.scrub_fn(k, v)
            if new is not v and new != v:
                if changes is None:
                    changes = []
                changes.append((k, new))
        if changes is not None:
            # Applied after the walk: the caller's dict is never changed, nor is the
            # dict being walked.
            out = dict(attrs)
            for k, new in changes:
                out[k] = new
        return out

    cdef object operation(self, object op):
        """The operation text as redact.spans masks it (cached: ops repeat)."""
        hit = self.op_cache.get(op)
        if hit is not None:
            return hit
        new = op
        head, sep, q = op.partition("?")
        if sep:
            new = head + "?" + self.url_query_fn(q)
        new = self.text_fn(new)
        if len(op) <= self.cache_len:
            if len(self.op_cache) >= self.op_cache_max:
                self.op_cache.clear()
            self.op_cache[op] = new
        return new

    def spans(self, list batch):
        """redact.spans(batch) (REDACT on): `batch` itself when nothing changed."""
        cdef dict resources = {}
        cdef list out = []
        cdef bint changed = False
        cdef bint fast = self._fast_copy()
        cdef object s, a, attrs, r, res, error, e, op, o
        for s in batch:
            a = s.attributes
            attrs = self.attributes(a)
            r = s.resource
            res = resources.get(id(r))
            if res is None:
                res = resources[id(r)] = self.attributes(r)
            e = s.error
            error = self.text_fn(e) if e else e
            op = o = s.operation
            if PyUnicode_CheckExact(o) and ("?" in o or len(o) >= self.short):
                op = self.operation(o)
            elif not PyUnicode_CheckExact(o):
                return self.mod.reference_spans(batch)  # whatever that does with it
            if attrs is not a or res is not r or error != e or op != o:
                if fast and type(s) is self.span_type:
                    s = self._copy(s, attrs, res, error, op)
                else:
                    s = self.copy_fn(s, attrs, res, error, op)
                changed = True
            out.append(s)
        return out if changed else batch


cdef inline void _set(object o, Py_ssize_t off, object v):
    cdef PyObject** dst = _at(o, off)
    cdef PyObject* old = dst[0]
    Py_INCREF(v)
    dst[0] = <PyObject*>v
    Py_XDECREF(old)
