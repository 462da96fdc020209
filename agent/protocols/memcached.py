"""memcached: text protocol (classic and meta commands) and binary protocol.

Text requests are a command line, followed for storage commands (`set`... `cas`, `ms`)
by a data block whose length the line gives; replies are one line, except `VALUE`
blocks up to `END` (retrieval), `STAT` lines up to `END` and `VA` with its data block.
Binary frames have a 24-byte header (magic 0x80 request / 0x81 response) with the body
length, so they are skipped by length like a RESP bulk.  Data blocks and values are
never buffered beyond `WAIT_BLOCK` and never read: records carry commands and keys only.

Matching is first in, first out, as the server answers in order, with these twists:
classic `noreply` commands get no reply at all (their record goes out at once, outcome
unknown); meta commands with the `q` flag and binary quiet opcodes are answered only
when something is worth saying (a hit, an error), so a reply may skip them: it is paired
with the first pending request it fits (same opaque `O` token or `k` key, a reply code
that command can give, the same binary opcode and opaque), and the quiet requests it
passed over are done (quiet means "success" or "miss"); if a later quiet request could
have taken it too, both are marked `ambiguous`.  memcached 1.6 drops the replies queued
before the CLIENT_ERROR of a retrieval with an over-long key: seen, that is undone.
"""

from __future__ import annotations

import re
from collections import deque
from itertools import islice

from . import redact
from .base import (
    MAX_PENDING,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    DirStream,
    Message,
    Pending,
    Record,
    StreamParser,
    incomplete_record,
    new_stats,
)

STATS = new_stats()

# A request line longer than this is not memcached (a multi-get of ~60 keys of the
# maximum 250 bytes fits): framing was lost.
MAX_LINE = 16384
# Data blocks up to this size are waited for whole; longer ones are skipped by length.
WAIT_BLOCK = 4096
MAX_KEY = 250
# Keys shown in db.query.text of a multi-key retrieval; the count goes to
# db.operation.batch.size.
SHOW_KEYS = 10
MAGIC_REQ, MAGIC_RESP = 0x80, 0x81
HEADER = 24

# -- text commands ----------------------------------------------------------------------
(_STORE, _CAS, _MS, _GET, _GAT, _KEY, _META, _NOKEY, _QUIT, _OTHER) = range(10)
_COMMANDS: dict[bytes, int] = {
    b"set": _STORE, b"add": _STORE, b"replace": _STORE, b"append": _STORE,
    b"prepend": _STORE, b"cas": _CAS, b"ms": _MS,
    b"get": _GET, b"gets": _GET, b"gat": _GAT, b"gats": _GAT,
    b"delete": _KEY, b"incr": _KEY, b"decr": _KEY, b"touch": _KEY,
    b"mg": _META, b"md": _META, b"ma": _META, b"me": _META, b"mn": _META,
    b"flush_all": _NOKEY, b"verbosity": _NOKEY, b"version": _NOKEY, b"stats": _NOKEY,
    b"quit": _QUIT,
    b"cache_memlimit": _NOKEY, b"shutdown": _NOKEY, b"lru_crawler": _NOKEY,
    b"slabs": _NOKEY, b"lru": _NOKEY, b"watch": _NOKEY, b"misbehave": _NOKEY,
    b"extstore": _NOKEY, b"debugtime": _NOKEY, b"verify_key": _NOKEY,
}
# Commands whose first argument names a subcommand worth keeping in the operation.
_SUBCOMMANDS = frozenset((b"stats", b"lru_crawler", b"slabs", b"lru", b"extstore"))
# Reply codes each meta command can give (errors fit everything): which pending quiet
# request a reply belongs to.
_META_FIT = {
    b"mg": frozenset((b"VA", b"HD", b"EN")),
    b"ms": frozenset((b"HD", b"NS", b"EX", b"NF")),
    b"md": frozenset((b"HD", b"NF", b"EX")),
    b"ma": frozenset((b"HD", b"VA", b"NF", b"NS", b"EX")),
    b"me": frozenset((b"ME", b"EN")),
    b"mn": frozenset((b"MN",)),
}
_ERRORS = frozenset((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))
_BAD_LINE = b"CLIENT_ERROR bad command line format"
# Outcomes that are not errors but worth a status code: a miss, a failed add or cas.
_OUTCOMES = frozenset((b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"EN", b"NF", b"NS", b"EX"))
# First words of replies that go on until END.
_MULTI = frozenset((b"VALUE", b"STAT", b"ITEM", b"PREFIX"))
REPLY_WORDS = frozenset((
    b"VALUE", b"END", b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
    b"TOUCHED", b"OK", b"STAT", b"VERSION", b"VA", b"HD", b"EN", b"NF", b"NS", b"EX",
    b"MN", b"ME", b"RESET", b"BUSY", b"BADCLASS", b"NOSPARE", b"NOTFULL", b"UNSAFE",
    b"SAME", b"ITEM", b"PREFIX",
)) | _ERRORS
_GET_OPS = frozenset(("get", "gets", "gat", "gats", "mg"))
_WORD = re.compile(rb"[a-z_]{1,32}")
_CMD_START = re.compile(rb"([a-z_]{2,16})[ \r\n]")
_CMD_LINE = re.compile(rb"\n([a-z_]{2,16}) ")

