# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""DNS over UDP (one datagram per chunk) and TCP (2-byte length prefix), compiled.

Queries and responses are matched by message id.  The header, question and the
common answer types (A, AAAA, CNAME, PTR, NS, MX, TXT) are decoded here; dnspython
supplies the mnemonics (type, rcode names) and decodes the rarer answer types.

The per-connection plumbing (TCP) is the compiled one every parser shares
(`_stream.StreamParser`); what leaves the parser is what the Python module produced:
`base.Record`s holding `base.Message`s, and `STATS` counters.  Payload bytes are read only through `_Bytes`
views (pointer + length of a `bytes` object the caller keeps alive) and every index is
checked against that length before it is read.
"""

import socket
import struct

import dns.exception
import dns.rcode
import dns.rdata
import dns.rdatatype

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdio cimport snprintf

from ._stream cimport DirStream, Pending, StreamParser, new_message, new_record, new_pending
from ._bytes cimport _Bytes, _at, _view

from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    Message,
    Record,
    new_stats,
)

STATS = new_stats()
globals()["DirStream"] = DirStream  # the name the .py module exports (cimported here)

MAX_ANSWERS = 16
_TYPE_NAMES = {}
_RCODE_NAMES = {}

cdef Py_ssize_t _MAX_PENDING = MAX_PENDING
cdef str _PROTO = "dns"
# Names longer than this (253 is the most a valid one has) go through the Python
# reader; the compiled one assembles names in a buffer of this size.
cdef enum:
    NAME_BUF = 1024
cdef int _AF_INET = socket.AF_INET, _AF_INET6 = socket.AF_INET6


cdef extern from "arpa/inet.h":
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)


def type_name(t: int) -> str:
    return _type_name(t)


def rcode_name(r: int) -> str:
    return _rcode_name(r)


# The parser's own calls: C calls reading the caches (a module-level def called from
# here is a global lookup and a Python call, ~0.8k instructions, twice a DNS exchange).
cdef object _type_name(object t):
    s = _TYPE_NAMES.get(t)
    if s is None:
        s = _TYPE_NAMES[t] = dns.rdatatype.to_text(t)
    return s


cdef object _rcode_name(object r):
    s = _RCODE_NAMES.get(r)
    if s is None:
        s = _RCODE_NAMES[r] = dns.rcode.to_text(r)
    return s


# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) -------------------

cdef inline _Bytes _sub(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    """The view of v[i:j] (clamped to v)."""
    cdef _Bytes s
    if j > v.n:
        j = v.n
    if i < 0:
        i = 0
    if j < i:
        j = i
    s.p = v.p + i
    s.n = j - i
    return s




cdef inline long _be16(_Bytes v, Py_ssize_t i):
    """Big-endian 16-bit integer at i, or -1 if it does not fit in v."""
    if i < 0 or i + 2 > v.n:
        return -1
    return (<long>v.p[i] << 8) | v.p[i + 1]


cdef inline bytes _slice(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    if j <= i:
        return b""
    return PyBytes_FromStringAndSize(<const char *>v.p + i, j - i)


# -- names ----------------------------------------------------------------------------

cdef str _name(_Bytes v, Py_ssize_t i, Py_ssize_t *nxt):
    """The name at i (compression pointers followed), the index after it in nxt[0];
    None with nxt[0] = -1 if it is malformed (where read_name raises ValueError), or -2
    when it is longer than the buffer here (the caller uses the Python reader)."""
    cdef unsigned char buf[NAME_BUF]
    cdef Py_ssize_t k = 0, end = -1
    cdef int hops = 0, ln, c
    while True:
        ln = _at(v, i)
        if ln < 0:
            nxt[0] = -1  # name runs past the message
            return None
        if ln == 0:
            i += 1
            break
        if ln >= 0xC0:
            c = _at(v, i + 1)
            if c < 0:
                nxt[0] = -1  # cut pointer
                return None
            if end < 0:
                end = i + 2
            i = ((ln & 0x3F) << 8) | c
            hops += 1
            if hops > 32:
                nxt[0] = -1  # pointer loop
                return None
            continue
        if ln > 63 or i + 1 + ln > v.n:
            nxt[0] = -1  # bad label
            return None
        if k + ln + 1 > NAME_BUF:
            nxt[0] = -2
            return None
        if k:
            buf[k] = 46  # '.'
            k += 1
        for c in range(ln):
            buf[k + c] = v.p[i + 1 + c]
        k += ln
        i += 1 + ln
    nxt[0] = end if end >= 0 else i
    return PyUnicode_DecodeLatin1(<const char *>buf, k, NULL) if k else "."


def _read_name_py(data: bytes, i: int) -> tuple:
    """read_name for names too long for the compiled reader's buffer."""
    labels = []
    end = -1
    hops = 0
    n = len(data)
    while True:
        if i >= n:
            raise ValueError("name runs past the message")
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln >= 0xC0:
            if i + 1 >= n:
                raise ValueError("cut pointer")
            if end < 0:
                end = i + 2
            i = ((ln & 0x3F) << 8) | data[i + 1]
            hops += 1
            if hops > 32:
                raise ValueError("pointer loop")
            continue
        if ln > 63 or i + 1 + ln > n:
            raise ValueError("bad label")
        labels.append(data[i + 1:i + 1 + ln])
        i += 1 + ln
    return (b".".join(labels).decode("latin-1") or "."), (end if end >= 0 else i)


