"""MySQL / MariaDB client/server protocol: handshake, COM_QUERY, prepared statements.

Every packet carries its length, so a packet longer than the captured prefix is
handled from its head and skipped.  The response to a command is followed through its
shape (OK / ERR / result set: column count, column definitions, optional EOF, rows,
terminator, more results) so the record ends at the response's last byte.  The
handshake response and any auth packet are consumed without reading credentials.
"""

from __future__ import annotations

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
_NO_RESPONSE = frozenset((COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE))

# Response states.
R_FIRST, R_COLS, R_COLS_EOF, R_ROWS, R_PREP, R_PREP_EOF = range(6)
# _step's "over, and this packet belongs to the next answer".
NOT_MINE = 2
# Connection phases.
P_HANDSHAKE, P_AUTH, P_COMMAND = 0, 1, 2


class _Answer:
    __slots__ = ("msg", "state", "left", "code", "error", "rows", "inc", "prep", "cols", "segs",
                 "orphan")

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self.state = R_FIRST
        self.left = 0
        self.code = ""
        self.error = ""
        self.rows = 0
        self.inc = ""
        self.prep: tuple[int, int, int] | None = None
        self.cols = 0
        self.segs: list[int] = []
        self.orphan = False


def lenenc(b: bytes, i: int) -> tuple[int, int]:
    """(value, next index) of a length-encoded integer; raises IndexError if cut."""
    c = b[i]
    if c < 0xFB:
        return c, i + 1
    if c == 0xFC:
        return b[i + 1] | (b[i + 2] << 8), i + 3
    if c == 0xFD:
        return b[i + 1] | (b[i + 2] << 8) | (b[i + 3] << 16), i + 4
    if c == 0xFE:
        if i + 8 >= len(b):
            raise IndexError
        return int.from_bytes(b[i + 1:i + 9], "little"), i + 9
    return 0, i + 1  # 0xFB: NULL


