# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A serialized `zerotrace.v1.SpanList` read straight into column buffers, compiled.

The legacy protobuf wire reached the store through ClickHouse's ProtobufList reader
(~22 us a span of server CPU); reading each upb message's 35 fields from Python into
lists cost 53-63.  This walks the wire once and appends each field's value to its
column's buffer (offsets and bytes for strings, uint64 values, a validity bitmap for
proto3 `optional`, entry offsets plus key and value strings for maps), which
server/ingest/spanlist.py wraps as Arrow arrays without a Python object per value.

What a field is comes from `kinds`, `cols`, `subs` indexed by field number (built from
proto/schema.py by spanlist.py): nothing about the span is written here.  Every read
is bounds-checked against the message it belongs to; a malformed wire raises
ValueError.  A field with an unexpected wire type is skipped, as protobuf parsers
keep it as an unknown field; a repeated scalar keeps its last value, as they do.
"""

from libc.stdint cimport int32_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_FromStringAndSize

# Field kinds (by field number of Span)
cdef enum:
    K_STR = 1        # bytes or string (wire type 2)
    K_U64 = 2        # uint64 varint
    K_U32 = 3        # uint32 varint (truncated to 32 bits as protobuf does)
    K_FIXED64 = 4    # fixed64
    K_OPT = 5        # optional uint64 (presence kept)
    K_MAP = 6        # map<string, string>
    K_ENDPOINT = 7   # Endpoint {string addr = 1; uint32 port = 2}: cols = addr, subs = port
# Column kinds
cdef enum:
    C_STR = 1
    C_INT = 2
    C_OPT = 3
    C_MAP = 4
cdef enum:
    MAX_FIELD = 64
    MAX_OFFSET = 2147483647

KINDS = {"str": K_STR, "u64": K_U64, "u32": K_U32, "fixed64": K_FIXED64, "opt": K_OPT,
         "map": K_MAP, "endpoint": K_ENDPOINT}
COLUMNS = {"str": C_STR, "int": C_INT, "opt": C_OPT, "map": C_MAP}


cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef struct Col:
    int kind
    Buf a   # str: bytes; int/opt: uint64 values; map: key bytes
    Buf b   # str: int32 offsets; opt: validity bitmap; map: key offsets
    Buf c   # map: value bytes
    Buf d   # map: value offsets
    Buf e   # map: int32 entry offsets (one a span, plus the first 0)
    uint64_t cur
    int seen
    int32_t entries


cdef int reserve(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.n + extra
    cdef Py_ssize_t cap = b.cap
    cdef char* q
    if need <= cap:
        return 0
    if cap < 1024:
        cap = 1024
    while cap < need:
        cap *= 2
    q = <char*>realloc(b.p, cap)
    if q == NULL:
        raise MemoryError()
    b.p = q
    b.cap = cap
    return 0


cdef inline int add_bytes(Buf* b, const uint8_t* src, Py_ssize_t k) except -1:
    if b.n + k > MAX_OFFSET:
        raise ValueError("span batch too large for 32-bit string offsets")
    reserve(b, k)
    memcpy(b.p + b.n, src, k)
    b.n += k
    return 0


cdef inline int add_i32(Buf* b, Py_ssize_t v) except -1:
    cdef int32_t x = <int32_t>v
    reserve(b, 4)
    memcpy(b.p + b.n, &x, 4)
    b.n += 4
    return 0


cdef inline int add_u64(Buf* b, uint64_t v) except -1:
    reserve(b, 8)
    memcpy(b.p + b.n, &v, 8)
    b.n += 8
    return 0


cdef inline Py_ssize_t varint(const uint8_t* p, Py_ssize_t i, Py_ssize_t end,
                              uint64_t* out) except -1:
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t byte
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = p[i]
        i += 1
        v |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            break
        shift += 7
    out[0] = v
    return i


cdef inline Py_ssize_t length(const uint8_t* p, Py_ssize_t i, Py_ssize_t end,
                              Py_ssize_t* out) except -1:
    cdef uint64_t n
    i = varint(p, i, end, &n)
    if n > <uint64_t>(end - i):
        raise ValueError("length-delimited field runs past its message")
    out[0] = <Py_ssize_t>n
    return i


cdef Py_ssize_t skip(const uint8_t* p, Py_ssize_t i, Py_ssize_t end, int wt) except -1:
    cdef uint64_t v
    cdef Py_ssize_t n
    if wt == 0:
        return varint(p, i, end, &v)
    if wt == 1:
        n = 8
    elif wt == 5:
        n = 4
    elif wt == 2:
        i = length(p, i, end, &n)
    else:
        raise ValueError(f"unsupported wire type {wt}")
    if n > end - i:
        raise ValueError("field runs past its message")
    return i + n


cdef inline int set_str(Col* c, const uint8_t* src, Py_ssize_t k) except -1:
    cdef int32_t last
    if c.seen:  # a repeated field: the last value wins
        memcpy(&last, c.b.p + c.b.n - 4, 4)
        c.a.n = last
    add_bytes(&c.a, src, k)
    c.seen = 1
    return 0


cdef int map_entry(Col* c, const uint8_t* p, Py_ssize_t i, Py_ssize_t end) except -1:
    cdef uint64_t tag
    cdef Py_ssize_t n, ks = 0, kn = 0, vs = 0, vn = 0
    while i < end:
        i = varint(p, i, end, &tag)
        if (tag & 7) == 2 and (tag >> 3) in (1, 2):
            i = length(p, i, end, &n)
            if (tag >> 3) == 1:
                ks = i
                kn = n
            else:
                vs = i
                vn = n
            i += n
        else:
            i = skip(p, i, end, tag & 7)
    add_bytes(&c.a, p + ks, kn)
    add_i32(&c.b, c.a.n)
    add_bytes(&c.c, p + vs, vn)
    add_i32(&c.d, c.c.n)
    c.entries += 1
    return 0


cdef int endpoint(Col* addr, Col* port, const uint8_t* p, Py_ssize_t i,
                  Py_ssize_t end) except -1:
    cdef uint64_t tag, v
    cdef Py_ssize_t n
    while i < end:
        i = varint(p, i, end, &tag)
        if tag == ((1 << 3) | 2):
            i = length(p, i, end, &n)
            set_str(addr, p + i, n)
            i += n
        elif tag == ((2 << 3) | 0):
            i = varint(p, i, end, &v)
            port.cur = v & 0xFFFFFFFF
        else:
            i = skip(p, i, end, tag & 7)
    return 0


cdef int span(Col* cols, int ncol, const int* kinds, const int* cidx, const int* sidx,
              const uint8_t* p, Py_ssize_t i, Py_ssize_t end, Py_ssize_t row) except -1:
    cdef uint64_t tag, v
    cdef Py_ssize_t n
    cdef int fn, wt, k, j
    cdef Col* c
    for j in range(ncol):
        cols[j].cur = 0
        cols[j].seen = 0
    while i < end:
        i = varint(p, i, end, &tag)
        fn = <int>(tag >> 3) if (tag >> 3) < MAX_FIELD else 0
        wt = tag & 7
        k = kinds[fn]
        c = &cols[cidx[fn]]
        if k == K_STR and wt == 2:
            i = length(p, i, end, &n)
            set_str(c, p + i, n)
            i += n
        elif (k == K_U64 or k == K_OPT) and wt == 0:
            i = varint(p, i, end, &v)
            c.cur = v
            c.seen = 1
        elif k == K_U32 and wt == 0:
            i = varint(p, i, end, &v)
            c.cur = v & 0xFFFFFFFF
        elif k == K_FIXED64 and wt == 1:
            if end - i < 8:
                raise ValueError("truncated fixed64")
            memcpy(&c.cur, p + i, 8)  # little-endian, as the wire (x86, arm64)
            i += 8
        elif k == K_MAP and wt == 2:
            i = length(p, i, end, &n)
            map_entry(c, p, i, i + n)
            i += n
        elif k == K_ENDPOINT and wt == 2:
            i = length(p, i, end, &n)
            endpoint(c, &cols[sidx[fn]], p, i, i + n)
            i += n
        else:
            i = skip(p, i, end, wt)
    for j in range(ncol):
        c = &cols[j]
        if c.kind == C_STR:
            add_i32(&c.b, c.a.n)
        elif c.kind == C_INT:
            add_u64(&c.a, c.cur)
        elif c.kind == C_OPT:
            add_u64(&c.a, c.cur)
            if row % 8 == 0:
                reserve(&c.b, 1)
                c.b.p[c.b.n] = 0
                c.b.n += 1
            if c.seen:
                c.b.p[row // 8] |= <char>(1 << (row % 8))
        else:
            add_i32(&c.e, c.entries)
    return 0


cdef object take(Buf* b):
    if b.p == NULL:
        return b""
    return PyBytes_FromStringAndSize(b.p, b.n)


def decode(const uint8_t[::1] data, list field_kinds, list field_cols, list field_subs,
           list column_kinds):
    """(rows, one tuple of bytes buffers a column) of a serialized SpanList.

    `field_kinds[number]` (a KINDS value or 0: skipped), `field_cols[number]` and
    `field_subs[number]` (an endpoint's port column) map Span fields to columns;
    `column_kinds[j]` is column j's COLUMNS kind.  Buffers: str (offsets, bytes),
    int (values,), opt (values, bitmap), map (entry offsets, key offsets, key bytes,
    value offsets, value bytes); offsets int32, values uint64, little-endian."""
    cdef int kinds[MAX_FIELD]
    cdef int cidx[MAX_FIELD]
    cdef int sidx[MAX_FIELD]
    cdef int ncol = len(column_kinds)
    cdef int j, fn
    cdef Py_ssize_t i = 0, end = data.shape[0], n, row = 0
    cdef uint64_t tag
    cdef const uint8_t* p = &data[0] if end else NULL
    cdef Col* cols
    cdef Col* c
    if len(field_kinds) > MAX_FIELD:
        raise ValueError("field numbers above 63 are not supported")
    memset(kinds, 0, sizeof(kinds))
    memset(cidx, 0, sizeof(cidx))
    memset(sidx, 0, sizeof(sidx))
    for fn in range(len(field_kinds)):
        kinds[fn] = field_kinds[fn]
        cidx[fn] = field_cols[fn]
        sidx[fn] = field_subs[fn]
        if kinds[fn] and not (0 <= cidx[fn] < ncol and 0 <= sidx[fn] < ncol):
            raise ValueError("column index out of range")
    kinds[0] = 0
    cols = <Col*>malloc(max(ncol, 1) * sizeof(Col))
    if cols == NULL:
        raise MemoryError()
    memset(cols, 0, max(ncol, 1) * sizeof(Col))
    try:
        for j in range(ncol):
            cols[j].kind = column_kinds[j]
            if cols[j].kind == C_STR:
                add_i32(&cols[j].b, 0)
            elif cols[j].kind == C_MAP:
                add_i32(&cols[j].b, 0)
                add_i32(&cols[j].d, 0)
                add_i32(&cols[j].e, 0)
            elif cols[j].kind not in (C_INT, C_OPT):
                raise ValueError(f"unknown column kind {cols[j].kind}")
        while i < end:
            i = varint(p, i, end, &tag)
            if tag == ((1 << 3) | 2):
                i = length(p, i, end, &n)
                span(cols, ncol, kinds, cidx, sidx, p, i, i + n, row)
                row += 1
                i += n
            else:
                i = skip(p, i, end, tag & 7)
        out = []
        for j in range(ncol):
            c = &cols[j]
            if c.kind == C_STR:
                out.append((take(&c.b), take(&c.a)))
            elif c.kind == C_INT:
                out.append((take(&c.a),))
            elif c.kind == C_OPT:
                out.append((take(&c.a), take(&c.b)))
            else:
                out.append((take(&c.e), take(&c.b), take(&c.a), take(&c.d), take(&c.c)))
        return row, out
    finally:
        for j in range(ncol):
            free(cols[j].a.p)
            free(cols[j].b.p)
            free(cols[j].c.p)
            free(cols[j].d.p)
            free(cols[j].e.p)
        free(cols)
