# cython: language_level=3, boundscheck=True, wraparound=False, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""Spans to Arrow columns in one compiled pass (proto/columns.py's fast path).

The Python encoder built a Python list per column (a tuple per map entry, a bytes
object per id), and pyarrow then converted each list: ~25-30 us a span, much of it
the garbage collector walking the young objects those lists made.  Here every span is
read once and each column's values go straight into C buffers: fixed-width integers,
int32 offsets plus UTF-8 bytes for strings, ids and map keys/values, and an int32
index per span for the dictionary-encoded (LowCardinality) columns, whose distinct
values come from a per-batch dict.  pyarrow then wraps the buffers without a copy
(`Array.from_buffers`).  No Python object is made per value, except the JSON text of
typed attribute values that are not plain ints or bools (the same function as the
Python encoder writes it).

The output must be the Python encoder's table, value for value.  Whatever this
path does not handle exactly as `pa.array` would (a float where an int is declared,
None in a non-nullable column, a str subclass, a non-hex id, a surrogate, ...) raises
`Unhandled`, and the caller encodes that batch with the Python encoder, which then
converts or raises exactly as before.  tests/proto/test_columns_equivalence.py checks
both on the recorded demo stream and on generated spans.

Every write goes through `_put`/`_reserve`, which grow the buffer before writing:
lengths come from Python objects, never from the data itself.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_CheckExact, PyDict_Next
from cpython.list cimport PyList_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset

import pyarrow as pa


from agent.export._slots cimport Py_TYPE, PyTypeObject
from agent.export._slots cimport slot_offset as _slot_offset


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyLong_CheckExact(object o)


class Unhandled(Exception):
    """A value this path does not encode exactly as pa.array would: use the Python
    encoder for the batch."""


# Column kinds (set by proto/columns.py from the span declaration).
cdef enum Kind:
    K_ID = 0  # hex text -> binary
    K_STR = 1  # string
    K_DICT = 2  # dictionary<int32, string>
    K_U64 = 3
    K_U32 = 4
    K_U16 = 5
    K_OPT64 = 6  # nullable uint64
    K_MAP = 7  # dict[str, str] -> map<string, string>
    K_ATTRS = 8  # the str values of a dict
    K_ATTRS_JSON = 9  # the other values, as JSON text
    K_AGENT = 10  # DICT, empty values replaced by the batch's agent name

ID, STR, DICT, U64, U32, U16, OPT64 = K_ID, K_STR, K_DICT, K_U64, K_U32, K_U16, K_OPT64
MAP, ATTRS, ATTRS_JSON, AGENT = K_MAP, K_ATTRS, K_ATTRS_JSON, K_AGENT

# Offsets are int32: a column's text past this many bytes is the Python encoder's
# business (pa.array would chunk or refuse it).
cdef Py_ssize_t MAX_DATA = 2147483647


cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int _reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t need = b.n + more
    cdef Py_ssize_t cap
    cdef char* p
    if more < 0 or need < b.n:
        raise Unhandled("buffer size overflow")
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 4096
    while cap < need:
        cap *= 2
    p = <char*>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const void* src, Py_ssize_t n) except -1:
    if n < 0 or n > b.cap - b.n:  # _reserve grows, or refuses a negative size
        _reserve(b, n)
    if n:
        memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline int _put_i32(Buf* b, Py_ssize_t v) except -1:
    cdef int32_t x
    if v > MAX_DATA:
        raise Unhandled("column over 2 GiB")
    x = <int32_t>v
    if b.cap - b.n < 4:
        _reserve(b, 4)
    memcpy(b.p + b.n, &x, 4)
    b.n += 4
    return 0


cdef object _bytes(Buf* b):
    if b.p == NULL or b.n == 0:
        return b""
    return PyBytes_FromStringAndSize(b.p, b.n)


