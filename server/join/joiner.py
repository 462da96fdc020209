"""Cross-node join: attach trace fragments stored by different agents.

An agent that sees only the server side of a request starts its own trace; the
client side lives in another agent's trace.  At query time the fragments are joined
by correlation keys, with one rule above all: never guess.

- TCP sequence numbers: a client span matches a server span with the same `req_seq`
  that started within `SKEW_NS` of the client's lifetime (32-bit sequence numbers
  repeat over time), and either the same `resp_seq` (both directions' numbers agree:
  64 bits, and NAT does not rewrite them, so a client that called a Kubernetes
  Service address finds the pod's server span) or, when a response number is
  missing, the mirrored tuple (local -> remote is the other's remote -> local).
- Identical `x-request-id` / `traceparent` values on a client span and a server span.

A key with exactly one candidate in another trace links it (the client becomes the
server span's parent); a key with several candidates links none and is counted as
ambiguous.  The joined spans are returned under the requested trace id, with their
stored id kept in the attribute `zerotrace.fragment_trace_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto.span import KIND_CLIENT, KIND_SERVER, Span
from server.storage.base import SpanStore

SKEW_NS = 5_000_000_000
MAX_ROUNDS = 16
HEADER_KEYS = ("x-request-id", "traceparent")


@dataclass(slots=True)
class JoinResult:
    spans: list[Span]
    linked: int = 0
    ambiguous: int = 0


def _mirrored(client: Span, server: Span) -> bool:
    """The same TCP exchange seen from both ends (see the module docstring)."""
    if not (
        client.req_seq == server.req_seq
        and server.start_ns >= client.start_ns - SKEW_NS
        and server.start_ns <= client.end_ns + SKEW_NS
    ):
        return False
    if client.resp_seq is not None and server.resp_seq is not None:
        return client.resp_seq == server.resp_seq
    return client.local == server.remote and client.remote == server.local


def _link(client: Span, server: Span) -> bool:
    """Make client the parent of a parentless server span; False if it has one."""
    if server.parent_span_id:
        return False
    server.parent_span_id = client.span_id
    server.attributes["zerotrace.join"] = "linked"
    return True


class _Join:
    def __init__(self, store: SpanStore, trace_id: str) -> None:
        self.store = store
        self.trace_id = trace_id
        self.by_trace: dict[str, list[Span]] = {}
        self.linked = 0
        self.ambiguous = 0
        self.done_keys: set[tuple] = set()

    def add_trace(self, tid: str) -> list[Span]:
        if tid in self.by_trace:
            return []
        spans = self.store.get_trace(tid)
        self.by_trace[tid] = spans
        return spans

    def _span_of(self, cand: Span) -> Span:
        """The instance of `cand` in the joined set (fetching its trace if new)."""
        self.add_trace(cand.trace_id)
        for s in self.by_trace[cand.trace_id]:
            if s.span_id == cand.span_id:
                return s
        return cand

    def _decide(self, key: tuple, span: Span, cands: list[Span], span_is_client: bool) -> bool:
        """Link `span` with its single candidate; True when a new fragment came in."""
        if key in self.done_keys:
            return False
        self.done_keys.add(key)
        cands = [c for c in cands if c.span_id != span.span_id]
        if not cands:
            return False
        if len(cands) > 1:
            self.ambiguous += 1
            return False
        other = cands[0]
        if other.trace_id == span.trace_id:
            return False  # same fragment: the agent already stitched it
        fresh = other.trace_id not in self.by_trace
        other = self._span_of(other)
        client, server = (span, other) if span_is_client else (other, span)
        if server.parent_span_id == client.span_id:
            return fresh  # linked from the other side in an earlier round
        if _link(client, server):
            self.linked += 1
        return fresh

    def round(self, frontier: list[Span]) -> list[Span]:
        before = set(self.by_trace)
        clients = [s for s in frontier if s.kind == KIND_CLIENT and s.req_seq is not None]
        servers = [s for s in frontier if s.kind == KIND_SERVER and s.req_seq is not None]
        if clients:
            cands = self.store.find_by_req_seq(sorted({c.req_seq for c in clients}), KIND_SERVER)
            for c in clients:
                m = [s for s in cands if _mirrored(c, s)]
                self._decide(("seq", c.span_id), c, m, True)
        if servers:
            cands = self.store.find_by_req_seq(sorted({s.req_seq for s in servers}), KIND_CLIENT)
            for s in servers:
                m = [c for c in cands if _mirrored(c, s)]
                self._decide(("seq", s.span_id), s, m, False)
        for name in HEADER_KEYS:
            with_hdr = [
                s
                for s in frontier
                if s.trace_headers.get(name) and s.kind in (KIND_CLIENT, KIND_SERVER)
            ]
            if not with_hdr:
                continue
            cands = self.store.find_by_header(
                name, sorted({s.trace_headers[name] for s in with_hdr})
            )
            for s in with_hdr:
                want = KIND_SERVER if s.kind == KIND_CLIENT else KIND_CLIENT
                m = [
                    c
                    for c in cands
                    if c.kind == want and c.trace_headers.get(name) == s.trace_headers[name]
                ]
                self._decide((name, s.span_id), s, m, s.kind == KIND_CLIENT)
        new = [t for t in self.by_trace if t not in before]
        return [s for t in new for s in self.by_trace[t]]


def join_trace(store: SpanStore, trace_id: str) -> JoinResult:
    """The spans of `trace_id` plus every fragment linked to it by correlation keys."""
    j = _Join(store, trace_id)
    frontier = j.add_trace(trace_id)
    if not frontier:
        return JoinResult([])
    for _ in range(MAX_ROUNDS):
        frontier = j.round(frontier)
        if not frontier:
            break
    out: list[Span] = []
    for tid, spans in j.by_trace.items():
        for s in spans:
            if tid != trace_id:
                s.attributes["zerotrace.fragment_trace_id"] = tid
                s.trace_id = trace_id
            out.append(s)
    out.sort(key=lambda s: (s.start_ns, s.span_id))
    return JoinResult(out, j.linked, j.ambiguous)
