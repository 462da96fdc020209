"""Trace fidelity against ground truth: precision, recall, end-to-end completeness.

Every request of the load generator carries a unique nonce that its downstream calls
repeat in their payload (URL path, SQL literal, Redis key).  A span *carries* a nonce
when exactly one nonce-shaped token appears in its operation or string attributes.

* **Precision** is over links (spans that have a parent in their trace): a link is
  right when the span's nonce equals that of its topmost nonce-carrying ancestor (the
  root's, normally) and that of its nearest one, wrong otherwise (so a span under
  another request's span is wrong even if that span itself sits in the right trace).
  Links of spans carrying no nonce (DNS, mostly) are attributed to their nearest
  nonce-carrying ancestor but counted apart as unverifiable, as are links whose
  ancestors carry no nonce.  Of the wrong links, those whose nearest nonce-carrying
  ancestor carries another nonce are where the wrong request enters (`wrong_edges`, by
  `child hop <- parent hop`); the others are their descendants, right in themselves.
* **Span recall**: of the spans carrying request X's nonce, the share that sits in X's
  trace (the trace holding most of them, rightly placed).
* **End to end**: a request is complete when its trace holds, rightly placed, a span of
  every required hop (`pod/kind/protocol`, e.g. `redis/server/redis`).  Hops of which a
  request has no span at all, anywhere, are counted as never produced.

Pods come from a `pod_index` (netns inode or local address -> pod name, as
`DemoTopology.pod_index()` gives), else from `Span.service`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proto.span import Span

NONCE_RE = re.compile(r"\bn[0-9a-f]{16}\b")
REQUIRED_HOPS = (
    "gw/server/http",
    "api/server/http",
    "api/client/postgresql",
    "postgres/server/postgresql",
    "api/client/http",
    "inventory/server/http",
    "inventory/client/redis",
    "redis/server/redis",
)
# The Go inventory's further hops: a lib/pq query (two round trips: the read between
# them makes no span) and a call to the Go pricing service through a pooled http.Client.
GO_HOPS = (
    "inventory/client/postgresql",
    "inventory/client/http",
    "pricing/server/http",
)


@dataclass
class Fidelity:
    """Counts and ratios of one measurement; `text()` renders the report."""

    requests: int = 0
    failed_requests: int = 0
    traces: int = 0
    spans: int = 0
    links_right: int = 0
    links_wrong: int = 0
    links_unverifiable: int = 0
    unverifiable_by_protocol: Counter = field(default_factory=Counter)
    ambiguous_spans: int = 0
    nonce_spans: int = 0
    nonce_spans_in_own_trace: int = 0
    split_requests: int = 0
    complete_requests: int = 0
    requests_without_spans: int = 0
    never_produced: dict[str, int] = field(default_factory=dict)
    missing_from_trace: dict[str, int] = field(default_factory=dict)
    required_hops: tuple[str, ...] = REQUIRED_HOPS
    wrong_examples: list[str] = field(default_factory=list)
    # where a wrong nonce enters a trace: "child hop <- parent hop" -> count, and up to
    # `max_edges` (child, parent) span pairs for a caller that knows how each was linked
    wrong_edges: Counter = field(default_factory=Counter)
    wrong_edge_spans: list[tuple[Span, Span]] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        n = self.links_right + self.links_wrong
        return self.links_right / n if n else None

    @property
    def span_recall(self) -> float | None:
        return self.nonce_spans_in_own_trace / self.nonce_spans if self.nonce_spans else None

    @property
    def end_to_end(self) -> float | None:
        n = self.requests - self.failed_requests
        return self.complete_requests / n if n > 0 else None

    def text(self) -> str:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f} %"

        unv = ", ".join(f"{n} {p or '?'}" for p, n in self.unverifiable_by_protocol.most_common())
        lines = [
            f"requests: {self.requests} ({self.failed_requests} failed, left out of recall); "
            f"traces: {self.traces}; spans: {self.spans}",
            f"precision: {pct(self.precision)} ({self.links_right} links right, "
            f"{self.links_wrong} wrong; {self.links_unverifiable} unverifiable"
            + (f": {unv}" if unv else "") + ")",
            f"span recall: {pct(self.span_recall)} ({self.nonce_spans_in_own_trace} of "
            f"{self.nonce_spans} nonce-carrying spans in their request's trace; "
            f"{self.split_requests} requests split over several traces)",
            f"end to end: {pct(self.end_to_end)} ({self.complete_requests} requests with "
            f"every hop in one trace: {', '.join(self.required_hops)})",
        ]
        never = {h: n for h, n in self.never_produced.items() if n}
        lines.append("never produced: " + (", ".join(f"{h} {n}" for h, n in never.items())
                                          or "none")
                     + f"; requests with no span at all: {self.requests_without_spans}")
        missing = {h: n for h, n in self.missing_from_trace.items() if n}
        if missing:
            lines.append("produced but not in the request's trace: "
                         + ", ".join(f"{h} {n}" for h, n in missing.items()))
        if self.ambiguous_spans:
            lines.append(f"spans carrying several nonces (unverifiable): {self.ambiguous_spans}")
        if self.wrong_edges:
            lines.append("wrong links enter at: " + ", ".join(
                f"{e} {n}" for e, n in self.wrong_edges.most_common()))
        lines += [f"  wrong: {w}" for w in self.wrong_examples]
        return "\n".join(lines)


def group_traces(spans: Iterable[Span]) -> list[list[Span]]:
    """Spans grouped into traces by `trace_id` (spans without one are left out)."""
    out: dict[str, list[Span]] = {}
    for s in spans:
        if s.trace_id:
            out.setdefault(s.trace_id, []).append(s)
    return list(out.values())


def span_nonce(span: Span, pattern: re.Pattern = NONCE_RE) -> str | None | bool:
    """The nonce the span carries; None when none, False when several differ."""
    found = set(pattern.findall(span.operation))
    for v in span.attributes.values():
        if isinstance(v, str):
            found.update(pattern.findall(v))
    if len(found) > 1:
        return False
    return next(iter(found), None)


def span_hop(span: Span, pod_index: Mapping[Any, str] | None = None) -> str:
    """`pod/kind/protocol` of a span."""
    pod = None
    if pod_index:
        pod = pod_index.get(span.netns) if span.netns else None
        pod = pod or pod_index.get(span.local.addr)
    return f"{pod or span.service or '?'}/{span.kind}/{span.protocol}"


def _truth(truth: Iterable[Any]) -> tuple[list[str], set[str]]:
    """Nonces of the requests, and those that did not succeed (status not 200)."""
    nonces, failed = [], set()
    for r in truth:
        if isinstance(r, str):
            nonces.append(r)
            continue
        nonces.append(r[0])
        if len(r) > 3 and r[3] != 200:
            failed.add(r[0])
    return nonces, failed


def measure(truth: Iterable[Any], traces: Iterable[Sequence[Span]],
            pod_index: Mapping[Any, str] | None = None,
            required_hops: Sequence[str] = REQUIRED_HOPS,
            pattern: re.Pattern = NONCE_RE, max_examples: int = 5,
            max_edges: int = 200) -> Fidelity:
    """Measure `traces` (lists of spans) against `truth` (nonces, or load results
    `(nonce, start_ns, end_ns, status)`; requests not answered 200 are left out of recall)."""
    nonces, failed = _truth(truth)
    f = Fidelity(requests=len(nonces), failed_requests=len(failed),
                 required_hops=tuple(required_hops))
    wanted = set(nonces)
    # nonce -> trace index -> spans of that nonce rightly placed in that trace
    placed: dict[str, Counter] = {n: Counter() for n in nonces}
    produced: dict[str, int] = Counter()
    hops_anywhere: dict[str, set[str]] = {n: set() for n in nonces}
    hops_in: dict[tuple[str, int], set[str]] = {}

    for ti, trace in enumerate(traces):
        f.traces += 1
        f.spans += len(trace)
        by_id = {s.span_id: s for s in trace}
        own = {s.span_id: span_nonce(s, pattern) for s in trace}
        for s in trace:
            mine = own[s.span_id]
            if mine is False:
                f.ambiguous_spans += 1
                mine = None
            anchor, nearest = _ancestors(s, by_id, own)
            linked = s.parent_span_id in by_id and s.parent_span_id != s.span_id
            if linked:
                if mine is None or anchor is None:
                    f.links_unverifiable += 1
                    f.unverifiable_by_protocol[s.protocol] += 1
                elif anchor == mine and nearest == mine:
                    f.links_right += 1
                else:
                    f.links_wrong += 1
                    p = by_id[s.parent_span_id]
                    if nearest != mine:  # the wrong request enters here
                        f.wrong_edges[f"{span_hop(s, pod_index)} <- "
                                      f"{span_hop(p, pod_index)}"] += 1
                        if len(f.wrong_edge_spans) < max_edges:
                            f.wrong_edge_spans.append((s, p))
                    # examples where the wrong request enters; its descendants'
                    # links are right in themselves and would only repeat it
                    if nearest != mine and len(f.wrong_examples) < max_examples:
                        f.wrong_examples.append(
                            f"{span_hop(s, pod_index)} {s.operation!r} ({mine}) in the trace "
                            f"of {anchor}, parent {span_hop(p, pod_index)} {p.operation!r} "
                            f"(nearest nonce {nearest})")
            if mine in wanted:
                produced[mine] += 1
                hop = span_hop(s, pod_index)
                hops_anywhere[mine].add(hop)
                if anchor is None or anchor == mine:  # a root, or rightly placed
                    placed[mine][ti] += 1
                    hops_in.setdefault((mine, ti), set()).add(hop)

    req = set(required_hops)
    f.never_produced = dict.fromkeys(required_hops, 0)
    f.missing_from_trace = dict.fromkeys(required_hops, 0)
    for n in nonces:
        if n in failed:
            continue
        if not produced[n]:
            f.requests_without_spans += 1
        f.nonce_spans += produced[n]
        for h in req - hops_anywhere[n]:
            f.never_produced[h] += 1
        if not placed[n]:
            for h in req & hops_anywhere[n]:
                f.missing_from_trace[h] += 1
            continue
        best, count = min(placed[n].items(), key=lambda kv: (-kv[1], kv[0]))
        f.nonce_spans_in_own_trace += count
        if sum(1 for c in placed[n].values() if c) > 1 or count < produced[n]:
            f.split_requests += 1
        have = hops_in[(n, best)]
        for h in (req & hops_anywhere[n]) - have:
            f.missing_from_trace[h] += 1
        if req <= have:
            f.complete_requests += 1
    return f


def _ancestors(s: Span, by_id: Mapping[str, Span],
               own: Mapping[str, str | None | bool]) -> tuple[str | None, str | None]:
    """(topmost, nearest) nonce among the strict ancestors of `s` (cycles cut)."""
    top = nearest = None
    seen = {s.span_id}
    p = by_id.get(s.parent_span_id)
    while p is not None and p.span_id not in seen:
        seen.add(p.span_id)
        n = own.get(p.span_id)
        if n:
            top = n
            if nearest is None:
                nearest = n
        p = by_id.get(p.parent_span_id)
    return top, nearest