# -- binary opcodes ---------------------------------------------------------------------
# opcode -> (operation, quiet): named as the text command doing the same, so a service's
# "get" aggregates whichever protocol its client speaks.
OPCODES: dict[int, tuple[str, bool]] = {
    0x00: ("get", False), 0x01: ("set", False), 0x02: ("add", False),
    0x03: ("replace", False), 0x04: ("delete", False), 0x05: ("incr", False),
    0x06: ("decr", False), 0x07: ("quit", False), 0x08: ("flush_all", False),
    0x09: ("get", True), 0x0A: ("noop", False), 0x0B: ("version", False),
    0x0C: ("get", False), 0x0D: ("get", True), 0x0E: ("append", False),
    0x0F: ("prepend", False), 0x10: ("stats", False), 0x11: ("set", True),
    0x12: ("add", True), 0x13: ("replace", True), 0x14: ("delete", True),
    0x15: ("incr", True), 0x16: ("decr", True), 0x17: ("quit", True),
    0x18: ("flush_all", True), 0x19: ("append", True), 0x1A: ("prepend", True),
    0x1B: ("verbosity", False), 0x1C: ("touch", False), 0x1D: ("gat", False),
    0x1E: ("gat", True), 0x20: ("sasl_list_mechs", False), 0x21: ("sasl_auth", False),
    0x22: ("sasl_step", False), 0x23: ("gat", False), 0x24: ("gat", True),
}
# Request shape per opcode, for inference and resynchronisation: the extras lengths it
# may carry, whether it names a key, whether a value follows.
_SHAPES = {
    "get": ((0,), True, False), "set": ((8,), True, True), "add": ((8,), True, True),
    "replace": ((8,), True, True), "delete": ((0,), True, False),
    "incr": ((20,), True, False), "decr": ((20,), True, False), "quit": ((0,), False, False),
    "flush_all": ((0, 4), False, False), "noop": ((0,), False, False),
    "version": ((0,), False, False), "append": ((0,), True, True),
    "prepend": ((0,), True, True), "stats": ((0,), None, False),
    "verbosity": ((4,), False, False), "touch": ((4,), True, False),
    "gat": ((4,), True, False), "sasl_list_mechs": ((0,), False, False),
    "sasl_auth": ((0,), True, True), "sasl_step": ((0,), True, True),
}
_BIN_SHAPE = {op: _SHAPES[name] for op, (name, _) in OPCODES.items()}
BIN_STATUS = {
    0x00: "", 0x01: "NOT_FOUND", 0x02: "EXISTS", 0x03: "TOO_LARGE", 0x04: "INVALID_ARGUMENTS",
    0x05: "NOT_STORED", 0x06: "NON_NUMERIC", 0x07: "NOT_MY_VBUCKET", 0x08: "AUTH_ERROR",
    0x09: "AUTH_CONTINUE", 0x20: "AUTH_ERROR", 0x81: "UNKNOWN_COMMAND", 0x82: "OUT_OF_MEMORY",
    0x83: "NOT_SUPPORTED", 0x84: "INTERNAL_ERROR", 0x85: "BUSY", 0x86: "TEMPORARY_FAILURE",
}
# Not errors, as their text counterparts: a miss, an add or cas that lost, SASL going on.
_BIN_OUTCOMES = frozenset((0x01, 0x02, 0x05, 0x09))


