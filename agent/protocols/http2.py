"""HTTP/2 and gRPC: frames, multiplexed streams, HPACK (python-hyper `hpack`), trailers.

Header blocks are decoded with `hpack.Decoder`, one per direction, in stream order, so a
connection seen from its first byte decodes exactly.  The decoder's header table is
made lenient: a reference to a dynamic-table entry that was never seen (connection
picked up midway, or a header block lost to a gap) yields a placeholder instead of
aborting the block, so the fields that can be decoded still are, the table keeps its
shape for later blocks, and the record says "midstream".  A gRPC exchange (content-type
application/grpc) is reported as protocol "grpc" with service, method and grpc-status
from the trailers.
"""

from __future__ import annotations

from collections import OrderedDict

import hpack
from hpack.exceptions import HPACKError, InvalidTableIndex
from hpack.table import HeaderTable

from proto.span import TRACE_HEADERS

from .base import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    DirStream,
    Message,
    Record,
    StreamParser,
    checked_trace_headers,
    new_stats,
)

STATS = new_stats()

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 1 << 24
_IGNORED = frozenset((PRIORITY, SETTINGS, PING, WINDOW_UPDATE))
MAX_STREAMS = 256
MAX_BLOCK = 64 * 1024
UNKNOWN = b":unknown"
_TRACE = frozenset(TRACE_HEADERS)
GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


