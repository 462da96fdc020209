"""Search results and trace reads in terms of joined traces (issue 15).

An agent that sees only the server side of a request stores it under a trace id of
its own; the cross-node join (server/join/) attaches that fragment to the client's
trace at query time.  A search over stored traces therefore found a request once per
fragment.  Here each search result is joined exactly as `GetTrace` joins (the same
`join_trace`, so the same never-guess rule), and the fragments of one joined trace
are listed once, under its *canonical id*: the stored id of the fragment holding the
joined trace's root span (the earliest span without a parent in the joined set).
`GetTrace` of any fragment's id returns the trace under that same id.

The joins of one result page share their store reads: every result trace is read in
one `get_traces` call and every correlation key of the page is looked up in one
`find_join_fragments` call (`_PageStore`); later join rounds (fragments of fragments)
go to the store as usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, Span
from server.join import join_trace
from server.join.joiner import HEADER_KEYS, JoinResult
from server.storage.base import SpanStore, TraceSummary

FRAGMENT_ATTR = "zerotrace.fragment_trace_id"
# Results beyond this many are listed as stored (not joined): a 10 000-trace listing
# would cost a join each; interactive pages (CLI default 20, Grafana 20-100) fit.
MAX_JOINED_RESULTS = 1000


def _other(kind: str) -> str:
    return {KIND_CLIENT: KIND_SERVER, KIND_SERVER: KIND_CLIENT}.get(kind, "")


def _lookups(spans: Sequence[Span]) -> set[tuple]:
    """The join keys of `spans` in `find_join_fragments` form (as the joiner asks)."""
    out: set[tuple] = set()
    for s in spans:
        want = _other(s.kind)
        if not want:
            continue
        if s.req_seq is not None:
            out.add(("seq", s.req_seq, want))
        for name in HEADER_KEYS:
            if s.trace_headers.get(name):
                out.add(("header", (name, s.trace_headers[name]), want))
    return out


def _has_key(s: Span, lookups: Collection[tuple]) -> bool:
    if s.kind not in (KIND_CLIENT, KIND_SERVER):
        return False
    if s.req_seq is not None and ("seq", s.req_seq, s.kind) in lookups:
        return True
    return any(s.trace_headers.get(n) and ("header", (n, s.trace_headers[n]), s.kind)
               in lookups for n in HEADER_KEYS)


def _copy(spans: list[Span]) -> list[Span]:
    # join_trace sets parent ids, attributes and trace ids on what it is given
    return [dataclasses.replace(s, attributes=dict(s.attributes)) for s in spans]


class _PageStore:
    """The store, with one page's traces and their join candidates read ahead; hands
    out copies (a join edits its spans) and asks the store for anything else."""

    def __init__(self, store: SpanStore, trace_ids: Sequence[str]) -> None:
        self.store = store
        self.traces: dict[str, list[Span]] = {}
        for s in store.get_traces(list(trace_ids)):
            self.traces.setdefault(s.trace_id, []).append(s)
        self.covered: set[tuple] = set()
        if hasattr(store, "find_join_fragments"):
            self.covered = _lookups([s for v in self.traces.values() for s in v])
            if self.covered:
                more = store.find_join_fragments(self.covered, dict(self.traces))
                for tid, spans in more.items():
                    self.traces.setdefault(tid, spans)

    def __getattr__(self, name: str) -> Any:  # find_by_req_seq etc.: the store's own
        return getattr(self.store, name)

    def get_trace(self, trace_id: str) -> list[Span]:
        spans = self.traces.get(trace_id)
        if spans is None:
            spans = self.traces[trace_id] = self.store.get_trace(trace_id)
        return _copy(spans)

    def find_join_fragments(self, lookups: Collection[tuple[str, Any, str]],
                            known: dict[str, list[Span]]) -> dict[str, list[Span]]:
        # What the read-ahead answered (a superset: the joiner checks every key) ...
        out = {tid: _copy(spans) for tid, spans in self.traces.items()
               if tid not in known and any(_has_key(s, lookups) for s in spans)}
        # ... and the store for keys it did not cover (fragments of fragments).
        rest = [k for k in lookups if k not in self.covered]
        if rest:
            for tid, spans in self.store.find_join_fragments(
                    rest, {**known, **self.traces}).items():
                self.traces.setdefault(tid, spans)
                out[tid] = _copy(spans)
        return out


def canonical(result: JoinResult, asked: str) -> str:
    """The joined trace's id: the stored id of the fragment holding its root."""
    if not result.linked:
        return asked
    ids = {s.span_id for s in result.spans}
    roots = [s for s in result.spans if not s.parent_span_id or s.parent_span_id not in ids]
    root = min(roots or result.spans, key=lambda s: (s.start_ns, s.span_id))
    return str(root.attributes.get(FRAGMENT_ATTR) or asked)


def rename(result: JoinResult, asked: str, to: str) -> None:
    """Put a joined trace asked for as `asked` under id `to` (its canonical id)."""
    if to == asked:
        return
    for s in result.spans:
        stored = s.attributes.pop(FRAGMENT_ATTR, None) or asked
        if stored != to:
            s.attributes[FRAGMENT_ATTR] = stored
        s.trace_id = to


def summary(tid: str, spans: Sequence[Span]) -> TraceSummary:
    """A search row for a joined trace (as the store summarises a stored one)."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id or s.parent_span_id not in ids]
    root = min(roots or spans, key=lambda s: (s.start_ns, s.span_id))
    start = min(s.start_ns for s in spans)
    return TraceSummary(
        trace_id=tid, root_service=root.service, root_operation=root.operation,
        start_ns=start, duration_ns=max(s.end_ns for s in spans) - start,
        span_count=len(spans), error_count=sum(s.status == STATUS_ERROR for s in spans),
        services=sorted({s.service for s in spans if s.service}))


def join_results(store: SpanStore, found: Sequence[TraceSummary]) -> list[TraceSummary]:
    """`found` with the fragments of each joined trace merged into one row, under the
    canonical id, at the place of its first fragment; other rows as they were."""
    head = list(found[:MAX_JOINED_RESULTS])
    page = _PageStore(store, [t.trace_id for t in head])
    out: list[TraceSummary] = []
    seen: set[str] = set()
    for t in head:
        if not _lookups(page.traces.get(t.trace_id, [])):
            out.append(t)  # no correlation key: nothing can join it
            seen.add(t.trace_id)
            continue
        r = join_trace(page, t.trace_id)
        tid = canonical(r, t.trace_id)
        if tid in seen:
            continue
        seen.add(tid)
        out.append(summary(tid, r.spans) if r.linked else t)
    out += [t for t in found[MAX_JOINED_RESULTS:] if t.trace_id not in seen]
    return out


def joined_trace(store: SpanStore, trace_id: str) -> tuple[str, JoinResult]:
    """`trace_id` joined, under its canonical id: (that id, the result)."""
    r = join_trace(store, trace_id)
    tid = canonical(r, trace_id)
    rename(r, trace_id, tid)
    return tid, r