class _Req:
    """What the reply to a pending request needs: how to recognise it, what it was."""

    __slots__ = ("cmd", "quiet", "opaque", "key", "bop", "bopaque", "too_long", "cond")

    def __init__(self, cmd: bytes, quiet: bool, opaque: bytes | None, key: bytes | None,
                 bop: int | None = None, bopaque: int = 0) -> None:
        self.cmd = cmd
        self.quiet = quiet
        self.opaque = opaque
        self.key = key
        self.bop = bop
        self.bopaque = bopaque
        # A retrieval with a key over 250 bytes: memcached answers CLIENT_ERROR and drops
        # the replies still queued for the commands before it in the same read.
        self.too_long = False
        # An ms with a mode or cas flag, which may answer NS, EX or NF.
        self.cond = False


class _Reply:
    """A reply in progress in the response direction (multi-line, or a block skipped)."""

    __slots__ = ("msg", "word", "line", "hits", "multi", "bop", "bopaque", "bstatus", "inc",
                 "done_after_block")

    def __init__(self, msg: Message, word: bytes, line: bytes) -> None:
        self.msg = msg
        self.word = word
        self.line = line
        self.hits = 0
        self.multi = False
        self.bop: int | None = None
        self.bopaque = 0
        self.bstatus = 0
        self.inc = ""
        self.done_after_block = False


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def query_text(op: str, keys: list[bytes]) -> str:
    """`get k1 k2 ...`: the command and its keys (at most SHOW_KEYS), never values."""
    if not keys:
        return op
    shown = " ".join(_text(k[:MAX_KEY]) for k in keys[:SHOW_KEYS])
    more = f" ...(+{len(keys) - SHOW_KEYS})" if len(keys) > SHOW_KEYS else ""
    return redact.sql(f"{op} {shown}{more}")


