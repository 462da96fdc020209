# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""HTTP/2 and gRPC in compiled code: frames, multiplexed streams, HPACK, trailers.

Header blocks are decoded by this module's own HPACK decoder (RFC 7541: integers,
static and dynamic tables, Huffman strings), one per direction, in stream order, so a
connection seen from its first byte decodes exactly.  The decoder is lenient: a
reference to a dynamic-table entry that was never seen (connection picked up midway,
or a header block lost to a gap) yields a placeholder (`UNKNOWN`, counted as a miss)
instead of aborting the block, so the fields that can be decoded still are, the table
keeps its shape for later blocks, and the record says "midstream".  When part of a
header block is lost, or a block does not decode, the table no longer matches the
peer's: the direction's decoder starts afresh (`hpack_reset`), and later references to
what it held are misses.  A gRPC exchange (content-type application/grpc) is reported
as protocol "grpc" with service, method and grpc-status from the trailers.

Only the fields a span needs (pseudo-headers, content-type, grpc-status/-message, trace
headers) become Python strings; the rest are decoded in C, checked and sized (the
block's decoded size is capped, as the `hpack` package did), and entered in the dynamic
table when the peer asks.  The per-connection plumbing is the compiled one every
parser shares (`_stream.StreamParser`).  Every payload byte is read through a
bounds-checked view (`_Bytes`, `_at`) or after an explicit length check.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memcmp

from ._stream cimport DirStream, StreamParser, new_record
from ._bytes cimport _Bytes, _at, _view

from proto.span import TRACE_HEADERS

from .base import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    Message,
    Record,
    checked_trace_headers,
    new_stats,
)

STATS = new_stats()
globals()["DirStream"] = DirStream  # the name the .py module exports (cimported here)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 1 << 24
MAX_STREAMS = 256
MAX_BLOCK = 64 * 1024
UNKNOWN = b":unknown"
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
# The peer's SETTINGS bound the encoder's table; any sane size is accepted rather than
# tracking them.  A block may not decode to more than this (32 + name + value per field).
MAX_TABLE = 1 << 20
MAX_HEADER_LIST = MAX_BLOCK * 4

cdef enum:
    F_DATA = 0
    F_HEADERS = 1
    F_PRIORITY = 2
    F_RST_STREAM = 3
    F_SETTINGS = 4
    F_PUSH_PROMISE = 5
    F_PING = 6
    F_GOAWAY = 7
    F_WINDOW_UPDATE = 8
    F_CONTINUATION = 9

cdef enum:
    FL_END_STREAM = 0x1
    FL_END_HEADERS = 0x4
    FL_PADDED = 0x8
    FL_PRIORITY = 0x20

cdef long long C_MAX_FRAME = 1 << 24
cdef Py_ssize_t C_MAX_BLOCK = 64 * 1024
cdef Py_ssize_t C_MAX_STREAMS = 256
cdef long long C_MAX_TABLE = 1 << 20
cdef long long C_MAX_HEADER_LIST = 64 * 1024 * 4
cdef bytes _PREFACE = PREFACE
cdef bytes _UNKNOWN = UNKNOWN
cdef tuple _GRPC_CODES = GRPC_CODES
cdef frozenset _TRACE = frozenset(TRACE_HEADERS)

# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) -------------------

cdef inline long long _u24(_Bytes v, Py_ssize_t i):
    """The big-endian 24-bit length at v[i:i+3] (the caller checked i + 9 <= v.n)."""
    if i < 0 or i + 3 > v.n:
        return -1
    return (<long long>v.p[i] << 16) | (<long long>v.p[i + 1] << 8) | v.p[i + 2]


cdef inline long long _sid(_Bytes v, Py_ssize_t i):
    """The 31-bit stream id at v[i:i+4], or -1 when not all four bytes are there."""
    if i < 0 or i + 4 > v.n:
        return -1
    return ((<long long>(v.p[i] & 0x7F) << 24) | (<long long>v.p[i + 1] << 16)
            | (<long long>v.p[i + 2] << 8) | v.p[i + 3])


# -- HPACK (RFC 7541) ------------------------------------------------------------------

