# cython: language_level=3, boundscheck=True, wraparound=True, nonecheck=True
# cython: initializedcheck=True, cdivision=False, infer_types=False
"""MySQL / MariaDB client/server protocol in compiled code: handshake, COM_QUERY,
prepared statements, gaps, truncation and resynchronisation.

Every packet carries its length, so a packet longer than the captured prefix is
handled from its head and skipped.  The response to a command is followed through its
shape (OK / ERR / result set: column count, column definitions, optional EOF, rows,
terminator, more results) so the record ends at the response's last byte.  The
handshake response and any auth packet are consumed without reading credentials.

The per-connection plumbing is the compiled one every parser shares
(`_stream.StreamParser`); what leaves the parser is what the Python module produced:
`base.Record`s holding `base.Message`s, and `STATS` counters.  Payload bytes are read only through `_Bytes`
views (pointer + length of a `bytes` object the caller keeps alive) and every index is
checked against that length before it is read; the rare packets (greeting, handshake
response, ERR) are read with Python slices as before.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

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

CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_SSL = 0x800
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_QUERY_ATTRIBUTES = 1 << 27
MORE_RESULTS = 0x0008
MAX_SQL = 4096
MAX_STATEMENTS = 512

COM_QUIT, COM_INIT_DB, COM_QUERY, COM_FIELD_LIST = 0x01, 0x02, 0x03, 0x04
COM_STATISTICS, COM_CHANGE_USER = 0x09, 0x11
COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA = 0x16, 0x17, 0x18
COM_STMT_CLOSE = 0x19
COMMANDS = {
    0x00: "SLEEP", 0x01: "QUIT", 0x02: "INIT_DB", 0x03: "QUERY", 0x04: "FIELD_LIST",
    0x05: "CREATE_DB", 0x06: "DROP_DB", 0x07: "REFRESH", 0x08: "SHUTDOWN",
    0x09: "STATISTICS", 0x0A: "PROCESS_INFO", 0x0C: "PROCESS_KILL", 0x0D: "DEBUG",
    0x0E: "PING", 0x11: "CHANGE_USER", 0x16: "STMT_PREPARE", 0x17: "STMT_EXECUTE",
    0x18: "STMT_SEND_LONG_DATA", 0x19: "STMT_CLOSE", 0x1A: "STMT_RESET",
    0x1B: "SET_OPTION", 0x1C: "STMT_FETCH", 0x1F: "RESET_CONNECTION",
}

# Response states.
R_FIRST, R_COLS, R_COLS_EOF, R_ROWS, R_PREP, R_PREP_EOF = range(6)
# _step's "over, and this packet belongs to the next answer".
NOT_MINE = 2
# Connection phases.
P_HANDSHAKE, P_AUTH, P_COMMAND = 0, 1, 2

cdef enum:
    S_FIRST = 0
    S_COLS = 1
    S_COLS_EOF = 2
    S_ROWS = 3
    S_PREP = 4
    S_PREP_EOF = 5
cdef enum:
    PH_HANDSHAKE = 0
    PH_AUTH = 1
    PH_COMMAND = 2
cdef enum:
    D_NO = 0
    D_OVER = 1
    D_NOT_MINE = 2

cdef int _QUIT = 0x01, _INIT_DB = 0x02, _QUERY = 0x03, _STATISTICS = 0x09
cdef int _CHANGE_USER = 0x11, _PREPARE = 0x16, _EXECUTE = 0x17, _LONG_DATA = 0x18
cdef int _CLOSE = 0x19
cdef Py_ssize_t _MAX_SQL = MAX_SQL
cdef Py_ssize_t _MAX_STATEMENTS = MAX_STATEMENTS
cdef Py_ssize_t _MAX_PENDING = MAX_PENDING
# Counts past this are clamped (columns are counted down one packet at a time, so a
# count this large never reaches zero either way).
cdef long long _HUGE = 4611686018427387904
cdef str _PROTO = "mysql"

# Command bytes the resynchronisation accepts, and their names.
cdef bint _COMMAND[256]
cdef list _NAMES = []
for _i in range(256):
    _COMMAND[_i] = _i in COMMANDS
    _NAMES.append(COMMANDS.get(_i, f"COM_{_i:#x}"))


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




cdef inline long long _le16(_Bytes v, Py_ssize_t i):
    """Little-endian 16-bit integer at i, or -1 if it does not fit in v."""
    if i < 0 or i + 2 > v.n:
        return -1
    return <long long>v.p[i] | (<long long>v.p[i + 1] << 8)


cdef inline long long _le32(_Bytes v, Py_ssize_t i):
    """Little-endian 32-bit integer at i, or -1 if it does not fit in v."""
    if i < 0 or i + 4 > v.n:
        return -1
    return (<long long>v.p[i] | (<long long>v.p[i + 1] << 8)
            | (<long long>v.p[i + 2] << 16) | (<long long>v.p[i + 3] << 24))


cdef inline bytes _slice(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    if j <= i:
        return b""
    return PyBytes_FromStringAndSize(<const char *>v.p + i, j - i)


cdef inline str _text(_Bytes v, Py_ssize_t i, Py_ssize_t j):
    """v[i:j] (clamped) decoded as UTF-8, bad bytes replaced."""
    if i < 0:
        i = 0
    if j > v.n:
        j = v.n
    if j <= i:
        return ""
    return PyUnicode_DecodeUTF8(<const char *>v.p + i, j - i, "replace")


cdef Py_ssize_t _lenenc(_Bytes v, Py_ssize_t i, unsigned long long *val):
    """Index after the length-encoded integer at i (its value in *val), or -1 when it
    is cut (where the Python `lenenc` raised IndexError)."""
    cdef int c = _at(v, i)
    cdef unsigned long long x = 0
    cdef int k
    if c < 0:
        return -1
    if c < 0xFB:
        val[0] = c
        return i + 1
    if c == 0xFC:
        if i + 2 >= v.n:
            return -1
        val[0] = v.p[i + 1] | (<unsigned long long>v.p[i + 2] << 8)
        return i + 3
    if c == 0xFD:
        if i + 3 >= v.n:
            return -1
        val[0] = (v.p[i + 1] | (<unsigned long long>v.p[i + 2] << 8)
                  | (<unsigned long long>v.p[i + 3] << 16))
        return i + 4
    if c == 0xFE:
        if i + 8 >= v.n:
            return -1
        for k in range(8, 0, -1):
            x = (x << 8) | v.p[i + k]
        val[0] = x
        return i + 9
    val[0] = 0  # 0xFB: NULL
    return i + 1


def lenenc(b: bytes, i: int) -> tuple:
    """(value, next index) of a length-encoded integer; raises IndexError if cut."""
    cdef unsigned long long val = 0
    cdef Py_ssize_t j
    if i < 0:
        raise IndexError(i)
    j = _lenenc(_view(b), i, &val)
    if j < 0:
        raise IndexError(i)
    return val, j


cdef long long _ok_status(_Bytes p):
    cdef unsigned long long val
    cdef Py_ssize_t i = _lenenc(p, 1, &val)
    if i < 0:
        return 0
    i = _lenenc(p, i, &val)
    if i < 0:
        return 0
    if i + 1 >= p.n:
        return 0
    return p.p[i] | (p.p[i + 1] << 8)


cdef inline long long _eof_status(_Bytes p):
    return (p.p[3] | (p.p[4] << 8)) if p.n >= 5 else 0


def _err(bytes p):
    """(error code, SQLSTATE, message) of an ERR packet."""
    if len(p) < 3:
        return "", "", ""
    code = str(p[1] | (p[2] << 8))
    # Messages echo values ("Duplicate entry '4111...' for key"): masked like SQL.
    if len(p) > 3 and p[3] == 35:  # '#'
        return code, p[4:9].decode("latin-1"), redact.sql(p[9:].decode("utf-8", "replace")[:256])
    return code, "", redact.sql(p[3:].decode("utf-8", "replace")[:256])


def _greeting_caps(bytes p):
    """The server's capabilities from its greeting, or None if they cannot be read."""
    try:
        i = p.index(b"\x00", 1) + 1 + 4 + 8 + 1
    except ValueError:
        return None
    caps = int.from_bytes(p[i:i + 2], "little")
    if len(p) >= i + 7:
        caps |= int.from_bytes(p[i + 5:i + 7], "little") << 16
    return caps


