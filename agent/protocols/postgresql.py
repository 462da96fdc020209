"""PostgreSQL frontend/backend protocol v3: start-up, simple and extended query.

A record is one unit of work: a simple `Query` answered by everything up to
`ReadyForQuery`, or in the extended protocol one `Execute` (with the Parse / Bind /
Describe before it) answered up to its `CommandComplete` or `ErrorResponse`, so five
pipelined statements before one `Sync` are five records.  Units are matched first in,
first out.  What follows the last `Execute` up to `Sync` (a bare Sync, a Parse+Describe
that prepares a statement) is bookkeeping: matched with its answer, reported only if it
failed.  Statement and portal names are remembered (bounded) so an `Execute` of a
statement prepared earlier still gets its SQL.  Start-up and authentication messages
are consumed without reading any secret from them.
"""

from __future__ import annotations

import struct
from collections import deque

from . import redact, sqlinfo
from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    DirStream,
    Message,
    Pending,
    Record,
    StreamParser,
    incomplete_record,
    new_stats,
)

STATS = new_stats()

SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST, PROTO_V3 = 80877103, 80877104, 80877102, 196608
_STARTUP_CODES = frozenset((SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST, PROTO_V3))
CLIENT_TYPES = frozenset(b"QPBEDCHSXFpdcf")
SERVER_TYPES = frozenset(b"RKZTD C E N S 1 2 3 n t s I G H W A V c d".replace(b" ", b""))
_CLIENT_ONLY = frozenset(b"QPBFXHp")
_SERVER_ONLY = frozenset(b"RKZT123ntsIGWAV")
_U32 = struct.Struct(">I").unpack_from
# Server messages that only add to the answer in progress (row count aside).
_PLAIN = frozenset(b"12TDntNS")
MAX_SQL = 4096
MAX_MSG = 1 << 30
# Above this, a message is handled from its head and the rest skipped by length
# instead of buffered.
BIG = 8192
MAX_STATEMENTS = 512


class _Cycle:
    """Client messages of one unit: "simple", "execute", "sync" or "startup"."""

    __slots__ = ("msg", "sql", "kind", "inc")

    def __init__(self, msg: Message, kind: str) -> None:
        self.msg = msg
        self.sql: str | None = None
        self.kind = kind
        self.inc = ""


class _Answer:
    """Server messages answering the head cycle, up to ReadyForQuery."""

    __slots__ = ("msg", "tags", "code", "error", "rows", "inc")

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.tags: list[str] = []
        self.code = ""
        self.error = ""
        self.rows = 0
        self.inc = ""


