"""The queries shared by the chDB and ClickHouse backends.

Subclasses supply `_select` (rows as dicts), `_command` and the insert; every query
text lives here so that both engines run the same SQL.  Values come in as ClickHouse
query parameters ({name:Type}), trace ids too (`_ids_in`); only integers (limits)
are inlined.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

from proto import links
from proto import schema as span_schema
from proto.span import Endpoint, Span
from server.storage import schema
from server.storage.base import (
    DependencyLink,
    ServiceStats,
    SpanStore,
    StorageError,
    TraceQuery,
    TraceSummary,
)

_NS = 1_000_000_000
RESOURCE_PREFIXES = (
    "k8s.",
    "host.",
    "container.",
    "cloud.",
    "service.",
    "process.",
    "os.",
    "deployment.",
    "telemetry.",
    "faas.",
)


_DECODE_ROW = span_schema.row_decoder()


def row_to_span(r: dict[str, Any]) -> Span:
    """A `Span` from a row selected with `schema.SPAN_SELECT`."""
    return _DECODE_ROW(r)


def _time_filter(since_ns: int, until_ns: int, where: list[str], params: dict) -> None:
    if since_ns:
        where.append("start_ns >= {since:UInt64}")
        params["since"] = int(since_ns)
    if until_ns:
        where.append("start_ns < {until:UInt64}")
        params["until"] = int(until_ns)


IDS_PARAM = "zt_trace_ids"


def _ids_in(trace_ids: Sequence[str], params: dict[str, Any] | None = None
            ) -> tuple[str, dict[str, Any]]:
    """(`IN` operand naming the trace ids, the parameters with them added).

    The ids travel as one bound String parameter, never in the SQL text: spliced in,
    20 000 of them made a query over max_query_size (262 144 bytes) and the search
    failed (issue 14, item 5).  ClickHouse builds a set from the parameter before
    reading, so the primary key (trace_id) still selects the granules.
    """
    p = dict(params or {})
    p[IDS_PARAM] = ",".join(schema.check_hex(t, 32) for t in trace_ids)
    return f"(SELECT unhex(arrayJoin(splitByChar(',', {{{IDS_PARAM}:String}}))))", p


def _prefix_ranges(prefixes: Sequence[int]) -> tuple[str, dict[str, Any]]:
    """SQL (and parameters) selecting the trace ids that start with one of
    `prefixes` (`schema.trace_prefix`): primary-key ranges of the span table."""
    where, rp = [], {}
    for j, p in enumerate(prefixes):
        rp[f"lo{j}"] = f"{p:08x}"
        if p < 0xFFFFFFFF:
            rp[f"hi{j}"] = f"{p + 1:08x}"
            where.append(f"(trace_id >= unhex({{lo{j}:String}}) "
                         f"AND trace_id < unhex({{hi{j}:String}}))")
        else:
            where.append(f"trace_id >= unhex({{lo{j}:String}})")
    return " OR ".join(where), rp


class _KeyRow(NamedTuple):
    """The correlation-key columns of one stored span."""

    trace_id: str
    kind: str
    req_seq: int | None
    trace_headers: dict[str, str]


def _search_conditions(q: TraceQuery) -> tuple[str, str, dict[str, Any]]:
    """(exact condition on spans, condition on the search index, parameters).

    The index condition holds for every index row of a trace with a span meeting
    the exact one (times and durations are stored rounded outwards), never fewer.
    """
    where: list[str] = []
    iwhere: list[str] = []
    params: dict[str, Any] = {}
    if q.service:
        where.append("service = {service:String}")
        iwhere.append("service = {service:String}")
        params["service"] = q.service
    if q.operation:
        where.append("operation = {operation:String}")
        iwhere.append("has(operations, {operation:String})")
        params["operation"] = q.operation
    _time_filter(q.since_ns, q.until_ns, where, params)
    if q.since_ns:
        iwhere.append("ts_max_ms * 1000000 >= {since:UInt64}")
    if q.until_ns:
        iwhere.append("toUInt64(ts_min) * 1000000000 < {until:UInt64}")
    if q.min_duration_ns:
        where.append("end_ns - start_ns >= {mind:UInt64}")
        iwhere.append("toUInt64(dur_max_ms) * 1000000 >= {mind:UInt64}")
        params["mind"] = int(q.min_duration_ns)
    if q.max_duration_ns:
        where.append("end_ns - start_ns <= {maxd:UInt64}")
        iwhere.append("toUInt64(dur_min_ms) * 1000000 <= {maxd:UInt64}")
        params["maxd"] = int(q.max_duration_ns)
    if q.status:
        where.append("status = {status:String}")
        iwhere.append("has(statuses, {status:String})")
        params["status"] = q.status
    for i, (k, v) in enumerate(sorted(q.tags.items())):
        # Reading a Map column is costly, so a tag is looked up in the resource map
        # only when its key is a resource attribute by the semantic conventions, and
        # in the span attributes otherwise.
        if k.startswith(RESOURCE_PREFIXES):
            where.append(f"resource[{{tk{i}:String}}] = {{tv{i}:String}}")
        else:
            where.append(
                f"(attributes[{{tk{i}:String}}] = {{tv{i}:String}} OR "
                f"attributes_json[{{tk{i}:String}}] = {{tv{i}:String}})"
            )
        iwhere.append(f"has(tags, {schema.tag_hash(f'{{tk{i}:String}}', f'{{tv{i}:String}}')})")
        params[f"tk{i}"] = k
        params[f"tv{i}"] = v
    return " AND ".join(where) or "1", " AND ".join(iwhere) or "1", params


class SqlStore(SpanStore, abc.ABC):
    """A `SpanStore` over ClickHouse SQL; `db` is the database holding `spans`."""

    def __init__(self, db: str = schema.DATABASE,
                 fields: Sequence[span_schema.Field] = span_schema.FIELDS,
                 span_type: type[Span] = Span) -> None:
        """`fields` and `span_type`: another declaration of the span and the `Span`
        subclass holding its extra attributes (tests' fixture schemas)."""
        self.db = db
        self.fields = tuple(fields)
        self.span_type = span_type
        if self.fields == span_schema.FIELDS and span_type is Span:
            self._span_select, self._decode_row = schema.SPAN_SELECT, _DECODE_ROW
        else:
            self._span_select = schema.span_select(self.fields)
            self._decode_row = span_schema.row_decoder(self.fields, make=span_type)
        self.table = f"{db}.{schema.TABLE}"
        self.index = f"{db}.{schema.INDEX_TABLE}"
        self.join_keys = f"{db}.{schema.JOIN_TABLE}"

    @abc.abstractmethod
    def _select(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT; rows as dicts."""

    @abc.abstractmethod
    def _command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing."""

    def _create(self, engine: str = "MergeTree") -> None:
        # The index table needs its own replication path: '..._spans' -> '..._search_index'.
        index_engine = engine.replace(schema.TABLE, schema.INDEX_TABLE)
        if "(" in engine and "Replicated" in engine and index_engine == engine:
            raise StorageError(
                f"engine {engine!r}: its replication path must name the table "
                f"('{schema.TABLE}', replaced by '{schema.INDEX_TABLE}' for the search index)"
            )
        self._command(schema.create_database(self.db))
        self._command(schema.create_table(self.db, engine, self.fields))
        had = {r["name"] for r in self._select(
            "SELECT name FROM system.tables WHERE database = {db:String} "
            "AND name IN ({t:String}, {j:String})",
            {"db": self.db, "t": schema.INDEX_TABLE, "j": schema.JOIN_TABLE},
        )}
        self._command(schema.create_index_table(self.db, index_engine))
        self._command(schema.create_index_view(self.db))
        if schema.INDEX_TABLE not in had:
            # A data directory from before the search index: index what is stored.
            select = schema.create_index_view(self.db).split(" AS SELECT", 1)[1]
            self._command(f"INSERT INTO {self.index} SELECT {select}")
        self._command(schema.create_join_table(
            self.db, engine.replace(schema.TABLE, schema.JOIN_TABLE)))
        self._command(schema.create_join_view(self.db))
        if schema.JOIN_TABLE not in had:
            # From before this join-key table (issue 16): its keys of what is stored.
            select = schema.create_join_view(self.db).split(" AS SELECT", 1)[1]
            self._command(f"INSERT INTO {self.join_keys} SELECT {select}")
        # The first layout's table and view (schema.OLD_JOIN_TABLE): nothing reads them
        # now, and the view would cost every insert ~4 us a span.
        self._command(f"DROP VIEW IF EXISTS {self.db}.{schema.OLD_JOIN_VIEW}")
        self._command(f"DROP TABLE IF EXISTS {self.db}.{schema.OLD_JOIN_TABLE}")

    # -- reads -----------------------------------------------------------------

    def _spans_where(self, where: str, params: dict | None = None) -> list[Span]:
        """Spans meeting `where`, by start time, then span id."""
        rows = self._select(f"SELECT {self._span_select} FROM {self.table} WHERE {where}",
                            params)
        decode = self._decode_row
        # Sorted here, not by ORDER BY: a trace is a few spans, and the sorting step
        # cost chDB ~4 ms of a one-trace read's ~18 ms CPU (10 M spans, median of 7).
        # Hex ids of one length sort as the bytes do.
        return sorted((decode(r) for r in rows), key=lambda s: (s.start_ns, s.span_id))

    def get_trace(self, trace_id: str) -> list[Span]:
        return self._spans_where("trace_id = unhex({tid:String})",
                                 {"tid": schema.check_hex(trace_id, 32)})

    def get_traces(self, trace_ids: Sequence[str]) -> list[Span]:
        if not trace_ids:
            return []
        ids, params = _ids_in(trace_ids)
        return self._spans_where(f"trace_id IN {ids}", params)

    def find_by_req_seq(self, seqs: Sequence[int], kind: str) -> list[Span]:
        if not seqs:
            return []
        # Bound like trace ids (a parameter, not SQL text), however many there are.
        return self._spans_where(
            "kind = {kind:String} AND req_seq IN "
            "(SELECT toUInt64(arrayJoin(splitByChar(',', {seqs:String}))))",
            {"kind": kind, "seqs": ",".join(str(int(s)) for s in seqs)},
        )

    def find_by_header(self, name: str, values: Sequence[str]) -> list[Span]:
        if not values:
            return []
        # Scalar parameters only: chDB does not bind Python lists to Array params.
        params: dict[str, Any] = {"name": name}
        params.update({f"v{i}": v for i, v in enumerate(values)})
        inlist = ", ".join(f"{{v{i}:String}}" for i in range(len(values)))
        return self._spans_where(f"trace_headers[{{name:String}}] IN ({inlist})", params)

    def find_join_fragments(
        self, lookups: Collection[tuple[str, Any, str]], known: dict[str, list[Span]]
    ) -> dict[str, list[Span]]:
        """Every stored trace not in `known` that may hold a span with one of the
        correlation keys `lookups`, with all its spans: {trace id: spans}.

        A lookup is ("seq", req_seq, kind) or ("header", (name, value), kind).  One
        primary-key read of the join-key table (schema.create_join_table) gives, per
        trace id prefix, how many spans carry one of the keys; a prefix whose count the
        spans of `known` traces account for exactly needs no read (the usual case
        once a trace's fragments are all in), the others are read by primary-key
        range.  A superset: the caller checks every key on the spans themselves.
        """
        todo = self._fragment_prefixes(lookups, known)
        out: dict[str, list[Span]] = {}
        for i in range(0, len(todo), 200):  # a few per round; bounded query size anyway
            where, rp = _prefix_ranges(todo[i:i + 200])
            for s in self._spans_where(where, rp):
                if s.trace_id not in known:
                    out.setdefault(s.trace_id, []).append(s)
        return out

    def _fragment_prefixes(self, lookups: Collection[tuple[str, Any, str]],
                           known: dict[str, Sequence[Any]], hits: set | None = None
                           ) -> list[int]:
        """The trace id prefixes (`schema.trace_prefix`) to read for
        `find_join_fragments`: those holding a span with a key of `lookups` that the
        `known` traces' spans (anything with kind, req_seq, trace_headers) do not
        account for.  `hits`: given, gets the sequence-number keys found (req_seq
        values) and "header" when a header key was."""
        seqs = sorted({(int(k), kind) for t, k, kind in lookups if t == "seq"})
        hdrs = sorted({(k[0], k[1], kind) for t, k, kind in lookups if t == "header"})
        if not seqs and not hdrs:
            return []
        # One primary-key set of the join-key table (schema.create_join_table): the
        # sequence numbers' keys as an Array parameter, the headers' as constant
        # expressions of bound strings (folded before the read: a set built by a
        # subquery cost ~4 ms of chDB CPU a lookup).
        by_k = {schema.link_key_seq(q, kind): q for q, kind in seqs}
        params: dict[str, Any] = {"ks": "[" + ",".join(map(str, sorted(by_k))) + "]"}
        consts = []
        for i, (n, v, kind) in enumerate(hdrs):
            params.update({f"hn{i}": n, f"hv{i}": v, f"hk{i}": int(kind == "server")})
            consts.append(schema.link_key_header_sql(
                f"{{hn{i}:String}}", f"{{hv{i}:String}}", f"{{hk{i}:UInt8}}"))
        found = self._select(
            f"SELECT k, trace_prefix AS p FROM {self.join_keys} "
            f"WHERE k IN arrayConcat({{ks:Array(UInt64)}}, [{', '.join(consts)}])", params)
        rows: dict[int, int] = {}
        for r in found:
            rows[int(r["p"])] = rows.get(int(r["p"]), 0) + 1
            if hits is not None:
                k = int(r["k"])
                # a key is a sequence number's or a header hash's, or (equal by
                # chance) both: either way a candidate to check
                hits.add(by_k[k] if k in by_k else "header")
                if hdrs and k in by_k:
                    hits.add("header")
        # Rows the known traces account for: one per (lookup, span) that matches it.
        seq_set = set(seqs)
        hdr_set = {(n, v, kind) for n, v, kind in hdrs}
        mine: dict[int, int] = {}
        for tid, spans in known.items():
            p = schema.trace_prefix(tid)
            for s in spans:
                n = (s.req_seq is not None and (s.req_seq, s.kind) in seq_set) + sum(
                    (name, v, s.kind) in hdr_set for name, v in s.trace_headers.items())
                if n:
                    mine[p] = mine.get(p, 0) + n
        return sorted(p for p, n in rows.items() if n > mine.get(p, 0))

    def read_with_fragments(self, trace_ids: Sequence[str]
                            ) -> tuple[dict[str, list[Span]], set[tuple]]:
        """The spans of `trace_ids` and of every stored trace that may hold the
        counterpart of one of their correlation keys, {trace id: spans}, and those
        keys (`links.lookups` of the traces): a join's first round read ahead.

        Three queries: the traces' key columns (a few of the 35: ~4 ms CPU), the
        join-key table (`_fragment_prefixes`), then the traces and the fragments in
        one read.  A read costs per column file it opens more than per granule (10 M
        spans: two traces read together ~17 ms CPU, one after the other ~33), so this
        costs a trace by id one full read less than reading the trace first."""
        ids = [schema.check_hex(t, 32) for t in trace_ids]
        if not ids:
            return {}, set()
        if len(ids) == 1:
            cond, params = "trace_id = unhex({tid:String})", {"tid": ids[0]}
        else:
            inner, params = _ids_in(ids)
            cond = f"trace_id IN {inner}"
        keys = [_KeyRow(r["tid"], r["kind"], None if r["req_seq"] is None else int(r["req_seq"]),
                        r["trace_headers"])
                for r in self._select(
                    "SELECT lower(hex(trace_id)) AS tid, kind, req_seq, trace_headers "
                    f"FROM {self.table} WHERE {cond}", params)]
        if not keys:
            return {}, set()  # none of the traces is stored
        looks = links.lookups(keys)
        by_trace: dict[str, list[_KeyRow]] = {}
        for k in keys:
            by_trace.setdefault(k.trace_id, []).append(k)
        todo = self._fragment_prefixes(looks, by_trace) if looks else []
        out: dict[str, list[Span]] = {}
        for i in range(0, max(1, len(todo)), 200):
            where, rp = _prefix_ranges(todo[i:i + 200])
            if i == 0:
                where = f"{cond} OR {where}" if where else cond
                rp.update(params)
            for s in self._spans_where(where, rp):
                out.setdefault(s.trace_id, []).append(s)
        return out, looks

    def link_spans(self, trace_ids: Sequence[str] = (), prefixes: Sequence[int] = ()
                   ) -> dict[str, list[Span]]:
        """The spans of `trace_ids` and of the traces whose ids start with one of
        `prefixes`, {trace id: spans}, with only what the link rules and a search
        row need (ids, kind, service, operation, status, times, tuple, sequence
        numbers, trace headers): 16 of the 35 columns, no attribute maps; the
        other fields keep `Span`'s defaults.  For listing joined traces
        (server/query/joined.py `list_page`)."""
        conds, params = [], {}
        if trace_ids:
            inner, params = _ids_in(trace_ids)
            conds.append(f"trace_id IN {inner}")
        if prefixes:
            where, rp = _prefix_ranges(prefixes)
            conds.append(where)
            params.update(rp)
        if not conds:
            return {}
        rows = self._select(
            "SELECT lower(hex(trace_id)) AS t, lower(hex(span_id)) AS s, "
            "lower(hex(parent_span_id)) AS p, kind, service, operation, status, start_ns, "
            "end_ns, local_addr, local_port, remote_addr, remote_port, req_seq, resp_seq, "
            f"trace_headers FROM {self.table} WHERE {' OR '.join(conds)}", params)
        out: dict[str, list[Span]] = {}
        for r in rows:
            out.setdefault(r["t"], []).append(Span(
                trace_id=r["t"], span_id=r["s"], parent_span_id=r["p"], kind=r["kind"],
                service=r["service"], operation=r["operation"], status=r["status"],
                start_ns=int(r["start_ns"]), end_ns=int(r["end_ns"]),
                local=Endpoint(r["local_addr"], int(r["local_port"])),
                remote=Endpoint(r["remote_addr"], int(r["remote_port"])),
                req_seq=None if r["req_seq"] is None else int(r["req_seq"]),
                resp_seq=None if r["resp_seq"] is None else int(r["resp_seq"]),
                trace_headers=dict(r["trace_headers"])))
        return out

    def caller_prefixes(self, lookups: Collection[tuple[str, Any, str]],
                        known: dict[str, Sequence[Any]], hits: set | None = None
                        ) -> list[int]:
        """`find_join_fragments`' first step alone: the trace id prefixes that may
        hold a counterpart of `lookups` not in `known` (`hits`: see
        `_fragment_prefixes`)."""
        return self._fragment_prefixes(lookups, known, hits)

    def search_traces(self, q: TraceQuery) -> list[TraceSummary]:
        limit = max(1, min(int(q.limit or 20), 10_000))
        rows = self._search(q, limit)
        return [
            TraceSummary(
                trace_id=r["tid"],
                root_service=r["root_service"],
                root_operation=r["root_operation"],
                start_ns=int(r["start"]),
                duration_ns=int(r["dur"]),
                span_count=int(r["n"]),
                error_count=int(r["errors"]),
                services=sorted(s for s in r["services"] if s),
            )
            for r in sorted(rows, key=lambda r: -int(r["start"]))
        ]

    def _search(self, q: TraceQuery, limit: int) -> list[dict[str, Any]]:
        """Summaries of the `limit` traces whose newest span matching `q` is newest.

        The search index (schema.create_index_table) yields candidate traces newest
        first; the span table checks the exact condition on them by trace id and
        gives the summary in the same pass.  The index stores, per row, an upper
        bound of its spans' start times (`ts_max_ms`), so once `limit` checked traces
        have a matching span at or after the bound of the last candidate read, no
        candidate not yet read can beat them.  Otherwise read more candidates.
        """
        cond, icond, params = _search_conditions(q)
        return self._search_where(cond, icond, params, limit)

    def _search_where(
        self, cond: str, icond: str, params: dict[str, Any], limit: int, matched: str = "",
        spans: tuple[int, dict[str, str]] | None = None, roots: bool = False,
    ) -> list[dict[str, Any]]:
        """`_search` for prepared conditions; `matched`: a trace-level condition
        (aggregates over the trace's spans) replacing "some span meets `cond`";
        `spans`: see `_summaries`."""
        # Checking the candidates (a granule of the span table each) is most of a
        # search, so the first round reads only a quarter more than asked for: enough
        # when the index condition is near-exact (equalities on service, name, status
        # and attributes: the four searches of bench_server's HTTP part found the same
        # 20 traces in one round from 25 candidates as from 40, at 10 M spans); fewer
        # matches grow the next round fourfold as before.
        n = limit + max(5, limit // 4)
        while n <= 50_000:
            cands = self._select(
                f"SELECT lower(hex(trace_id)) AS tid, ts_max_ms FROM {self.index} "
                f"WHERE {icond} ORDER BY ts_max_ms DESC LIMIT {n}",
                params,
            )
            if not cands:
                return []
            complete = len(cands) < n
            bound = 0 if complete else int(cands[-1]["ts_max_ms"]) * 1_000_000
            rows = self._summaries(
                list(dict.fromkeys(c["tid"] for c in cands)), cond, params, matched, spans,
                roots)
            rows = [r for r in rows if int(r["matched"]) > 0]
            rows.sort(key=lambda r: -int(r["last"]))
            sure = [r for r in rows if int(r["last"]) >= bound]
            if len(sure) >= limit or complete:
                return sure[:limit]
            n *= 4
        # Very many candidates that do not match: one pass over the span table.
        tids = self._select(
            f"SELECT lower(hex(trace_id)) AS tid, max(start_ns) AS last FROM {self.table} "
            f"WHERE {cond} GROUP BY trace_id ORDER BY last DESC LIMIT {limit}",
            params,
        )
        rows = self._summaries([r["tid"] for r in tids], cond, params, matched, spans, roots)
        return [r for r in rows if int(r["matched"]) > 0]

    def _summaries(
        self, tids: Sequence[str], cond: str, params: dict[str, Any], matched: str = "",
        spans: tuple[int, dict[str, str]] | None = None, roots: bool = False,
    ) -> list[dict[str, Any]]:
        """One row per trace of `tids`: its summary, whether it matches, and with
        `spans` = (per_trace, columns) its first `per_trace` spans meeting `cond` as
        `matching_spans` rows (in `spans_list`), from the same read of the traces'
        granules: reading them twice (summaries, then spans) was half of a search.
        With `roots`, also its parentless server spans' link keys (`roots`: what a
        listing of joined traces looks up, server/query/joined.py `list_page`)."""
        if not tids:
            return []
        ids, params = _ids_in(tids, params)
        extra = ""
        if spans is not None:
            per_trace, columns = spans
            fields = ", ".join(["start_ns", "lower(hex(span_id))", "end_ns", "operation",
                                "service", *columns.values()])
            # tuples sort by start, then span id: matching_spans' order
            extra = (f", arraySlice(arraySort(groupArrayIf(tuple({fields}), {cond})), 1, "
                     f"{max(1, int(per_trace))}) AS spans_list")
        if roots:
            # the keys only (the link decision reads the few spans that have a match)
            extra += (", groupArrayIf(tuple(lower(hex(span_id)), req_seq, "
                      f"{', '.join(f'trace_headers[{h!r}]' for h in links.JOIN_HEADERS)}), "
                      "kind = 'server' AND parent_span_id = '') AS roots")
        rows = self._select(
            "SELECT lower(hex(trace_id)) AS tid, min(start_ns) AS start, "
            "max(end_ns) - min(start_ns) AS dur, count() AS n, "
            "countIf(status = 'error') AS errors, groupUniqArray(service) AS services, "
            "argMin(service, (parent_span_id != '', start_ns)) AS root_service, "
            "argMin(operation, (parent_span_id != '', start_ns)) AS root_operation, "
            f"{matched or f'countIf({cond})'} AS matched, maxIf(start_ns, {cond}) AS last"
            f"{extra} FROM {self.table} WHERE trace_id IN {ids} GROUP BY trace_id",
            params,
        )
        if spans is not None:
            names = ["start_ns", "sid", "end_ns", "operation", "service", *spans[1]]
            for r in rows:
                r["spans_list"] = [{"tid": r["tid"], **dict(zip(names, t, strict=True))}
                                   for t in r["spans_list"]]
        return rows

    def services(self, since_ns: int, until_ns: int) -> list[ServiceStats]:
        where: list[str] = ["service != ''"]
        params: dict[str, Any] = {}
        _time_filter(since_ns, until_ns, where, params)
        rows = self._select(
            "SELECT service, countIf(kind = 'server') AS n, "
            "countIf(kind = 'server' AND status = 'error') AS errors, "
            "quantilesIf(0.5, 0.99)(end_ns - start_ns, kind = 'server') AS q, "
            "min(start_ns) AS first, max(start_ns) AS last "
            f"FROM {self.table} WHERE {' AND '.join(where)} GROUP BY service ORDER BY service",
            params,
        )
        out = []
        now = time.time_ns()
        for r in rows:
            lo = since_ns or int(r["first"])
            hi = until_ns or max(now, int(r["last"]))
            window = max((hi - lo) / _NS, 1e-3)
            n = int(r["n"])
            q = r["q"] or [0, 0]
            out.append(
                ServiceStats(
                    service=r["service"],
                    requests=n,
                    rate_per_s=n / window,
                    error_rate=(int(r["errors"]) / n) if n else 0.0,
                    p50_ns=int(q[0] or 0) if n else 0,
                    p99_ns=int(q[1] or 0) if n else 0,
                )
            )
        return out

    def dependencies(self, since_ns: int, until_ns: int) -> list[DependencyLink]:
        params: dict[str, Any] = {}
        wc: list[str] = []
        _time_filter(since_ns, until_ns, wc, params)
        cond = " AND ".join(wc) or "1"
        t = self.table
        # Parent/child links inside one trace, plus the client/server pairs of
        # fragments from different agents that the query-time join links: by the
        # sequence-number rule of proto/links.py (the same rule the joiner and the
        # agent apply, as SQL: strength of each pair sharing req_seq, then per server
        # span the one candidate the rule keeps), for a server span without a parent.
        strength = links.seq_strength_sql("cl", "sv", str(int(links.SEQ_SKEW_NS)))
        cols = ("span_id, parent_span_id, service, status, req_seq, resp_seq, start_ns, "
                "end_ns, local_addr, local_port, remote_addr, remote_port")
        sql = f"""
SELECT parent, child, sum(calls) AS calls, sum(errs) AS errs FROM (
  SELECT p.service AS parent, c.service AS child, count() AS calls,
         countIf(c.status = 'error') AS errs
  FROM (SELECT trace_id, parent_span_id, service, status FROM {t} WHERE {cond}) AS c
  INNER JOIN (SELECT trace_id, span_id, service FROM {t} WHERE {cond}) AS p
    ON c.trace_id = p.trace_id AND c.parent_span_id = p.span_id
  WHERE c.service != p.service AND c.service != '' AND p.service != ''
  GROUP BY parent, child
  UNION ALL
  SELECT cl_service AS parent, sv_service AS child, count() AS calls,
         countIf(sv_status = 'error') AS errs
  FROM (
    SELECT any(sv_service) AS sv_service, any(sv_status) AS sv_status,
           argMax(cl_service, k) AS cl_service, argMax(cl_trace, k) AS cl_trace1
    FROM (
      SELECT sv.trace_id AS sv_trace, sv.span_id AS sv_span, sv.service AS sv_service,
             sv.status AS sv_status, cl.service AS cl_service, cl.trace_id AS cl_trace,
             {strength} AS k
      FROM (SELECT trace_id, {cols} FROM {t}
            WHERE kind = 'client' AND req_seq IS NOT NULL AND {cond}) AS cl
      INNER JOIN (SELECT trace_id, {cols} FROM {t}
                  WHERE kind = 'server' AND req_seq IS NOT NULL AND parent_span_id = ''
                  AND {cond}) AS sv
        ON cl.req_seq = sv.req_seq
    )
    GROUP BY sv_trace, sv_span
    -- the kept client in the same trace: the agent's link, not the join's
    HAVING {links.pick_sql("k")} AND cl_trace1 != sv_trace
  )
  WHERE cl_service != sv_service AND cl_service != '' AND sv_service != ''
  GROUP BY parent, child
) GROUP BY parent, child ORDER BY parent, child"""
        rows = self._select(sql, params)
        return [
            DependencyLink(r["parent"], r["child"], int(r["calls"]), int(r["errs"])) for r in rows
        ]

    def spans_for_service(
        self, service: str, since_ns: int, until_ns: int, max_traces: int
    ) -> list[Span]:
        n = max(1, min(int(max_traces or 1000), 100_000))
        q = TraceQuery(service=service, since_ns=since_ns, until_ns=until_ns, limit=n)
        ids = self._search(q, n)  # through the search index
        return self.get_traces([r["tid"] for r in ids])

    # -- conditions built by the HTTP API (TraceQL -> SQL with bound parameters) --

    def search_traces_where(
        self, cond: str, icond: str, params: dict[str, Any], limit: int, matched: str = ""
    ) -> list[TraceSummary]:
        """`search_traces` for a span condition `cond` (SQL over the span table, values
        as {name:Type} parameters), `icond` its superset on the search index, and an
        optional trace-level `matched` (e.g. `countIf(a) > 0 AND countIf(b) > 0`)."""
        return self.search_spansets(cond, icond, params, limit, matched)[0]

    def search_spansets(
        self, cond: str, icond: str, params: dict[str, Any], limit: int, matched: str = "",
        per_trace: int = 0, columns: dict[str, str] | None = None, roots: bool = False,
    ) -> tuple[list[TraceSummary], list[dict[str, Any]]] | tuple[
            list[TraceSummary], list[dict[str, Any]], dict[str, list[Span]]]:
        """`search_traces_where` and, when `per_trace` > 0, what `matching_spans`
        would answer for the traces found, both from one read of their spans; with
        `roots`, a third item: each trace's parentless server spans with their link
        keys only (span id, req_seq, the link headers; {trace id: spans}), from that
        read too."""
        limit = max(1, min(int(limit or 20), 10_000))
        spans = (per_trace, columns or {}) if per_trace > 0 else None
        rows = self._search_where(cond, icond, params, limit, matched, spans, roots)
        matched_rows = [s for r in sorted(rows, key=lambda r: -int(r["start"]))
                        for s in r.get("spans_list", [])]
        if not roots:
            return self._trace_summaries(rows), matched_rows
        found = {r["tid"]: [Span(
            trace_id=r["tid"], span_id=x[0], kind="server",
            req_seq=None if x[1] is None else int(x[1]),
            trace_headers={h: v for h, v in zip(links.JOIN_HEADERS, x[2:], strict=True) if v})
            for x in r["roots"]] for r in rows}
        return self._trace_summaries(rows), matched_rows, found

    @staticmethod
    def _trace_summaries(rows: list[dict[str, Any]]) -> list[TraceSummary]:
        return [
            TraceSummary(
                trace_id=r["tid"], root_service=r["root_service"],
                root_operation=r["root_operation"], start_ns=int(r["start"]),
                duration_ns=int(r["dur"]), span_count=int(r["n"]),
                error_count=int(r["errors"]), services=sorted(s for s in r["services"] if s),
            )
            for r in sorted(rows, key=lambda r: -int(r["start"]))
        ]

    def matching_spans(
        self, trace_ids: Sequence[str], cond: str, params: dict[str, Any], per_trace: int,
        columns: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `per_trace` spans meeting `cond` in each of `trace_ids`, as rows of
        `tid`, `sid` (hex ids), `start_ns`, `end_ns`, `operation`, `service` and
        each of `columns` (alias -> SQL expression).  Only these columns are read: a
        search result shows a few fields, and reading every column of every granule
        of the found traces cost more than the search itself."""
        if not trace_ids:
            return []
        ids, params = _ids_in(trace_ids, params)
        extra = "".join(f", {expr} AS {alias}" for alias, expr in (columns or {}).items())
        return self._select(
            # aliases unlike the columns: an alias named like its column would shadow
            # the column in WHERE
            "SELECT lower(hex(trace_id)) AS tid, lower(hex(span_id)) AS sid, "
            f"start_ns, end_ns, operation, service{extra} FROM {self.table} "
            f"WHERE trace_id IN {ids} AND ({cond}) "
            f"ORDER BY start_ns, span_id LIMIT {max(1, int(per_trace))} BY trace_id",
            params,
        )

    def distinct_values(
        self, expr: str, cond: str, params: dict[str, Any], limit: int
    ) -> list[str]:
        """Distinct non-empty values of the SQL expression `expr` over spans meeting `cond`."""
        rows = self._select(
            f"SELECT DISTINCT toString({expr}) AS v FROM {self.table} WHERE {cond} "
            f"LIMIT {max(1, int(limit)) + 1}",
            params,
        )
        return sorted(v for r in rows if (v := r["v"]))[: max(1, int(limit))]

    # -- retention -------------------------------------------------------------

    def _bytes_on_disk(self) -> tuple[int, int]:
        """(spans stored, bytes on disk of the span table, search index and join keys)."""
        rows = self._select(
            "SELECT sumIf(rows, table = {tbl:String}) AS r, sum(bytes_on_disk) AS b "
            "FROM system.parts WHERE database = {db:String} AND active "
            "AND table IN ({tbl:String}, {idx:String}, {jk:String})",
            {"db": self.db, "tbl": schema.TABLE, "idx": schema.INDEX_TABLE,
             "jk": schema.JOIN_TABLE},
        )
        if not rows:
            return 0, 0
        return int(rows[0]["r"] or 0), int(rows[0]["b"] or 0)

    def _count(self, cond: str, params: dict | None = None) -> int:
        rows = self._select(f"SELECT count() AS n FROM {self.table} WHERE {cond}", params)
        return int(rows[0]["n"]) if rows else 0

    def _delete_before(self, cutoff_ns: int) -> int:
        params = {"cut": int(cutoff_ns)}
        n = self._count("start_ns < {cut:UInt64}", params)
        if n:
            # A mutation that waits (mutations_sync) so that the deletion is visible
            # and its space released when retention returns.
            self._command(
                f"ALTER TABLE {self.table} DELETE WHERE start_ns < {{cut:UInt64}} "
                "SETTINGS mutations_sync = 2",
                params,
            )
            # Index rows all of whose spans are older go too; a row straddling the
            # cut stays (it names a trace that may still match; searches check).
            self._command(
                f"ALTER TABLE {self.index} DELETE "
                "WHERE ts_max_ms * 1000000 < {cut:UInt64} "
                "SETTINGS mutations_sync = 2",
                params,
            )
            # Join keys by whole days (their only time); a key left over names a trace
            # that is gone, which the joiner's read finds empty.
            self._command(
                f"ALTER TABLE {self.join_keys} DELETE "
                "WHERE day < toDate(toDateTime(intDiv({cut:UInt64}, 1000000000))) "
                "SETTINGS mutations_sync = 2",
                params,
            )
        return n

    def apply_retention(self, max_age_s: float = 0, max_bytes: int = 0) -> int:
        deleted = 0
        if max_age_s > 0:
            deleted += self._delete_before(time.time_ns() - int(max_age_s * _NS))
        if max_bytes > 0:
            rows, size = self._bytes_on_disk()
            if size > max_bytes and rows:
                # Drop the oldest fraction that brings the size under the limit, with
                # a margin because compression is not linear in rows.
                frac = min(1.0, (size - max_bytes) / size * 1.1)
                q = self._select(
                    f"SELECT quantileExact({frac:.6f})(start_ns) AS cut FROM {self.table}"
                )
                cut = int(q[0]["cut"]) if q else 0
                if frac >= 1.0:
                    cut = 2**63
                deleted += self._delete_before(cut + (1 if frac < 1.0 else 0))
        return deleted

    def stats(self) -> dict[str, int]:
        rows, size = self._bytes_on_disk()
        return {"spans": rows, "bytes": size}

    def flush(self) -> None:
        self._command(f"OPTIMIZE TABLE {self.table} FINAL")
        self._command(f"OPTIMIZE TABLE {self.index} FINAL")
        self._command(f"OPTIMIZE TABLE {self.join_keys} FINAL")