def _handshake_db(bytes p):
    """The database named in a handshake response, or None."""
    try:
        i = p.index(b"\x00", 32) + 1  # user name
        caps = int.from_bytes(p[0:4], "little")
        if caps & 0x00200000:  # PLUGIN_AUTH_LENENC_CLIENT_DATA
            alen, i = lenenc(p, i)
        elif caps & 0x8000:  # SECURE_CONNECTION
            alen, i = p[i], i + 1
        else:
            alen = p.index(b"\x00", i) - i + 1
        i += alen  # auth response: skipped unread
        j = p.index(b"\x00", i)
        return p[i:j].decode("utf-8", "replace")
    except (ValueError, IndexError):
        return None


# -- per-connection state -------------------------------------------------------------

cdef class _Pending(Pending):
    """A command waiting for its response, with what the record needs."""
    cdef int cmd
    cdef object sql  # str or None


cdef class _Answer:
    cdef object msg
    cdef int state
    cdef long long left
    cdef str code
    cdef str error
    cdef long long rows
    cdef str inc
    cdef bint has_prep
    cdef long long prep_sid
    cdef list segs  # runs of definitions still to come in a prepare answer
    cdef bint orphan


cdef inline void _count(str reason) except *:
    STATS[reason] += 1


cdef class MySQLParser(StreamParser):
    """One MySQL/MariaDB connection, both directions."""

    cdef readonly int phase
    cdef readonly long long server_caps
    cdef long long caps_  # negotiated capabilities, when the handshake was seen
    cdef bint has_caps
    cdef readonly dict statements  # statement id -> SQL
    cdef readonly set partial  # statements whose PREPARE was cut short
    cdef readonly str database
    cdef _Answer answer

    def __init__(self, client_side=None, transport=None):
        self._setup(client_side)
        self.proto = _PROTO
        self.counts = STATS
        self.pending = deque()
        self.answer = None
        self.phase = PH_COMMAND
        self.server_caps = 0
        self.has_caps = False
        self.statements = {}
        self.partial = set()
        self.database = ""

    @property
    def caps(self):
        return self.caps_ if self.has_caps else None

    # -- framing ----------------------------------------------------------------------
    cdef void _parse(self, int d, DirStream st, list out) except *:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef Py_ssize_t n = v.n, pos = 0
        cdef long long ln, total
        cdef int seq, first
        cdef bint server
        if self.rdir < 0 and n >= 5:
            seq = v.p[3]
            first = v.p[4]
            server = seq > 0 or first == 10  # 10: greeting (COM_PROCESS_INFO is obsolete)
            self.rdir = 1 - d if server else d
        while n - pos >= 4:
            ln = <long long>v.p[pos] | (<long long>v.p[pos + 1] << 8) | \
                (<long long>v.p[pos + 2] << 16)
            total = 4 + ln
            if n - pos < total:
                if total > 8192:
                    # Long packet (a big row or query): use its head, skip the rest.
                    self._packet(d, st, v.p[pos + 3], buf, pos + 4, n, pos, total, out,
                                 False)
                    st.consume(n)
                    st.skip = total - (n - pos)
                    return
                break
            self._packet(d, st, v.p[pos + 3], buf, pos + 4, pos + total, pos, total, out,
                         False)
            if self.closed:
                return
            pos += total
        st.consume(pos)

    cdef bint _on_gap(self, int d, DirStream st, long long g, list out) except -1:
        cdef bytes buf = st.buf
        cdef _Bytes v = _view(buf)
        cdef long long total
        if v.n < 5:
            return False
        total = 4 + (<long long>v.p[0] | (<long long>v.p[1] << 8) | (<long long>v.p[2] << 16))
        if total < v.n + g:
            return False
        self._packet(d, st, v.p[3], buf, 4, v.n, 0, total, out, True)
        st.consume(v.n)
        st.skip = total - v.n - g
        return True

    cdef void _salvage(self, list out) except *:
        """An answer starts while the client's command is still partly buffered: the
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
        if not st.synced or st.skip or v.n < 5:
            return
        total = 4 + (<long long>v.p[0] | (<long long>v.p[1] << 8) | (<long long>v.p[2] << 16))
        if total <= v.n:
            return
        self._packet(d, st, v.p[3], buf, 4, v.n, 0, total, out, True)
        st.consume(v.n)
        st.skip = total - v.n
        _count("salvaged_request")

    cdef Py_ssize_t _resync(self, int d, bytes data) except -2:
        # A chunk that starts with a packet whose header fits, and when it holds more
        # than one packet, whose next header fits too.
        cdef _Bytes v = _view(data)
        cdef long long ln
        if v.n < 5:
            return -1
        ln = <long long>v.p[0] | (<long long>v.p[1] << 8) | (<long long>v.p[2] << 16)
        if ln == 0:
            return -1
        if d == self.rdir:
            return 0 if v.p[3] == 0 and _COMMAND[v.p[4]] else -1
        if v.p[3] == 0:
            return -1
        if v.n > 4 + ln and v.n >= 8 + ln and _at(v, 7 + ln) != (v.p[3] + 1) & 0xFF:
            return -1
        return 0

    # -- packets ----------------------------------------------------------------------
    cdef void _packet(self, int d, DirStream st, int seq, bytes buf, Py_ssize_t b0,
                      Py_ssize_t b1, Py_ssize_t pos, long long total, list out,
                      bint truncated) except *:
        """Packet with sequence id `seq`, payload buf[b0:b1] (b1 may stop short)."""
        cdef long long start = st.base + pos
        cdef long long end = start + total
        cdef _Bytes p = _sub(_view(buf), b0, b1)
        if d == self.rdir:
            self._client(st, seq, buf, p, start, end, out, truncated)
        else:
            self._server(st, seq, buf, p, start, end, out, truncated)

    cdef object _msg(self, DirStream st, long long start, long long end):
        cdef long long stop = st.base + len(st.buf)
        m = st.message(start, end if end < stop else stop)
        m.size = end - start
        return m

    cdef void _client(self, DirStream st, int seq, bytes buf, _Bytes p, long long start,
                      long long end, list out, bint truncated) except *:
        """A client packet; `p` views its payload inside `buf` (kept alive here)."""
        cdef int cmd
        cdef long long caps, sid = -1
        cdef unsigned long long nparams, skip
        cdef Py_ssize_t i, q0
        cdef str unknown
        cdef dict attrs
        cdef _Pending pend
        if self.phase == PH_HANDSHAKE:
            if p.n >= 32:
                caps = _le32(p, 0)
                self.caps_ = caps & self.server_caps
                self.has_caps = True
                if p.n == 32 and caps & CLIENT_SSL:
                    _count("tls")
                    self.closed = True
                    return
                if caps & CLIENT_CONNECT_WITH_DB:
                    db = _handshake_db(_slice(p, 0, p.n))
                    if db is not None:
                        self.database = db
            self.phase = PH_AUTH
            return
        if self.phase == PH_AUTH or seq != 0 or p.n == 0:
            return  # auth data, LOCAL INFILE contents: not commands
        cmd = p.p[0]
        if cmd == _QUIT or cmd == _LONG_DATA or cmd == _CLOSE:
            if cmd == _CLOSE and p.n >= 5:
                sid = _le32(p, 1)
                self.statements.pop(sid, None)
                self.partial.discard(sid)
            elif cmd == _QUIT:
                _count("quit")
            return
        unknown = "truncated" if truncated else ""
        attrs = {"db.system": "mysql"}
        if self.database:
            attrs["db.namespace"] = self.database
        sql = None
        if cmd == _QUERY:
            q0 = 1
            if self.has_caps and self.caps_ & CLIENT_QUERY_ATTRIBUTES:
                i = _lenenc(p, 1, &nparams)
                if i >= 0:
                    i = _lenenc(p, i, &skip)
                    if i >= 0 and nparams == 0:
                        q0 = i
            sql = _text(p, q0, q0 + _MAX_SQL)
        elif cmd == _PREPARE:
            sql = _text(p, 1, 1 + _MAX_SQL)
        elif cmd == _EXECUTE and p.n >= 5:
            sid = _le32(p, 1)
            sql = self.statements.get(sid)
            attrs["db.mysql.statement_id"] = sid
            if sql is None:
                unknown = "unknown statement"
            elif sid in self.partial:
                unknown = "truncated"
        elif cmd == _INIT_DB:
            self.database = _text(p, 1, p.n)
            attrs["db.namespace"] = self.database
        elif cmd == _CHANGE_USER:
            self.phase = PH_AUTH
        if sql is not None:
            text, op, verb, table = sqlinfo.describe(sql, _MAX_SQL)
            attrs["db.query.text"] = text
            attrs["db.operation.name"] = verb
            if table:
                attrs["db.collection.name"] = table
            if cmd == _PREPARE:
                op = f"PREPARE {op}".strip()
        else:
            op = _NAMES[cmd] if cmd != _EXECUTE else "EXECUTE"
            attrs["db.operation.name"] = op
        pend = _Pending.__new__(_Pending)
        pend.msg = self._msg(st, start, end)
        pend.operation = op
        pend.attributes = attrs
        pend.incomplete = unknown
        pend.cmd = cmd
        pend.sql = sql
        if len(self.pending) >= _MAX_PENDING:
            _count("pending_overflow")
            out.append(self._incomplete(<_Pending>self.pending.popleft(), "evicted"))
        self.pending.append(pend)

    cdef void _server(self, DirStream st, int seq, bytes buf, _Bytes p, long long start,
                      long long end, list out, bint truncated) except *:
        """A server packet; `p` views its payload inside `buf` (kept alive here)."""
        cdef int first
        cdef _Pending pend
        cdef _Answer a
        cdef int done
        cdef bint has_prev = False
        cdef long long stop
        cdef tuple mk
        pending = self.pending
        if p.n == 0:
            return
        first = p.p[0]
        if seq == 0 and first == 10 and self.phase != PH_AUTH and not pending:
            # Initial handshake: remember the server's capabilities.
            caps = _greeting_caps(_slice(p, 0, p.n))
            if caps is not None:
                self.server_caps = caps
            self.phase = PH_HANDSHAKE
            return
        if self.phase != PH_COMMAND:
            pend = <_Pending>pending[0] if pending else None
            if (first == 0x00 or first == 0xFF) and pend is not None \
                    and pend.cmd == _CHANGE_USER:
                # The end of COM_CHANGE_USER's re-authentication answers that command.
                pending.popleft()
                self.phase = PH_COMMAND
                msg = self._msg(st, start, end)
                attrs = dict(pend.attributes)
                status, code, text = STATUS_OK, "", ""
                if first == 0xFF:
                    code, _state, text = _err(_slice(p, 0, p.n))
                    status = STATUS_ERROR
                    attrs["db.response.status_code"] = code
                out.append(new_record(_PROTO, pend.msg, msg, pend.operation, status, code,
                                  text, attrs, {}, pend.incomplete))
                return
            if first == 0x00:
                self.phase = PH_COMMAND
            elif first == 0xFF and self.phase == PH_AUTH:
                code, _state, text = _err(_slice(p, 0, p.n))
                self.phase = PH_COMMAND
                stop = st.base + len(st.buf)
                msg = st.message(start, end if end < stop else stop)
                out.append(new_record(_PROTO, None, msg, "CONNECT", STATUS_ERROR, code, text,
                                  {"db.system": "mysql", "db.response.status_code": code},
                                  {}, "no request"))
            return
        a = self.answer
        if a is None:
            if seq != 1:
                # Answers open with sequence id 1: this is the middle of one whose
                # beginning was lost.
                _count("stray_packet")
                return
            if not pending:
                self._salvage(out)
            msg = self._msg(st, start, end)
            a = _Answer.__new__(_Answer)
            a.msg = msg
            a.code = ""
            a.error = ""
            a.inc = ""
            a.segs = []
            self.answer = a
            if not pending or (<_Pending>pending[0]).msg.start_ns > msg.start_ns:
                # Nothing asked, or it answers a command lost before the oldest one seen:
                # follow its shape all the same, to know where it ends.
                _count("unmatched_response")
                a.orphan = True
        else:
            m = a.msg
            prev_size, prev_end, prev_tid = m.size, m.end_ns, m.end_tid
            has_prev = True
            m.size = end - m.offset
            stop = st.base + len(st.buf)
            mk = st.mark_at((end if end < stop else stop) - 1)
            m.end_ns = mk[1]
            m.end_tid = mk[2]
        if truncated:
            a.inc = "truncated"
        done = self._step(a, buf, p, first)
        if done:
            self.answer = None
            if done == D_NOT_MINE and has_prev:
                m = a.msg
                m.size, m.end_ns, m.end_tid = prev_size, prev_end, prev_tid
            if not a.orphan:
                self._answered(a, out)
            if done == D_NOT_MINE and has_prev:
                # The packet opens the next answer.
                self._server(st, seq, buf, p, start, end, out, truncated)

    cdef int _step(self, _Answer a, bytes buf, _Bytes p, int first) except -1:
        """Advance the response state machine by one packet: D_NO, D_OVER, or
        D_NOT_MINE (over, and this packet belongs to the next answer)."""
        cdef int s = a.state
        # Tri-state: -1 capabilities unknown, else whether EOF packets are deprecated.
        cdef int deprecate = -1 if not self.has_caps else \
            (1 if self.caps_ & CLIENT_DEPRECATE_EOF else 0)
        cdef int cmd
        cdef unsigned long long cols
        cdef long long status
        if s == S_FIRST:
            if first == 0xFF:
                a.code, _state, a.error = _err(_slice(p, 0, p.n))
                return D_OVER
            cmd = (<_Pending>self.pending[0]).cmd if self.pending and not a.orphan \
                else _QUERY
            if first == 0x00:
                if cmd == _PREPARE and p.n >= 9:
                    a.has_prep = True
                    a.prep_sid = _le32(p, 1)
                    a.segs = [x for x in (_le16(p, 7), _le16(p, 5)) if x]
                    return self._next_segment(a)
                return D_OVER if not (_ok_status(p) & MORE_RESULTS) else D_NO
            if first == 0xFE and p.n < 9:
                return D_OVER if not (_eof_status(p) & MORE_RESULTS) else D_NO
            if first == 0xFB or cmd == _STATISTICS:
                return D_OVER if cmd == _STATISTICS else D_NO
            if _lenenc(p, 0, &cols) < 0:
                return D_OVER
            a.left = <long long>cols if cols < <unsigned long long>_HUGE else _HUGE
            a.state = S_COLS if a.left else S_ROWS
            return D_NO
        if s == S_COLS:
            a.left -= 1
            if a.left <= 0:
                a.state = S_ROWS if deprecate == 1 else S_COLS_EOF
            return D_NO
        if s == S_COLS_EOF:
            a.state = S_ROWS
            if first == 0xFE and p.n < 9:
                return D_NO
            # No EOF after the columns (DEPRECATE_EOF seen midway): this is a row.
            s = S_ROWS
        if s == S_ROWS:
            if first == 0xFE and p.n < 0xFFFFFF:
                status = _eof_status(p) if p.n < 9 and deprecate != 1 else _ok_status(p)
                if status & MORE_RESULTS:
                    a.state = S_FIRST
                    return D_NO
                return D_OVER
            if first == 0xFF:
                a.code, _state, a.error = _err(_slice(p, 0, p.n))
                return D_OVER
            a.rows += 1
            return D_NO
        if s == S_PREP:
            a.left -= 1
            if a.left > 0:
                return D_NO
            if deprecate == 1:
                return self._next_segment(a)
            a.state = S_PREP_EOF
            return D_NO
        if s == S_PREP_EOF:
            if first == 0xFE and p.n < 9:
                return self._next_segment(a)
            if not a.segs:
                # No EOF after all (capabilities unknown): the packet is not ours.
                return D_NOT_MINE
            # No EOF after the definitions: this packet opens the next segment.
            a.left = a.segs.pop(0)
            a.state = S_PREP
            return self._step(a, buf, p, first)
        return D_OVER

    cdef int _next_segment(self, _Answer a) except -1:
        """Move to the next run of definitions of a prepare answer; D_OVER when none."""
        if a.segs:
            a.left = a.segs.pop(0)
            a.state = S_PREP
            return D_NO
        return D_OVER

    cdef void _answered(self, _Answer a, list out) except *:
        cdef _Pending p = <_Pending>self.pending.popleft()
        cdef dict attrs = dict(p.attributes)
        sql = p.sql
        if a.has_prep and sql is not None:
            if len(self.statements) >= _MAX_STATEMENTS:
                evicted = next(iter(self.statements))
                self.statements.pop(evicted)
                self.partial.discard(evicted)
                _count("statement_evicted")
            self.statements[a.prep_sid] = sql[:_MAX_SQL]
            if "truncated" in p.incomplete:
                self.partial.add(a.prep_sid)
            else:
                self.partial.discard(a.prep_sid)
            attrs["db.mysql.statement_id"] = a.prep_sid
        if a.code:
            status, code, err = STATUS_ERROR, a.code, a.error
            attrs["db.response.status_code"] = a.code
        else:
            status, code, err = STATUS_OK, "", ""
        if a.rows:
            attrs["db.response.returned_rows"] = a.rows
        why = self._why(p.incomplete, a.inc)
        out.append(new_record(_PROTO, p.msg, a.msg, p.operation, status, code, err,
                          attrs, {}, why))

    cdef void _on_desync(self, int d, list out) except *:
        cdef _Answer a
        pending = self.pending
        if d == self.rdir:
            return
        a = self.answer
        self.answer = None
        if a is not None and pending:
            a.inc = "gap"
            self._answered(a, out)
        while pending:
            out.append(self._incomplete(<_Pending>pending.popleft(), "gap"))

    cdef void _flush(self, reason, list out) except *:
        cdef _Answer a = self.answer
        pending = self.pending
        self.answer = None
        why = reason or "no response"
        if a is not None and pending:
            a.inc = why
            self._answered(a, out)
        while pending:
            out.append(self._incomplete(<_Pending>pending.popleft(), why))
        self.closed = True