cdef str _read(_Bytes v, Py_ssize_t i, Py_ssize_t *nxt):
    """The name at i, the index after it in nxt[0]; raises ValueError if it is
    malformed, as read_name does."""
    cdef str name = _name(v, i, nxt)
    if nxt[0] == -1:
        raise ValueError("bad name")
    if nxt[0] == -2:
        name, j = _read_name_py(_slice(v, 0, v.n), i)
        nxt[0] = j
    return name


def read_name(data: bytes, i: int) -> tuple:
    """(name, index after it) with compression pointers followed; raises ValueError."""
    cdef Py_ssize_t j = 0
    if i < 0:
        return _read_name_py(data, i)
    name = _read(_view(data), i, &j)
    return name, j


# -- messages -------------------------------------------------------------------------

cdef class _Info:
    """Header, first question and answers of one DNS message."""
    cdef int ident
    cdef int qr
    cdef int rcode
    cdef str name
    cdef int qtype
    cdef list answers
    cdef bint truncated


cdef str _rdata(_Bytes v, Py_ssize_t i, int rtype, int rclass, Py_ssize_t rdlen):
    cdef char text[64]
    cdef str name = None
    cdef Py_ssize_t j, end
    cdef int ln
    cdef list parts
    if rtype == 1 and rdlen == 4 and i + 4 <= v.n:
        if inet_ntop(_AF_INET, v.p + i, text, sizeof(text)) != NULL:
            return "A " + text.decode("ascii")
    if rtype == 28 and rdlen == 16 and i + 16 <= v.n:
        if inet_ntop(_AF_INET6, v.p + i, text, sizeof(text)) != NULL:
            return "AAAA " + text.decode("ascii")
    if rtype == 5 or rtype == 12 or rtype == 2:
        name = _read(v, i, &j)
        return _type_name(rtype) + " " + name
    if rtype == 15 and rdlen >= 3:  # MX
        name = _read(v, i + 2, &j)
        return f"MX {_be16(v, i)} {name}."
    if rtype == 16:  # TXT: length-prefixed strings
        parts = []
        j = i
        end = i + rdlen
        while j < end:
            ln = _at(v, j)
            if ln < 0:
                raise IndexError(j)
            parts.append('"' + _slice(v, j + 1, j + 1 + ln).decode("latin-1") + '"')
            j += 1 + ln
        return "TXT " + " ".join(parts)
    data = _slice(v, 0, v.n)
    if rtype == 33 and rdlen >= 7:  # SRV
        prio, weight, port = struct.unpack_from("!HHH", data, i)
        return f"SRV {prio} {weight} {port} {read_name(data, i + 6)[0]}."
    try:
        rd = dns.rdata.from_wire(rclass, rtype, data, i, rdlen, origin=None)
        return f"{_type_name(rtype)} {rd.to_text()}"
    except (dns.exception.DNSException, ValueError, TypeError):
        return _type_name(rtype)


cdef _Info _parse(_Bytes v):
    """Header, question and answers of the message v; None if it is not one."""
    cdef _Info info
    cdef long flags, qd, an, rtype, rclass, rdlen
    cdef Py_ssize_t i, k, na
    cdef str name = None
    if v.n < 12:
        return None
    flags = _be16(v, 2)
    qd = _be16(v, 4)
    an = _be16(v, 6)
    if qd > 4 or (flags >> 11) & 0xF > 5:
        return None
    info = _Info.__new__(_Info)
    info.ident = _be16(v, 0)
    info.qr = flags >> 15
    info.rcode = flags & 0xF
    info.name = ""
    info.answers = []
    try:
        i = 12
        for k in range(qd):
            name = _read(v, i, &i)
            if i + 4 > v.n:
                raise ValueError("cut question")
            if k == 0:
                info.name = name
                info.qtype = _be16(v, i)
            i += 4
        na = an if an < 16 else 16
        for k in range(na):
            name = _read(v, i, &i)
            if i + 10 > v.n:
                raise ValueError("cut answer")
            rtype = _be16(v, i)
            rclass = _be16(v, i + 2)
            rdlen = _be16(v, i + 8)
            i += 10
            if i + rdlen > v.n:
                raise ValueError("cut rdata")
            info.answers.append(_rdata(v, i, rtype, rclass, rdlen))
            i += rdlen
    except (ValueError, IndexError):
        if not info.name and qd:
            return None
        info.truncated = True
    return info


def parse(data: bytes) -> dict | None:
    """Header, question and answers of one DNS message; None if it is not one."""
    cdef _Info info = _parse(_view(data))
    if info is None:
        return None
    return {"id": info.ident, "qr": info.qr, "rcode": info.rcode, "name": info.name,
            "qtype": info.qtype, "answers": info.answers, "truncated": info.truncated}


