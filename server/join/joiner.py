"""Cross-node join: attach trace fragments stored by different agents.

An agent that sees only the server side of a request starts its own trace; the
client side lives in another agent's trace.  At query time the fragments are joined
by correlation keys, with one rule above all: never guess.

- TCP sequence numbers, and identical `x-request-id` / `traceparent` values on a
  client span and a server span: the rules of proto/links.py, which the agent's
  stitcher and the service-dependency query apply too (sequence numbers: the same
  `req_seq` within `SEQ_SKEW_NS`, and the same `resp_seq` or else the mirrored tuple;
  one candidate with both numbers wins over ones with the tuple only).

A key with exactly one candidate in another trace links it (the client becomes the
server span's parent); a key with several candidates links none and is counted as
ambiguous.  The joined spans are returned under the requested trace id, with their
stored id kept in the attribute `zerotrace.fragment_trace_id`.

Each round asks the store once for every key of its new spans (`find_join_fragments`:
the traces that may hold a matching span, whole, from a table keyed by the keys) and
decides on those spans plus the ones already in; the first round's are read with the
trace itself (`read_with_fragments`: its key columns, the key table, then the trace and
its candidate fragments in one read).  A trace of two fragments costs four queries
(the trace's keys, the key table, the trace with its fragment, round 2's keys) and one
full read of the span table's 35 columns, not two (issue 16), nor one query per key
type per round plus one per fragment (~480 ms a trace at 1 M spans before).  Stores
without these methods are asked key type by key type (`find_by_req_seq`,
`find_by_header`), as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proto import links
from proto.span import KIND_CLIENT, KIND_SERVER, Span
from server.join.network import place_across_nodes
from server.storage.base import SpanStore

SKEW_NS = links.SEQ_SKEW_NS
MAX_ROUNDS = 16
HEADER_KEYS = links.JOIN_HEADERS


@dataclass(slots=True)
class JoinResult:
    spans: list[Span]
    linked: int = 0
    ambiguous: int = 0


def _by_seq(span: Span, cands: list[Span], span_is_client: bool) -> list[Span]:
    """The candidates (spans of the other kind with `span`'s req_seq) that the
    sequence-number rule keeps for `span` (proto/links.py)."""
    if span_is_client:
        strengths = [links.seq_strength(span, o, SKEW_NS) for o in cands]
    else:
        strengths = [links.seq_strength(o, span, SKEW_NS) for o in cands]
    return [cands[i] for i in links.pick_by_seq(strengths)]


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
        self.fetched: dict[str, list[Span]] = {}  # candidate fragments not joined (yet)
        self.batched = hasattr(store, "find_join_fragments")
        # keys whose counterparts are all in `fetched` (read ahead with the trace)
        self.covered: set[tuple] = set()
        ahead = getattr(store, "read_with_fragments", None)
        self.read_ahead = self.batched and callable(ahead)
        if self.read_ahead:
            self.fetched, self.covered = ahead([trace_id])

    def add_trace(self, tid: str) -> list[Span]:
        if tid in self.by_trace:
            return []
        spans = self.fetched.pop(tid, None)
        if spans is None:
            # read ahead without it: not stored
            spans = [] if self.read_ahead and tid == self.trace_id else self.store.get_trace(tid)
        self.by_trace[tid] = spans
        return spans

    def _candidates(self, frontier: list[Span]) -> tuple[
            dict[tuple[int, str], list[Span]], dict[tuple[str, str, str], list[Span]]]:
        """Every span of the store with a key of `frontier`'s spans, by key: (req_seq,
        kind) and (header, value, kind), from one `find_join_fragments` call."""
        lookups = links.lookups(frontier)
        seqs: dict[tuple[int, str], list[Span]] = {}
        hdrs: dict[tuple[str, str, str], list[Span]] = {}
        if not lookups:
            return seqs, hdrs
        rest = lookups - self.covered  # the others' candidates are in already
        if rest:
            new = self.store.find_join_fragments(rest, {**self.fetched, **self.by_trace})
            for tid, spans in new.items():
                self.fetched.setdefault(tid, spans)
        # Exact checks on the spans (the store's answer is a superset).
        for span in _all(self.by_trace.values(), self.fetched.values()):
            if span.kind not in (KIND_CLIENT, KIND_SERVER):
                continue
            if span.req_seq is not None and ("seq", span.req_seq, span.kind) in lookups:
                seqs.setdefault((span.req_seq, span.kind), []).append(span)
            for name in HEADER_KEYS:
                v = span.trace_headers.get(name)
                if v and ("header", (name, v), span.kind) in lookups:
                    hdrs.setdefault((name, v, span.kind), []).append(span)
        return seqs, hdrs

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
        if not fresh:
            other = self._span_of(other)
        client, server = (span, other) if span_is_client else (other, span)
        if server.parent_span_id == client.span_id:
            return False  # linked from the other side in an earlier round
        if server.parent_span_id:
            # The server end has a parent already (its agent's link): a link is made
            # only to a parentless server span, and without a link the other
            # fragment's spans do not belong in this trace.
            return False
        other = self._span_of(other)
        client, server = (span, other) if span_is_client else (other, span)
        if _link(client, server):
            self.linked += 1
        return fresh

    def round(self, frontier: list[Span]) -> list[Span]:
        if self.batched:
            return self.round_batched(frontier)
        before = set(self.by_trace)
        clients = [s for s in frontier if s.kind == KIND_CLIENT and s.req_seq is not None]
        servers = [s for s in frontier if s.kind == KIND_SERVER and s.req_seq is not None]
        if clients:
            cands = self.store.find_by_req_seq(sorted({c.req_seq for c in clients}), KIND_SERVER)
            for c in clients:
                m = _by_seq(c, [s for s in cands if s.req_seq == c.req_seq
                                and s.span_id != c.span_id], True)
                self._decide(("seq", c.span_id), c, m, True)
        if servers:
            cands = self.store.find_by_req_seq(sorted({s.req_seq for s in servers}), KIND_CLIENT)
            for s in servers:
                m = _by_seq(s, [c for c in cands if c.req_seq == s.req_seq
                                and c.span_id != s.span_id], False)
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

    def round_batched(self, frontier: list[Span]) -> list[Span]:
        """`round` with every key of the frontier looked up at once (same decisions,
        in the same order: clients' sequence numbers, servers', then headers)."""
        before = set(self.by_trace)
        seqs, hdrs = self._candidates(frontier)
        for want_client in (True, False):
            for s in frontier:
                if s.req_seq is None or s.kind != (KIND_CLIENT if want_client else KIND_SERVER):
                    continue
                cands = [o for o in seqs.get((s.req_seq, _other_kind(s.kind)), [])
                         if o.span_id != s.span_id]
                self._decide(("seq", s.span_id), s, _by_seq(s, cands, want_client), want_client)
        for name in HEADER_KEYS:
            for s in frontier:
                v = s.trace_headers.get(name)
                if not v or s.kind not in (KIND_CLIENT, KIND_SERVER):
                    continue
                m = hdrs.get((name, v, _other_kind(s.kind)), [])
                self._decide((name, s.span_id), s, m, s.kind == KIND_CLIENT)
        new = [t for t in self.by_trace if t not in before]
        return [s for t in new for s in self.by_trace[t]]


_other_kind = links.counterpart


def _all(*groups: Iterable[list[Span]]) -> Iterable[Span]:
    for g in groups:
        for spans in g:
            yield from spans


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
    if j.linked:
        place_across_nodes(out)  # network hops between the linked nodes
    out.sort(key=lambda s: (s.start_ns, s.span_id))
    return JoinResult(out, j.linked, j.ambiguous)