class MySQLParser(StreamParser):
    """One MySQL/MariaDB connection, both directions."""

    protocol = "mysql"
    stats = STATS

    def __init__(self, client_side: bool | None = None) -> None:
        super().__init__(client_side)
        self.pending: deque[Pending] = deque()
        self.answer: _Answer | None = None
        self.phase = P_COMMAND
        self.server_caps = 0
        self.caps: int | None = None  # negotiated capabilities, when the handshake was seen
        self.statements: dict[int, str] = {}
        self.partial: set[int] = set()  # statements whose PREPARE was cut short
        self.database = ""

    def _parse(self, d: int, st: DirStream, out: list[Record]) -> None:
        buf = st.buf
        n = len(buf)
        if self.req_dir is None and n >= 5:
            seq, first = buf[3], buf[4]
            server = seq > 0 or first == 10  # 10: greeting (COM_PROCESS_INFO is obsolete)
            self.req_dir = 1 - d if server else d
        pos = 0
        while n - pos >= 4:
            ln = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            total = 4 + ln
            if n - pos < total:
                if total > 8192:
                    # Long packet (a big row or query): use its head, skip the rest.
                    self._packet(d, st, buf[pos + 3], buf[pos + 4:n], pos, total, out)
                    st.consume(n)
                    st.skip = total - (n - pos)
                    return
                break
            self._packet(d, st, buf[pos + 3], buf[pos + 4:pos + total], pos, total, out)
            if self.closed:
                return
            pos += total
        st.consume(pos)

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        buf = st.buf
        if len(buf) < 5:
            return False
        total = 4 + (buf[0] | (buf[1] << 8) | (buf[2] << 16))
        if total < len(buf) + g:
            return False
        self._packet(d, st, buf[3], buf[4:], 0, total, out, truncated=True)
        st.consume(len(buf))
        st.skip = total - len(buf) - g
        return True

    def _salvage(self, out: list[Record]) -> None:
        """An answer starts while the client's command is still partly buffered: the
        server had all of it, so the rest was lost.  Take its head; skip the rest."""
        d = self.req_dir
        st = self.streams[d]
        buf = st.buf
        if not st.synced or st.skip or len(buf) < 5:
            return
        total = 4 + (buf[0] | (buf[1] << 8) | (buf[2] << 16))
        if total <= len(buf):
            return
        self._packet(d, st, buf[3], buf[4:], 0, total, out, truncated=True)
        st.consume(len(buf))
        st.skip = total - len(buf)
        self.stats["salvaged_request"] += 1

    def _resync(self, d: int, data: bytes) -> int:
        # A chunk that starts with a packet whose header fits, and when it holds more
        # than one packet, whose next header fits too.
        if len(data) < 5:
            return -1
        ln = data[0] | (data[1] << 8) | (data[2] << 16)
        if ln == 0:
            return -1
        if d == self.req_dir:
            return 0 if data[3] == 0 and data[4] in COMMANDS else -1
        if data[3] == 0:
            return -1
        if len(data) > 4 + ln and len(data) >= 8 + ln and data[7 + ln] != (data[3] + 1) & 0xFF:
            return -1
        return 0

    # -- packets ----------------------------------------------------------------------
    def _packet(self, d: int, st: DirStream, seq: int, p: bytes, pos: int, total: int,
                out: list[Record], truncated: bool = False) -> None:
        start = st.base + pos
        end = start + total
        if d == self.req_dir:
            self._client(st, seq, p, start, end, out, truncated)
        else:
            self._server(st, seq, p, start, end, out, truncated)

    def _client(self, st: DirStream, seq: int, p: bytes, start: int, end: int,
                out: list[Record], truncated: bool) -> None:
        if self.phase == P_HANDSHAKE:
            if len(p) >= 32:
                caps = int.from_bytes(p[0:4], "little")
                self.caps = caps & self.server_caps
                if len(p) == 32 and caps & CLIENT_SSL:
                    self.stats["tls"] += 1
                    self.closed = True
                    return
                if caps & CLIENT_CONNECT_WITH_DB:
                    self._handshake_db(p)
            self.phase = P_AUTH
            return
        if self.phase == P_AUTH or seq != 0 or not p:
            return  # auth data, LOCAL INFILE contents: not commands
        cmd = p[0]
        if cmd in _NO_RESPONSE:
            if cmd == COM_STMT_CLOSE and len(p) >= 5:
                sid = int.from_bytes(p[1:5], "little")
                self.statements.pop(sid, None)
                self.partial.discard(sid)
            elif cmd == COM_QUIT:
                self.stats["quit"] += 1
            return
        name = COMMANDS.get(cmd, f"COM_{cmd:#x}")
        unknown = "truncated" if truncated else ""
        attrs = {"db.system": "mysql"}
        if self.database:
            attrs["db.namespace"] = self.database
        sql = None
        if cmd == COM_QUERY:
            body = p[1:]
            if self.caps is not None and self.caps & CLIENT_QUERY_ATTRIBUTES:
                try:
                    nparams, i = lenenc(body, 0)
                    _, i = lenenc(body, i)
                    if nparams == 0:
                        body = body[i:]
                except IndexError:
                    pass
            sql = body[:MAX_SQL].decode("utf-8", "replace")
        elif cmd == COM_STMT_PREPARE:
            sql = p[1:1 + MAX_SQL].decode("utf-8", "replace")
        elif cmd == COM_STMT_EXECUTE and len(p) >= 5:
            sid = int.from_bytes(p[1:5], "little")
            sql = self.statements.get(sid)
            attrs["db.mysql.statement_id"] = sid
            if sql is None:
                unknown = "unknown statement"
            elif sid in self.partial:
                unknown = "truncated"
        elif cmd == COM_INIT_DB:
            self.database = p[1:].decode("utf-8", "replace")
            attrs["db.namespace"] = self.database
        elif cmd == COM_CHANGE_USER:
            self.phase = P_AUTH
        if sql is not None:
            text, op, verb, table = sqlinfo.describe(sql, MAX_SQL)
            attrs["db.query.text"] = text
            attrs["db.operation.name"] = verb
            if table:
                attrs["db.collection.name"] = table
            if cmd == COM_STMT_PREPARE:
                op = f"PREPARE {op}".strip()
        else:
            op = name if cmd != COM_STMT_EXECUTE else "EXECUTE"
            attrs["db.operation.name"] = op
        msg = st.message(start, min(end, st.base + len(st.buf)))
        msg.size = end - start
        pend = Pending(msg, op, attrs, {}, unknown, (cmd, sql))
        if len(self.pending) >= MAX_PENDING:
            self.stats["pending_overflow"] += 1
            out.append(incomplete_record(self.protocol, self.pending.popleft(), "evicted"))
        self.pending.append(pend)

    def _handshake_db(self, p: bytes) -> None:
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
            self.database = p[i:j].decode("utf-8", "replace")
        except (ValueError, IndexError):
            pass

    def _server(self, st: DirStream, seq: int, p: bytes, start: int, end: int,
                out: list[Record], truncated: bool) -> None:
        if not p:
            return
        first = p[0]
        if seq == 0 and first == 10 and self.phase != P_AUTH and not self.pending:
            # Initial handshake: remember the server's capabilities.
            try:
                i = p.index(b"\x00", 1) + 1 + 4 + 8 + 1
                caps = int.from_bytes(p[i:i + 2], "little")
                if len(p) >= i + 7:
                    caps |= int.from_bytes(p[i + 5:i + 7], "little") << 16
                self.server_caps = caps
            except (ValueError, IndexError):
                pass
            self.phase = P_HANDSHAKE
            return
        if self.phase != P_COMMAND:
            pend = self.pending[0] if self.pending else None
            if (first == 0x00 or first == 0xFF) and pend is not None and pend.extra \
                    and pend.extra[0] == COM_CHANGE_USER:
                # The end of COM_CHANGE_USER's re-authentication answers that command.
                self.pending.popleft()
                self.phase = P_COMMAND
                msg = st.message(start, min(end, st.base + len(st.buf)))
                msg.size = end - start
                attrs = dict(pend.attributes)
                status, code, text = STATUS_OK, "", ""
                if first == 0xFF:
                    code, _state, text = _err(p)
                    status = STATUS_ERROR
                    attrs["db.response.status_code"] = code
                out.append(Record(self.protocol, pend.msg, msg, pend.operation, status, code,
                                  text, attrs, {}, pend.incomplete))
                return
            if first == 0x00:
                self.phase = P_COMMAND
            elif first == 0xFF and self.phase == P_AUTH:
                code, _state, text = _err(p)
                self.phase = P_COMMAND
                msg = st.message(start, min(end, st.base + len(st.buf)))
                rec = Record(self.protocol, None, msg, "CONNECT", STATUS_ERROR, code, text,
                             {"db.system": "mysql", "db.response.status_code": code}, {},
                             "no request")
                out.append(rec)
            return
        a = self.answer
        if a is None:
            if seq != 1:
                # Answers open with sequence id 1: this is the middle of one whose
                # beginning was lost.
                self.stats["stray_packet"] += 1
                return
            if not self.pending:
                self._salvage(out)
            msg = st.message(start, min(end, st.base + len(st.buf)))
            msg.size = end - start
            a = self.answer = _Answer(msg)
            if not self.pending or self.pending[0].msg.start_ns > msg.start_ns:
                # Nothing asked, or it answers a command lost before the oldest one seen:
                # follow its shape all the same, to know where it ends.
                self.stats["unmatched_response"] += 1
                a.orphan = True
            prev = None
        else:
            m = a.msg
            prev = (m.size, m.end_ns, m.end_tid)
            m.size = end - m.offset
            m.end_ns, m.end_tid = st.mark_at(min(end, st.base + len(st.buf)) - 1)[1:3]
        if truncated:
            a.inc = "truncated"
        done = self._step(a, p, first)
        if done:
            self.answer = None
            if done == NOT_MINE and prev is not None:
                a.msg.size, a.msg.end_ns, a.msg.end_tid = prev
            if not a.orphan:
                self._answered(a, out)
            if done == NOT_MINE and prev is not None:
                # The packet opens the next answer.
                self._server(st, seq, p, start, end, out, truncated)

    def _step(self, a: _Answer, p: bytes, first: int) -> bool:
        """Advance the response state machine by one packet; True when it is over."""
        s = a.state
        deprecate = None if self.caps is None else bool(self.caps & CLIENT_DEPRECATE_EOF)
        if s == R_FIRST:
            if first == 0xFF:
                a.code, _state, a.error = _err(p)
                return True
            cmd = self.pending[0].extra[0] if self.pending and not a.orphan else COM_QUERY
            if first == 0x00:
                if cmd == COM_STMT_PREPARE and len(p) >= 9:
                    sid = int.from_bytes(p[1:5], "little")
                    ncols = p[5] | (p[6] << 8)
                    nparams = p[7] | (p[8] << 8)
                    a.prep = (sid, ncols, nparams)
                    a.segs = [x for x in (nparams, ncols) if x]
                    return self._next_segment(a)
                return not (_ok_status(p) & MORE_RESULTS)
            if first == 0xFE and len(p) < 9:
                return not (_eof_status(p) & MORE_RESULTS)
            if first == 0xFB or cmd == COM_STATISTICS:
                return cmd == COM_STATISTICS
            try:
                a.cols = a.left = lenenc(p, 0)[0]
            except IndexError:
                return True
            a.state = R_COLS if a.left else R_ROWS
            return False
        if s == R_COLS:
            a.left -= 1
            if a.left <= 0:
                a.state = R_ROWS if deprecate else R_COLS_EOF
            return False
        if s == R_COLS_EOF:
            a.state = R_ROWS
            if first == 0xFE and len(p) < 9:
                return False
            # No EOF after the columns (DEPRECATE_EOF seen midway): this is a row.
            s = R_ROWS
        if s == R_ROWS:
            if first == 0xFE and len(p) < 0xFFFFFF:
                status = _eof_status(p) if len(p) < 9 and deprecate is not True else _ok_status(p)
                if status & MORE_RESULTS:
                    a.state = R_FIRST
                    return False
                return True
            if first == 0xFF:
                a.code, _state, a.error = _err(p)
                return True
            a.rows += 1
            return False
        if s == R_PREP:
            a.left -= 1
            if a.left > 0:
                return False
            if deprecate is True:
                return self._next_segment(a)
            a.state = R_PREP_EOF
            return False
        if s == R_PREP_EOF:
            if first == 0xFE and len(p) < 9:
                return self._next_segment(a)
            if not a.segs:
                # No EOF after all (capabilities unknown): the packet is not ours.
                return NOT_MINE
            # No EOF after the definitions: this packet opens the next segment.
            a.left, a.state = a.segs.pop(0), R_PREP
            return self._step(a, p, first)
        return True

    @staticmethod
    def _next_segment(a: _Answer) -> bool:
        """Move to the next run of definitions of a prepare answer; True when none."""
        if a.segs:
            a.left, a.state = a.segs.pop(0), R_PREP
            return False
        return True

    def _answered(self, a: _Answer, out: list[Record]) -> None:
        p = self.pending.popleft()
        cmd, sql = p.extra
        attrs = dict(p.attributes)
        if a.prep is not None and sql is not None:
            if len(self.statements) >= MAX_STATEMENTS:
                evicted = next(iter(self.statements))
                self.statements.pop(evicted)
                self.partial.discard(evicted)
                self.stats["statement_evicted"] += 1
            self.statements[a.prep[0]] = sql[:MAX_SQL]
            if "truncated" in p.incomplete:
                self.partial.add(a.prep[0])
            else:
                self.partial.discard(a.prep[0])
            attrs["db.mysql.statement_id"] = a.prep[0]
        if a.code:
            status, code, err = STATUS_ERROR, a.code, a.error
            attrs["db.response.status_code"] = a.code
        else:
            status, code, err = STATUS_OK, "", ""
        if a.rows:
            attrs["db.response.returned_rows"] = a.rows
        why = self._why(p.incomplete, a.inc)
        out.append(Record(self.protocol, p.msg, a.msg, p.operation, status, code, err,
                          attrs, {}, why))

    def _on_desync(self, d: int, out: list[Record]) -> None:
        if d == self.req_dir:
            return
        a, self.answer = self.answer, None
        if a is not None and self.pending:
            a.inc = "gap"
            self._answered(a, out)
        while self.pending:
            out.append(incomplete_record(self.protocol, self.pending.popleft(), "gap"))

    def _flush(self, reason: str, out: list[Record]) -> None:
        a, self.answer = self.answer, None
        if a is not None and self.pending:
            a.inc = reason or "no response"
            self._answered(a, out)
        while self.pending:
            out.append(incomplete_record(self.protocol, self.pending.popleft(),
                                         reason or "no response"))
        self.closed = True


def _err(p: bytes) -> tuple[str, str, str]:
    """(error code, SQLSTATE, message) of an ERR packet."""
    if len(p) < 3:
        return "", "", ""
    code = str(p[1] | (p[2] << 8))
    # Messages echo values ("Duplicate entry '4111...' for key"): masked like SQL.
    if len(p) > 3 and p[3] == 35:  # '#'
        return code, p[4:9].decode("latin-1"), redact.sql(p[9:].decode("utf-8", "replace")[:256])
    return code, "", redact.sql(p[3:].decode("utf-8", "replace")[:256])


def _ok_status(p: bytes) -> int:
    try:
        _, i = lenenc(p, 1)
        _, i = lenenc(p, i)
        return p[i] | (p[i + 1] << 8)
    except IndexError:
        return 0


def _eof_status(p: bytes) -> int:
    return p[3] | (p[4] << 8) if len(p) >= 5 else 0