class _QuietLog:
    """hpack logs every field at DEBUG through `logging`; on the hot path those calls
    cost a fifth of decoding even when DEBUG is off."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass


if not hpack.hpack.log.isEnabledFor(10):
    hpack.hpack.log = _QuietLog()


class _LenientTable(HeaderTable):
    """A header table that answers unknown dynamic indexes with a placeholder."""

    def __init__(self) -> None:
        super().__init__()
        self.misses = 0
        self.version = 0  # bumped on every change, to key the decoded-block cache

    def add(self, name: bytes, value: bytes) -> None:
        self.version += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return HeaderTable.maxsize.fget(self)

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, newmax)

    def get_by_index(self, index: int) -> tuple[bytes, bytes]:
        try:
            return super().get_by_index(index)
        except InvalidTableIndex:
            self.misses += 1
            return UNKNOWN, b""


def _decoder() -> hpack.Decoder:
    d = hpack.Decoder(max_header_list_size=MAX_BLOCK * 4)
    d.header_table = _LenientTable()
    # The peer's SETTINGS bound the encoder; accept any sane size rather than track them.
    d.max_allowed_table_size = 1 << 20
    return d


class _Stream:
    __slots__ = ("req", "resp", "rh", "sh", "trailers", "inc", "req_done", "resp_done",
                 "reset")

    def __init__(self) -> None:
        self.req: Message | None = None
        self.resp: Message | None = None
        self.rh: dict[str, str] = {}
        self.sh: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.inc = ""
        self.req_done = False
        self.resp_done = False
        self.reset: int | None = None


class Http2Parser(StreamParser):
    """One HTTP/2 connection (cleartext, or decrypted upstream), both directions."""

    protocol = "http2"
    stats = STATS

    def __init__(self, client_side: bool | None = None) -> None:
        super().__init__(client_side)
        self.decoders = [_decoder(), _decoder()]
        self.cache: list[dict] = [{}, {}]
        self.block: list[tuple[int, int, bytearray, Message, bool] | None] = [None, None]
        self.streams_: OrderedDict[int, _Stream] = OrderedDict()
        self.preface_seen = False

    # -- framing ----------------------------------------------------------------------
    def _parse(self, d: int, st: DirStream, out: list[Record]) -> None:
        buf = st.buf
        n = len(buf)
        pos = 0
        if not st.started:
            if buf.startswith(PREFACE[:min(n, 24)]):
                if n < 24:
                    return
                pos = 24
                self.preface_seen = True
                if self.req_dir is None:
                    self.req_dir = d
            st.started = True
        while n - pos >= 9:
            ln = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            ftype = buf[pos + 3]
            total = 9 + ln
            if ln > MAX_FRAME or buf[pos + 5] & 0x80:
                self.stats["bad_frame"] += 1
                self._desync(d, st, out)
                return
            if ftype in _IGNORED and n - pos >= total:
                pos += total  # flow control and connection upkeep: nothing for a span
                continue
            if n - pos < total:
                if ftype == DATA and total > 4096:
                    # Payload need not be read: count it and skip the rest by length.
                    self._frame(d, st, buf, pos, total, out, partial=True)
                    st.consume(n)
                    st.skip = total - (n - pos)
                    return
                if total > MAX_BLOCK:
                    self.stats["frame_too_big"] += 1
                    self._desync(d, st, out)
                    return
                break
            self._frame(d, st, buf, pos, total, out)
            pos += total
        st.consume(pos)

    def _on_gap(self, d: int, st: DirStream, g: int, out: list[Record]) -> bool:
        buf = st.buf
        if len(buf) < 9:
            return False
        total = 9 + ((buf[0] << 16) | (buf[1] << 8) | buf[2])
        if total < len(buf) + g:
            return False
        sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        s = self.streams_.get(sid)
        if s is not None:
            s.inc = s.inc or "truncated"
        if buf[3] in (HEADERS, CONTINUATION, PUSH_PROMISE):
            self._hpack_lost(d)
        else:
            self._frame(d, st, buf, 0, total, out, partial=True)
        st.consume(len(buf))
        st.skip = total - len(buf) - g
        return True

    def _resync(self, d: int, data: bytes) -> int:
        # Writes usually carry whole frames: accept a chunk that starts like one.
        if len(data) < 9 or data[3] > 9 or data[5] & 0x80:
            return -1
        ln = (data[0] << 16) | (data[1] << 8) | data[2]
        if ln > MAX_FRAME:
            return -1
        nxt = 9 + ln
        if len(data) >= nxt + 9 and (data[nxt + 3] > 9 or data[nxt + 5] & 0x80):
            return -1
        return 0

    def _on_desync(self, d: int, out: list[Record]) -> None:
        self._hpack_lost(d)
        for s in self.streams_.values():
            s.inc = s.inc or "gap"  # some of its frames may be in the hole

    def _hpack_lost(self, d: int) -> None:
        """Part of a header block was lost: the table no longer matches the peer's."""
        self.stats["hpack_reset"] += 1
        self.decoders[d] = _decoder()
        self.cache[d] = {}
        self.block[d] = None

    # -- frames -----------------------------------------------------------------------
    def _frame(self, d: int, st: DirStream, buf: bytes, pos: int, total: int,
               out: list[Record], partial: bool = False) -> None:
        ftype = buf[pos + 3]
        flags = buf[pos + 4]
        sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        start = st.base + pos
        end = start + total
        if ftype == DATA:
            if sid:
                self._touch(d, st, sid, start, end, flags & END_STREAM, out)
            return
        if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
            payload = buf[pos + 9:pos + total]
            if ftype == CONTINUATION:
                blk = self.block[d]
                if blk is None or blk[0] != sid:
                    self.stats["stray_continuation"] += 1
                    return
                blk[2].extend(payload)
                if len(blk[2]) > MAX_BLOCK:
                    self._hpack_lost(d)
                    return
                if flags & END_HEADERS:
                    self.block[d] = None
                    self._headers(d, st, sid, bytes(blk[2]), blk[3], end, blk[4], out,
                                  blk[1] == PUSH_PROMISE)
                return
            i = 0
            pad = 0
            if flags & PADDED:
                pad = payload[0] if payload else 0
                i = 1
            if ftype == PUSH_PROMISE:
                i += 4
            elif flags & PRIORITY_FLAG:
                i += 5
            fragment = payload[i:len(payload) - pad if pad else len(payload)]
            first = st.message(start, min(end, st.base + len(st.buf)))
            es = bool(flags & END_STREAM) and ftype == HEADERS
            if flags & END_HEADERS:
                self._headers(d, st, sid, fragment, first, end, es, out, ftype == PUSH_PROMISE)
            else:
                self.block[d] = (sid, ftype, bytearray(fragment), first, es)
            return
        if ftype == RST_STREAM and sid:
            s = self.streams_.get(sid)
            if s is not None:
                code = int.from_bytes(buf[pos + 9:pos + 13], "big") if total >= 13 else 0
                s.reset = code
                self._finish(sid, s, out, "reset" if code else "")
            return
        if ftype == GOAWAY:
            self.stats["goaway"] += 1

    def _headers(self, d: int, st: DirStream, sid: int, block: bytes, first: Message,
                 end: int, end_stream: bool, out: list[Record], push: bool) -> None:
        dec = self.decoders[d]
        table = dec.header_table
        misses = table.misses
        # Decoding depends only on the block and the table, and the table is versioned:
        # repeated blocks that leave it untouched (all-indexed, as in repeated calls)
        # are decoded once.  hpack is pure Python and dominates HTTP/2 cost otherwise.
        key = (block, table.version)
        cache = self.cache[d]
        hit = cache.get(key)
        if hit is not None:
            fields, lost_before = hit
            table.misses += lost_before
        else:
            try:
                fields = dec.decode(block, raw=True)
            except (HPACKError, ValueError, IndexError, UnicodeDecodeError):
                self.stats["hpack_error"] += 1
                self._hpack_lost(d)
                fields = None
            if fields is not None and table.version == key[1] and len(block) <= 1024:
                if len(cache) >= 64:
                    cache.clear()
                cache[key] = (fields, table.misses - misses)
        if push:
            return  # only decoded to keep the table in step
        lost = fields is None or table.misses != misses
        hdrs: dict[str, str] = {}
        for name, value in fields or ():
            if name == UNKNOWN:
                continue
            hdrs[name.decode("latin-1")] = value.decode("latin-1")
        if self.req_dir is None:
            if ":method" in hdrs:
                self.req_dir = d
            elif ":status" in hdrs:
                self.req_dir = 1 - d
            else:
                self.req_dir = d if sid % 2 else 1 - d
        s = self.streams_.get(sid)
        if s is None:
            if d != self.req_dir:
                self.stats["unmatched_response"] += 1
                if not lost and ":status" not in hdrs:
                    return
            s = self._new_stream(sid, out)
        msg_end = st.mark_at(min(end, st.base + len(st.buf)) - 1)
        if lost:
            s.inc = "midstream"
        if d == self.req_dir:
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
            elif ":status" in hdrs and hdrs[":status"].startswith("1"):
                pass  # interim response
            else:
                s.trailers.update(hdrs)
            if ":status" in s.sh and s.sh[":status"].startswith("1") and ":status" in hdrs:
                s.sh = hdrs  # the final response after an interim one
            s.resp.size = end - s.resp.offset
            s.resp.end_ns, s.resp.end_tid = msg_end[1], msg_end[2]
            if end_stream:
                s.resp_done = True
                self._finish(sid, s, out)

    def _touch(self, d: int, st: DirStream, sid: int, start: int, end: int, end_stream: int,
               out: list[Record]) -> None:
        s = self.streams_.get(sid)
        if s is None:
            self.stats["data_unknown_stream"] += 1
            return
        msg = s.req if d == self.req_dir else s.resp
        if msg is None:
            msg = st.message(start, min(end, st.base + len(st.buf)))
            if d == self.req_dir:
                s.req = msg
            else:
                s.resp = msg
            s.inc = s.inc or "midstream"
        msg.size = end - msg.offset
        mk = st.mark_at(min(end, st.base + len(st.buf)) - 1)
        msg.end_ns, msg.end_tid = mk[1], mk[2]
        if end_stream:
            if d == self.req_dir:
                s.req_done = True
            else:
                s.resp_done = True
                self._finish(sid, s, out)

    def _new_stream(self, sid: int, out: list[Record]) -> _Stream:
        if len(self.streams_) >= MAX_STREAMS:
            self.stats["stream_evicted"] += 1
            old_sid, old = self.streams_.popitem(last=False)
            out.append(self._record(old, "evicted"))
        s = self.streams_[sid] = _Stream()
        return s

    def _finish(self, sid: int, s: _Stream, out: list[Record], why: str = "") -> None:
        self.streams_.pop(sid, None)
        out.append(self._record(s, why))

    # -- records ----------------------------------------------------------------------
    def _record(self, s: _Stream, why: str) -> Record:
        rh, sh, tr = s.rh, s.sh, s.trailers
        method = rh.get(":method", "")
        path = rh.get(":path", "")
        ctype = rh.get("content-type", "") or sh.get("content-type", "")
        grpc = ctype.startswith("application/grpc")
        attrs: dict = {"network.protocol.version": "2"}
        if method:
            attrs["http.request.method"] = method
        q = path.find("?")
        if path:
            attrs["url.path"] = path if q < 0 else path[:q]
        if rh.get(":authority"):
            attrs["server.address"] = rh[":authority"].rsplit(":", 1)[0] \
                if not rh[":authority"].startswith("[") else rh[":authority"]
        if rh.get(":scheme"):
            attrs["url.scheme"] = rh[":scheme"]
        code = sh.get(":status", "")
        if code.isascii() and code.isdigit():
            attrs["http.response.status_code"] = int(code)
        trace = checked_trace_headers({k: v for k, v in rh.items() if k in _TRACE},
                                      self.stats)
        status_code, error = code, ""
        if grpc:
            op = path
            svc, _, meth = path.lstrip("/").partition("/")
            attrs.update({"rpc.system": "grpc", "rpc.service": svc, "rpc.method": meth})
            gs = tr.get("grpc-status", sh.get("grpc-status", ""))
            if gs.isascii() and gs.isdigit():
                attrs["rpc.grpc.status_code"] = int(gs)
                status_code = gs
                status = STATUS_OK if gs == "0" else STATUS_ERROR
                if gs != "0":
                    error = tr.get("grpc-message", sh.get("grpc-message", ""))[:256] or \
                        (GRPC_CODES[int(gs)] if int(gs) < len(GRPC_CODES) else "")
            else:
                status = STATUS_UNSET
        else:
            op = f"{method} {attrs.get('url.path', '')}".strip()
            if code.isascii() and code.isdigit():
                c = int(code)
                status = STATUS_ERROR if c >= 500 or (c >= 400 and self.req_dir == 0) else \
                    (STATUS_OK if c < 400 else STATUS_UNSET)
            else:
                status = STATUS_UNSET
        if s.reset:
            status = STATUS_ERROR
            error = error or f"RST_STREAM {s.reset}"
        inc = ",".join(x for x in (s.inc, why) if x)
        if s.resp is None and not inc:
            inc = "no response"
        elif s.req is None and not inc:
            inc = "no request"
        elif not s.req_done and not inc and not s.reset:
            # Answered before the request's last frame was seen: lost, or still
            # streaming; either way its end is unknown.
            inc = "request unfinished"
        return Record("grpc" if grpc else "http2", s.req, s.resp, op, status, status_code,
                      error, attrs, trace, inc)

    def _flush(self, reason: str, out: list[Record]) -> None:
        for s in self.streams_.values():
            if s.req is not None or s.resp is not None:
                out.append(self._record(s, reason or "no response"))
        self.streams_.clear()
        self.closed = True