# RFC 7541 Appendix A: the static table, index 1 first.
_STATIC = (
    (b':authority', b''),
    (b':method', b'GET'),
    (b':method', b'POST'),
    (b':path', b'/'),
    (b':path', b'/index.html'),
    (b':scheme', b'http'),
    (b':scheme', b'https'),
    (b':status', b'200'),
    (b':status', b'204'),
    (b':status', b'206'),
    (b':status', b'304'),
    (b':status', b'400'),
    (b':status', b'404'),
    (b':status', b'500'),
    (b'accept-charset', b''),
    (b'accept-encoding', b'gzip, deflate'),
    (b'accept-language', b''),
    (b'accept-ranges', b''),
    (b'accept', b''),
    (b'access-control-allow-origin', b''),
    (b'age', b''),
    (b'allow', b''),
    (b'authorization', b''),
    (b'cache-control', b''),
    (b'content-disposition', b''),
    (b'content-encoding', b''),
    (b'content-language', b''),
    (b'content-length', b''),
    (b'content-location', b''),
    (b'content-range', b''),
    (b'content-type', b''),
    (b'cookie', b''),
    (b'date', b''),
    (b'etag', b''),
    (b'expect', b''),
    (b'expires', b''),
    (b'from', b''),
    (b'host', b''),
    (b'if-match', b''),
    (b'if-modified-since', b''),
    (b'if-none-match', b''),
    (b'if-range', b''),
    (b'if-unmodified-since', b''),
    (b'last-modified', b''),
    (b'link', b''),
    (b'location', b''),
    (b'max-forwards', b''),
    (b'proxy-authenticate', b''),
    (b'proxy-authorization', b''),
    (b'range', b''),
    (b'referer', b''),
    (b'refresh', b''),
    (b'retry-after', b''),
    (b'server', b''),
    (b'set-cookie', b''),
    (b'strict-transport-security', b''),
    (b'transfer-encoding', b''),
    (b'user-agent', b''),
    (b'vary', b''),
    (b'via', b''),
    (b'www-authenticate', b''),
)

# RFC 7541 Appendix B: code of each symbol (0-255, 256 = EOS), and its length in bits.
cdef unsigned int _HUFF_CODE[257]
_HUFF_CODE[:] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
    0x3fffffff,
]
cdef unsigned char _HUFF_LEN[257]
_HUFF_LEN[:] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
]

cdef Py_ssize_t _NSTATIC = len(_STATIC)
cdef const unsigned char *_SP_N[61]
cdef const unsigned char *_SP_V[61]
cdef Py_ssize_t _SL_N[61]
cdef Py_ssize_t _SL_V[61]
if _NSTATIC != 61:
    raise ImportError("HPACK static table must have 61 entries")
for _k in range(61):
    _SP_N[_k] = <const unsigned char *>PyBytes_AS_STRING(_STATIC[_k][0])
    _SL_N[_k] = PyBytes_GET_SIZE(_STATIC[_k][0])
    _SP_V[_k] = <const unsigned char *>PyBytes_AS_STRING(_STATIC[_k][1])
    _SL_V[_k] = PyBytes_GET_SIZE(_STATIC[_k][1])

# Huffman decoding runs a 4-bit state machine: a state is a node of the code tree (256
# internal nodes, root 0); for each state and nibble, the node reached, the symbol
# emitted on the way (codes are at least 5 bits: at most one per nibble) and flags.
# Built once from the code table above.
cdef enum:
    HF_ACCEPT = 1  # the bits since the last symbol are a valid padding (all ones, < 8)
    HF_EMIT = 2
    HF_FAIL = 4  # EOS decoded: an error (RFC 7541 5.2)
cdef unsigned char _FSM_NEXT[4096]
cdef unsigned char _FSM_FLAGS[4096]
cdef unsigned char _FSM_SYM[4096]


cdef int _build_huffman() except -1:
    cdef int child[256][2]
    cdef bint accept[256]
    cdef int nodes = 1, sym, k, b, node, c, s, nib, flags, out
    for node in range(256):
        child[node][0] = child[node][1] = 0
        accept[node] = False
    for sym in range(257):
        node = 0
        for k in range(_HUFF_LEN[sym] - 1, -1, -1):
            b = (_HUFF_CODE[sym] >> k) & 1
            if k == 0:
                if child[node][b] != 0:
                    raise ImportError("HPACK Huffman table is not a prefix code")
                child[node][b] = -(sym + 1)
            else:
                if child[node][b] == 0:
                    if nodes >= 256:
                        raise ImportError("HPACK Huffman table has too many nodes")
                    child[node][b] = nodes
                    nodes += 1
                elif child[node][b] < 0:
                    raise ImportError("HPACK Huffman table is not a prefix code")
                node = child[node][b]
    if nodes != 256:
        raise ImportError("HPACK Huffman table is incomplete")
    node = 0
    accept[0] = True
    for k in range(7):
        node = child[node][1]
        if node <= 0:
            raise ImportError("HPACK Huffman table: short EOS")
        accept[node] = True
    for s in range(256):
        for nib in range(16):
            node = s
            flags = 0
            out = 0
            for k in range(3, -1, -1):
                b = (nib >> k) & 1
                c = child[node][b]
                if c == 0:
                    raise ImportError("HPACK Huffman table has a hole")
                if c < 0:
                    if -c - 1 == 256:
                        flags = HF_FAIL
                        break
                    flags |= HF_EMIT
                    out = -c - 1
                    node = 0
                else:
                    node = c
            if not (flags & HF_FAIL) and accept[node]:
                flags |= HF_ACCEPT
            _FSM_NEXT[s * 16 + nib] = node
            _FSM_FLAGS[s * 16 + nib] = flags
            _FSM_SYM[s * 16 + nib] = out
    return 0