class MemcachedParser(StreamParser):
    """One memcached connection, both directions, text or binary (frame by frame)."""

    protocol = "memcached"
    stats = STATS

    def __init__(self, client_side: bool | None = None) -> None:
        super().__init__(client_side)
        self.pending: deque[Pending] = deque()
        # The request whose data block is being skipped: (msg, op, attrs, req, noreply).
        self.open_req: tuple | None = None
        self.reply: _Reply | None = None

    # -- direction ------------------------------------------------------------------------
    def _parse(self, d: int, st: DirStream, out: list[Record], force: bool = False) -> None:
        if self.req_dir is None:
            b0 = st.buf[0]
            # Commands are lower case, replies upper case (or digits, for incr).
            self.req_dir = d if (b0 == MAGIC_REQ or 97 <= b0 <= 122) else \
                1 - d if (b0 == MAGIC_RESP or 65 <= b0 <= 90 or 48 <= b0 <= 57) else d
        if d == self.req_dir:
            self._requests(d, st, out, force)
        else:
            self._replies(d, st, out, force)

    # -- requests -------------------------------------------------------------------------
    def _requests(self, d: int, st: DirStream, out: list[Record], force: bool) -> None:
        buf = st.buf
        n = len(buf)
        pos = 0
        while pos < n:
            if buf[pos] == MAGIC_REQ:
                pos = self._binary(d, st, buf, pos, n, force, out)
                if pos < 0:
                    return
                continue
            j = buf.find(b"\n", pos)
            if j < 0:
                if n - pos > MAX_LINE:
                    self._bad(d, st, out)
                    return
                break
            line = buf[pos:j - 1] if j > pos and buf[j - 1] == 13 else buf[pos:j]
            toks = line.split()
            start = st.base + pos
            if not toks:
                # memcached answers an empty line with ERROR (a noreply block longer than
                # announced leaves one): keep the count of replies.
                self._request(st.message(start, st.base + j + 1), "(empty line)",
                              {"db.system": "memcached"}, _Req(b"", False, None, None), False,
                              "", out)
                pos = j + 1
                continue
            cmd = toks[0]
            kind = _COMMANDS.get(cmd, _OTHER)
            if kind == _OTHER and not _WORD.fullmatch(cmd):
                self._bad(d, st, out)
                return
            op, attrs, req, noreply, blen = self._command(cmd, kind, toks)
            pos = j + 1
            if blen >= 0:
                e = pos + blen + 2
                if e > n:
                    if blen + 2 <= WAIT_BLOCK and not force:
                        pos = start - st.base  # wait for the whole block
                        break
                    # The block runs past what is buffered: skip the rest by length.
                    msg = st.message(start, st.base + n)
                    st.consume(n)
                    st.skip = e - n
                    st.open = msg
                    self.open_req = (msg, op, attrs, req, noreply)
                    return
                pos = e
            self._request(st.message(start, st.base + pos), op, attrs, req, noreply, "", out)
        st.consume(pos)

    def _command(self, cmd: bytes, kind: int, toks: list[bytes]
                 ) -> tuple[str, dict, _Req, bool, int]:
        """(operation, attributes, reply matching, noreply, data block length or -1)."""
        op = _text(cmd)
        nt = len(toks)
        keys: list[bytes] = []
        blen = -1
        noreply = False
        quiet = False
        opaque = None
        cond = False
        if kind == _STORE or kind == _CAS:
            if nt > 1:
                keys = toks[1:2]
            if nt > 4:
                blen = _int(toks[4])
            noreply = nt > (6 if kind == _CAS else 5) and toks[-1] == b"noreply"
        elif kind == _GET:
            keys = toks[1:]
        elif kind == _GAT:
            keys = toks[2:]
        elif kind == _KEY:
            keys = toks[1:2]
            noreply = nt > 2 and toks[-1] == b"noreply"
        elif kind == _MS or kind == _META:
            keys = toks[1:2] if cmd != b"mn" else []
            if kind == _MS and nt > 2:
                blen = _int(toks[2])
            for t in toks[2:]:
                if t == b"q":
                    quiet = True
                elif t[:1] == b"O":
                    opaque = t
                elif t[:1] in (b"M", b"C", b"I"):
                    cond = True
        elif kind == _NOKEY:
            noreply = nt > 1 and toks[-1] == b"noreply"
            if cmd in _SUBCOMMANDS and nt > 1:
                op = f"{op} {_text(toks[1][:32])}"
        elif kind == _QUIT:
            noreply = True
        attrs = {"db.system": "memcached", "db.operation.name": op,
                 "db.query.text": query_text(op, keys)}
        if len(keys) > 1:
            attrs["db.operation.batch.size"] = len(keys)
        req = _Req(cmd, quiet, opaque, keys[0] if keys else None)
        req.cond = cond
        if kind == _GET or kind == _GAT:
            req.too_long = any(len(k) > MAX_KEY for k in keys)
        return op, attrs, req, noreply, blen

    def _request(self, msg: Message, op: str, attrs: dict, req: _Req, noreply: bool,
                 inc: str, out: list[Record]) -> None:
        if noreply:
            # No reply will come, whatever happened: the outcome is unknown.
            attrs["memcached.noreply"] = True
            out.append(Record(self.protocol, msg, None, op, STATUS_UNSET, "", "", attrs, {},
                              inc))
            return
        if len(self.pending) >= MAX_PENDING:
            self.stats["pending_overflow"] += 1
            out.append(incomplete_record(self.protocol, self.pending.popleft(), "evicted"))
        self.pending.append(Pending(msg, op, attrs, {}, inc, req))

    # -- replies --------------------------------------------------------------------------
    def _replies(self, d: int, st: DirStream, out: list[Record], force: bool) -> None:
        buf = st.buf
        n = len(buf)
        pos = 0
        while pos < n:
            r = self.reply
            if buf[pos] == MAGIC_RESP and (r is None or r.bop is not None):
                pos = self._binary(d, st, buf, pos, n, force, out)
                if pos == -1:
                    return
                continue
            if r is not None and r.bop is not None:
                self._bad(d, st, out)  # text inside a binary stats reply
                return
            j = buf.find(b"\n", pos)
            if j < 0:
                if n - pos > MAX_LINE:
                    self._bad(d, st, out)
                    return
                break
            line = buf[pos:j - 1] if j > pos and buf[j - 1] == 13 else buf[pos:j]
            sp = line.find(b" ")
            word = line if sp < 0 else line[:sp]
            if r is None:
                if word not in REPLY_WORDS and not line.isdigit() and line[:4] != b"key=":
                    self._bad(d, st, out)
                    return
                r = self.reply = _Reply(st.message(st.base + pos, st.base + j + 1), word, line)
                r.multi = word in _MULTI or line[:4] == b"key="
            ls = pos
            pos = j + 1
            blen = -1
            if word == b"VALUE" or word == b"VA":
                parts = line.split()
                blen = _int(parts[3] if word == b"VALUE" and len(parts) > 3 else
                            parts[1] if word == b"VA" and len(parts) > 1 else b"")
                if blen < 0:
                    self._bad(d, st, out)
                    return
            elif r.multi and word != b"END" and word not in _ERRORS:
                continue
            elif r.multi and word in _ERRORS:
                r.word, r.line = word, line
            if blen >= 0:
                e = pos + blen + 2
                if e > n:
                    if blen + 2 <= WAIT_BLOCK and not force:
                        pos = ls  # parse the line again once its block is in
                        break
                    r.hits += 1
                    r.done_after_block = not r.multi
                    st.consume(n)
                    st.skip = e - n
                    st.open = r.msg
                    r.msg.end_ns, r.msg.end_tid = st.marks[-1][1], st.marks[-1][2]
                    return
                r.hits += 1
                pos = e
                if r.multi:
                    continue
            self._reply_done(st, st.base + pos, "", out)
        st.consume(pos)

    def _reply_done(self, st: DirStream, end: int, inc: str, out: list[Record]) -> None:
        r = self.reply
        self.reply = None
        msg = r.msg
        msg.size = end - msg.offset
        msg.end_ns, msg.end_tid = st.mark_at(end - 1)[1:3]
        self._answer(r, inc or r.inc, out)

    def _fits(self, r: _Reply, q: _Req) -> bool:
        if r.bop is not None:
            return q.bop == r.bop and q.bopaque == r.bopaque
        if q.bop is not None:
            return False
        if r.word in _ERRORS:
            return True
        fit = _META_FIT.get(q.cmd)
        if fit is None:
            return True
        if r.word != b"ME":
            # Meta replies echo the request's O (opaque) and, if asked, k (key) flags.
            ro = rk = None
            for t in r.line.split()[1:]:
                if t[:1] == b"O":
                    ro = t
                elif t[:1] == b"k":
                    rk = t[1:]
            if ro != q.opaque or (rk is not None and q.key is not None and rk != q.key):
                return False
        if q.cmd == b"ms" and not q.cond:
            return r.word == b"HD"  # a plain set can only succeed (or fail with an error)
        return r.word in fit

    def _answer(self, r: _Reply, inc: str, out: list[Record]) -> None:
        i = self._fit(r)
        if i < 0:
            # Nothing pending it can answer: maybe the request still being read.
            self._salvage_request(out)
            i = self._fit(r)
        pending = self.pending
        if i < 0 or pending[i].msg.start_ns > r.msg.start_ns:
            # Nothing asked, or it answers a request lost before the oldest one seen:
            # requests were lost, and how many is unknown.
            self.stats["unmatched_response"] += 1
            self.uncertain = True
            return
        if r.line == _BAD_LINE and not pending[i].extra.too_long:
            i = self._dropped_replies(r, i, out)
        for _ in range(i):
            self._quiet_done(pending.popleft(), out)
        self._record(pending.popleft(), r, inc, out)

    def _fit(self, r: _Reply) -> int:
        """Index of the pending request r answers: the first one it fits, passing over
        quiet requests that had nothing to say; -1 if none."""
        i = 0
        for p in self.pending:
            q = p.extra
            if not q.quiet:
                return i
            if self._fits(r, q):
                self._ambiguous(r, p, i)
                return i
            i += 1
        return -1

    def _ambiguous(self, r: _Reply, p: Pending, i: int) -> None:
        """Another quiet request further on could take r as well (no distinct opaque or
        key tells them apart): which got what is a guess, so neither is reported whole."""
        amb = False
        for p2 in islice(self.pending, i + 1, None):
            if not p2.extra.quiet:
                break
            if self._fits(r, p2.extra):
                amb = True
                p2.incomplete = p2.incomplete or "ambiguous"
        if amb:
            p.incomplete = p.incomplete or "ambiguous"

    def _dropped_replies(self, r: _Reply, i: int, out: list[Record]) -> int:
        """A retrieval with a key over 250 bytes makes memcached drop the replies queued
        before its CLIENT_ERROR: the requests before it are answered by nothing.  Returns
        the index of the request r answers."""
        pending = self.pending
        for k, p in enumerate(pending):
            if p.extra.too_long:
                if p.msg.start_ns <= r.msg.start_ns:
                    for _ in range(k):
                        self.stats["reply_dropped_by_server"] += 1
                        out.append(incomplete_record(self.protocol, pending.popleft(),
                                                     "reply dropped by server"))
                    return 0
                return i
        st = self.streams[self.req_dir]
        if st.buf or not st.synced or self.open_req is not None:
            # That retrieval may be the request still being read (or lost): pairing in
            # order may be off from here until the queue drains.
            self.uncertain = True
        return i

    def _quiet_done(self, p: Pending, out: list[Record]) -> None:
        """A quiet request a later reply passed over: success, or a miss for a get."""
        p.attributes["memcached.noreply"] = True
        if p.operation in _GET_OPS:
            p.attributes["db.response.returned_rows"] = 0
        out.append(Record(self.protocol, p.msg, None, p.operation, STATUS_OK, "", "",
                          p.attributes, {}, self._why(p.incomplete)))

    def _record(self, p: Pending, r: _Reply, inc: str, out: list[Record]) -> None:
        attrs = p.attributes
        code = ""
        error = ""
        status = STATUS_OK
        if r.bop is not None:
            s = r.bstatus
            if s:
                code = BIN_STATUS.get(s, f"0x{s:04x}")
                attrs["db.response.status_code"] = code
                if s not in _BIN_OUTCOMES:
                    status = STATUS_ERROR
                    error = redact.sql(_text(r.line[:256])) or code
            if p.operation in _GET_OPS:
                attrs["db.response.returned_rows"] = 0 if s else 1
        else:
            word = r.word
            if word in _ERRORS:
                status = STATUS_ERROR
                code = _text(word)
                error = redact.sql(_text(r.line[:256]))
                attrs["db.response.status_code"] = code
            elif word in _OUTCOMES:
                code = _text(word)
                attrs["db.response.status_code"] = code
            if p.operation in _GET_OPS and status == STATUS_OK:
                attrs["db.response.returned_rows"] = r.hits if p.operation != "mg" else \
                    int(word in (b"VA", b"HD"))
        out.append(Record(self.protocol, p.msg, r.msg, p.operation, status, code, error, attrs,
                          {}, self._why(p.incomplete, inc)))

    # -- binary ---------------------------------------------------------------------------
    def _binary(self, d: int, st: DirStream, buf: bytes, pos: int, n: int, force: bool,
                out: list[Record]) -> int:
        """Parse the binary frame at pos: the position after it, or -1 when done with the
        buffer for now (waiting for more, skipping a body by length, desynchronised)."""
        if n - pos < HEADER:
            st.consume(pos)
            return -1
        op = buf[pos + 1]
        klen = (buf[pos + 2] << 8) | buf[pos + 3]
        elen = buf[pos + 4]
        status = (buf[pos + 6] << 8) | buf[pos + 7]
        blen = int.from_bytes(buf[pos + 8:pos + 12], "big")
        opaque = int.from_bytes(buf[pos + 12:pos + 16], "big")
        is_req = buf[pos] == MAGIC_REQ
        if elen + klen > blen or klen > MAX_KEY or elen > 32 or buf[pos + 5] != 0:
            self._bad(d, st, out)
            return -1
        e = pos + HEADER + blen
        kstart = pos + HEADER + elen
        # Wait for the key (and, in an error reply, its message): a few hundred bytes.
        need = kstart + klen if is_req or not status else min(e, kstart + klen + 256)
        if need > n and not force:
            st.consume(pos)
            return -1
        key = buf[kstart:min(kstart + klen, n)]
        msg = st.message(st.base + pos, st.base + min(e, n))
        if is_req:
            name, quiet = OPCODES.get(op, (f"0x{op:02x}", False))
            attrs = {"db.system": "memcached", "db.operation.name": name,
                     "db.query.text": query_text(name, [key] if klen else []),
                     "memcached.protocol": "binary"}
            req = _Req(b"", quiet, None, key or None, op, opaque)
            if e > n:
                st.consume(n)
                st.skip = e - n
                st.open = msg
                self.open_req = (msg, name, attrs, req, False)
                return -1
            self._request(msg, name, attrs, req, False, "", out)
            return e
        r = self.reply
        if r is None:
            text = buf[kstart + klen:min(e, n)] if status else b""
            r = self.reply = _Reply(msg, b"", text)
            r.bop, r.bopaque, r.bstatus = op, opaque, status
        # A stats reply is one frame per statistic, up to an empty one.
        r.multi = op == 0x10 and not status and blen > 0
        if e > n:
            r.done_after_block = not r.multi
            st.consume(n)
            st.skip = e - n
            st.open = r.msg
            r.msg.end_ns, r.msg.end_tid = st.marks[-1][1], st.marks[-1][2]
            return -1
        if not r.multi:
            self._reply_done(st, st.base + e, "", out)
        return e

    # -- gaps, tails, resynchronisation --------------------------------------------------
    def _bad(self, d: int, st: DirStream, out: list[Record]) -> None:
        self.stats["bad_frame"] += 1
        self.stats["desync"] += 1
        self._desync(d, st, out)

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        if st.buf:
            # A block cut by the hole is skipped by its length; then parsing goes on.
            self._parse(d, st, out, force=True)
            if st.skip and st.synced:
                self._lose(d, st, g, out)
                return True
        if not st.synced:
            return False
        # What comes after the hole is unknown; keep what was seen as truncated.
        if d == self.req_dir:
            if st.buf:
                self._salvage_line(st, g, out)  # a command line cut short
            return False
        r = self.reply
        if r is None and st.buf:
            # A first line cut short: its first word still says what it was.
            sp = st.buf.find(b" ")
            if sp > 0 and st.buf[:sp] in REPLY_WORDS:
                r = self.reply = _Reply(st.message(st.base, st.base + len(st.buf)),
                                        st.buf[:sp], st.buf)
                r.hits = int(r.word == b"VALUE" or r.word == b"VA")
        if r is not None:
            # A syscall usually writes a whole reply: it ends where the hole does.
            self._reply_done(st, max(st.next, r.msg.offset + 1), "truncated", out)
        return False

    def _salvage_line(self, st: DirStream, g: int, out: list[Record]) -> bool:
        """Register the request whose line is cut short at the end of the buffer."""
        toks = st.buf.split(b"\n", 1)[0].split()
        if not toks or toks[0] not in _COMMANDS:
            return False
        cmd = toks[0]
        if len(toks) == 1 or not st.buf.endswith(b" "):
            toks = toks[:-1] if len(toks) > 1 else toks  # the last word may be cut
        op, attrs, req, noreply, _ = self._command(cmd, _COMMANDS[cmd], toks)
        msg = st.message(st.base, st.base + len(st.buf))
        msg.size += g
        self._request(msg, op, attrs, req, noreply, "truncated", out)
        return True

    def _tail_done(self, d: int, st: DirStream, msg: Message | None,
                   out: list[Record]) -> None:
        inc = ""
        if st.trunc:
            st.trunc = False
            inc = "truncated"
        if d == self.req_dir:
            o = self.open_req
            self.open_req = None
            if o is not None:
                m, op, attrs, req, noreply = o
                self._request(m, op, attrs, req, noreply, inc, out)
            return
        r = self.reply
        if r is None:
            return
        if inc:
            r.inc = inc
        if r.done_after_block:
            self._reply_done(st, r.msg.offset + r.msg.size, "", out)

    def _salvage_request(self, out: list[Record]) -> None:
        """A reply came while a request is still being read: the server replies to whole
        requests only, so the rest of that one was lost.  Take it as it is."""
        d = self.req_dir
        st = self.streams[d]
        if not st.synced:
            return
        if st.buf and self.open_req is None:
            # A request waiting for the rest of its block (or key): its length is known,
            # so it can be taken as it is.
            self._requests(d, st, out, True)
        o = self.open_req
        if o is not None:
            self.open_req = None
            m, op, attrs, req, noreply = o
            self._request(m, op, attrs, req, noreply, "truncated", out)
        elif not (st.buf and self._salvage_line(st, 0, out)):
            return
        st.drop()
        st.skip = 0
        st.open = None
        st.synced = False
        self.stats["salvaged_request"] += 1

    def _resync(self, d: int, data: bytes) -> int:
        # A syscall usually writes whole commands and replies: accept a chunk that
        # starts like one.
        if d == self.req_dir or self.req_dir is None:
            if data[0] == MAGIC_REQ:
                return 0 if binary_request(data) else -1
            m = _CMD_START.match(data)
            if m and m.group(1) in _COMMANDS:
                return 0
            # Or a line start inside the chunk (chunks may cut commands anywhere).
            for m in _CMD_LINE.finditer(data, 0, MAX_LINE):
                if m.group(1) in _COMMANDS:
                    return m.start(1)
            return -1
        if data[0] == MAGIC_RESP:
            return 0 if binary_response(data) else -1
        j = data.find(b"\r\n", 0, MAX_LINE)
        if j < 0:
            return -1
        line = data[:j]
        return 0 if line.split(b" ", 1)[0] in REPLY_WORDS or line.isdigit() else -1

    def _on_desync(self, d: int, out: list[Record]) -> None:
        if d == self.req_dir:
            self.open_req = None
            return
        self.reply = None
        while self.pending:
            out.append(incomplete_record(self.protocol, self.pending.popleft(), "gap"))

    def _flush(self, reason: str, out: list[Record]) -> None:
        while self.pending:
            out.append(incomplete_record(self.protocol, self.pending.popleft(),
                                         reason or "no response"))
        self.closed = True


