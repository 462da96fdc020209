# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""PostgreSQL frontend/backend protocol v3 in compiled code: start-up, simple and
extended query, gaps, truncation and resynchronisation.

A record is one unit of work: a simple `Query` answered by everything up to
`ReadyForQuery`, or in the extended protocol one `Execute` (with the Parse / Bind /
Describe before it) answered up to its `CommandComplete` or `ErrorResponse`, so five
pipelined statements before one `Sync` are five records.  Units are matched first in,
first out.  What follows the last `Execute` up to `Sync` (a bare Sync, a Parse+Describe
that prepares a statement) is bookkeeping: matched with its answer, reported only if it
failed.  Statement and portal names are remembered (bounded) so an `Execute` of a
statement prepared earlier still gets its SQL.  Start-up and authentication messages
are consumed without reading any secret from them.

The per-connection plumbing (per-direction buffers keyed by stream offset, skip
counts, marks, gap and desync handling) is the compiled one every parser shares
(`_stream.StreamParser`); what leaves the parser is what the Python module produced: `base.Record`s
holding `base.Message`s, and `STATS` counters.  Payload bytes are read only through
`_Bytes` views (pointer + length of a `bytes` object the caller keeps alive) and every
index is checked against that length before it is read.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr

from ._stream cimport DirStream, Pending, StreamParser, new_message, new_record
from ._bytes cimport _Bytes, _at, _view

from . import redact, sqlinfo
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

SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST, PROTO_V3 = 80877103, 80877104, 80877102, 196608
CLIENT_TYPES = frozenset(b"QPBEDCHSXFpdcf")
SERVER_TYPES = frozenset(b"RKZTD C E N S 1 2 3 n t s I G H W A V c d".replace(b" ", b""))
MAX_SQL = 4096
MAX_MSG = 1 << 30
# Above this, a message is handled from its head and the rest skipped by length
# instead of buffered.
BIG = 8192
MAX_STATEMENTS = 512

cdef long long _MAX_MSG = MAX_MSG
cdef Py_ssize_t _MAX_SQL = MAX_SQL
cdef Py_ssize_t _BIG = BIG
cdef Py_ssize_t _MAX_STATEMENTS = MAX_STATEMENTS
cdef Py_ssize_t _MAX_PENDING = MAX_PENDING
cdef str _PROTO = "postgresql"

# What a unit is (Pending.extra of the Python module): answered up to ReadyForQuery,
# one Execute, bookkeeping up to Sync, connection start-up.
cdef enum:
    K_SIMPLE = 0
    K_EXECUTE = 1
    K_SYNC = 2
    K_STARTUP = 3

# Message type tables, indexed by the type byte.
cdef bint _CLIENT[256]
cdef bint _SERVER[256]
cdef bint _SERVER_ONLY[256]
cdef bint _PLAIN[256]  # server messages that only add to the answer (row count aside)
for _i in range(256):
    _CLIENT[_i] = _i in CLIENT_TYPES
    _SERVER[_i] = _i in SERVER_TYPES
    _SERVER_ONLY[_i] = _i in b"RKZT123ntsIGWAV"
    _PLAIN[_i] = _i in b"12TDntNS"


cdef inline bint _is_startup(long long code):
    return code == 80877103 or code == 80877104 or code == 80877102 or code == 196608


# -- bounds-checked byte access (_Bytes, _view, _at: _bytes.pxd) -------------------

cdef inline long long _u32(_Bytes v, Py_ssize_t i):
    """Big-endian unsigned 32-bit integer at i, or -1 if it does not fit in v."""
    if i < 0 or i + 4 > v.n:
        return -1
    return ((<long long>v.p[i] << 24) | (<long long>v.p[i + 1] << 16)
            | (<long long>v.p[i + 2] << 8) | <long long>v.p[i + 3])


