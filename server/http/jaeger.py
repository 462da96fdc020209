"""Jaeger's query API (the JSON the Jaeger UI and Grafana's Jaeger data source read).

Every answer is Jaeger's envelope `{data, total, limit, offset, errors}`.
- `/api/services`, `/api/services/<s>/operations`, `/api/operations?service=&spanKind=`
- `/api/traces?service=&operation=&tags=&start=&end=&minDuration=&maxDuration=&limit=`
  (times in microseconds, durations as Go durations, tags as JSON or logfmt; a trace
  matches when one span meets all conditions, Jaeger's semantics), full traces back.
- `/api/traces/<id>` (under `/jaeger`: at the root that path is Tempo's).
- `/api/dependencies?endTs=&lookback=` (milliseconds).
"""

from __future__ import annotations

import json
import time
from typing import Any

from server.http import traceql
from server.http.app import HttpApi, HttpError, Request, Response, json_response
from server.http.otlp_map import envelope, jaeger_trace
from server.http.params import go_duration_ns, int_param, logfmt, maybe_double_decoded
from server.http.tempo import parse_trace_id
from server.join import join_trace
from server.query.joined import join_page

_US = 1_000
_MS = 1_000_000
DAY_NS = 86_400 * 1_000_000_000


def _distinct(api: HttpApi, expr: str, cond: str, params: dict[str, Any]) -> list[str]:
    fn = getattr(api.store, "distinct_values", None)
    if fn is None:
        raise HttpError(501, "this storage backend does not list values")
    return fn(expr, cond, params, 10_000)


def services(api: HttpApi, req: Request) -> Response:
    data = _distinct(api, "service", "service != ''", {})
    return json_response(envelope(data))


def operations_legacy(api: HttpApi, req: Request) -> Response:
    data = _distinct(api, "operation", "service = {svc:String}", {"svc": req.args["service"]})
    return json_response(envelope(data))


def operations(api: HttpApi, req: Request) -> Response:
    svc = req.get("service")
    if not svc:
        raise HttpError(400, "parameter 'service' is required")
    cond, params = "service = {svc:String}", {"svc": svc}
    kind = req.get("spanKind")
    if kind:
        cond += " AND kind = {kind:String}"
        params["kind"] = kind
    pairs = _distinct(api, "concat(kind, '\\t', operation)", cond, params)
    data = []
    for p in pairs:
        k, _, op = p.partition("\t")
        data.append({"name": op, "spanKind": k if k in ("server", "client") else "internal"})
    return json_response(envelope(data))


def _tags(text: str) -> dict[str, str]:
    text = maybe_double_decoded(text.strip())
    if not text:
        return {}
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise HttpError(400, f"bad tags {text!r}: {e}") from None
        if not isinstance(obj, dict):
            raise HttpError(400, "tags must be a JSON object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items()}
    return logfmt(text)


def _eq(f: traceql.Field, v: str) -> traceql.Cmp:
    return traceql.Cmp(f, "=", traceql.Value("string", v))


def search_tree(service: str, operation: str, tags: dict[str, str], min_ns: int,
                max_ns: int) -> traceql.Spanset:
    """Jaeger's search (one span meeting every condition) as a one-spanset TraceQL tree,
    so both APIs search the same way; Jaeger's own tag names map to intrinsics."""
    conds: list[Any] = [_eq(traceql.Field("resource", "service.name"), service)]
    if operation:
        conds.append(_eq(traceql.Field("intrinsic", "name"), operation))
    for k, v in tags.items():
        if k == "error" and v in ("true", "false"):
            conds.append(traceql.Cmp(traceql.Field("intrinsic", "status"),
                                     "=" if v == "true" else "!=",
                                     traceql.Value("status", "error")))
        elif k == "otel.status_code":
            conds.append(_eq(traceql.Field("intrinsic", "status"), v.lower()))
        elif k == "span.kind":
            conds.append(_eq(traceql.Field("intrinsic", "kind"), v.lower()))
        else:
            conds.append(_eq(traceql.Field("any", k), v))
    if min_ns:
        conds.append(traceql.Cmp(traceql.Field("intrinsic", "duration"), ">=",
                                 traceql.Value("duration", min_ns)))
    if max_ns:
        conds.append(traceql.Cmp(traceql.Field("intrinsic", "duration"), "<=",
                                 traceql.Value("duration", max_ns)))
    expr = conds[0]
    for c in conds[1:]:
        expr = traceql.BoolOp("&&", expr, c)
    return traceql.Spanset(expr)


def find_traces(api: HttpApi, req: Request) -> Response:
    ids = req.all("traceID")
    if ids:  # the Jaeger UI's "compare"/permalink form: these traces, no search
        data = []
        for text in ids:
            tid = parse_trace_id(text)
            spans = join_trace(api.store, tid).spans
            if spans:
                data.append(jaeger_trace(tid, spans))
        return json_response(envelope(data))
    svc = req.get("service")
    if not svc:
        raise HttpError(400, "parameter 'service' is required")
    end_us = int_param(req.get("end"), "end")
    start_us = int_param(req.get("start"), "start")
    lookback = req.get("lookback")
    if not start_us and lookback and lookback != "custom":
        start_us = ((end_us * _US or time.time_ns()) - go_duration_ns(lookback, "lookback")) \
            // _US
    tree = search_tree(svc, req.get("operation"), _tags(req.get("tags")),
                       go_duration_ns(req.get("minDuration"), "minDuration"),
                       go_duration_ns(req.get("maxDuration"), "maxDuration"))
    sql = traceql.to_sql(tree, start_us * _US, end_us * _US)
    search = getattr(api.store, "search_traces_where", None)
    if search is None:
        raise HttpError(501, "this storage backend does not answer searches")
    limit = max(1, min(int_param(req.get("limit"), "limit", 20), 1500))
    found = search(sql.cond, sql.icond, sql.params, limit, sql.matched)
    # each joined trace once, whole, under one id (the spans read for the join)
    page = join_page(api.store, found, with_spans=True)
    by_trace = page.spans
    rest = [t.trace_id for t in page.rows if t.trace_id not in by_trace]
    for s in api.store.get_traces(rest) if rest else ():  # past the joined part
        by_trace.setdefault(s.trace_id, []).append(s)
    data = [jaeger_trace(t.trace_id, by_trace[t.trace_id]) for t in page.rows
            if by_trace.get(t.trace_id)]
    return json_response(envelope(data))


def get_trace(api: HttpApi, req: Request) -> Response:
    tid = parse_trace_id(req.args["trace_id"])
    spans = join_trace(api.store, tid).spans
    if not spans:
        raise HttpError(404, f"trace not found: {tid}")
    return json_response(envelope([jaeger_trace(tid, spans)]))


def dependencies(api: HttpApi, req: Request) -> Response:
    end_ms = int_param(req.get("endTs"), "endTs") or time.time_ns() // _MS
    lookback_ms = int_param(req.get("lookback"), "lookback") or DAY_NS // _MS
    links = api.store.dependencies((end_ms - lookback_ms) * _MS, end_ms * _MS)
    data = [{"parent": d.parent, "child": d.child, "callCount": d.call_count}
            for d in links]
    return json_response(envelope(data))


ROUTES = [
    (r"/api/services", services),
    (r"/api/services/(?P<service>[^/]+)/operations", operations_legacy),
    (r"/api/operations", operations),
    (r"/api/traces", find_traces),
    (r"/api/traces/(?P<trace_id>[^/]+)", get_trace),
    (r"/api/dependencies", dependencies),
]
