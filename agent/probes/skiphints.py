"""Skip hints: the agent tells the probes which bytes of a TCP stream its parsers will
skip by length (the rest of a body whose Content-Length, bulk length ... they know), so
that the syscalls carrying only those bytes stay out of the ring buffer (bpf/data.c
zt_skip_hint; the last one comes as a record without payload, its time ends the
message).  Only syscalls that the capture would cut anyway qualify, so parsers see the
same truncation as without hints and make the same spans.

A pass reads each parser's per-direction `skip` (bytes still to skip) and `base` (the
stream offset it has reached) and the connection's base seq; it runs at most every
`interval` seconds and spaces itself so that it costs at most ~5 % of the agent's time
(a pass is a walk over every session)."""

from __future__ import annotations

import time

from agent.probes import abi

MASK = 0xFFFFFFFF
MIN_SKIP = 16 * 1024  # hints for shorter tails are not worth a map update


class SkipHints:
    """Writes tracer.set_skip_hint() from the sessions of an assembler and tracker."""

    def __init__(self, tracer, assembler, tracker, interval: float = 0.2,
                 min_skip: int = MIN_SKIP) -> None:
        self.tracer, self.assembler, self.tracker = tracer, assembler, tracker
        self.interval, self.min_skip = interval, min_skip
        self.hints: dict[tuple[int, int], int] = {}  # (sock_id, direction) -> until seq
        self.passes = 0
        self.set = 0
        self._next = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self.run()
        cost = time.monotonic() - now
        self._next = time.monotonic() + max(self.interval, 20 * cost)

    def run(self) -> None:
        """One pass: hints for bodies being skipped now, old hints forgotten."""
        self.passes += 1
        conns = self.tracker.conns
        want: dict[tuple[int, int], int] = {}
        for key, s in self.assembler.sessions.items():
            if type(key) is not int or s.parser is None:
                continue  # UDP sessions are keyed by (conn, peer); no parser yet
            streams = getattr(s.parser, "streams", None)
            if not streams:
                continue
            sock_id = s.event.sock_id
            if sock_id & 1 or s.event.transport != abi.IPPROTO_TCP:
                continue  # TLS plaintext (sk|1) has virtual seqs the probes do not see
            conn = conns.get(sock_id)
            if conn is None or conn.conn_id != key:
                continue
            bases = conn.base
            for d in (0, 1):
                st = streams[d]
                skip = getattr(st, "skip", 0)
                if skip < self.min_skip or bases[d] is None or getattr(st, "buf", b""):
                    continue
                want[(sock_id, d)] = (bases[d] + st.base + skip) & MASK
        for k in [k for k in self.hints if k not in want]:
            del self.hints[k]
            self.tracer.set_skip_hint(k[0], k[1], None)
        for k, until in want.items():
            if self.hints.get(k) != until:
                self.hints[k] = until
                self.set += 1
                self.tracer.set_skip_hint(k[0], k[1], until)
