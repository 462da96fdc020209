"""Search results and trace reads in terms of joined traces (issue 15).

An agent that sees only the server side of a request stores it under a trace id of
its own; the cross-node join (server/join/) attaches that fragment to the client's
trace at query time.  A search over stored traces therefore found a request once per
fragment.  Here each search result is joined exactly as `GetTrace` joins (the same
`join_trace`, so the same never-guess rule), and the fragments of one joined trace
are listed once, under its *canonical id*: the stored id of the fragment holding the
joined trace's root span (the earliest span without a parent in the joined set).
`GetTrace` of any fragment's id returns the trace under that same id.

The joins of one result page share their store reads (`_PageStore`): every result
trace is read in one `get_traces` call, every correlation key of the page is looked up
in one `find_join_fragments` call, and so are the keys of the fragments that brought
in (fragments of fragments), round after round, until no new fragment comes: a page
of 20 two-fragment traces costs four store queries, not two per trace.  The joins
then run on what was read (and ask the store only for what a read-ahead missed).

Searches of every API list joined traces so: the gRPC `SearchTraces` (the CLI),
Tempo's `/api/search` and Jaeger's `/api/traces` (`join_page`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

from proto import links
from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, Span
from server.join import join_trace
from server.join.joiner import MAX_ROUNDS, JoinResult
from server.storage.base import SpanStore, TraceSummary

FRAGMENT_ATTR = "zerotrace.fragment_trace_id"
# Results beyond this many are listed as stored (not joined): a 10 000-trace listing
# would cost a join each; interactive pages (CLI default 20, Grafana 20-100) fit.
MAX_JOINED_RESULTS = 1000




_lookups = links.lookups
_has_key = links.holds


def _copy(spans: list[Span]) -> list[Span]:
    # join_trace sets parent ids, attributes and trace ids on what it is given
    return [dataclasses.replace(s, attributes=dict(s.attributes)) for s in spans]


class _PageStore:
    """The store, with one page's traces and their join candidates read ahead; hands
    out copies (a join edits its spans) and asks the store for anything else."""

    # the joins here read from this page, not ahead of it
    read_with_fragments = None

    def __init__(self, store: SpanStore, trace_ids: Sequence[str]) -> None:
        self.store = store
        self.traces: dict[str, list[Span]] = {}
        self.covered: set[tuple] = set()
        ahead = getattr(store, "read_with_fragments", None)
        if not callable(ahead) or not hasattr(store, "find_join_fragments"):
            for s in store.get_traces(list(trace_ids)):
                self.traces.setdefault(s.trace_id, []).append(s)
            return
        # the page and its first round's fragments in one read, then round after
        # round the keys of the traces the last round brought in
        self.traces, self.covered = ahead(list(trace_ids))
        new = [v for k, v in self.traces.items() if k not in set(trace_ids)]
        for _ in range(MAX_ROUNDS):
            keys = links.lookups([s for spans in new for s in spans]) - self.covered
            if not keys:
                break
            self.covered |= keys
            more = store.find_join_fragments(keys, dict(self.traces))
            new = []
            for tid, spans in more.items():
                if tid not in self.traces:
                    self.traces[tid] = spans
                    new.append(spans)

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


@dataclasses.dataclass
class JoinedPage:
    """A search page in terms of joined traces.

    `rows`: the summaries, each joined trace once under its canonical id (at the place
    of its first fragment), other rows as they were; `alias`: stored trace id ->
    the id its row is listed under, for every stored id of the page (fragments brought
    in by the join too); `spans`: listed id -> its spans (joined, under that id), when
    asked for (`with_spans`)."""

    rows: list[TraceSummary]
    alias: dict[str, str]
    spans: dict[str, list[Span]]


def join_page(store: SpanStore, found: Sequence[TraceSummary],
              with_spans: bool = False) -> JoinedPage:
    """`found` (a search's rows) with the fragments of each joined trace merged into
    one row under its canonical id; see `JoinedPage`."""
    head = list(found[:MAX_JOINED_RESULTS])
    page = _PageStore(store, [t.trace_id for t in head])
    out: list[TraceSummary] = []
    alias: dict[str, str] = {}
    spans: dict[str, list[Span]] = {}
    listed: set[str] = set()
    for t in head:
        if t.trace_id in alias:
            continue  # a fragment of a trace listed already
        stored = page.traces.get(t.trace_id, [])
        if not _lookups(stored):
            out.append(t)  # no correlation key: nothing can join it
            alias[t.trace_id] = t.trace_id
            listed.add(t.trace_id)
            if with_spans:
                spans[t.trace_id] = _copy(stored)
            continue
        r = join_trace(page, t.trace_id)
        tid = canonical(r, t.trace_id)
        rename(r, t.trace_id, tid)
        if tid in listed:  # joined from another fragment already
            alias[t.trace_id] = tid
            continue
        listed.add(tid)
        alias[t.trace_id] = alias[tid] = tid
        for s in r.spans:
            alias.setdefault(str(s.attributes.get(FRAGMENT_ATTR) or tid), tid)
        out.append(summary(tid, r.spans) if r.linked else t)
        if with_spans:
            spans[tid] = r.spans
    for t in found[MAX_JOINED_RESULTS:]:
        if t.trace_id not in alias and t.trace_id not in listed:
            out.append(t)
            alias[t.trace_id] = t.trace_id
    return JoinedPage(out, alias, spans)


def _caller(server: Span, clients_by_seq: dict[int, list[Span]],
            clients_by_header: dict[tuple[str, str], list[Span]]) -> Span | None:
    """The one client span the link rules (proto/links.py) give a parentless server
    span, seen from the server's side as the joiner decides it: by sequence numbers,
    else by a propagated header; None when none or several."""
    if server.req_seq is not None:
        cands = [c for c in clients_by_seq.get(server.req_seq, ())
                 if c.span_id != server.span_id]
        keep = links.pick_by_seq([links.seq_strength(c, server, links.SEQ_SKEW_NS)
                                  for c in cands])
        if len(keep) == 1:
            return cands[keep[0]]
    for hv in links.header_join_keys(server):
        cands = clients_by_header.get(hv, [])
        if len(cands) == 1:
            return cands[0]
    return None


def list_page(store: SpanStore, found: Sequence[TraceSummary],
              roots: dict[str, list[Span]] | None = None) -> JoinedPage:
    """A search listing with each joined trace once, for searches that show rows
    (Tempo's): `join_page` without its cost, by looking only *up* the call tree.

    A fragment is joined under its caller through its parentless server span (the
    only span the join links as a child), so a row's canonical id follows those
    links up to the fragment holding the root.  That takes the page's key columns
    (`link_spans`, no attribute maps), one key-table lookup per round for its
    parentless server spans (one a fragment, where a full join looks up every
    client call: 20 keys for a page of 20 against ~300) and the callers' fragments'
    key columns.  Rows of one joined trace merge into one, under its id, summarised
    over the fragments the page reached (callees that matched nothing are not
    read: a row's span count may be short of the trace's).  `roots`: the rows'
    parentless server spans with their keys, when the search read them
    (`search_spansets(roots=True)`): then a page none of whose rows is a fragment
    costs one key-table lookup.  Stores without `link_spans` get `join_page`."""
    if not callable(getattr(store, "link_spans", None)):
        return join_page(store, found)
    head = list(found[:MAX_JOINED_RESULTS])
    if roots is None:
        spans = store.link_spans([t.trace_id for t in head])
        first = [x for tid in spans for x in spans[tid]]
    else:
        spans, first = {}, [x for t in head for x in roots.get(t.trace_id, ())]
    up: dict[str, tuple[str, str, str]] = {}  # fragment -> (caller's trace, client, server)
    todo: list[str] = []
    for rnd in range(MAX_ROUNDS):
        servers = first if rnd == 0 else [x for tid in todo for x in spans.get(tid, ())]
        servers = [x for x in servers if x.kind == KIND_SERVER and not x.parent_span_id]
        looks = links.lookups(servers)
        if not looks:
            break
        new: list[str] = []
        hits: set = set()
        prefixes = store.caller_prefixes(looks, spans, hits)
        if prefixes:
            # the callers' fragments, and the rows whose servers had a match (`roots`
            # carry keys only: the rule needs their tuple, times, response number)
            own = sorted({x.trace_id for x in servers if x.trace_id not in spans and (
                x.req_seq in hits or ("header" in hits and links.header_join_keys(x)))})
            for tid, more in store.link_spans(own, prefixes).items():
                if tid not in spans:
                    spans[tid] = more
                    if tid not in own:
                        new.append(tid)
            # the servers as read (keys-only copies replaced)
            read = {x.span_id: x for t in own for x in spans.get(t, ())}
            servers = [read.get(x.span_id, x) for x in servers]
        by_seq: dict[int, list[Span]] = {}
        by_header: dict[tuple[str, str], list[Span]] = {}
        for group in spans.values():
            for x in group:
                if x.kind == KIND_CLIENT:
                    if x.req_seq is not None:
                        by_seq.setdefault(x.req_seq, []).append(x)
                    for hv in links.header_join_keys(x):
                        by_header.setdefault(hv, []).append(x)
        for srv in servers:
            c = _caller(srv, by_seq, by_header)
            if c is not None and c.trace_id != srv.trace_id and srv.trace_id not in up:
                up[srv.trace_id] = (c.trace_id, c.span_id, srv.span_id)
        callers = {u[0] for u in up.values()}
        todo = [t for t in new if t in callers]  # fragments of fragments
        if not todo:
            break

    def top(tid: str) -> str:
        seen = {tid}
        while tid in up and up[tid][0] not in seen:
            tid = up[tid][0]
            seen.add(tid)
        return tid

    groups: dict[str, list[str]] = {}
    for t in head:
        groups.setdefault(top(t.trace_id), []).append(t.trace_id)
    # the rows of joined groups the lookups did not read, in one read
    missing = [t.trace_id for t in head if t.trace_id not in spans
               and (t.trace_id in up or len(groups[top(t.trace_id)]) > 1)]
    if missing:
        spans.update(store.link_spans(missing))
    out: list[TraceSummary] = []
    alias: dict[str, str] = {}
    for t in head:
        canon = top(t.trace_id)
        if canon in alias:
            alias[t.trace_id] = canon
            continue
        members = {canon, *groups[canon]}
        for m in list(members):  # the fragments between each row and the top
            for _ in range(MAX_ROUNDS):
                if m not in up or m == canon:
                    break
                m = up[m][0]
                members.add(m)
        for m in members:
            alias[m] = canon
        if members == {t.trace_id}:
            out.append(t)
            continue
        parent = {up[m][2]: up[m][1] for m in members if m in up}
        union = [dataclasses.replace(x, parent_span_id=parent.get(x.span_id, x.parent_span_id))
                 for m in members for x in spans.get(m, ())]
        out.append(summary(canon, union) if union else t)
    for t in found[MAX_JOINED_RESULTS:]:
        if t.trace_id not in alias:
            out.append(t)
            alias[t.trace_id] = t.trace_id
    return JoinedPage(out, alias, {})


def join_results(store: SpanStore, found: Sequence[TraceSummary]) -> list[TraceSummary]:
    """`found` with the fragments of each joined trace merged into one row, under the
    canonical id, at the place of its first fragment; other rows as they were."""
    return join_page(store, found).rows


def joined_trace(store: SpanStore, trace_id: str) -> tuple[str, JoinResult]:
    """`trace_id` joined, under its canonical id: (that id, the result)."""
    r = join_trace(store, trace_id)
    tid = canonical(r, trace_id)
    rename(r, trace_id, tid)
    return tid, r