cdef bint _looks_tcp(bytes data, long long size):
    """Whether a flow's first chunk is length-prefixed DNS (TCP) rather than a datagram."""
    cdef _Bytes v = _view(data)
    cdef long ln
    cdef bint udp_ok, tcp_ok
    if size == 2:
        return True
    if v.n < 14:
        return False
    ln = _be16(v, 0)
    udp_ok = _be16(v, 4) == 1
    tcp_ok = _be16(v, 6) == 1 and ln + 2 <= size
    if tcp_ok and udp_ok:
        return ln + 2 == size
    return tcp_ok


# -- per-connection state -------------------------------------------------------------

cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef class DnsParser(StreamParser):
    """One DNS flow (UDP socket or TCP connection), both directions."""

    cdef object tcp_  # None until known, then bool

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = _PROTO
        self.counts = STATS
        self.pending = {}  # id -> Pending: matching is by id
        self.tcp_ = None if transport is None else transport == "tcp"

    @property
    def tcp(self):
        return self.tcp_

    # -- contract ---------------------------------------------------------------------
    cdef list feed_raw(self, int d, bytes data, long long size, long long off, object ts,
                       object tid, object seq):
        cdef list out
        cdef _Info info
        if self.tcp_ is None:
            self.tcp_ = _looks_tcp(data, size)
        if self.tcp_:
            return StreamParser.feed_raw(self, d, data, size, off, ts, tid, seq)
        # UDP: one message per datagram, no stream to reassemble.
        out = []
        if self.closed:
            return out
        info = _parse(_view(data))
        if info is None:
            _count("bad_frame")
            return out
        if size > len(data):
            info.truncated = True
        msg = new_message(off, size, ts, ts, tid, tid, seq)
        self._message(d, info, msg, out)
        return out

    cdef void _flush(self, object reason, list out) except *:
        cdef Pending p
        why = reason or "no response"
        for p in self.pending.values():
            out.append(self._incomplete(p, why))
        self.pending.clear()
        self.closed = True

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0
        cdef long ln
        cdef _Info info
        while n - pos >= 2:
            ln = _be16(v, pos)
            if ln < 12:
                _count("bad_frame")
                self._desync(d, st, out)
                return
            if n - pos - 2 < ln:
                break
            info = _parse(_sub(v, pos + 2, pos + 2 + ln))
            if info is None:
                _count("bad_frame")
                self._desync(d, st, out)
                return
            self._message(d, info, st.message(st.base + pos, st.base + pos + 2 + ln), out)
            pos += 2 + ln
        st.consume(pos)

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef long ln
        cdef _Info info
        if v.n < 14:
            return False
        ln = _be16(v, 0)
        info = _parse(_sub(v, 2, v.n))
        if info is None:
            return False
        info.truncated = True
        msg = st.message(st.base, st.base + v.n)
        msg.size = ln + 2
        self._message(d, info, msg, out)
        if ln + 2 < v.n + g:
            return False  # the next message started inside the hole
        st.consume(v.n)
        st.skip = ln + 2 - v.n - g
        return True

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        cdef _Bytes v = _view(data)
        return 0 if v.n >= 14 and _parse(_sub(v, 2, v.n)) is not None else -1

    cdef void _message(self, int d, _Info info, msg, list out) except *:
        cdef Pending p, old
        cdef dict attrs
        cdef str qtype, rcode
        if self.rdir < 0:
            self.rdir = d if info.qr == 0 else 1 - d
        if info.qr == 0:
            qtype = _type_name(info.qtype) if info.qtype else ""
            p = new_pending(msg, (qtype + " " + info.name).strip(),
                            {"dns.question.name": info.name, "dns.question.type": qtype},
                            None, "truncated" if info.truncated else "")
            old = self.pending.pop(info.ident, None)
            if old is not None:
                # Same id asked again before an answer (a retry): the first is lost.
                out.append(self._incomplete(old, "no response"))
            if len(self.pending) >= _MAX_PENDING:
                _count("pending_overflow")
                first = next(iter(self.pending))
                out.append(self._incomplete(<Pending>self.pending.pop(first), "evicted"))
            self.pending[info.ident] = p
            return
        p = self.pending.pop(info.ident, None)
        if p is None:
            _count("unmatched_response")
            return
        rcode = _rcode_name(info.rcode)
        attrs = dict(p.attributes)
        attrs["dns.response_code"] = rcode
        attrs["dns.answers"] = info.answers
        if p.incomplete and info.truncated:
            why = p.incomplete + ",truncated"
        elif info.truncated:
            why = "truncated"
        else:
            why = p.incomplete
        out.append(new_record(_PROTO, p.msg, msg, p.operation,
                          STATUS_OK if info.rcode == 0 else STATUS_ERROR, rcode,
                          "" if info.rcode == 0 else rcode, attrs, {}, why))