_build_huffman()


cdef Py_ssize_t _huffman(const unsigned char *src, Py_ssize_t n, unsigned char *dst,
                         Py_ssize_t cap) noexcept:
    """Decode n Huffman-coded bytes into dst (room for cap bytes): the decoded length,
    or -1 when the string is invalid (EOS inside, padding not all ones or 8 bits or
    more) or would not fit."""
    cdef Py_ssize_t i, out = 0
    cdef unsigned int state = 0, idx, flags = HF_ACCEPT
    cdef unsigned char b
    for i in range(n):
        b = src[i]
        idx = state * 16 + (b >> 4)
        flags = _FSM_FLAGS[idx]
        if flags & HF_FAIL:
            return -1
        if flags & HF_EMIT:
            if out >= cap:
                return -1
            dst[out] = _FSM_SYM[idx]
            out += 1
        state = _FSM_NEXT[idx]
        idx = state * 16 + (b & 0x0F)
        flags = _FSM_FLAGS[idx]
        if flags & HF_FAIL:
            return -1
        if flags & HF_EMIT:
            if out >= cap:
                return -1
            dst[out] = _FSM_SYM[idx]
            out += 1
        state = _FSM_NEXT[idx]
    if not (flags & HF_ACCEPT):
        return -1
    return out


def huffman_decode(data: bytes) -> bytes:
    """A Huffman-coded HPACK string decoded (ValueError when it is not valid)."""
    cdef Py_ssize_t n = len(data), m
    cdef bytearray out = bytearray(2 * n + 1)
    cdef unsigned char *dst = <unsigned char *>(<char *>out)
    m = _huffman(<const unsigned char *>PyBytes_AS_STRING(data), n, dst, 2 * n + 1)
    if m < 0:
        raise ValueError("invalid Huffman string")
    return bytes(out[:m])