cdef class _Text:
    """int32 offsets and UTF-8 bytes: a string or binary column's buffers."""
    cdef Buf off
    cdef Buf data
    cdef Py_ssize_t rows

    def __cinit__(self):
        memset(&self.off, 0, sizeof(Buf))
        memset(&self.data, 0, sizeof(Buf))
        self.rows = 0

    def __dealloc__(self):
        free(self.off.p)
        free(self.data.p)

    cdef int start(self) except -1:
        self.off.n = 0
        self.data.n = 0
        self.rows = 0
        return _put_i32(&self.off, 0)

    cdef inline int add_str(self, object s) except -1:
        # str (subclasses too: pa.array takes them as text) as UTF-8; raises
        # UnicodeEncodeError on a lone surrogate, as pa.array refuses it.
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
        _put(&self.data, p, n)
        self.rows += 1
        return _put_i32(&self.off, self.data.n)

    cdef int add_hex(self, object s) except -1:
        # bytes.fromhex(s) for the usual id: even-length ASCII hex.  Anything else
        # (blanks, which fromhex skips; odd lengths; other characters) -> fromhex.
        cdef Py_ssize_t n, i
        cdef const char* p
        cdef uint8_t hi, lo
        cdef char* out
        if not PyUnicode_CheckExact(s):
            raise Unhandled("id not a str")
        p = PyUnicode_AsUTF8AndSize(s, &n)
        if n & 1:
            return self._add_fromhex(s)
        _reserve(&self.data, n // 2)
        out = self.data.p + self.data.n
        i = 0
        while i < n:
            hi = _nibble(p[i])
            lo = _nibble(p[i + 1])
            if hi > 15 or lo > 15:
                return self._add_fromhex(s)
            out[i // 2] = <char>((hi << 4) | lo)
            i += 2
        self.data.n += n // 2
        self.rows += 1
        return _put_i32(&self.off, self.data.n)

    cdef int _add_fromhex(self, object s) except -1:
        b = bytes.fromhex(s)  # ValueError as the Python encoder raises it
        cdef const char* p = b
        _put(&self.data, p, len(b))
        self.rows += 1
        return _put_i32(&self.off, self.data.n)

    cdef object array(self, object typ):
        return pa.Array.from_buffers(
            typ, self.rows,
            [None, pa.py_buffer(_bytes(&self.off)), pa.py_buffer(_bytes(&self.data))],
            null_count=0)


cdef inline uint8_t _nibble(char c):
    if c >= 48 and c <= 57:  # 0-9
        return <uint8_t>(c - 48)
    if c >= 97 and c <= 102:  # a-f
        return <uint8_t>(c - 87)
    if c >= 65 and c <= 70:  # A-F
        return <uint8_t>(c - 55)
    return 255


cdef Py_ssize_t _itoa(long long v, char* buf32):
    """Decimal text of v at the end of the 32-byte buf32 (as int.__repr__ writes it);
    returns its length."""
    cdef unsigned long long u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    cdef Py_ssize_t i = 32
    while True:
        i -= 1
        buf32[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        buf32[i] = 45  # '-'
    return 32 - i


cdef bint _plain_ascii(const char* p, Py_ssize_t n):
    # Text json.dumps writes as it is between quotes (ensure_ascii: ' ' to '~' but
    # the quote and the backslash).
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>p[i]
        if c < 32 or c > 126 or c == 34 or c == 92:
            return False
    return True


cdef bint _add_str_list(_Text t, list items) except -1:
    """A list of plain-ASCII strs as json.dumps writes it with separators (",", ":"):
    ["a","b"] (most list values: DNS answers).  False, having written nothing, when
    an item is anything else: the caller asks json."""
    cdef Py_ssize_t n, size, i, total
    cdef const char* p
    cdef object it
    total = 2
    for it in items:
        if not PyUnicode_CheckExact(it):
            return False
        p = PyUnicode_AsUTF8AndSize(it, &size)
        if not _plain_ascii(p, size):
            return False
        total += size + 3
    _reserve(&t.data, total)
    _put(&t.data, b"[", 1)
    i = 0
    for it in items:
        p = PyUnicode_AsUTF8AndSize(it, &size)
        if i:
            _put(&t.data, b",", 1)
        _put(&t.data, b'"', 1)
        _put(&t.data, p, size)
        _put(&t.data, b'"', 1)
        i += 1
    _put(&t.data, b"]", 1)
    t.rows += 1
    _put_i32(&t.off, t.data.n)
    return True


cdef int _add_json(_Text t, object val, object json_value) except -1:
    """The JSON text of a typed attribute value, as proto.columns._json_value writes
    it: ints and bools directly, lists of plain ASCII strs here, the rest by
    `json_value`."""
    cdef long long small
    cdef int overflow
    cdef char num[32]
    cdef Py_ssize_t n
    if PyLong_CheckExact(val):
        small = PyLong_AsLongLongAndOverflow(val, &overflow)
        if overflow:
            return t.add_str(json_value(val))
        n = _itoa(small, num)
        _put(&t.data, num + 32 - n, n)
    elif val is True:
        _put(&t.data, b"true", 4)
    elif val is False:
        _put(&t.data, b"false", 5)
    elif PyList_CheckExact(val) and _add_str_list(t, val):
        return 0
    else:
        return t.add_str(json_value(val))
    t.rows += 1
    return _put_i32(&t.off, t.data.n)


cdef class _Col:
    cdef int kind
    cdef object attr  # Span attribute
    cdef object part  # its attribute ("" when none)
    cdef bint has_part
    cdef object typ  # Arrow type
    cdef Buf fixed  # fixed-width values, or dictionary indices
    cdef Buf valid  # validity bits (OPT64)
    cdef Py_ssize_t rows
    cdef Py_ssize_t nulls
    cdef dict memo  # DICT: value -> index
    cdef object last  # DICT: the last value (spans share their strings) and its index
    cdef int32_t last_i
    cdef _Col fused  # ATTRS: the ATTRS_JSON column of the same dict, written in one walk
    cdef bint skip  # ATTRS_JSON written by its ATTRS column
    cdef list uniques
    cdef _Text text  # STR / ID values; map keys
    cdef _Text items  # map values
    cdef Buf moff  # map offsets (entries per row)
    cdef Py_ssize_t entries
    # Where the span type's slot for `attr` (and the part type's for `part`) sits in
    # the object, -1 when not a plain slot (then getattr); `descr`/`part_descr`: the
    # descriptors those offsets were read from, checked again at every batch.
    cdef Py_ssize_t off
    cdef Py_ssize_t part_off
    cdef object descr
    cdef object part_descr

    def __cinit__(self):
        memset(&self.fixed, 0, sizeof(Buf))
        memset(&self.valid, 0, sizeof(Buf))
        memset(&self.moff, 0, sizeof(Buf))

    def __dealloc__(self):
        free(self.fixed.p)
        free(self.valid.p)
        free(self.moff.p)

    def __init__(self, int kind, str attr, str part, object typ):
        self.kind = kind
        self.attr = attr
        self.part = part
        self.has_part = bool(part)
        self.typ = typ
        self.text = _Text()
        self.items = _Text()
        self.off = self.part_off = -1

    cdef int start(self) except -1:
        self.fixed.n = 0
        self.valid.n = 0
        self.moff.n = 0
        self.rows = 0
        self.nulls = 0
        self.entries = 0
        self.memo = {}
        self.uniques = []
        self.last = None
        self.last_i = 0
        self.text.start()
        self.items.start()
        if self.kind >= K_MAP and self.kind <= K_ATTRS_JSON:
            _put_i32(&self.moff, 0)
        return 0

    cdef inline int add_dict(self, object v) except -1:
        cdef object i
        cdef int32_t x
        if v is self.last and v is not None:
            return _put(&self.fixed, &self.last_i, 4)
        if not PyUnicode_CheckExact(v):
            raise Unhandled("dictionary value not a str")
        i = self.memo.get(v)
        if i is None:
            i = self.memo[v] = len(self.uniques)
            self.uniques.append(v)
        x = <int32_t>(<Py_ssize_t>i)
        self.last = v
        self.last_i = x
        return _put(&self.fixed, &x, 4)

    cdef inline int add_uint(self, object v, uint64_t top, int width) except -1:
        cdef uint64_t x
        cdef long long sx
        cdef int overflow = 0
        cdef uint32_t x32
        cdef uint16_t x16
        if not PyLong_CheckExact(v):
            raise Unhandled("not an int")
        # AsLongLongAndOverflow walks the digits; AsUnsignedLongLong goes through a
        # byte array for every int past 2**30 (nanosecond times, sequence numbers).
        sx = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow == 0:
            if sx < 0:
                raise Unhandled("negative int")
            x = <uint64_t>sx
        elif overflow > 0:
            x = PyLong_AsUnsignedLongLong(v)  # 2**63 and up; OverflowError past 2**64
        else:
            raise Unhandled("negative int")
        if x > top:
            raise Unhandled("int out of range")
        if width == 8:
            return _put(&self.fixed, &x, 8)
        if width == 4:
            x32 = <uint32_t>x
            return _put(&self.fixed, &x32, 4)
        x16 = <uint16_t>x
        return _put(&self.fixed, &x16, 2)

    cdef int add_opt(self, object v) except -1:
        cdef uint64_t zero = 0
        cdef Py_ssize_t byte = self.rows >> 3
        if self.valid.n <= byte:
            _reserve(&self.valid, 1)
            self.valid.p[self.valid.n] = 0
            self.valid.n += 1
        if v is None:
            self.nulls += 1
            _put(&self.fixed, &zero, 8)
        else:
            self.add_uint(v, 0xFFFFFFFFFFFFFFFFULL, 8)
            self.valid.p[byte] = <char>((<uint8_t>self.valid.p[byte]) | (1 << (self.rows & 7)))
        self.rows += 1
        return 0

    cdef int add_map(self, object d, int mode, object json_value, _Col other) except -1:
        # mode 0: every value (must be a str); 1: the str values only; 2: the other
        # values, as JSON text; 3: both, str values here and the others in `other`
        # (attributes and attributes_json read in one walk of the dict).
        cdef Py_ssize_t pos = 0
        cdef PyObject* k
        cdef PyObject* v
        cdef object key, val
        cdef bint text
        if not PyDict_CheckExact(d):
            raise Unhandled("not a dict")
        while PyDict_Next(d, &pos, &k, &v):
            key = <object>k
            val = <object>v
            text = PyUnicode_Check(val)
            if mode == 0:
                if not PyUnicode_CheckExact(val):
                    raise Unhandled("map value not a str")  # str(v) for the rest
            elif (mode == 1 and not text) or (mode == 2 and text):
                continue
            if not PyUnicode_CheckExact(key):
                raise Unhandled("map key not a str")
            if text:
                self.text.add_str(key)
                self.items.add_str(val)
                self.entries += 1
            elif mode == 3:
                other.text.add_str(key)
                _add_json(other.items, val, json_value)
                other.entries += 1
            else:
                self.text.add_str(key)
                _add_json(self.items, val, json_value)
                self.entries += 1
        if mode == 3:
            _put_i32(&other.moff, other.entries)
            other.rows += 1
        return _put_i32(&self.moff, self.entries)

    cdef object array(self):
        cdef int k = self.kind
        cdef Py_ssize_t n = self.rows
        if k == K_ID or k == K_STR:
            return self.text.array(self.typ)
        if k == K_DICT or k == K_AGENT:
            idx = pa.Array.from_buffers(pa.int32(), n,
                                        [None, pa.py_buffer(_bytes(&self.fixed))],
                                        null_count=0)
            return pa.DictionaryArray.from_arrays(
                idx, pa.array(self.uniques, type=self.typ.value_type), safe=False)
        if k == K_OPT64:
            valid = pa.py_buffer(_bytes(&self.valid)) if self.nulls else None
            return pa.Array.from_buffers(self.typ, n,
                                         [valid, pa.py_buffer(_bytes(&self.fixed))],
                                         null_count=self.nulls)
        if k == K_U64 or k == K_U32 or k == K_U16:
            return pa.Array.from_buffers(self.typ, n,
                                         [None, pa.py_buffer(_bytes(&self.fixed))],
                                         null_count=0)
        # Maps: keys and values, then the list layout over them.
        keys = self.text.array(pa.string())
        vals = self.items.array(pa.string())
        entries = pa.StructArray.from_arrays([keys, vals], fields=[self.typ.key_field,
                                                                  self.typ.item_field])
        return pa.Array.from_buffers(self.typ, n,
                                     [None, pa.py_buffer(_bytes(&self.moff))],
                                     null_count=0, children=[entries])


cdef inline object _slot(object o, Py_ssize_t off, object name):
    # The slot at `off` of an object whose type was checked to be the one `off`
    # belongs to; an unset slot is the AttributeError getattr would raise.
    cdef PyObject* p = (<PyObject**>((<char*><PyObject*>o) + off))[0]
    if p == NULL:
        raise AttributeError(name)
    return <object>p


cdef class Encoder:
    """Encodes lists of spans into the arrays of one schema.

    `columns`: (kind, attribute, part or "", Arrow type) per column, in order;
    `json_value`: the Python encoder's text of a typed attribute value;
    `span_type`, `part_type`: the classes whose __slots__ are read directly (the
    attributes of other objects are read with getattr).
    """
    cdef list cols
    cdef object json_value
    cdef object span_type
    cdef object part_type
    cdef bint busy  # the buffers are one batch's: a second caller gets Unhandled

    def __init__(self, list columns, object json_value, object span_type=None,
                 object part_type=None):
        cdef _Col c
        self.cols = [_Col(k, a, p, t) for k, a, p, t in columns]
        self.json_value = json_value
        self.span_type = span_type
        self.part_type = part_type
        for c in self.cols:
            c.fused = None
            c.skip = False
        for c in self.cols:
            if c.kind == K_ATTRS and not c.part:
                for o in self.cols:
                    if (<_Col>o).kind == K_ATTRS_JSON and (<_Col>o).attr == c.attr \
                            and not (<_Col>o).part and not (<_Col>o).skip:
                        c.fused = <_Col>o
                        (<_Col>o).skip = True
                        break
        for c in self.cols:
            c.off = _slot_offset(span_type, c.attr)
            c.descr = span_type.__dict__.get(c.attr) if c.off >= 0 else None
            if c.part:
                c.part_off = _slot_offset(part_type, c.part)
                c.part_descr = part_type.__dict__.get(c.part) if c.part_off >= 0 else None

    cdef int _check_slots(self) except -1:
        # A class attribute replaced since (a property patched in): getattr again.
        cdef _Col c
        for c in self.cols:
            if c.off >= 0 and self.span_type.__dict__.get(c.attr) is not c.descr:
                c.off = -1
            if c.part_off >= 0 and self.part_type.__dict__.get(c.part) is not c.part_descr:
                c.part_off = -1
        return 0

    def arrays(self, object spans, str agent):
        """The columns of `spans` as Arrow arrays; raises Unhandled (or the error
        the Python encoder would raise) when a value needs the Python encoder."""
        # Calls into Python (json, getattr of other classes) may let another thread
        # in: it must not reset the buffers of the batch under way (proto.columns
        # keeps one encoder per thread; this covers any other sharing).
        if self.busy:
            raise Unhandled("encoder in use")
        self.busy = True
        try:
            return self._arrays(spans, agent)
        finally:
            self.busy = False

    cdef list _arrays(self, object spans, str agent):
        cdef _Col c
        cdef object s, v
        cdef int k
        cdef PyTypeObject* st = <PyTypeObject*>self.span_type if self.span_type is not None else NULL
        cdef PyTypeObject* pt = <PyTypeObject*>self.part_type if self.part_type is not None else NULL
        cdef bint own
        self._check_slots()
        for c in self.cols:
            c.start()
        for s in spans:
            own = st != NULL and Py_TYPE(s) == st
            for c in self.cols:
                if c.skip:
                    continue  # written with its ATTRS column
                if own and c.off >= 0:
                    v = _slot(s, c.off, c.attr)
                else:
                    v = getattr(s, c.attr)
                if c.has_part:
                    if c.part_off >= 0 and pt != NULL and Py_TYPE(v) == pt:
                        v = _slot(v, c.part_off, c.part)
                    else:
                        v = getattr(v, c.part)
                k = c.kind
                if k == K_DICT:
                    c.add_dict(v)
                elif k == K_U64:
                    c.add_uint(v, 0xFFFFFFFFFFFFFFFFULL, 8)
                elif k == K_U32:
                    c.add_uint(v, 0xFFFFFFFFULL, 4)
                elif k == K_U16:
                    c.add_uint(v, 0xFFFFULL, 2)
                elif k == K_ID:
                    c.text.add_hex(v)
                elif k == K_STR:
                    if not PyUnicode_CheckExact(v):
                        raise Unhandled("not a str")
                    c.text.add_str(v)
                elif k == K_OPT64:
                    c.add_opt(v)
                    continue
                elif k == K_MAP:
                    c.add_map(v, 0, None, None)
                elif k == K_ATTRS:
                    if c.fused is not None:
                        c.add_map(v, 3, self.json_value, c.fused)
                    else:
                        c.add_map(v, 1, None, None)
                elif k == K_ATTRS_JSON:
                    c.add_map(v, 2, self.json_value, None)
                elif k == K_AGENT:
                    c.add_dict(v or agent if agent else v)  # as the Python encoder
                else:
                    raise Unhandled(f"column kind {k}")
                c.rows += 1
        out = []
        for c in self.cols:
            out.append(c.array())
        for c in self.cols:  # the batch's strings are not kept alive until the next
            c.memo = None
            c.uniques = None
            c.last = None
        return out
