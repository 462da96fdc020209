"""Shared types of the protocol layer: chunks in, records out, and the stream plumbing.

`Chunk` is what the per-connection reassembly hands over (one syscall, one direction);
`Record` is a request matched with its response.  `StreamParser` holds what every
connection parser repeats: per-direction buffers keyed by stream offset, gap and
truncation handling (skip bytes whose length the framing knows, otherwise drop to a
"desynchronised" state and resynchronise at a recognisable frame boundary), chunk
timestamps for message start/end, memory caps, and drop counters.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

from proto.span import STATUS_ERROR, STATUS_OK, STATUS_UNSET, valid_traceparent

__all__ = [
    "EGRESS", "INGRESS", "Chunk", "Message", "Record", "ConnectionParser", "StreamParser",
    "DirStream", "STATUS_OK", "STATUS_ERROR", "STATUS_UNSET", "MAX_BUFFER", "MAX_PENDING",
]

EGRESS, INGRESS = 0, 1

# Per direction, bytes kept while waiting for the rest of a frame.  Headers and
# commands bigger than this are not worth buffering: the capture keeps 1 KiB per
# syscall by default, so a larger head is almost always a sign of lost framing.
MAX_BUFFER = 64 * 1024
# Requests waiting for a response, per connection.
MAX_PENDING = 256

SEQ_MOD = 1 << 32


@dataclass(slots=True)
class Chunk:
    """One syscall's worth of bytes in one direction of one connection."""

    direction: int
    data: bytes
    size: int
    offset: int
    ts_ns: int
    tid: int
    seq: int | None = None


@dataclass(slots=True)
class Message:
    """One protocol message (request or response) located in the stream."""

    offset: int
    size: int
    start_ns: int
    end_ns: int
    tid: int
    end_tid: int
    seq: int | None


@dataclass(slots=True)
class Record:
    """A request matched with its response (or alone, incomplete)."""

    protocol: str
    request: Message | None
    response: Message | None
    operation: str
    status: str
    status_code: str
    error: str
    attributes: dict
    trace_headers: dict
    incomplete: str = ""


class ConnectionParser(Protocol):
    protocol: str

    def feed(self, chunk: Chunk) -> list[Record]: ...

    def flush(self, reason: str) -> list[Record]: ...


class DirStream:
    """One direction of a connection: unparsed bytes plus where they came from.

    `buf` holds contiguous bytes starting at stream offset `base`; `skip` counts bytes
    still to discard (the rest of a body whose length is known); `synced` is False
    after bytes were lost where the framing cannot say how many, until the parser
    finds a frame boundary again.  `marks` remembers (offset, ts, tid, seq) of the
    chunks behind `buf` so a message gets the time of its first and last byte.
    """

    __slots__ = ("buf", "base", "next", "skip", "synced", "marks", "open", "trunc", "started")

    def __init__(self) -> None:
        self.buf = b""
        self.base = 0
        self.next: int | None = None
        self.skip = 0
        self.synced = True
        self.marks: list[tuple[int, int, int, int | None]] = []
        self.open: Message | None = None  # message whose tail is being skipped
        self.trunc = False  # the open message lost bytes
        self.started = False

    def mark_at(self, off: int) -> tuple[int, int, int, int | None]:
        marks = self.marks
        if len(marks) == 1:
            return marks[0]
        for i in range(len(marks) - 1, -1, -1):
            if marks[i][0] <= off:
                return marks[i]
        return marks[0]

    def message(self, start: int, end: int) -> Message:
        """A Message for stream bytes [start, end) of this direction."""
        if len(self.marks) == 1:
            m0 = self.marks[0]
            seq = m0[3]
            if seq is not None:
                seq = (seq + start - m0[0]) % SEQ_MOD
            return Message(start, end - start, m0[1], m0[1], m0[2], m0[2], seq)
        m0 = self.mark_at(start)
        m1 = self.mark_at(end - 1) if end > start else m0
        seq = m0[3]
        if seq is not None:
            seq = (seq + start - m0[0]) % SEQ_MOD
        return Message(start, end - start, m0[1], m1[1], m0[2], m1[2], seq)

    def consume(self, n: int) -> None:
        """Drop the first n buffered bytes, and the marks no longer needed."""
        self.buf = self.buf[n:]
        self.base += n
        marks = self.marks
        if len(marks) > 1:
            base = self.base
            i = 0
            while i + 1 < len(marks) and marks[i + 1][0] <= base:
                i += 1
            if i:
                del marks[:i]

    def drop(self) -> None:
        self.base += len(self.buf)
        self.buf = b""
        if len(self.marks) > 1:
            del self.marks[:-1]