cdef inline Py_ssize_t _int(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, int prefix,
                            long long *out) noexcept:
    """The prefix-coded integer at p[i] (RFC 7541 5.1): the index past it, or -1 when
    it runs past n or past five continuation bytes (as the `hpack` package)."""
    cdef long long num, mask = (1 << prefix) - 1
    cdef int shift = 0, cnt = 0
    cdef unsigned char b
    if i < 0 or i >= n:
        return -1
    num = p[i] & mask
    i += 1
    if num == mask:
        while True:
            if i >= n:
                return -1
            b = p[i]
            i += 1
            cnt += 1
            num += <long long>(b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if cnt >= 5:
                return -1
    out[0] = num
    return i


# Fields a span needs, by name: everything else stays in C.
cdef list _WANT = [":method", ":path", ":authority", ":scheme", ":status", "content-type",
                   "grpc-status", "grpc-message"] + list(TRACE_HEADERS)
cdef list _WANT_B = [w.encode() for w in _WANT]
cdef Py_ssize_t _NWANT = len(_WANT)
cdef const unsigned char *_WP[16]
cdef Py_ssize_t _WL[16]
if _NWANT > 16:
    raise ImportError("too many HTTP/2 header names for the compiled decoder")
for _k in range(_NWANT):
    _WP[_k] = <const unsigned char *>PyBytes_AS_STRING(_WANT_B[_k])
    _WL[_k] = PyBytes_GET_SIZE(_WANT_B[_k])


cdef inline int _wanted(const unsigned char *p, Py_ssize_t n) noexcept:
    cdef int k
    if n < 3 or n > 16:
        return -1
    for k in range(_NWANT):
        if _WL[k] == n and _WP[k][0] == p[0] and memcmp(_WP[k], p, <size_t>n) == 0:
            return k
    return -1


cdef class HpackDecoder:
    """One direction's HPACK decoding context: the dynamic table and its size limit.

    The table is a ring of (name, value) bytes, newest last; `misses` counts
    references to entries it does not hold (answered with the `UNKNOWN` placeholder).
    """

    cdef list names
    cdef list values
    cdef Py_ssize_t head  # slot of the next entry
    cdef Py_ssize_t count
    cdef Py_ssize_t cap  # a power of two
    cdef readonly long long maxsize
    cdef readonly long long size
    cdef readonly long long misses
    cdef unsigned char *scratch
    cdef Py_ssize_t scratch_n

    def __cinit__(self):
        self.cap = 16
        self.names = [None] * 16
        self.values = [None] * 16
        self.maxsize = 4096
        self.scratch = NULL
        self.scratch_n = 0

    def __dealloc__(self):
        if self.scratch != NULL:
            PyMem_Free(self.scratch)

    # -- dynamic table ----------------------------------------------------------------
    @property
    def table(self) -> list:
        """The dynamic table, newest entry first (index 62 first)."""
        return [(self.names[(self.head - 1 - i) & (self.cap - 1)],
                 self.values[(self.head - 1 - i) & (self.cap - 1)]) for i in range(self.count)]

    @property
    def max_table_size(self) -> int:
        return self.maxsize

    @max_table_size.setter
    def max_table_size(self, value: int) -> None:
        self._resize(value)

    cdef void _clear(self) except *:
        cdef Py_ssize_t i
        for i in range(self.cap):
            self.names[i] = None
            self.values[i] = None
        self.count = 0
        self.size = 0

    cdef void _shrink(self) except *:
        cdef Py_ssize_t pos
        while self.size > self.maxsize and self.count > 0:
            pos = (self.head - self.count) & (self.cap - 1)
            self.size -= 32 + len(<bytes>self.names[pos]) + len(<bytes>self.values[pos])
            self.names[pos] = None
            self.values[pos] = None
            self.count -= 1

    cdef void _resize(self, long long newmax) except *:
        cdef long long old = self.maxsize
        self.maxsize = newmax
        if newmax <= 0:
            self._clear()
        elif old > newmax:
            self._shrink()

    cdef void _add(self, bytes name, bytes value) except *:
        cdef long long sz = 32 + len(name) + len(value)
        cdef Py_ssize_t i, pos
        cdef list nn, vv
        if sz > self.maxsize:
            # An entry larger than the table empties it and is not added (RFC 7541 4.4).
            self._clear()
            return
        if self.count == self.cap:
            nn = [None] * (2 * self.cap)
            vv = [None] * (2 * self.cap)
            for i in range(self.count):
                pos = (self.head - self.count + i) & (self.cap - 1)
                nn[i] = self.names[pos]
                vv[i] = self.values[pos]
            self.names = nn
            self.values = vv
            self.head = self.count
            self.cap *= 2
        self.names[self.head] = name
        self.values[self.head] = value
        self.head = (self.head + 1) & (self.cap - 1)
        self.count += 1
        self.size += sz
        self._shrink()

    cdef inline object _dyn(self, long long index, bint value):
        """Name (or value) of dynamic entry `index` (62 = newest), or None."""
        cdef long long i = index - 62
        if i < 0 or i >= self.count:
            return None
        if value:
            return self.values[(self.head - 1 - i) & (self.cap - 1)]
        return self.names[(self.head - 1 - i) & (self.cap - 1)]

    # -- decoding ---------------------------------------------------------------------
    def decode(self, data: bytes) -> list:
        """Every field of a header block as (name, value) bytes; ValueError when the
        block does not decode (the table is then unknown)."""
        cdef list fields = []
        if self.decode_into(data, 0, len(data), None, fields) < 0:
            raise ValueError("HPACK block does not decode")
        return fields

    cdef int decode_into(self, bytes block, Py_ssize_t off, Py_ssize_t n, dict hdrs,
                         list fields) except -2:
        """Decode block[off:off+n]; put the fields a span needs in hdrs (str -> str,
        later ones win) and, if fields is a list, every field there as bytes.
        0, or -1 when the block does not decode."""
        cdef const unsigned char *p
        cdef Py_ssize_t i = 0, j, half, m
        cdef long long idx, ln, inflated = 0
        cdef int c, k
        cdef bint index_it, any_field = False
        cdef const unsigned char *np
        cdef const unsigned char *vp
        cdef Py_ssize_t nl, vl
        cdef object nobj, vobj
        if off < 0 or n < 0 or off + n > len(block):
            return -1
        p = <const unsigned char *>PyBytes_AS_STRING(block) + off
        # Room for a Huffman-decoded name and value: each decodes to less than twice
        # its coded length (codes are 5 bits or more).
        half = 2 * n + 8
        if self.scratch_n < 2 * half:
            m = 2 * half
            np = <const unsigned char *>PyMem_Realloc(self.scratch, <size_t>m)
            if np == NULL:
                raise MemoryError()
            self.scratch = <unsigned char *>np
            self.scratch_n = m
        while i < n:
            c = p[i]
            nobj = vobj = None
            index_it = False
            if c & 0x80:
                # Indexed field (6.1).
                i = _int(p, n, i, 7, &idx)
                if i < 0:
                    return -1
                if 1 <= idx <= 61:
                    np, nl = _SP_N[idx - 1], _SL_N[idx - 1]
                    vp, vl = _SP_V[idx - 1], _SL_V[idx - 1]
                else:
                    nobj = self._dyn(idx, False)
                    if nobj is None:
                        self.misses += 1
                        nobj = _UNKNOWN
                        vobj = b""
                    else:
                        vobj = self._dyn(idx, True)
                    np = <const unsigned char *>PyBytes_AS_STRING(nobj)
                    nl = PyBytes_GET_SIZE(nobj)
                    vp = <const unsigned char *>PyBytes_AS_STRING(vobj)
                    vl = PyBytes_GET_SIZE(vobj)
            elif (c & 0x40) or not (c & 0x20):
                # Literal field, with incremental indexing (6.2.1), without (6.2.2) or
                # never indexed (6.2.3).
                index_it = (c & 0x40) != 0
                k = (c & 0x3F) if index_it else (c & 0x0F)
                if k:
                    i = _int(p, n, i, 6 if index_it else 4, &idx)
                    if i < 0:
                        return -1
                    if 1 <= idx <= 61:
                        np, nl = _SP_N[idx - 1], _SL_N[idx - 1]
                        if index_it:
                            nobj = _STATIC[idx - 1][0]
                    else:
                        nobj = self._dyn(idx, False)
                        if nobj is None:
                            self.misses += 1
                            nobj = _UNKNOWN
                        np = <const unsigned char *>PyBytes_AS_STRING(nobj)
                        nl = PyBytes_GET_SIZE(nobj)
                else:
                    i += 1
                    if i >= n:
                        return -1
                    j = _int(p, n, i, 7, &ln)
                    if j < 0 or ln > n - j:
                        return -1
                    if p[i] & 0x80:
                        nl = _huffman(p + j, <Py_ssize_t>ln, self.scratch, half)
                        if nl < 0:
                            return -1
                        np = self.scratch
                    else:
                        np, nl = p + j, <Py_ssize_t>ln
                    i = j + <Py_ssize_t>ln
                # The value: always a string literal.
                if i >= n:
                    return -1
                j = _int(p, n, i, 7, &ln)
                if j < 0 or ln > n - j:
                    return -1
                if p[i] & 0x80:
                    vl = _huffman(p + j, <Py_ssize_t>ln, self.scratch + half, half)
                    if vl < 0:
                        return -1
                    vp = self.scratch + half
                else:
                    vp, vl = p + j, <Py_ssize_t>ln
                i = j + <Py_ssize_t>ln
                if index_it:
                    if nobj is None:
                        nobj = PyBytes_FromStringAndSize(<const char *>np, nl)
                        np = <const unsigned char *>PyBytes_AS_STRING(nobj)
                    vobj = PyBytes_FromStringAndSize(<const char *>vp, vl)
                    vp = <const unsigned char *>PyBytes_AS_STRING(vobj)
            else:
                # Dynamic table size update (6.3): only before the block's first field.
                if any_field:
                    return -1
                i = _int(p, n, i, 5, &idx)
                if i < 0 or idx > C_MAX_TABLE:
                    return -1
                self._resize(idx)
                continue
            any_field = True
            inflated += 32 + nl + vl
            if inflated > C_MAX_HEADER_LIST:
                return -1
            if fields is not None:
                fields.append((PyBytes_FromStringAndSize(<const char *>np, nl),
                               PyBytes_FromStringAndSize(<const char *>vp, vl)))
            if hdrs is not None:
                k = _wanted(np, nl)
                if k >= 0:
                    hdrs[_WANT[k]] = PyUnicode_DecodeLatin1(<const char *>vp, vl, NULL)
            if index_it:
                # np/vp point into nobj/vobj, held here while the table may evict.
                self._add(nobj, vobj)
        return 0


cdef class _Stream:
    """One HTTP/2 stream: its messages, the fields a span needs, how it ended."""
    cdef public object req  # Message or None
    cdef public object resp
    cdef public dict rh
    cdef public dict sh
    cdef public dict trailers
    cdef public str inc
    cdef public bint req_done
    cdef public bint resp_done
    cdef public long long reset  # RST_STREAM error code, 0 if none

    def __cinit__(self):
        self.req = None
        self.resp = None
        self.rh = {}
        self.sh = {}
        self.trailers = {}
        self.inc = ""


cdef class _Block:
    """A header block awaiting its CONTINUATION frames."""
    cdef long long sid
    cdef int ftype
    cdef bytearray data
    cdef object first  # Message from the block's first frame
    cdef bint es


cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef class Http2Parser(StreamParser):
    """One HTTP/2 connection (cleartext, or decrypted upstream), both directions."""

    cdef readonly bint preface_seen
    cdef readonly dict streams_  # stream id -> _Stream, oldest first
    cdef readonly list decoders  # HpackDecoder per direction
    cdef _Block blk0, blk1
    cdef HpackDecoder dec0, dec1

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = "http2"
        self.counts = STATS
        self.dec0 = HpackDecoder()
        self.dec1 = HpackDecoder()
        self.decoders = [self.dec0, self.dec1]
        self.streams_ = {}

    @property
    def pending(self):
        # Requests are matched by stream id (streams_): there is no queue to show.
        raise AttributeError("'Http2Parser' object has no attribute 'pending'")

    # -- plumbing (base.StreamParser's hooks) ----------------------------------------
    cdef void _on_desync(self, int d, list out) except *:
        self._hpack_lost(d)
        for s in self.streams_.values():
            if not (<_Stream>s).inc:
                (<_Stream>s).inc = "gap"  # some of its frames may be in the hole

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        """Bytes lost right after st.buf: when the frame they fall in is known, count
        it truncated and skip its rest by length."""
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef long long total
        cdef int ftype
        cdef _Stream s
        if v.n < 9:
            return False
        total = 9 + _u24(v, 0)
        if total < v.n + g:
            return False
        s = self.streams_.get(_sid(v, 5))
        if s is not None and not s.inc:
            s.inc = "truncated"
        ftype = _at(v, 3)
        if ftype == F_HEADERS or ftype == F_CONTINUATION or ftype == F_PUSH_PROMISE:
            self._hpack_lost(d)
        else:
            self._frame(d, st, buf, 0, total, out)
        st.consume(v.n)
        st.skip = total - v.n - g
        return True

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        # Writes usually carry whole frames: accept a chunk that starts like one.
        cdef _Bytes v = _view(data)
        cdef long long nxt
        if v.n < 9 or _at(v, 3) > 9 or _at(v, 5) & 0x80:
            return -1
        nxt = 9 + _u24(v, 0)
        if v.n >= nxt + 9 and (_at(v, nxt + 3) > 9 or _at(v, nxt + 5) & 0x80):
            return -1
        return 0

    cdef void _hpack_lost(self, int d) except *:
        """Part of a header block was lost: the table no longer matches the peer's."""
        _count("hpack_reset")
        if d == 0:
            self.dec0 = HpackDecoder()
            self.blk0 = None
        else:
            self.dec1 = HpackDecoder()
            self.blk1 = None
        self.decoders[d] = self.dec0 if d == 0 else self.dec1

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0, k
        cdef long long total
        cdef int ftype
        if not st.started:
            k = n if n < 24 else 24
            if memcmp(v.p, PyBytes_AS_STRING(_PREFACE), <size_t>k) == 0:
                if n < 24:
                    return
                pos = 24
                self.preface_seen = True
                if self.rdir < 0:
                    self.rdir = d
            st.started = True
        while n - pos >= 9:
            total = 9 + _u24(v, pos)
            ftype = v.p[pos + 3]
            if total - 9 > C_MAX_FRAME or v.p[pos + 5] & 0x80:
                _count("bad_frame")
                self._desync(d, st, out)
                return
            if (ftype == F_PRIORITY or ftype == F_SETTINGS or ftype == F_PING
                    or ftype == F_WINDOW_UPDATE) and n - pos >= total:
                pos += total  # flow control and connection upkeep: nothing for a span
                continue
            if n - pos < total:
                if ftype == F_DATA and total > 4096:
                    # Payload need not be read: count it and skip the rest by length.
                    self._frame(d, st, buf, pos, total, out)
                    st.consume(n)
                    st.skip = total - (n - pos)
                    return
                if total > C_MAX_BLOCK:
                    _count("frame_too_big")
                    self._desync(d, st, out)
                    return
                break
            self._frame(d, st, buf, pos, total, out)
            pos += total
        st.consume(pos)

    cdef void _frame(self, int d, DirStream st, bytes buf, Py_ssize_t pos, long long total,
                     list out) except *:
        """The frame at buf[pos:] (total bytes long; buf may hold only its head)."""
        cdef _Bytes v = _view(buf)
        cdef int ftype = _at(v, pos + 3), flags = _at(v, pos + 4), pad
        cdef long long sid = _sid(v, pos + 5)
        cdef long long start = st.base + pos, end = start + total, code
        cdef Py_ssize_t p0, p1, plen, i, fend, k
        cdef _Block blk
        cdef _Stream s
        cdef bytes whole
        if sid < 0:
            return
        if ftype == F_DATA:
            if sid:
                self._touch(d, st, sid, start, end, flags & FL_END_STREAM, out)
            return
        if ftype == F_HEADERS or ftype == F_PUSH_PROMISE or ftype == F_CONTINUATION:
            # payload = buf[pos + 9:pos + total], clipped to what is there
            p0 = pos + 9
            p1 = pos + total if pos + total < v.n else v.n
            plen = p1 - p0 if p1 > p0 else 0
            if ftype == F_CONTINUATION:
                blk = self.blk0 if d == 0 else self.blk1
                if blk is None or blk.sid != sid:
                    _count("stray_continuation")
                    return
                if plen:
                    blk.data += buf[p0:p1]
                if len(blk.data) > C_MAX_BLOCK:
                    self._hpack_lost(d)
                    return
                if flags & FL_END_HEADERS:
                    if d == 0:
                        self.blk0 = None
                    else:
                        self.blk1 = None
                    whole = bytes(blk.data)
                    self._headers(d, st, sid, whole, 0, len(whole), blk.first, end, blk.es,
                                  out, blk.ftype == F_PUSH_PROMISE)
                return
            i = 0
            pad = 0
            if flags & FL_PADDED:
                pad = _at(v, p0) if plen > 0 else 0
                i = 1
            if ftype == F_PUSH_PROMISE:
                i += 4
            elif flags & FL_PRIORITY:
                i += 5
            # payload[i:len - pad if pad else len], with Python's slice rules (a pad
            # longer than the payload makes a negative end, counted from the end).
            fend = plen - pad if pad else plen
            if fend < 0:
                fend += plen
                if fend < 0:
                    fend = 0
            if i > plen:
                i = plen
            if fend < i:
                fend = i
            first = st.message(start, min(end, st.base + len(st.buf)))
            es = (flags & FL_END_STREAM) != 0 and ftype == F_HEADERS
            if flags & FL_END_HEADERS:
                self._headers(d, st, sid, buf, p0 + i, fend - i, first, end, es, out,
                              ftype == F_PUSH_PROMISE)
            else:
                blk = _Block.__new__(_Block)
                blk.sid = sid
                blk.ftype = ftype
                blk.data = bytearray(buf[p0 + i:p0 + fend])
                blk.first = first
                blk.es = es
                if d == 0:
                    self.blk0 = blk
                else:
                    self.blk1 = blk
            return
        if ftype == F_RST_STREAM and sid:
            s = self.streams_.get(sid)
            if s is not None:
                code = 0
                if total >= 13:
                    # int.from_bytes(buf[pos + 9:pos + 13]): the bytes that are there
                    for k in range(pos + 9, pos + 13):
                        if k >= v.n:
                            break
                        code = (code << 8) | v.p[k]
                s.reset = code
                self._finish(sid, s, out, "reset" if code else "")
            return
        if ftype == F_GOAWAY:
            _count("goaway")

    cdef void _headers(self, int d, DirStream st, long long sid, bytes block,
                       Py_ssize_t off, Py_ssize_t n, object first, long long end,
                       bint end_stream, list out, bint push) except *:
        cdef HpackDecoder dec = self.dec0 if d == 0 else self.dec1
        cdef long long misses = dec.misses
        cdef dict hdrs = {}
        cdef bint lost
        cdef _Stream s
        cdef tuple msg_end
        if dec.decode_into(block, off, n, hdrs, None) < 0:
            _count("hpack_error")
            self._hpack_lost(d)
            hdrs = {}
            lost = True
        else:
            lost = dec.misses != misses
        if push:
            return  # only decoded to keep the table in step
        if self.rdir < 0:
            if ":method" in hdrs:
                self.rdir = d
            elif ":status" in hdrs:
                self.rdir = 1 - d
            else:
                self.rdir = d if sid % 2 else 1 - d
        s = self.streams_.get(sid)
        if s is None:
            if d != self.rdir:
                _count("unmatched_response")
                if not lost and ":status" not in hdrs:
                    return
            s = self._new_stream(sid, out)
        msg_end = st.mark_at(min(end, st.base + len(st.buf)) - 1)
        if lost:
            s.inc = "midstream"
        if d == self.rdir:
            if s.req is None:
                s.req = first
                s.rh = hdrs
            else:
                s.trailers.update(hdrs)  # request trailers (rare)
            s.req.size = end - s.req.offset
            s.req.end_ns, s.req.end_tid = msg_end[1], msg_end[2]
            if end_stream:
                s.req_done = True
        else:
            if s.resp is None:
                s.resp = first
                s.sh = hdrs
            elif ":status" in hdrs and (<str>hdrs[":status"]).startswith("1"):
                pass  # interim response
            else:
                s.trailers.update(hdrs)
            if ":status" in s.sh and (<str>s.sh[":status"]).startswith("1") \
                    and ":status" in hdrs:
                s.sh = hdrs  # the final response after an interim one
            s.resp.size = end - s.resp.offset
            s.resp.end_ns, s.resp.end_tid = msg_end[1], msg_end[2]
            if end_stream:
                s.resp_done = True
                self._finish(sid, s, out, "")

    cdef void _touch(self, int d, DirStream st, long long sid, long long start,
                     long long end, int end_stream, list out) except *:
        cdef _Stream s = self.streams_.get(sid)
        cdef tuple mk
        if s is None:
            _count("data_unknown_stream")
            return
        msg = s.req if d == self.rdir else s.resp
        if msg is None:
            msg = st.message(start, min(end, st.base + len(st.buf)))
            if d == self.rdir:
                s.req = msg
            else:
                s.resp = msg
            if not s.inc:
                s.inc = "midstream"
        msg.size = end - msg.offset
        mk = st.mark_at(min(end, st.base + len(st.buf)) - 1)
        msg.end_ns, msg.end_tid = mk[1], mk[2]
        if end_stream:
            if d == self.rdir:
                s.req_done = True
            else:
                s.resp_done = True
                self._finish(sid, s, out, "")

    cdef _Stream _new_stream(self, long long sid, list out):
        cdef _Stream s
        if len(self.streams_) >= C_MAX_STREAMS:
            _count("stream_evicted")
            old_sid = next(iter(self.streams_))
            old = self.streams_.pop(old_sid)
            out.append(self._record(old, "evicted"))
        s = _Stream.__new__(_Stream)
        s.rh = {}
        s.sh = {}
        s.trailers = {}
        s.inc = ""
        self.streams_[sid] = s
        return s

    cdef void _finish(self, long long sid, _Stream s, list out, str why) except *:
        self.streams_.pop(sid, None)
        out.append(self._record(s, why))

    # -- records ----------------------------------------------------------------------
    cdef object _record(self, _Stream s, str why):
        cdef dict rh = s.rh, sh = s.sh, tr = s.trailers, attrs, trace
        cdef str method, path, ctype, code, gs, status, status_code, error, op, inc, auth
        cdef bint grpc
        cdef Py_ssize_t q
        method = rh.get(":method", "")
        path = rh.get(":path", "")
        ctype = rh.get("content-type", "") or sh.get("content-type", "")
        grpc = ctype.startswith("application/grpc")
        attrs = {"network.protocol.version": "2"}
        if method:
            attrs["http.request.method"] = method
        q = path.find("?")
        if path:
            attrs["url.path"] = path if q < 0 else path[:q]
        auth = rh.get(":authority")
        if auth:
            attrs["server.address"] = auth.rsplit(":", 1)[0] \
                if not auth.startswith("[") else auth
        if rh.get(":scheme"):
            attrs["url.scheme"] = rh[":scheme"]
        code = sh.get(":status", "")
        if code.isascii() and code.isdigit():
            attrs["http.response.status_code"] = int(code)
        trace = {}
        for k in rh:
            if k in _TRACE:
                trace[k] = rh[k]
        trace = checked_trace_headers(trace, STATS)
        status_code, error = code, ""
        if grpc:
            op = path
            svc, _, meth = path.lstrip("/").partition("/")
            attrs["rpc.system"] = "grpc"
            attrs["rpc.service"] = svc
            attrs["rpc.method"] = meth
            gs = tr.get("grpc-status", sh.get("grpc-status", ""))
            if gs.isascii() and gs.isdigit():
                attrs["rpc.grpc.status_code"] = int(gs)
                status_code = gs
                status = STATUS_OK if gs == "0" else STATUS_ERROR
                if gs != "0":
                    error = tr.get("grpc-message", sh.get("grpc-message", ""))[:256] or \
                        (_GRPC_CODES[int(gs)] if int(gs) < len(_GRPC_CODES) else "")
            else:
                status = STATUS_UNSET
        else:
            op = f"{method} {attrs.get('url.path', '')}".strip()
            if code.isascii() and code.isdigit():
                c = int(code)
                status = STATUS_ERROR if c >= 500 or (c >= 400 and self.rdir == 0) else \
                    (STATUS_OK if c < 400 else STATUS_UNSET)
            else:
                status = STATUS_UNSET
        if s.reset:
            status = STATUS_ERROR
            error = error or f"RST_STREAM {s.reset}"
        if s.inc and why:
            inc = s.inc + "," + why
        else:
            inc = s.inc or why
        if s.resp is None and not inc:
            inc = "no response"
        elif s.req is None and not inc:
            inc = "no request"
        elif not s.req_done and not inc and not s.reset:
            # Answered before the request's last frame was seen: lost, or still
            # streaming; either way its end is unknown.
            inc = "request unfinished"
        return new_record("grpc" if grpc else "http2", s.req, s.resp, op, status, status_code,
                      error, attrs, trace, inc)

    cdef void _flush(self, object reason, list out) except *:
        cdef _Stream s
        for s in self.streams_.values():
            if s.req is not None or s.resp is not None:
                out.append(self._record(s, reason or "no response"))
        self.streams_.clear()
        self.closed = True
