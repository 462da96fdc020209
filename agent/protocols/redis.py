"""Redis RESP2 and RESP3: commands, pipelining, errors, push messages.

The scanner is resumable at every element boundary (a stack of element counts left
in the open aggregates), so a frame split over many syscalls is never re-scanned and
a bulk string longer than what was captured is skipped by its length, after which
the remaining elements of the same frame are parsed as usual.
"""

from __future__ import annotations

import re
from collections import deque

from .base import (
    MAX_PENDING,
    SEQ_MOD,
    STATUS_ERROR,
    STATUS_OK,
    Chunk,
    DirStream,
    Message,
    Pending,
    Record,
    StreamParser,
    incomplete_record,
    new_stats,
)

STATS = new_stats()

_STAR, _DOLLAR, _PLUS, _MINUS, _COLON = 42, 36, 43, 45, 58
_AGG = frozenset(b"*%~>")
_BULK = frozenset(b"$=!")
_LINE = frozenset(b"+-:_,#(")
TYPES = _AGG | _BULK | _LINE | {ord("|")}
MAX_LINE = 4096
GRAB = 64  # bytes kept of the first elements (command name, key)
# Bulks up to this size are waited for whole; longer ones are skipped by length as
# soon as their head is in.
WAIT_BULK = 4096

# Commands whose first argument names a subcommand.
_SUBCOMMANDS = frozenset(
    b"CONFIG CLIENT CLUSTER COMMAND OBJECT MEMORY XINFO XGROUP SCRIPT FUNCTION ACL "
    b"PUBSUB DEBUG MODULE SLOWLOG LATENCY".split()
)
# Commands whose first argument is not a key (or is a secret): never shown.
_NO_KEY = frozenset(
    b"AUTH HELLO PING ECHO SELECT MULTI EXEC DISCARD INFO QUIT DBSIZE FLUSHDB FLUSHALL "
    b"TIME SAVE BGSAVE MIGRATE SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUBLISH EVAL "
    b"EVALSHA FCALL WAIT SCAN".split()
)
_PUBSUB_PUSH = frozenset((b"message", b"pmessage", b"smessage"))
_SUBSCRIBE = frozenset((b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"))
_REQ_RESYNC = re.compile(rb"\*\d{1,7}\r\n\$\d{1,10}\r\n")


class _Frame:
    """Scan state of one direction: the frame in progress, if any."""

    __slots__ = ("stack", "msg", "args", "kind", "err", "inc")

    def __init__(self) -> None:
        self.stack: list[int] = []
        self.msg: Message | None = None
        self.args: list[bytes] = []
        self.kind = 0
        self.err: bytes | None = None
        self.inc = ""


class RedisParser(StreamParser):
    """One Redis connection, both directions."""

    protocol = "redis"
    stats = STATS

    def __init__(self, client_side: bool | None = None) -> None:
        super().__init__(client_side)
        self.pending: deque[Pending] = deque()
        self.frames = (_Frame(), _Frame())
        # Pub/sub pushes ("message", "pmessage", "smessage", extra "subscribe"
        # confirmations) only exist once the client subscribed: before that, an array
        # reply that happens to start with such a word is data (LRANGE of a list).
        self.subscribed = False

    def feed(self, chunk: Chunk) -> list[Record]:
        # Fast path for the common case (whole frames at the start of a chunk, nothing
        # pending in the stream): no buffering, no resumable scanner.  Whatever follows
        # the last whole frame (a frame cut by the capture, anything unusual) goes
        # through the general machinery.
        d = chunk.direction
        st = self.streams[d]
        if (chunk.offset == st.next and not st.buf and not st.skip and st.synced
                and not self.frames[d].stack and not self.closed
                and self.req_dir is not None and not self.uncertain):
            r = self._fast(chunk, d == self.req_dir)
            if r is not None:
                out, used = r
                st.next = st.base = chunk.offset + used
                if st.marks:
                    st.marks.clear()
                if used < chunk.size:
                    seq = None if chunk.seq is None else (chunk.seq + used) % SEQ_MOD
                    rest = Chunk(d, chunk.data[used:], chunk.size - used, chunk.offset + used,
                                 chunk.ts_ns, chunk.tid, seq)
                    out += StreamParser.feed(self, rest)
                return out
        return StreamParser.feed(self, chunk)

    def _fast(self, chunk: Chunk, is_req: bool) -> tuple[list[Record], int] | None:
        """Records of the whole frames at the start of the chunk, and their length."""
        data = chunk.data
        n = len(data)
        i = 0
        frames = []
        find = data.find
        try:
            while i < n:
                start = i
                t = data[i]
                j = find(b"\r\n", i)
                if j < 0:
                    break
                if t == _STAR:
                    cnt = int(data[i + 1:j])
                    i = j + 2
                    args = []
                    for _ in range(cnt):
                        if i >= n or data[i] != _DOLLAR:
                            i = -1
                            break
                        j = find(b"\r\n", i)
                        ln = int(data[i + 1:j]) if j > 0 else -1
                        s = j + 2
                        i = s + ln + 2
                        if i > n or ln < 0:
                            i = -1
                            break
                        if len(args) < 2:
                            args.append(data[s:s + ln] if ln <= GRAB else data[s:s + GRAB])
                    if i < 0 or (not is_req and args and self.subscribed
                                 and (args[0] in _PUBSUB_PUSH
                                      or args[0].endswith(b"subscribe"))):
                        break
                    frames.append((start, i, args, None))
                elif is_req:
                    break
                elif t == _PLUS or t == _COLON or t == 95 or t == 35 or t == 44:
                    i = j + 2
                    frames.append((start, i, None, None))
                elif t == _MINUS:
                    i = j + 2
                    frames.append((start, i, None, data[start + 1:j]))
                elif t == _DOLLAR:
                    ln = int(data[i + 1:j])
                    i = j + 2 + (ln + 2 if ln >= 0 else 0)
                    if i > n:
                        break
                    frames.append((start, i, None, None))
                else:
                    break
        except ValueError:
            pass
        off, ts, tid, seq = chunk.offset, chunk.ts_ns, chunk.tid, chunk.seq
        pending = self.pending
        if not is_req:
            if len(frames) > len(pending):
                del frames[len(pending):]
            while frames and pending[len(frames) - 1].msg.start_ns > ts:
                frames.pop()
        if not frames:
            return None
        out: list[Record] = []
        if is_req:
            for start, end, args, _ in frames:
                s = None if seq is None else (seq + start) % SEQ_MOD
                self._request(Message(off + start, end - start, ts, ts, tid, tid, s), args,
                              "", out)
        else:
            for start, end, _, err in frames:
                s = None if seq is None else (seq + start) % SEQ_MOD
                msg = Message(off + start, end - start, ts, ts, tid, tid, s)
                p = pending.popleft()
                if err is None:
                    out.append(Record("redis", p.msg, msg, p.operation, STATUS_OK, "", "",
                                      p.attributes, {}, p.incomplete))
                else:
                    self._reply(p, msg, err, "", out)
        return out, frames[-1][1]

    def _request(self, msg: Message, args: list[bytes], inc: str, out: list[Record]) -> None:
        cmd = args[0].upper() if args else b""
        op = cmd.decode("latin-1")
        if cmd in _SUBSCRIBE:
            self.subscribed = True
        if cmd in _SUBCOMMANDS and len(args) > 1:
            op = f"{op} {args[1].upper().decode('latin-1')}"
        attrs = {"db.system": "redis", "db.operation.name": op}
        if len(args) > 1 and cmd not in _NO_KEY and cmd not in _SUBCOMMANDS:
            attrs["db.query.text"] = f"{op} {args[1].decode('latin-1')}"
        elif op:
            attrs["db.query.text"] = op
        if len(self.pending) >= MAX_PENDING:
            self.stats["pending_overflow"] += 1
            out.append(incomplete_record(self.protocol, self.pending.popleft(), "evicted"))
        self.pending.append(Pending(msg, op, attrs, {}, inc))

    def _reply(self, p: Pending, msg: Message, err: bytes | None, inc: str,
               out: list[Record]) -> None:
        if err is not None:
            text = err.decode("latin-1", "replace")
            code = text.split(" ", 1)[0]
            status, error = STATUS_ERROR, text[:256]
        else:
            code, status, error = "", STATUS_OK, ""
        out.append(Record(self.protocol, p.msg, msg, p.operation, status, code, error,
                          p.attributes, {}, self._why(p.incomplete, inc)))

    def _parse(self, d: int, st: DirStream, out: list[Record], force: bool = False) -> None:
        buf = st.buf
        n = len(buf)
        if self.req_dir is None:
            t = buf[0]
            self.req_dir = d if (t == _STAR or (65 <= t <= 122 and t != 95)) else 1 - d
        is_req = d == self.req_dir
        f = self.frames[d]
        stack = f.stack
        pos = 0
        while pos < n:
            if not stack:
                t = buf[pos]
                if t not in TYPES:
                    if is_req and 65 <= t <= 122:
                        j = buf.find(b"\n", pos)
                        if j < 0:
                            if n - pos > MAX_LINE:
                                pos = self._bad(d, st, out)
                                return
                            break
                        words = buf[pos:j].split(None, 2)
                        f.msg = st.message(st.base + pos, st.base + j + 1)
                        f.args = words[:2]
                        f.kind = t
                        pos = j + 1
                        self._done(d, f, st, out)
                        continue
                    self._bad(d, st, out)
                    return
                stack.append(1)
                f.inc = ""
                f.msg = st.message(st.base + pos, st.base + pos + 1)
                f.args = []
                f.kind = t
                f.err = None
            t = buf[pos]
            j = buf.find(b"\r\n", pos)
            if j < 0:
                if n - pos > MAX_LINE:
                    self._bad(d, st, out)
                    return
                break
            try:
                v = int(buf[pos + 1:j]) if (t in _AGG or t in _BULK or t == 124) else 0
            except ValueError:
                self._bad(d, st, out)
                return
            stack[-1] -= 1
            if t in _BULK:
                if v < 0:
                    pos = j + 2
                else:
                    s = j + 2
                    e = s + v + 2
                    if e > n and v <= WAIT_BULK and not force:
                        stack[-1] += 1  # not taken yet: wait for the whole bulk
                        break
                    if len(stack) <= 2 and len(f.args) < 2:
                        f.args.append(buf[s:min(s + v, s + GRAB)])
                    if t == 33 and len(stack) == 1:
                        f.err = buf[s:min(s + v, s + 512, n)]
                    if e > n:
                        # The bulk runs past what is buffered: skip the rest by length.
                        st.consume(n)
                        st.skip = e - n
                        st.open = f.msg
                        f.msg.end_ns, f.msg.end_tid = st.marks[-1][1], st.marks[-1][2]
                        return
                    pos = e
            elif t in _AGG:
                pos = j + 2
                if t == 37:
                    v *= 2
                if v > 0:
                    stack.append(v)
            elif t == 124:
                # An attribute map annotates the value that follows it.
                stack[-1] += 1
                pos = j + 2
                if v > 0:
                    stack.append(v * 2)
            elif t in _LINE:
                if t == _MINUS:
                    if len(stack) == 1:
                        f.err = buf[pos + 1:j]
                elif t == _PLUS and len(stack) <= 2 and len(f.args) < 2:
                    f.args.append(buf[pos + 1:j])
                pos = j + 2
            else:
                self._bad(d, st, out)
                return
            while stack and stack[-1] == 0:
                stack.pop()
            if not stack:
                msg = f.msg
                end = st.base + pos
                msg.size = end - msg.offset
                msg.end_ns, msg.end_tid = st.mark_at(end - 1)[1:3]
                self._done(d, f, st, out)
        st.consume(pos)

    def _bad(self, d: int, st: DirStream, out: list[Record]) -> int:
        self.stats["bad_frame"] += 1
        self.stats["desync"] += 1
        self._desync(d, st, out)
        return -1

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        if not st.buf:
            return False
        # A bulk cut by the hole is skipped by its length; then the frame goes on.
        self._parse(d, st, out, force=True)
        if not st.skip or not st.synced:
            return False
        self._lose(d, st, g, out)
        return True

    def _tail_done(self, d: int, st: DirStream, msg: Message | None,
                   out: list[Record]) -> None:
        f = self.frames[d]
        stack = f.stack
        while stack and stack[-1] == 0:
            stack.pop()
        if st.trunc:
            st.trunc = False
            f.inc = "truncated"
        if not stack and f.msg is not None:
            f.msg.size = st.base - f.msg.offset
            self._done(d, f, st, out)

    def _done(self, d: int, f: _Frame, st: DirStream, out: list[Record], inc: str = "") -> None:
        msg = f.msg
        f.msg = None
        f.stack.clear()
        if d == self.req_dir:
            self._request(msg, f.args, inc or f.inc, out)
            return
        kind = f.kind
        first = f.args[0] if f.args and (kind == _STAR or kind == 62) else b""
        if not self.subscribed and kind != 62:
            first = b""
        if first in _PUBSUB_PUSH:
            self.stats["push"] += 1
            return
        if first.endswith(b"subscribe"):
            # One confirmation per channel: the first answers the command, the rest
            # answer nothing.
            if not (self.pending and self.pending[0].operation.lower() == first.decode()):
                self.stats["push"] += 1
                return
        elif kind == 62:
            self.stats["push"] += 1
            return
        if not self.pending:
            self._salvage_request(out)
        if not self.pending or self.pending[0].msg.start_ns > msg.start_ns:
            # Nothing asked, or it answers a request lost before the oldest one seen.
            self.stats["unmatched_response"] += 1
            return
        self._reply(self.pending.popleft(), msg, f.err, inc or f.inc, out)

    def _salvage_request(self, out: list[Record]) -> None:
        """A reply came while a command is still being read: the server replies to
        whole commands only, so the rest of that one was lost.  Take it as it is."""
        d = self.req_dir
        f = self.frames[d]
        st = self.streams[d]
        if f.msg is None or not st.synced or (not f.stack and not st.buf):
            return
        if not f.stack and st.buf:
            return  # between frames: nothing of the command was parsed yet
        f.msg.size = max(f.msg.size, st.base + len(st.buf) - f.msg.offset)
        self._done(d, f, st, out, "truncated")
        st.drop()
        st.skip = 0
        st.open = None
        st.synced = False
        self.stats["salvaged_request"] += 1

    def _resync(self, d: int, data: bytes) -> int:
        if d == self.req_dir or self.req_dir is None:
            m = _REQ_RESYNC.search(data)
            return m.start() if m else -1
        # Responses carry no marker: accept a chunk that starts like a reply.
        if data[0] in TYPES and b"\r\n" in data[:MAX_LINE]:
            return 0
        return -1

    def _on_desync(self, d: int, out: list[Record]) -> None:
        f = self.frames[d]
        f.stack.clear()
        if d == self.req_dir:
            if f.msg is not None and f.args:
                f.msg.size = max(f.msg.size, 1)
                self._done(d, f, self.streams[d], out, "gap")
        else:
            f.msg = None
            while self.pending:
                out.append(incomplete_record(self.protocol, self.pending.popleft(), "gap"))
        f.msg = None

    def _flush(self, reason: str, out: list[Record]) -> None:
        while self.pending:
            out.append(incomplete_record(self.protocol, self.pending.popleft(),
                                         reason or "no response"))
        self.closed = True
