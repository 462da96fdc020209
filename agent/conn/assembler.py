"""From socket events to spans: per-connection chunks, protocol inference, parsing.

Each connection (a socket; for unconnected UDP, a socket and peer) gets a protocol
parser once its first bytes say which protocol it speaks.  Parsers turn chunks into
request/response records; records become spans (agent/conn/spans.py).  Connections
whose bytes match no protocol are counted and ignored, not guessed at."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.conn.spans import ConnMeta, SpanContext, record_to_span
from agent.conn.tracker import ConnTracker
from agent.probes import abi
from agent.probes.events import SocketEvent
from agent.protocols import registry
from agent.protocols.base import Chunk, ConnectionParser, Record

log = logging.getLogger(__name__)

# Undecided connections keep their first chunks until inference succeeds.
INFER_MAX_CHUNKS = 8
INFER_MAX_BYTES = 16 * 1024
# Connections silent this long are flushed (pending requests out as incomplete).
IDLE_NS = 120 * 10**9
MAX_SESSIONS = 50_000
_EV_CONN = abi.EV_CONN
_CLOSES = (abi.SYS_CLOSE, abi.SYS_STATE_CLOSE)
_UDP = abi.IPPROTO_UDP
_INGRESS = abi.DIR_INGRESS
_F_HAS_SEQ = abi.F_HAS_SEQ
_RADDR = slice(abi.ZtEvent.raddr.offset, abi.ZtEvent.raddr.offset + 16)
_CLIENT_SIDE = {abi.ROLE_CLIENT: True, abi.ROLE_SERVER: False}


@dataclass(slots=True)
class Session:
    """One connection as the agent follows it."""

    key: int | tuple  # conn_id or, for unconnected UDP, (conn_id, peer address, peer port)
    event: SocketEvent  # first data event: tuple, process, cgroup, netns
    role: int
    parser: ConnectionParser | None = None
    protocol: str | None = None
    undecided: list[Chunk] = field(default_factory=list)
    undecided_bytes: int = 0
    unknown: bool = False
    last_ns: int = 0
    meta: ConnMeta | None = None  # addresses and process, decoded once


class SpanAssembler:
    """Feeds events (already annotated by ConnTracker) to parsers; emits spans."""

    def __init__(self, emit: Callable[[SpanContext], None], agent_name: str = "") -> None:
        self.emit = emit
        self.agent_name = agent_name
        self.tracker = ConnTracker()
        self.sessions: dict[tuple, Session] = {}
        self.udp_keys: dict[int, list[tuple]] = {}  # conn_id -> its per-peer sessions
        self.stats: Counter = Counter()

    # -- events -----------------------------------------------------------------------
    def handle(self, e: SocketEvent) -> None:
        conn = self.tracker.update(e)
        if e.type == _EV_CONN:
            if e.syscall in _CLOSES:
                if e.conn_id:
                    self._close_conn(e.conn_id, "closed")
                self.tracker.closed(e.sock_id)
            return
        if e.transport == _UDP:
            key = (e.conn_id, e._rec[_RADDR], e.rport)
        else:
            key = e.conn_id
        s = self.sessions.get(key)
        if s is None:
            if len(self.sessions) >= MAX_SESSIONS:
                self.stats["sessions_full"] += 1
                return
            s = self.sessions[key] = Session(key, e, conn.role if conn else 0)
            if type(key) is tuple:
                self.udp_keys.setdefault(e.conn_id, []).append(key)
        d = e.direction
        s.last_ns = ts_exit = e.ts_exit
        if s.unknown:
            self.stats["unknown_protocol_bytes"] += e.ret
            return
        chunk = Chunk(d, e.payload, e.ret, e.offset, ts_exit if d == _INGRESS else e.ts_enter,
                      e.tid, e.seq if e.flags & _F_HAS_SEQ else None)
        parser = s.parser
        if parser is None:
            self._infer(s, chunk)
            return
        try:
            records = parser.feed(chunk)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not stop the agent
            self._parser_failed(s, exc)
            return
        if records:
            self._records(s, records)

    def _parser_failed(self, s: Session, exc: Exception) -> None:
        """A parser raised: stop parsing this connection (its bytes are counted as
        unknown from now on), count it, and say it once per protocol."""
        s.unknown = True
        s.parser = None
        self.stats["parser_errors"] += 1
        key = f"parser_errors_{s.protocol}"
        self.stats[key] += 1
        if self.stats[key] == 1:
            log.warning("the %s parser failed on a connection (%s: %s); that connection is "
                        "no longer parsed, later failures are only counted "
                        "(zerotrace_stage_events_total{stage=\"assembler\"})",
                        s.protocol, type(exc).__name__, exc)

    def _guarded(self, s: Session, call: Callable, arg: object) -> bool:
        """Records of the parser's `call(arg)` (feed or flush); False if it raised."""
        try:
            records = call(arg)
        except Exception as exc:  # noqa: BLE001 - as in handle()
            self._parser_failed(s, exc)
            return False
        self._records(s, records)
        return True

    def _flush(self, s: Session, reason: str) -> None:
        if s.parser is not None:
            self._guarded(s, s.parser.flush, reason)

    def _infer(self, s: Session, chunk: Chunk) -> None:
        s.undecided.append(chunk)
        s.undecided_bytes += len(chunk.data)
        e = s.event
        proto = registry.infer(chunk.data, chunk.direction, e.lport, e.rport,
                               "udp" if e.transport == abi.IPPROTO_UDP else "tcp")
        if proto is None:
            if len(s.undecided) >= INFER_MAX_CHUNKS or s.undecided_bytes >= INFER_MAX_BYTES:
                s.unknown = True
                s.undecided = []
                self.stats["unknown_protocol_conns"] += 1
            return
        client_side = _CLIENT_SIDE.get(s.role)
        s.protocol = proto
        s.parser = registry.new_parser(proto, client_side,
                                       "udp" if e.transport == abi.IPPROTO_UDP else "tcp")
        self.stats[f"conns_{proto}"] += 1
        chunks, s.undecided = s.undecided, []
        for c in chunks:
            if not self._guarded(s, s.parser.feed, c):
                return

    def _records(self, s: Session, records: list[Record]) -> None:
        if not records:
            return
        meta = s.meta
        if meta is None:
            meta = s.meta = ConnMeta(s.event)
        role, req_dir = s.role, getattr(s.parser, "req_dir", None)
        agent, conn_id, emit, stats = self.agent_name, s.event.conn_id, self.emit, self.stats
        for r in records:
            ctx = record_to_span(r, meta, role, req_dir, agent, conn_id)
            if ctx is None:
                stats["records_unusable"] += 1
                continue
            stats["spans"] += 1
            emit(ctx)

    # -- life -------------------------------------------------------------------------
    def _close_conn(self, conn_id: int, reason: str) -> None:
        for key in self.udp_keys.pop(conn_id, None) or (conn_id,):
            s = self.sessions.pop(key, None)
            if s is not None:
                self._flush(s, reason)

    def expire(self, now_ns: int, idle_ns: int = IDLE_NS) -> None:
        """Flush connections idle for longer than idle_ns."""
        for key in [k for k, s in self.sessions.items() if now_ns - s.last_ns > idle_ns]:
            s = self.sessions.pop(key)
            if type(key) is tuple:
                keys = self.udp_keys.get(key[0], [])
                if key in keys:
                    keys.remove(key)
                if not keys:
                    self.udp_keys.pop(key[0], None)
            self.stats["sessions_expired"] += 1
            self._flush(s, "idle")

    def close(self) -> None:
        self.udp_keys.clear()
        for key in list(self.sessions):
            s = self.sessions.pop(key)
            self._flush(s, "agent stopped")