class StreamParser:
    """Base of the connection parsers of framed, in-order protocols.

    Subclasses implement `_parse(d, st, out)` (consume whole frames from `st.buf`),
    and may override `_on_gap(d, st, g)` (bytes lost right after `st.buf`: consume the
    head frame as truncated when its length is known, return True if still in sync),
    `_resync(d, data)` (index of a plausible frame start in a new chunk, or -1),
    `_on_desync(d, out)` (forget state tied to the lost bytes) and `_tail_done(d, st,
    out)` (the skipped tail of `st.open` is over).
    """

    protocol = ""
    stats: Counter = Counter()

    def __init__(self, client_side: bool | None = None) -> None:
        self.client_side = client_side
        self.streams = (DirStream(), DirStream())
        # Direction carrying requests, once known.
        self.req_dir: int | None = None
        if client_side is not None:
            self.req_dir = EGRESS if client_side else INGRESS
        self.closed = False
        # Messages were lost where their count is unknown: until the pending queue
        # drains, first-in-first-out matching may be off by that count.
        self.uncertain = False

    # -- contract ---------------------------------------------------------------------
    def feed(self, chunk: Chunk) -> list[Record]:
        out: list[Record] = []
        if self.closed:
            return out
        d = chunk.direction
        st = self.streams[d]
        data = chunk.data
        off = chunk.offset
        if st.next is None:
            # Offsets count from the connection's first byte: a first chunk further on
            # means what came before was lost (or the connection was seen midway).
            st.next = st.base = 0
        if off != st.next:
            if off < st.next:
                # Retransmitted or overlapping bytes: keep only what is new.
                cut = st.next - off
                if cut >= chunk.size:
                    self.stats["overlap"] += 1
                    return out
                if cut >= len(data):
                    self.stats["overlap"] += 1
                    self._gap(d, st, chunk.size - cut, out)
                    return out
                data = data[cut:]
                off = st.next
            else:
                self.stats["gap"] += 1
                self._gap(d, st, off - st.next, out)
        end = off + len(data)
        marks = st.marks
        if not st.buf and marks:
            marks.clear()
        marks.append((off, chunk.ts_ns, chunk.tid, chunk.seq))
        st.next = end
        if st.skip:
            n = st.skip if st.skip < len(data) else len(data)
            st.skip -= n
            data = data[n:]
            st.base = off + n
            o = st.open
            if o is not None:
                o.end_ns = chunk.ts_ns
                o.end_tid = chunk.tid
                o.size += n
            if not st.skip:
                st.open = None
                self._tail_done(d, st, o, out)
        if data:
            if not st.synced:
                i = self._resync(d, data)
                if i < 0:
                    self.stats["resync_skip"] += 1
                    st.base = end
                    data = b""
                    self._skipped(d, chunk.ts_ns, out)
                else:
                    st.synced = True
                    data = data[i:]
                    st.base = end - len(data)
            if data:
                if st.buf:
                    st.buf += data
                else:
                    st.buf = data
                    st.base = end - len(data)
                self._parse(d, st, out)
                if len(st.buf) > MAX_BUFFER:
                    self.stats["buffer_overflow"] += 1
                    st.drop()
                    self._desync(d, st, out)
        if chunk.size > len(chunk.data):
            self.stats["truncated_chunk"] += 1
            self._gap(d, st, chunk.size - len(chunk.data), out)
        return out

    def flush(self, reason: str) -> list[Record]:
        out: list[Record] = []
        self._flush(reason, out)
        return out

    # -- plumbing ---------------------------------------------------------------------
    def _gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> None:
        """`g` bytes right after what was received are missing."""
        st.next = (st.next or 0) + g
        self._lose(d, st, g, out)

    def _lose(self, d: int, st: DirStream, g: int, out: list[Record]) -> None:
        """Account for `g` lost bytes (st.next already moved past them)."""
        if st.skip:
            o = st.open
            if st.skip >= g:
                if o is not None:
                    o.size += g
                st.skip -= g
                st.base += g
                st.trunc = True
                if not st.skip:
                    st.open = None
                    self._tail_done(d, st, o, out)
                return
            # The skipped message ends inside the hole; what follows is unknown.
            g -= st.skip
            if o is not None:
                o.size += st.skip
            st.skip = 0
            st.trunc = True
            st.open = None
            self._tail_done(d, st, o, out)
        if st.synced and self._on_gap(d, st, g, out):
            return
        st.drop()
        st.base = st.next
        self.uncertain = True
        if st.synced:
            self.stats["desync"] += 1
            self._desync(d, st, out)

    def _desync(self, d: int, st: DirStream, out: list[Record]) -> None:
        self.uncertain = True
        st.synced = False
        st.skip = 0
        st.open = None
        st.buf = b""
        st.base = st.next or 0
        self._on_desync(d, out)

    def _why(self, *reasons: str) -> str:
        """Incomplete reasons of a matched record, with the doubt a lost request casts."""
        why = ",".join(r for r in reasons if r) if any(reasons) else ""
        if self.uncertain:
            if not why:
                why = "gap"
            if not getattr(self, "pending", True):
                self.uncertain = False
        return why

    # -- hooks ------------------------------------------------------------------------
    def _parse(self, d: int, st: DirStream, out: list[Record]) -> None:
        raise NotImplementedError

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        return False

    def _resync(self, d: int, data: bytes) -> int:
        return -1

    def _on_desync(self, d: int, out: list[Record]) -> None:
        pass

    def _skipped(self, d: int, ts: int, out: list[Record]) -> None:
        """A whole chunk was dropped while looking for a frame boundary.

        If it carried responses, they answered requests sent before it: those requests
        go out incomplete rather than be matched, first in first out, with later answers.
        """
        pending = getattr(self, "pending", None)
        if d == self.req_dir or not isinstance(pending, deque):
            return
        while pending and pending[0].msg.start_ns <= ts:
            out.append(incomplete_record(self.protocol, pending.popleft(), "gap"))

    def _tail_done(self, d: int, st: DirStream, msg: Message | None, out: list[Record]) -> None:
        pass

    def _flush(self, reason: str, out: list[Record]) -> None:
        pass


def checked_trace_headers(th: dict, stats: Counter) -> dict:
    """th without a malformed traceparent: ignored, as W3C Trace Context says (the
    trace gets an id of its own), and counted as `bad_traceparent`."""
    tp = th.get("traceparent")
    if tp is not None and not valid_traceparent(tp):
        del th["traceparent"]
        stats["bad_traceparent"] += 1
    return th


def new_stats() -> Counter:
    """A per-module counter of reason -> count (exported as Prometheus metrics)."""
    return Counter()


@dataclass(slots=True)
class Pending:
    """A request waiting for its response, with what the response needs to know."""

    msg: Message
    operation: str
    attributes: dict
    trace_headers: dict = field(default_factory=dict)
    incomplete: str = ""
    extra: object = None


def incomplete_record(protocol: str, p: Pending, reason: str) -> Record:
    """The record of a request whose response will not be seen."""
    why = p.incomplete or reason
    if p.incomplete and reason and reason not in p.incomplete:
        why = f"{p.incomplete},{reason}"
    return Record(protocol, p.msg, None, p.operation, STATUS_UNSET, "", "",
                  p.attributes, p.trace_headers, why)
