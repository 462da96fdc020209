# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""Protocol inference and parser creation, compiled: what runs once per new connection.

`infer` runs the inference rules of every registered protocol, in their declared order,
on the first bytes a connection carries; `new_parser` builds its parser.  The registry
(registry.py) keeps the declarations (`spec.ProtocolSpec`, `spec.InferenceRule`) and
hands the ordered rules and the factories to `configure` whenever they change.

The built-in protocols' tests of first bytes are here, as `Matcher`s: a protocol module
declares `InferenceRule(order, transport, _infer.HTTP1)`, and `infer` runs a Matcher's
test in C, without a Python call; any other callable (a protocol declared at run time)
is called as `match(data, (local_port, remote_port))`.  A test reads payload bytes only
through a `_Bytes` view (pointer + length of a `bytes` object kept alive by the caller),
every index checked against that length.  The few shapes written as regular expressions
(Redis replies, memcached text lines) stay expressions, behind a check of the first
bytes or the port that rules most connections out before the expression runs.
"""

import re

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp, memchr
from ._bytes cimport _Bytes, _at, _view

from ._dns import parse as _dns_parse
from ._memcached import binary_request as _mc_binary_request
from ._memcached import binary_response as _mc_binary_response

REDIS_PORTS = frozenset((6379, 6380, 26379))
MYSQL_PORTS = frozenset((3306, 3307, 4000))
DNS_PORTS = frozenset((53, 5353, 853))
MEMCACHED_PORTS = frozenset((11211,))
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# PostgreSQL start-up codes (SSLRequest, GSSENCRequest, protocol 3.0)
cdef long long _PG_SSL = 80877103, _PG_GSS = 80877104, _PG_V3 = 196608

# -- expressions kept as such ----------------------------------------------------------
# Redis replies and inline commands, checked only on Redis ports or after a look at the
# first four bytes.
_REDIS_REPLY = re.compile(rb"(?:[+-][^\r\n]{0,200}|:-?\d{1,20}|\$-?\d{1,10}|\*-?\d{1,7}|_"
                          rb"|#[tf]|[%~>]\d{1,7}|,[^\r\n]{1,40}|\([\d-]{1,60}|[=!]\d{1,10})"
                          rb"\r\n")
_REDIS_INLINE = re.compile(rb"(?i)(?:PING|QUIT|INFO|AUTH \S+|HELLO \d)\r?\n")
# memcached text commands in the shape clients write them (lower case, as the server
# wants); keys are 1-250 bytes without spaces or control characters.
_KEY = rb"[!-~\x80-\xff]{1,250}"
_MC_REQUEST = re.compile(
    rb"(?:(?:set|add|replace|append|prepend) K \d{1,10} -?\d{1,10} \d{1,10}(?: noreply)?"
    rb"|cas K \d{1,10} -?\d{1,10} \d{1,10} \d{1,20}(?: noreply)?"
    rb"|gets? K(?: K)*|gats? -?\d{1,10}(?: K)+|delete K(?: 0)?(?: noreply)?"
    rb"|(?:incr|decr) K \d{1,20}(?: noreply)?|touch K -?\d{1,10}(?: noreply)?"
    rb"|m[gsdae] K(?: [!-~]{1,64})*|mn|version|stats(?: [a-z_]{1,20})*"
    rb"|flush_all(?: -?\d{1,10})?(?: noreply)?|verbosity \d{1,3}(?: noreply)?)\r?\n"
    .replace(b"K", _KEY))
_MC_VALUE = re.compile(rb"VALUE " + _KEY + rb" \d{1,10} \d{1,10}(?: \d{1,20})?\r\n")
_MC_REPLY = re.compile(rb"(?:STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|END|OK"
                       rb"|VERSION [\w.-]{1,40}|STAT \w{1,40} [^\r\n]{0,200}|HD|EN|NF|NS|EX"
                       rb"|MN|VA \d{1,10}|SERVER_ERROR [^\r\n]{0,200}"
                       rb"|CLIENT_ERROR [^\r\n]{0,200})[ \r]")
# First bytes a memcached text command can start with (the expression is case-sensitive).
cdef bint _MC_FIRST[256]
for _i in range(256):
    _MC_FIRST[_i] = _i in b"sarpcgditmvf"

# -- rule kinds --------------------------------------------------------------------------
cdef enum:
    R_PYTHON = 0
    R_H2_PREFACE
    R_HTTP1
    R_REDIS_REQUEST
    R_POSTGRES
    R_MYSQL
    R_MEMCACHED_BINARY
    R_DNS_TCP
    R_H2_SETTINGS
    R_REDIS_PORT
    R_REDIS_INLINE
    R_MEMCACHED_TEXT
    R_MEMCACHED_VALUE
    R_MEMCACHED_REPLY
    R_DNS_UDP


# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) ------------------------

cdef inline long long _be(_Bytes v, Py_ssize_t i, int k):
    """Big-endian unsigned integer of k bytes at i, or -1 if it does not fit in v."""
    cdef long long r = 0
    cdef int j
    if i < 0 or i + k > v.n:
        return -1
    for j in range(k):
        r = (r << 8) | v.p[i + j]
    return r


cdef inline bint _starts(_Bytes v, Py_ssize_t i, const char *s, Py_ssize_t k):
    """v[i:i+k] == s[:k]."""
    return i >= 0 and i + k <= v.n and memcmp(v.p + i, s, <size_t>k) == 0


cdef inline bint _digit(int c):
    return 48 <= c <= 57


cdef inline bint _space(int c):
    """What `\\s` matches in a bytes expression: space, \\t \\n \\v \\f \\r."""
    return c == 32 or 9 <= c <= 13


cdef inline Py_ssize_t _digits(_Bytes v, Py_ssize_t i, Py_ssize_t most):
    """How many ASCII digits start at i, counted up to most + 1 (more than allowed)."""
    cdef Py_ssize_t k = 0
    while k <= most and _digit(_at(v, i + k)):
        k += 1
    return k


cdef inline int _upper(int c):
    return c - 32 if 97 <= c <= 122 else c


# -- the built-in tests --------------------------------------------------------------------

cdef bint _http1(_Bytes v):
    """`[A-Z]{3,10} [^\\s]+ HTTP/1\\.[01]\\r\\n` at the start, or a status line."""
    cdef Py_ssize_t i = 0, k
    cdef int c
    while i <= 10:
        c = _at(v, i)
        if c < 65 or c > 90:
            break
        i += 1
    if 3 <= i <= 10 and _at(v, i) == 32:
        k = i + 1
        while True:
            c = _at(v, k)
            if c < 0 or _space(c):
                break
            k += 1
        if (k > i + 1 and _starts(v, k, b" HTTP/1.", 8) and (_at(v, k + 8) == 48
                                                             or _at(v, k + 8) == 49)
                and _at(v, k + 9) == 13 and _at(v, k + 10) == 10):
            return True
    return _starts(v, 0, b"HTTP/1.1 ", 9) or _starts(v, 0, b"HTTP/1.0 ", 9)


cdef bint _redis_request(_Bytes v):
    """`\\*[1-9]\\d{0,6}\\r\\n\\$\\d{1,10}\\r\\n` at the start."""
    cdef Py_ssize_t i, k
    if _at(v, 0) != 42 or not (49 <= _at(v, 1) <= 57):
        return False
    k = _digits(v, 2, 6)
    if k > 6:
        return False
    i = 2 + k
    if _at(v, i) != 13 or _at(v, i + 1) != 10 or _at(v, i + 2) != 36:
        return False
    k = _digits(v, i + 3, 10)
    if k < 1 or k > 10:
        return False
    i += 3 + k
    return _at(v, i) == 13 and _at(v, i + 1) == 10


cdef bint _postgres(_Bytes v):
    cdef long long ln, code
    cdef int t, nxt
    if v.n >= 8:
        ln = _be(v, 0, 4)
        code = _be(v, 4, 4)
        if (code == _PG_V3 or code == _PG_SSL or code == _PG_GSS) and 8 <= ln < 10000:
            return True
    t = _at(v, 0)
    if v.n >= 6 and (t == 81 or t == 80):  # Query, Parse
        ln = _be(v, 1, 4)
        if 4 < ln < (1 << 24) and (v.n < ln + 1 or _at(v, ln) == 0):
            if t == 81:
                return True
            nxt = _at(v, ln + 1)
            return v.n > ln + 1 and (nxt == 66 or nxt == 68 or nxt == 83 or nxt == 72)
    if v.n >= 9 and t == 82 and (_starts(v, 1, b"\x00\x00\x00\x08", 4)
                                 or _starts(v, 1, b"\x00\x00\x00\x0c", 4)):
        return True  # AuthenticationOk / AuthenticationMD5Password
    return False


cdef bint _looks_sql(_Bytes v, Py_ssize_t i):
    """The first word of v[i:i+10] (up to a space), upper-cased, is a SQL verb."""
    cdef char word[10]
    cdef Py_ssize_t k = 0
    cdef int c
    while k < 10:
        c = _at(v, i + k)
        if c < 0 or c == 32:
            break
        word[k] = <char>_upper(c)
        k += 1
    if k == 3:
        return memcmp(word, b"SET", 3) == 0 or memcmp(word, b"USE", 3) == 0
    if k == 4:
        return (memcmp(word, b"SHOW", 4) == 0 or memcmp(word, b"DROP", 4) == 0
                or memcmp(word, b"CALL", 4) == 0)
    if k == 5:
        return memcmp(word, b"BEGIN", 5) == 0
    if k == 6:
        return (memcmp(word, b"SELECT", 6) == 0 or memcmp(word, b"INSERT", 6) == 0
                or memcmp(word, b"UPDATE", 6) == 0 or memcmp(word, b"DELETE", 6) == 0
                or memcmp(word, b"COMMIT", 6) == 0 or memcmp(word, b"CREATE", 6) == 0)
    return False


cdef bint _mysql(_Bytes v, long long lport, long long rport):
    cdef long long ln
    cdef int first
    cdef const void *hit
    cdef Py_ssize_t end
    cdef bint whole
    if v.n < 5:
        return False
    ln = v.p[0] | (v.p[1] << 8) | (v.p[2] << 16)
    first = v.p[4]
    if ln == 0 or v.p[3] != 0:
        return False
    if first == 10:  # server greeting: protocol 10, then a version such as "10.11.6-MariaDB"
        end = 5 + 64 if v.n > 5 + 64 else v.n
        if end <= 5:
            return False
        hit = memchr(v.p + 5, 0, <size_t>(end - 5))
        return hit != NULL and <const unsigned char *>hit - v.p > 5 and _digit(_at(v, 5))
    whole = ln + 4 == v.n or ln + 4 > v.n >= 1024
    if (first == 3 or first == 22) and whole:  # COM_QUERY, COM_STMT_PREPARE
        return (lport == 3306 or lport == 3307 or lport == 4000 or rport == 3306
                or rport == 3307 or rport == 4000 or _looks_sql(v, 5))
    return False


cdef bint _dns_header(_Bytes v, Py_ssize_t off):
    cdef int opcode
    if v.n < off + 12:
        return False
    opcode = (v.p[off + 2] >> 3) & 0xF
    return _be(v, off + 4, 2) == 1 and (opcode == 0 or opcode == 2 or opcode == 4
                                        or opcode == 5)


cdef bint _dns_message(bytes data, _Bytes v, Py_ssize_t off):
    """A whole DNS message with a question name at off (the compiled DNS parser's
    reading of it)."""
    if not _dns_header(v, off):
        return False
    try:
        info = _dns_parse(data[off:])
    except Exception:  # noqa: BLE001 - inference must never raise
        return False
    return info is not None and bool(info["name"]) and not info["truncated"]


cdef inline bint _dns_port(long long lport, long long rport):
    return (lport == 53 or lport == 5353 or lport == 853 or rport == 53 or rport == 5353
            or rport == 853)


cdef bint _h2_settings(_Bytes v):
    """A server-side first read of HTTP/2 (SETTINGS frame on stream 0)."""
    cdef long long ln
    if v.n < 9:
        return False
    ln = _be(v, 0, 3)
    return (v.p[3] == 4 and ln % 6 == 0 and ln <= 60 and _starts(v, 5, b"\x00\x00\x00\x00", 4)
            and (v.p[4] == 0 or v.p[4] == 1))


cdef inline bint _redis_port(long long lport, long long rport):
    return (lport == 6379 or lport == 6380 or lport == 26379 or rport == 6379
            or rport == 6380 or rport == 26379)


cdef bint _redis_inline(bytes data, _Bytes v):
    cdef char head[4]
    cdef int k
    if v.n < 4:
        return False
    for k in range(4):
        head[k] = <char>_upper(v.p[k])
    if not (memcmp(head, b"PING", 4) == 0 or memcmp(head, b"HELL", 4) == 0
            or memcmp(head, b"AUTH", 4) == 0):
        return False
    return _REDIS_INLINE.match(data) is not None


cdef object _run(int kind, bytes data, long long lport, long long rport):
    """The protocol a built-in test finds in data, or None."""
    cdef _Bytes v = _view(data)
    cdef int c
    if kind == R_H2_PREFACE:
        return "http2" if _starts(v, 0, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) else None
    if kind == R_HTTP1:
        return "http" if _http1(v) else None
    if kind == R_REDIS_REQUEST:
        return "redis" if _redis_request(v) else None
    if kind == R_POSTGRES:
        return "postgresql" if _postgres(v) else None
    if kind == R_MYSQL:
        return "mysql" if _mysql(v, lport, rport) else None
    if kind == R_MEMCACHED_BINARY:
        c = _at(v, 0)
        if c == 0x80 and _mc_binary_request(data):
            return "memcached"
        if c == 0x81 and (lport == 11211 or rport == 11211) and _mc_binary_response(data):
            return "memcached"
        return None
    if kind == R_DNS_TCP:
        # Over TCP a message has a 2-byte length prefix.
        if v.n < 14 or _be(v, 0, 2) < 12 or not _dns_header(v, 2):
            return None
        return "dns" if _dns_port(lport, rport) or _dns_message(data, v, 2) else None
    if kind == R_DNS_UDP:
        # A whole message, or a header alone on a DNS port: on a DNS port the header
        # decides, the message need not be read.
        if not _dns_header(v, 0):
            return None
        return "dns" if _dns_port(lport, rport) or _dns_message(data, v, 0) else None
    if kind == R_H2_SETTINGS:
        return "http2" if _h2_settings(v) else None
    if kind == R_REDIS_PORT:
        if _redis_port(lport, rport) and (_REDIS_REPLY.match(data) is not None
                                          or _REDIS_INLINE.match(data) is not None):
            return "redis"
        return None
    if kind == R_REDIS_INLINE:
        return "redis" if _redis_inline(data, v) else None
    if kind == R_MEMCACHED_TEXT:
        if v.n == 0 or not _MC_FIRST[v.p[0]]:
            return None
        if _MC_REQUEST.match(data) is None:
            return None
        # Redis takes inline commands too ("get k"): on its ports, it is Redis.
        return "redis" if _redis_port(lport, rport) else "memcached"
    if kind == R_MEMCACHED_VALUE:
        if _starts(v, 0, b"VALUE ", 6) and _MC_VALUE.match(data) is not None:
            return "memcached"
        return None
    if kind == R_MEMCACHED_REPLY:
        if (lport == 11211 or rport == 11211) and _MC_REPLY.match(data) is not None:
            return "memcached"
        return None
    return None


cdef class Matcher:
    """A built-in test of a connection's first bytes: called as `InferenceRule.match`
    is, `(data, (local_port, remote_port))` -> protocol name or None; `infer` runs it
    without that call."""

    cdef readonly int kind
    cdef readonly str name

    def __cinit__(self, int kind, str name):
        self.kind = kind
        self.name = name

    def __call__(self, data, ports):
        return _run(self.kind, bytes(data), ports[0], ports[1])

    def __repr__(self):
        return f"<inference test {self.name}>"

    def __reduce__(self):
        return (Matcher, (self.kind, self.name))


H2_PREFACE_TEST = Matcher(R_H2_PREFACE, "http2 preface")
H2_SETTINGS = Matcher(R_H2_SETTINGS, "http2 settings frame")
HTTP1 = Matcher(R_HTTP1, "http/1 request or status line")
REDIS_REQUEST = Matcher(R_REDIS_REQUEST, "redis request")
REDIS_ON_PORT = Matcher(R_REDIS_PORT, "redis reply or inline command on a redis port")
REDIS_INLINE = Matcher(R_REDIS_INLINE, "redis inline PING/HELLO/AUTH")
POSTGRES = Matcher(R_POSTGRES, "postgresql")
MYSQL = Matcher(R_MYSQL, "mysql")
MEMCACHED_BINARY = Matcher(R_MEMCACHED_BINARY, "memcached binary")
MEMCACHED_TEXT = Matcher(R_MEMCACHED_TEXT, "memcached text command")
MEMCACHED_VALUE = Matcher(R_MEMCACHED_VALUE, "memcached VALUE")
MEMCACHED_REPLY = Matcher(R_MEMCACHED_REPLY, "memcached reply on its port")
DNS_UDP = Matcher(R_DNS_UDP, "dns datagram")
DNS_TCP = Matcher(R_DNS_TCP, "dns over tcp")


# -- the registry's tables ----------------------------------------------------------------

cdef class _Rule:
    cdef int kind  # R_PYTHON: call match
    cdef object match


cdef tuple _TCP = ()
cdef tuple _UDP = ()
cdef dict _FACTORIES = {}


cdef tuple _table(rules):
    cdef list out = []
    cdef _Rule r
    for rule in rules:
        r = _Rule.__new__(_Rule)
        r.match = rule.match
        r.kind = (<Matcher>r.match).kind if type(r.match) is Matcher else R_PYTHON
        out.append(r)
    return tuple(out)


def configure(tcp_rules, udp_rules, dict factories) -> None:
    """The rules in the order they run (InferenceRule objects) and the parser factories
    by protocol name; called by the registry whenever a protocol is added or removed."""
    global _TCP, _UDP, _FACTORIES
    _TCP = _table(tcp_rules)
    _UDP = _table(udp_rules)
    _FACTORIES = dict(factories)


def infer(data, direction, local_port, remote_port, transport):
    """The protocol a connection speaks, from its first bytes; None when unsure."""
    cdef tuple rules
    cdef _Rule r
    cdef bytes b
    cdef long long lport, rport
    if not data:
        return None
    if transport == "tcp":
        rules = _TCP
    elif transport == "udp":
        rules = _UDP
    else:
        return None
    b = data if type(data) is bytes else bytes(data)
    lport = local_port
    rport = remote_port
    ports = None
    for r in rules:
        if r.kind != R_PYTHON:
            found = _run(r.kind, b, lport, rport)
        else:
            if ports is None:
                ports = (local_port, remote_port)
            found = r.match(data, ports)
        if found is not None:
            return found
    return None


def new_parser(protocol, client_side, transport=None):
    """A fresh parser for one connection; `transport` only matters for DNS."""
    return _FACTORIES[protocol](client_side, transport)