class PostgresParser(StreamParser):
    """One PostgreSQL connection, both directions."""

    protocol = "postgresql"
    stats = STATS

    def __init__(self, client_side: bool | None = None) -> None:
        super().__init__(client_side)
        self.pending: deque[Pending] = deque()
        self.cycle: _Cycle | None = None
        self.answer: _Answer | None = None
        self.statements: dict[bytes, str] = {}
        self.partial: set[bytes] = set()  # statements whose Parse was cut short
        self.portals: dict[bytes, bytes] = {}
        self.database = ""
        self.startup_next = True  # the client's next message may be untyped
        self.wait_ready = False
        self.ssl_wait = False

    # -- framing ----------------------------------------------------------------------
    def _parse(self, d: int, st: DirStream, out: list[Record]) -> None:
        buf = st.buf
        n = len(buf)
        if self.req_dir is None:
            self.req_dir = self._guess_dir(d, buf)
        is_client = d == self.req_dir
        handle = self._client if is_client else self._server
        types = CLIENT_TYPES if is_client else SERVER_TYPES
        pos = 0
        while pos < n:
            if is_client and self.startup_next:
                if n - pos < 8:
                    break
                ln = int.from_bytes(buf[pos:pos + 4], "big")
                code = int.from_bytes(buf[pos + 4:pos + 8], "big")
                if code in _STARTUP_CODES and 8 <= ln < 10000:
                    if n - pos < ln:
                        break
                    self._startup(st, code, buf[pos + 8:pos + ln], pos, ln)
                    pos += ln
                    continue
                self.startup_next = False
            if not is_client and self.ssl_wait:
                self.ssl_wait = False
                if buf[pos] in b"SG":
                    # Encrypted from here on: nothing more to read.
                    self.stats["tls"] += 1
                    self.closed = True
                    return
                if buf[pos] == 78:  # 'N': carry on in clear text
                    pos += 1
                    continue
            if n - pos < 5:
                break
            t = buf[pos]
            ln = _U32(buf, pos + 1)[0]
            total = 1 + ln
            if not is_client and t in _PLAIN and self.answer is not None and n - pos >= total:
                # Messages inside an answer that change nothing but its row count.
                if t == 68:
                    self.answer.rows += 1
                pos += total
                continue
            if ln < 4 or ln > MAX_MSG or t not in types:
                self.stats["bad_frame"] += 1
                self._desync(d, st, out)
                return
            if n - pos < total:
                if total > BIG:
                    # Big message (a long row, a huge query): use its head, skip the rest.
                    self._message(d, st, t, buf[pos + 5:n], pos, total, out)
                    st.consume(n)
                    st.skip = total - (n - pos)
                    st.open = None
                    return
                break
            start = st.base + pos
            handle(st, t, buf[pos + 5:pos + total], start, start + total, out, False)
            if self.closed:
                return
            pos += total
        st.consume(pos)

    def _guess_dir(self, d: int, buf: bytes) -> int:
        if len(buf) >= 8 and int.from_bytes(buf[4:8], "big") in _STARTUP_CODES:
            return d
        t = buf[0]
        if t in _SERVER_ONLY:
            return 1 - d
        return d

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        buf = st.buf
        if len(buf) < 5 or (d == self.req_dir and self.startup_next):
            return False
        t = buf[0]
        ln = int.from_bytes(buf[1:5], "big")
        total = 1 + ln
        if total < len(buf) + g or ln < 4:
            return False
        self._message(d, st, t, buf[5:], 0, total, out, truncated=True)
        st.consume(len(buf))
        st.skip = total - len(buf) - g
        return True

    def _salvage(self, out: list[Record]) -> None:
        """An answer starts while a client message is still partly buffered: the
        server had all of it, so the rest was lost.  Take its head; skip the rest."""
        d = self.req_dir
        st = self.streams[d]
        buf = st.buf
        if not st.synced or st.skip or len(buf) < 5 or self.startup_next:
            return
        total = 1 + int.from_bytes(buf[1:5], "big")
        if total <= len(buf) or buf[0] not in CLIENT_TYPES:
            return
        self._message(d, st, buf[0], buf[5:], 0, total, out, truncated=True)
        st.consume(len(buf))
        st.skip = total - len(buf)
        self.stats["salvaged_request"] += 1

    def _resync(self, d: int, data: bytes) -> int:
        types = CLIENT_TYPES if d == self.req_dir else SERVER_TYPES
        if len(data) < 5 or data[0] not in types:
            return -1
        ln = int.from_bytes(data[1:5], "big")
        if ln < 4 or ln > MAX_MSG:
            return -1
        nxt = 1 + ln
        if len(data) >= nxt + 5 and data[nxt] not in types:
            return -1
        return 0

    # -- messages ---------------------------------------------------------------------
    def _startup(self, st: DirStream, code: int, body: bytes, pos: int, ln: int) -> None:
        if code == SSL_REQUEST or code == GSS_REQUEST:
            self.ssl_wait = True
            return
        if code == CANCEL_REQUEST:
            self.stats["cancel_request"] += 1
            return
        self.startup_next = False
        parts = body.split(b"\x00")
        # Only the database name is kept; user names and options stay out of spans.
        for k in range(0, len(parts) - 1, 2):
            if parts[k] == b"database":
                self.database = parts[k + 1].decode("utf-8", "replace")
        msg = st.message(st.base + pos, st.base + pos + ln)
        self._push(Pending(msg, "STARTUP", {}, {}, "", "startup"), [])

    def _message(self, d: int, st: DirStream, t: int, body: bytes, pos: int, total: int,
                 out: list[Record], truncated: bool = False) -> None:
        start = st.base + pos
        end = start + total
        if d == self.req_dir:
            self._client(st, t, body, start, end, out, truncated)
        else:
            self._server(st, t, body, start, end, out, truncated)

    def _client(self, st: DirStream, t: int, body: bytes, start: int, end: int,
                out: list[Record], truncated: bool) -> None:
        if t == 81 or t == 70:  # Query, FunctionCall: answered up to ReadyForQuery
            c = _Cycle(self._msg(st, start, end), "simple")
            c.sql = _cstr(body) if t == 81 else None
            c.inc = "truncated" if truncated else ""
            self._close_cycle(c, out)
            return
        if t in b"pdcfX":
            # Password / SASL, COPY data, Terminate: part of an exchange already open.
            return
        c = self.cycle
        if c is None and t == 72:  # Flush with nothing pending: no answer expected
            return
        if c is None:
            c = self.cycle = _Cycle(self._msg(st, start, end), "sync")
        else:
            m = c.msg
            m.size = end - m.offset
            m.end_ns, m.end_tid = self._end(st, end)
        if truncated:
            c.inc = "truncated"
        if t == 80:  # Parse: statement name, query
            i = body.find(b"\x00")
            name = body[:i] if i >= 0 else b""
            sql = _cstr(body[i + 1:i + 1 + MAX_SQL]) if i >= 0 else ""
            if len(self.statements) >= MAX_STATEMENTS:
                old = next(iter(self.statements))
                del self.statements[old]
                self.partial.discard(old)
                self.stats["statement_evicted"] += 1
            self.statements[name] = sql[:MAX_SQL]
            if truncated:
                self.partial.add(name)
            else:
                self.partial.discard(name)
            c.sql = sql
        elif t == 66:  # Bind: portal, statement
            i = body.find(b"\x00")
            j = body.find(b"\x00", i + 1)
            if i >= 0 and j > i:
                portal, stmt = body[:i], body[i + 1:j]
                if len(self.portals) >= MAX_STATEMENTS:
                    self.portals.clear()
                self.portals[portal] = stmt
                if c.sql is None:
                    c.sql = self.statements.get(stmt)
                    if stmt in self.partial:
                        c.inc = "truncated"
        elif t == 69:  # Execute: portal
            if c.sql is None:
                portal = body[:body.find(b"\x00")]
                stmt = self.portals.get(portal)
                if stmt is not None:
                    c.sql = self.statements.get(stmt)
                    if stmt in self.partial:
                        c.inc = "truncated"
            c.kind = "execute"
            self.cycle = None
            self._close_cycle(c, out)
        elif t == 83:  # Sync
            self.cycle = None
            self._close_cycle(c, out)

    def _close_cycle(self, c: _Cycle, out: list[Record]) -> None:
        sql = c.sql
        attrs = {"db.system": "postgresql"}
        if self.database:
            attrs["db.namespace"] = self.database
        if sql:
            text, op, verb, table = sqlinfo.describe(sql, MAX_SQL)
            attrs["db.query.text"] = text
            attrs["db.operation.name"] = verb
            if table:
                attrs["db.collection.name"] = table
        else:
            op = "EXECUTE" if c.kind == "execute" else ""
            if c.kind == "execute" and not c.inc:
                c.inc = "unknown statement"  # prepared before the capture, or lost
        self._push(Pending(c.msg, op, attrs, {}, c.inc, c.kind), out)

    def _push(self, p: Pending, out: list[Record]) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.stats["pending_overflow"] += 1
            out.append(incomplete_record(self.protocol, self.pending.popleft(), "evicted"))
        self.pending.append(p)

    def _server(self, st: DirStream, t: int, body: bytes, start: int, end: int,
                out: list[Record], truncated: bool) -> None:
        if self.wait_ready:
            # After lost bytes, the first sure boundary is the next ReadyForQuery.
            if t == 90:
                self.wait_ready = False
                ts = st.mark_at(start)[1]
                while self.pending and self.pending[0].msg.start_ns <= ts:
                    p = self.pending.popleft()
                    if p.extra in ("simple", "execute"):
                        out.append(incomplete_record(self.protocol, p, "gap"))
            return
        a = self.answer
        if a is None:
            if t in b"SNA" and not self.pending:
                return  # asynchronous ParameterStatus / Notice / Notification
            if not self.pending or self.cycle is not None:
                self._salvage(out)
            a = self.answer = _Answer(self._msg(st, start, end))
        else:
            m = a.msg
            m.size = end - m.offset
            m.end_ns, m.end_tid = self._end(st, end)
        if truncated:
            a.inc = "truncated"
        head = self.pending[0].extra if self.pending else None
        if t == 68:  # DataRow
            a.rows += 1
        elif t == 67:  # CommandComplete
            if len(a.tags) < 8:
                a.tags.append(_cstr(body))
        elif t == 69:  # ErrorResponse
            if not a.code:
                a.code, a.error = _error_fields(body)
        elif t == 90:  # ReadyForQuery
            self.answer = None
            # Executes still waiting were skipped by the server after an earlier error.
            while self.pending and self.pending[0].extra == "execute":
                out.append(incomplete_record(self.protocol, self.pending.popleft(),
                                             "skipped after error"))
            self._answered(a, out)
            return
        if head == "execute" and t in b"CIsE":
            self.answer = None
            self._answered(a, out)

    def _answered(self, a: _Answer, out: list[Record]) -> None:
        if not self.pending or self.pending[0].msg.start_ns > a.msg.start_ns:
            # Nothing asked, or it answers a request lost before the oldest one seen.
            self.stats["unmatched_response"] += 1
            return
        p = self.pending.popleft()
        if p.extra in ("sync", "startup") and not a.code:
            return  # bookkeeping or connection set-up, not a span
        self._record(p, a, out)

    def _record(self, p: Pending, a: _Answer | None, out: list[Record],
                extra_inc: str = "") -> None:
        attrs = dict(p.attributes)
        if a is None:
            out.append(incomplete_record(self.protocol, p, extra_inc))
            return
        if a.code:
            status, code, err = STATUS_ERROR, a.code, a.error
            attrs["db.response.status_code"] = a.code
        else:
            status, code, err = STATUS_OK, "", ""
        if a.tags:
            attrs["db.postgresql.command_tag"] = a.tags[-1]
        if a.rows:
            attrs["db.response.returned_rows"] = a.rows
        why = self._why(p.incomplete, a.inc, extra_inc)
        out.append(Record(self.protocol, p.msg, a.msg, p.operation, status, code, err,
                          attrs, {}, why))

    @staticmethod
    def _msg(st: DirStream, start: int, end: int) -> Message:
        m = st.message(start, min(end, st.base + len(st.buf)))
        m.size = end - start
        return m

    @staticmethod
    def _end(st: DirStream, end: int) -> tuple[int, int]:
        mk = st.mark_at(min(end, st.base + len(st.buf)) - 1)
        return mk[1], mk[2]

    # -- lost bytes and close ----------------------------------------------------------
    def _on_desync(self, d: int, out: list[Record]) -> None:
        if d == self.req_dir:
            # Units lost in the hole will be answered too: drop answers up to the next
            # ReadyForQuery rather than pair them with the wrong units.
            self.wait_ready = True
            self.answer = None
            if self.cycle is not None:
                self.cycle.inc = "gap"
                c, self.cycle = self.cycle, None
                self._close_cycle(c, out)
            self.startup_next = False
            return
        a, self.answer = self.answer, None
        self.wait_ready = True
        if self.pending:
            p = self.pending.popleft()
            if a is not None and p.extra in ("simple", "execute"):
                self._record(p, a, out, "gap")
        while self.pending:
            p = self.pending.popleft()
            if p.extra in ("simple", "execute"):
                out.append(incomplete_record(self.protocol, p, "gap"))

    def _flush(self, reason: str, out: list[Record]) -> None:
        a, self.answer = self.answer, None
        if self.cycle is not None:
            c, self.cycle = self.cycle, None
            self._close_cycle(c, out)
        first = True
        while self.pending:
            p = self.pending.popleft()
            if first and a is not None:
                if p.extra in ("simple", "execute") or a.code:
                    self._record(p, a, out, reason or "no response")
            elif p.extra in ("simple", "execute"):
                out.append(incomplete_record(self.protocol, p, reason or "no response"))
            first = False
        self.closed = True


def _cstr(b: bytes) -> str:
    i = b.find(b"\x00")
    return (b if i < 0 else b[:i]).decode("utf-8", "replace")


def _error_fields(body: bytes) -> tuple[str, str]:
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