cdef inline Py_ssize_t _nul(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    """Index of the first NUL in v[i:j] (clamped to v), or -1."""
    cdef const void *hit
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    if j <= i:
        return -1
    hit = memchr(v.p + i, 0, <size_t>(j - i))
    if hit == NULL:
        return -1
    return <const unsigned char *>hit - v.p


cdef inline bytes _slice(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    if j <= i:
        return b""
    return PyBytes_FromStringAndSize(<const char *>v.p + i, j - i)


cdef str _cstr(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    """The NUL-terminated string at v[i:j] (all of it without a NUL), decoded."""
    cdef Py_ssize_t k
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    if j <= i:
        return ""
    k = _nul(v, i, j)
    if k >= 0:
        j = k
    return PyUnicode_DecodeUTF8(<const char *>v.p + i, j - i, "replace")


def _error_fields(bytes body):
    """(SQLSTATE, message) of an ErrorResponse body."""
    code = msg = ""
    for field in body.split(b"\x00"):
        if not field:
            continue
        k = field[0]
        if k == 67:  # C
            code = field[1:].decode("latin-1")
        elif k == 77:  # M
            msg = field[1:].decode("utf-8", "replace")[:256]
    # Messages echo values ('Key (card)=(4111...) already exists'): masked like SQL.
    return code, redact.sql(msg)


# -- per-connection state -------------------------------------------------------------

cdef class _Cycle:
    """Client messages of one unit."""
    cdef object msg
    cdef object sql  # str or None
    cdef int kind
    cdef str inc


cdef class _Answer:
    """Server messages answering the head cycle, up to ReadyForQuery."""
    cdef object msg
    cdef list tags
    cdef str code
    cdef str error
    cdef long long rows
    cdef str inc


cdef class _Pending(Pending):
    """A unit waiting for its answer, with what the record needs."""
    cdef int kind


cdef inline _Cycle _cycle(msg, int kind):
    cdef _Cycle c = _Cycle.__new__(_Cycle)
    c.msg = msg
    c.sql = None
    c.kind = kind
    c.inc = ""
    return c


cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef inline str _join(str a, str b):
    """Two incomplete reasons as one ("a,b"; either alone when the other is empty)."""
    return a + "," + b if a and b else a or b


cdef inline bint _answered_kind(int kind):
    return kind == K_SIMPLE or kind == K_EXECUTE


cdef class PostgresParser(StreamParser):
    """One PostgreSQL connection, both directions."""

    cdef readonly dict statements  # name -> SQL
    cdef readonly set partial  # statements whose Parse was cut short
    cdef readonly dict portals  # portal -> statement name
    cdef readonly str database
    cdef _Cycle cycle
    cdef _Answer answer
    cdef readonly bint startup_next  # the client's next message may be untyped
    cdef readonly bint wait_ready  # answers are dropped up to the next ReadyForQuery
    cdef readonly bint ssl_wait  # the server's one-byte answer to SSLRequest is next

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = _PROTO
        self.counts = STATS
        self.pending = deque()
        self.cycle = None
        self.answer = None
        self.statements = {}
        self.partial = set()
        self.portals = {}
        self.database = ""
        self.startup_next = True
        self.wait_ready = False
        self.ssl_wait = False

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0
        cdef long long ln, code, total, start
        cdef int t
        cdef bint is_client
        if self.rdir < 0:
            self.rdir = self._guess_dir(d, v)
        is_client = d == self.rdir
        while pos < n:
            if is_client and self.startup_next:
                if n - pos < 8:
                    break
                ln = _u32(v, pos)
                code = _u32(v, pos + 4)
                if _is_startup(code) and 8 <= ln < 10000:
                    if n - pos < ln:
                        break
                    self._startup(st, code, v, pos, ln)
                    pos += ln
                    continue
                self.startup_next = False
            if not is_client and self.ssl_wait:
                self.ssl_wait = False
                t = _at(v, pos)
                if t == 83 or t == 71:  # 'S', 'G'
                    # Encrypted from here on: nothing more to read.
                    _count("tls")
                    self.closed = True
                    return
                if t == 78:  # 'N': carry on in clear text
                    pos += 1
                    continue
            if n - pos < 5:
                break
            t = _at(v, pos)
            ln = _u32(v, pos + 1)
            total = 1 + ln
            if not is_client and _PLAIN[t] and self.answer is not None and n - pos >= total:
                # Messages inside an answer that change nothing but its row count.
                if t == 68:
                    self.answer.rows += 1
                pos += total
                continue
            if ln < 4 or ln > _MAX_MSG or not (_CLIENT[t] if is_client else _SERVER[t]):
                _count("bad_frame")
                self._desync(d, st, out)
                return
            if n - pos < total:
                if total > _BIG:
                    # Big message (a long row, a huge query): use its head, skip the rest.
                    self._message(d, st, t, buf, pos + 5, n, pos, total, out, False)
                    st.consume(n)
                    st.skip = total - (n - pos)
                    st.open = None
                    return
                break
            start = st.base + pos
            if is_client:
                self._client(st, t, buf, pos + 5, pos + total, start, start + total, out,
                             False)
            else:
                self._server(st, t, buf, pos + 5, pos + total, start, start + total, out,
                             False)
            if self.closed:
                return
            pos += total
        st.consume(pos)

    cdef int _guess_dir(self, int d, _Bytes v):
        if v.n >= 8 and _is_startup(_u32(v, 4)):
            return d
        if v.n >= 1 and _SERVER_ONLY[v.p[0]]:
            return 1 - d
        return d

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef long long ln, total
        if v.n < 5 or (d == self.rdir and self.startup_next):
            return False
        ln = _u32(v, 1)
        total = 1 + ln
        if total < v.n + g or ln < 4:
            return False
        self._message(d, st, v.p[0], buf, 5, v.n, 0, total, out, True)
        st.consume(v.n)
        st.skip = total - v.n - g
        return True

    cdef void _salvage(self, list out) except *:
        """An answer starts while a client message is still partly buffered: the
        server had all of it, so the rest was lost.  Take its head; skip the rest."""
        cdef int d = self.rdir
        cdef DirStream st
        cdef bytes buf
        cdef _Bytes v
        cdef long long total
        if d < 0:
            return
        st = self._st(d)
        buf = st.buf
        v = _view(buf)
        if not st.synced or st.skip or v.n < 5 or self.startup_next:
            return
        total = 1 + _u32(v, 1)
        if total <= v.n or not _CLIENT[v.p[0]]:
            return
        self._message(d, st, v.p[0], buf, 5, v.n, 0, total, out, True)
        st.consume(v.n)
        st.skip = total - v.n
        _count("salvaged_request")

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        cdef _Bytes v = _view(data)
        cdef bint client = d == self.rdir
        cdef long long ln, nxt
        cdef int t
        if v.n < 5:
            return -1
        t = v.p[0]
        if not (_CLIENT[t] if client else _SERVER[t]):
            return -1
        ln = _u32(v, 1)
        if ln < 4 or ln > _MAX_MSG:
            return -1
        nxt = 1 + ln
        if v.n >= nxt + 5:
            t = _at(v, nxt)
            if not (_CLIENT[t] if client else _SERVER[t]):
                return -1
        return 0

    # -- messages ---------------------------------------------------------------------
    cdef void _startup(self, DirStream st, long long code, _Bytes v, Py_ssize_t pos,
                       long long ln) except *:
        cdef _Pending p
        if code == SSL_REQUEST or code == GSS_REQUEST:
            self.ssl_wait = True
            return
        if code == CANCEL_REQUEST:
            _count("cancel_request")
            return
        self.startup_next = False
        parts = _slice(v, pos + 8, pos + ln).split(b"\x00")
        # Only the database name is kept; user names and options stay out of spans.
        for k in range(0, len(parts) - 1, 2):
            if parts[k] == b"database":
                self.database = parts[k + 1].decode("utf-8", "replace")
        msg = st.message(st.base + pos, st.base + pos + ln)
        p = _Pending.__new__(_Pending)
        p.msg = msg
        p.operation = "STARTUP"
        p.attributes = {}
        p.incomplete = ""
        p.kind = K_STARTUP
        # A record evicted here goes nowhere, as in the Python module.
        self._push(p, [])

    cdef void _message(self, int d, DirStream st, int t, bytes buf, Py_ssize_t b0,
                       Py_ssize_t b1, Py_ssize_t pos, long long total, list out,
                       bint truncated) except *:
        cdef long long start = st.base + pos
        cdef long long end = start + total
        if d == self.rdir:
            self._client(st, t, buf, b0, b1, start, end, out, truncated)
        else:
            self._server(st, t, buf, b0, b1, start, end, out, truncated)

    cdef object _msg(self, DirStream st, long long start, long long end):
        cdef long long stop = st.base + len(st.buf)
        m = st.message(start, end if end < stop else stop)
        m.size = end - start
        return m

    cdef void _extend(self, DirStream st, msg, long long end) except *:
        """msg now runs to stream offset `end`."""
        cdef long long stop = st.base + len(st.buf)
        cdef tuple mk
        msg.size = end - msg.offset
        mk = st.mark_at((end if end < stop else stop) - 1)
        msg.end_ns = mk[1]
        msg.end_tid = mk[2]

    cdef void _client(self, DirStream st, int t, bytes buf, Py_ssize_t b0, Py_ssize_t b1,
                      long long start, long long end, list out, bint truncated) except *:
        """Client message of type t, body buf[b0:b1] (b1 may stop short of its end)."""
        cdef _Bytes v = _view(buf)
        cdef _Cycle c
        cdef Py_ssize_t i, j
        cdef str sql
        if b1 > v.n:
            b1 = v.n
        v.n = b1  # nothing past the body is read
        if t == 81 or t == 70:  # Query, FunctionCall: answered up to ReadyForQuery
            c = _cycle(self._msg(st, start, end), K_SIMPLE)
            c.sql = _cstr(v, b0, b1) if t == 81 else None
            c.inc = "truncated" if truncated else ""
            self._close_cycle(c, out)
            return
        if t == 112 or t == 100 or t == 99 or t == 102 or t == 88:  # p d c f X
            # Password / SASL, COPY data, Terminate: part of an exchange already open.
            return
        c = self.cycle
        if c is None and t == 72:  # Flush with nothing pending: no answer expected
            return
        if c is None:
            c = self.cycle = _cycle(self._msg(st, start, end), K_SYNC)
        else:
            self._extend(st, c.msg, end)
        if truncated:
            c.inc = "truncated"
        if t == 80:  # Parse: statement name, query
            i = _nul(v, b0, b1)
            if i >= 0:
                name = _slice(v, b0, i)
                sql = _cstr(v, i + 1, i + 1 + _MAX_SQL)
            else:
                name = b""
                sql = ""
            if len(self.statements) >= _MAX_STATEMENTS:
                old = next(iter(self.statements))
                del self.statements[old]
                self.partial.discard(old)
                _count("statement_evicted")
            self.statements[name] = sql[:_MAX_SQL]
            if truncated:
                self.partial.add(name)
            else:
                self.partial.discard(name)
            c.sql = sql
        elif t == 66:  # Bind: portal, statement
            i = _nul(v, b0, b1)
            if i >= 0:
                j = _nul(v, i + 1, b1)
                if j > i:
                    portal = _slice(v, b0, i)
                    stmt = _slice(v, i + 1, j)
                    if len(self.portals) >= _MAX_STATEMENTS:
                        self.portals.clear()
                    self.portals[portal] = stmt
                    if c.sql is None:
                        c.sql = self.statements.get(stmt)
                        if stmt in self.partial:
                            c.inc = "truncated"
        elif t == 69:  # Execute: portal
            if c.sql is None:
                i = _nul(v, b0, b1)
                # body[:body.find(b"\0")]: without a NUL, all but the last byte.
                portal = _slice(v, b0, i if i >= 0 else b1 - 1)
                stmt = self.portals.get(portal)
                if stmt is not None:
                    c.sql = self.statements.get(stmt)
                    if stmt in self.partial:
                        c.inc = "truncated"
            c.kind = K_EXECUTE
            self.cycle = None
            self._close_cycle(c, out)
        elif t == 83:  # Sync
            self.cycle = None
            self._close_cycle(c, out)

    cdef void _close_cycle(self, _Cycle c, list out) except *:
        cdef _Pending p
        cdef dict attrs
        sql = c.sql
        attrs = {"db.system": "postgresql"}
        if self.database:
            attrs["db.namespace"] = self.database
        if sql:
            text, op, verb, table = sqlinfo.describe(sql, _MAX_SQL)
            attrs["db.query.text"] = text
            attrs["db.operation.name"] = verb
            if table:
                attrs["db.collection.name"] = table
        else:
            op = "EXECUTE" if c.kind == K_EXECUTE else ""
            if c.kind == K_EXECUTE and not c.inc:
                c.inc = "unknown statement"  # prepared before the capture, or lost
        p = _Pending.__new__(_Pending)
        p.msg = c.msg
        p.operation = op
        p.attributes = attrs
        p.incomplete = c.inc
        p.kind = c.kind
        self._push(p, out)

    cdef void _push(self, _Pending p, list out) except *:
        if len(self.pending) >= _MAX_PENDING:
            _count("pending_overflow")
            out.append(self._incomplete(<_Pending>self.pending.popleft(), "evicted"))
        self.pending.append(p)

    cdef void _server(self, DirStream st, int t, bytes buf, Py_ssize_t b0, Py_ssize_t b1,
                      long long start, long long end, list out, bint truncated) except *:
        """Server message of type t, body buf[b0:b1] (b1 may stop short of its end)."""
        cdef _Answer a
        cdef _Pending p
        cdef _Bytes v
        cdef int head = -1
        pending = self.pending
        if self.wait_ready:
            # After lost bytes, the first sure boundary is the next ReadyForQuery.
            if t == 90:
                self.wait_ready = False
                ts = st.mark_at(start)[1]
                while pending and (<_Pending>pending[0]).msg.start_ns <= ts:
                    p = <_Pending>pending.popleft()
                    if _answered_kind(p.kind):
                        out.append(self._incomplete(p, "gap"))
            return
        a = self.answer
        if a is None:
            if (t == 83 or t == 78 or t == 65) and not pending:
                return  # asynchronous ParameterStatus / Notice / Notification
            if not pending or self.cycle is not None:
                self._salvage(out)
            a = _Answer.__new__(_Answer)
            a.msg = self._msg(st, start, end)
            a.tags = []
            a.code = ""
            a.error = ""
            a.inc = ""
            self.answer = a
        else:
            self._extend(st, a.msg, end)
        if truncated:
            a.inc = "truncated"
        if pending:
            head = (<_Pending>pending[0]).kind
        if t == 68:  # DataRow
            a.rows += 1
        elif t == 67:  # CommandComplete
            if len(a.tags) < 8:
                v = _view(buf)
                a.tags.append(_cstr(v, b0, b1))
        elif t == 69:  # ErrorResponse
            if not a.code:
                v = _view(buf)
                a.code, a.error = _error_fields(_slice(v, b0, b1))
        elif t == 90:  # ReadyForQuery
            self.answer = None
            # Executes still waiting were skipped by the server after an earlier error.
            while pending and (<_Pending>pending[0]).kind == K_EXECUTE:
                out.append(self._incomplete(<_Pending>pending.popleft(),
                                              "skipped after error"))
            self._answered(a, out)
            return
        if head == K_EXECUTE and (t == 67 or t == 73 or t == 115 or t == 69):  # C I s E
            self.answer = None
            self._answered(a, out)

    cdef void _answered(self, _Answer a, list out) except *:
        cdef _Pending p
        pending = self.pending
        if not pending or (<_Pending>pending[0]).msg.start_ns > a.msg.start_ns:
            # Nothing asked, or it answers a unit lost before the oldest one seen.
            _count("unmatched_response")
            return
        p = <_Pending>pending.popleft()
        if (p.kind == K_SYNC or p.kind == K_STARTUP) and not a.code:
            return  # bookkeeping or connection set-up, not a span
        self._record(p, a, out, "")

    cdef void _record(self, _Pending p, _Answer a, list out, str extra_inc) except *:
        cdef dict attrs = dict(p.attributes)
        if a.code:
            status, code, err = STATUS_ERROR, a.code, a.error
            attrs["db.response.status_code"] = a.code
        else:
            status, code, err = STATUS_OK, "", ""
        if a.tags:
            attrs["db.postgresql.command_tag"] = a.tags[-1]
        if a.rows:
            attrs["db.response.returned_rows"] = a.rows
        why = self._why(_join(p.incomplete, a.inc), extra_inc)
        out.append(new_record(_PROTO, p.msg, a.msg, p.operation, status, code, err,
                          attrs, {}, why))

    # -- lost bytes and close ----------------------------------------------------------
    cdef void _on_desync(self, int d, list out) except *:
        cdef _Answer a
        cdef _Cycle c
        cdef _Pending p
        pending = self.pending
        if d == self.rdir:
            # Units lost in the hole will be answered too: drop answers up to the next
            # ReadyForQuery rather than pair them with the wrong units.
            self.wait_ready = True
            self.answer = None
            if self.cycle is not None:
                self.cycle.inc = "gap"
                c = self.cycle
                self.cycle = None
                self._close_cycle(c, out)
            self.startup_next = False
            return
        a = self.answer
        self.answer = None
        self.wait_ready = True
        if pending:
            p = <_Pending>pending.popleft()
            if a is not None and _answered_kind(p.kind):
                self._record(p, a, out, "gap")
        while pending:
            p = <_Pending>pending.popleft()
            if _answered_kind(p.kind):
                out.append(self._incomplete(p, "gap"))

    cdef void _flush(self, reason, list out) except *:
        cdef _Answer a = self.answer
        cdef _Cycle c
        cdef _Pending p
        cdef bint first = True
        pending = self.pending
        self.answer = None
        if self.cycle is not None:
            c = self.cycle
            self.cycle = None
            self._close_cycle(c, out)
        why = reason or "no response"
        while pending:
            p = <_Pending>pending.popleft()
            if first and a is not None:
                if _answered_kind(p.kind) or a.code:
                    self._record(p, a, out, why)
            elif _answered_kind(p.kind):
                out.append(self._incomplete(p, why))
            first = False
        self.closed = True