def _int(b: bytes) -> int:
    """A non-negative decimal, or -1."""
    return int(b) if b.isdigit() and len(b) < 12 else -1


def binary_request(data: bytes) -> bool:
    """A binary request header with a known opcode and lengths consistent with it."""
    if len(data) < HEADER or data[0] != MAGIC_REQ or data[5] != 0:
        return False
    shape = _BIN_SHAPE.get(data[1])
    if shape is None:
        return False
    klen = (data[2] << 8) | data[3]
    elen = data[4]
    blen = int.from_bytes(data[8:12], "big")
    extras, keyed, valued = shape
    if elen not in extras or klen > MAX_KEY or (keyed is not None and (klen > 0) != keyed):
        return False
    return elen + klen <= blen if valued else elen + klen == blen


def binary_response(data: bytes) -> bool:
    """A binary reply header with a known opcode (or the unknown-command status), a known
    status and sane lengths."""
    if len(data) < HEADER or data[0] != MAGIC_RESP or data[5] != 0:
        return False
    klen = (data[2] << 8) | data[3]
    status = (data[6] << 8) | data[7]
    if data[1] not in OPCODES and status != 0x81:
        return False
    blen = int.from_bytes(data[8:12], "big")
    return status in BIN_STATUS and klen <= MAX_KEY and data[4] + klen <= blen
