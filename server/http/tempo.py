"""Tempo's HTTP API, the part Grafana's built-in Tempo data source calls.

- `/api/echo`, `/api/status/buildinfo`: connection test and version probe.
- `/api/traces/<id>`: OTLP `TracesData` (protobuf with `Accept: application/protobuf`,
  else OTLP/JSON); `/api/v2/traces/<id>`: the same inside Tempo's `TraceByIDResponse`
  (`{"trace": ...}`).  Trace ids may come without leading zeros, as Tempo allows.
- `/api/search`: TraceQL (`q=`) or the legacy tag search (`tags=`, `minDuration=`,
  `maxDuration=`), `limit=`, `spss=` (spans per span set), `start=`/`end=` (Unix s).
- `/api/search/tags`, `/api/search/tag/<name>/values` (unscoped names), and their v2
  forms with scopes (`span`, `resource`, `intrinsic`) and typed values.
"""

from __future__ import annotations

import json
import re
from typing import Any

from proto.span import Span
from server.http import traceql
from server.http.app import HttpApi, HttpError, Request, Response, json_response
from server.http.otlp_map import (
    VIRTUAL_ATTRIBUTES,
    to_traces_data,
    traces_data_json,
)
from server.http.params import (
    go_duration_ns,
    int_param,
    logfmt,
    maybe_double_decoded,
    recent_window,
    unix_window,
)
from server.ingest.otlp import MODEL_KEY
from server.join import join_trace
from server.query.joined import list_page

# The Tempo release whose API this server answers (Grafana reads features off it).
TEMPO_VERSION = "2.6.0"
INTRINSIC_TAGS = ["duration", "kind", "name", "status", "statusMessage"]
_NUMERIC_COLUMNS = {"pid", "tid", "local_port", "remote_port", "req_seq", "resp_seq"}
MAX_TAG_VALUES = 1000


def parse_trace_id(text: str) -> str:
    """32 lower-case hex digits from a Tempo trace id (leading zeros may be missing)."""
    t = text.strip().lower()
    if not t or len(t) > 32 or not re.fullmatch(r"[0-9a-f]+", t):
        raise HttpError(400, f"invalid trace id {text!r}: want up to 32 hex digits")
    return t.zfill(32)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _trace_spans(api: HttpApi, req: Request) -> tuple[str, list[Span]]:
    tid = parse_trace_id(req.args["trace_id"])
    spans = join_trace(api.store, tid).spans
    if not spans:
        raise HttpError(404, f"trace not found: {tid}")
    # The trace view has no place for our flame graph, so the root span names it.
    host = req.headers.get("host", "")
    if host:
        roots = [s for s in spans if not s.parent_span_id]
        for s in roots[:1]:
            s.attributes.setdefault("zerotrace.flamegraph.url",
                                    f"http://{host}/api/flamegraph/{tid}?format=html")
    return tid, spans


def echo(api: HttpApi, req: Request) -> Response:
    return Response(200, b"echo", "text/plain; charset=utf-8")


def buildinfo(api: HttpApi, req: Request) -> Response:
    return json_response({
        "version": TEMPO_VERSION,
        "revision": "zerotrace",
        "branch": "main",
        "buildUser": "zerotrace",
        "buildDate": "",
        "goVersion": "none (zerotrace server, Python)",
    })


def trace_v1(api: HttpApi, req: Request) -> Response:
    _tid, spans = _trace_spans(api, req)
    td = to_traces_data(spans)
    if req.accepts_protobuf():
        return Response(200, td.SerializeToString(), "application/protobuf")
    return json_response(traces_data_json(td))


def trace_v2(api: HttpApi, req: Request) -> Response:
    _tid, spans = _trace_spans(api, req)
    td = to_traces_data(spans)
    if req.accepts_protobuf():
        # TraceByIDResponse{trace = 1}: Tempo's Trace{resourceSpans = 1} has the wire
        # form of OTLP TracesData, so the payload is field 1 around it.
        payload = td.SerializeToString()
        return Response(200, b"\x0a" + _varint(len(payload)) + payload, "application/protobuf")
    return json_response({"trace": traces_data_json(td), "metrics": {}})


# -- search ----------------------------------------------------------------------


def legacy_tree(tags: dict[str, str], min_ns: int, max_ns: int) -> Any:
    """Tempo's tag search as a one-spanset TraceQL tree."""
    conds: list[Any] = []
    for k, v in tags.items():
        if k in ("service.name", "resource.service.name"):
            conds.append(traceql.Cmp(traceql.Field("resource", "service.name"), "=",
                                     traceql.Value("string", v)))
        elif k == "name":
            conds.append(traceql.Cmp(traceql.Field("intrinsic", "name"), "=",
                                     traceql.Value("string", v)))
        elif k in ("status", "status.code") or (k == "error" and v == "true"):
            status = "error" if k == "error" else v.lower().removeprefix("status_code_")
            conds.append(traceql.Cmp(traceql.Field("intrinsic", "status"), "=",
                                     traceql.Value("string", status)))
        else:
            conds.append(traceql.Cmp(traceql.Field("any", k), "=", traceql.Value("string", v)))
    if min_ns:
        conds.append(traceql.Cmp(traceql.Field("intrinsic", "duration"), ">=",
                                 traceql.Value("duration", min_ns)))
    if max_ns:
        conds.append(traceql.Cmp(traceql.Field("intrinsic", "duration"), "<=",
                                 traceql.Value("duration", max_ns)))
    expr = None
    for c in conds:
        expr = c if expr is None else traceql.BoolOp("&&", expr, c)
    return traceql.Spanset(expr)


def _store_method(api: HttpApi, name: str) -> Any:
    fn = getattr(api.store, name, None)
    if fn is None:
        raise HttpError(501, f"this storage backend does not answer {name}")
    return fn


def _field_columns(fields: list[traceql.Field], params: dict[str, Any]
                   ) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """SQL columns that read the queried attributes of matched spans, and per column
    (attribute name, alias, how to read the value: "str", "json" or "num")."""
    cols: dict[str, str] = {}
    reads: list[tuple[str, str, str]] = []
    for i, f in enumerate(fields):
        if f.scope == "intrinsic":
            continue
        if f.name == "service.name" and f.scope in ("resource", "any"):
            continue  # every span shows service.name
        key = f"mf{i}"
        params[key] = f.name
        ref = f"{{{key}:String}}"
        if f.scope in ("span", "any"):
            col = VIRTUAL_ATTRIBUTES.get(f.name)
            if col:
                cols[f"a{i}v"] = f"toString({col})"
                reads.append((f.name, f"a{i}v", "num" if col in _NUMERIC_COLUMNS else "str"))
            else:
                cols[f"a{i}s"] = f"attributes[{ref}]"
                cols[f"a{i}j"] = f"attributes_json[{ref}]"
                reads += [(f.name, f"a{i}s", "str"), (f.name, f"a{i}j", "json")]
        if f.scope in ("resource", "any"):
            cols[f"a{i}r"] = f"resource[{ref}]"
            reads.append((f.name, f"a{i}r", "str"))
    return cols, reads


def _row_attributes(row: dict[str, Any], reads: list[tuple[str, str, str]]
                    ) -> list[dict[str, Any]]:
    out: dict[str, Any] = {}
    for name, alias, how in reads:
        v = row.get(alias)
        if name in out or v in (None, "") or (how == "num" and v == "0"):
            continue  # not set on this span (a column of ours holds 0 when unknown)
        if how in ("json", "num"):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[name] = v
    attrs = [_attr_json(k, v) for k, v in out.items()]
    if row.get("service"):
        attrs.append(_attr_json("service.name", row["service"]))
    return attrs


def _attr_json(key: str, v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        val: dict[str, Any] = {"boolValue": v}
    elif isinstance(v, int):
        val = {"intValue": str(v)}
    elif isinstance(v, float):
        val = {"doubleValue": v}
    else:
        val = {"stringValue": v if isinstance(v, str) else json.dumps(v)}
    return {"key": key, "value": val}


def search(api: HttpApi, req: Request) -> Response:
    since, until = unix_window(req.get("start"), req.get("end"), 1_000_000_000)
    limit = max(1, min(int_param(req.get("limit"), "limit", 20), 10_000))
    spss = max(1, min(int_param(req.get("spss"), "spss", 3), 100))
    q = req.get("q").strip()
    try:
        if q:
            tree = traceql.parse(q)
        else:
            tags = logfmt(maybe_double_decoded(req.get("tags")))
            tree = legacy_tree(tags, go_duration_ns(req.get("minDuration"), "minDuration"),
                               go_duration_ns(req.get("maxDuration"), "maxDuration"))
        sql = traceql.to_sql(tree, since, until)
    except traceql.Unsupported as e:
        raise HttpError(400, f"unsupported TraceQL: {e}") from None
    cols, reads = _field_columns(traceql.spanset_fields(tree), sql.params)
    # the traces, their matching spans and their parentless server spans (what the
    # listing of joined traces looks up) in one read (SqlStore.search_spansets)
    found, matched, roots = _store_method(api, "search_spansets")(
        sql.cond, sql.icond, sql.params, limit, sql.matched, spss, cols, roots=True)
    # each joined trace once, under one id; its fragments' matched spans with it
    page = list_page(api.store, found, roots)
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for r in matched:
        by_trace.setdefault(page.alias.get(r["tid"], r["tid"]), []).append(r)
    traces = []
    for t in page.rows:
        rows = sorted(by_trace.get(t.trace_id, []),
                      key=lambda r: (int(r["start_ns"]), r["sid"]))
        spans = [{
            "spanID": r["sid"],
            "name": r["operation"],
            "startTimeUnixNano": str(r["start_ns"]),
            "durationNanos": str(max(0, int(r["end_ns"]) - int(r["start_ns"]))),
            "attributes": _row_attributes(r, reads),
        } for r in rows[:spss]]
        spanset = {"spans": spans, "matched": len(rows)}
        traces.append({
            "traceID": t.trace_id,
            "rootServiceName": t.root_service or "<root span not yet received>",
            "rootTraceName": t.root_operation,
            "startTimeUnixNano": str(t.start_ns),
            "durationMs": t.duration_ns // 1_000_000,
            "spanSet": spanset,
            "spanSets": [spanset],
        })
    return json_response({"traces": traces, "metrics": {"inspectedTraces": len(found)}})


# -- tags ------------------------------------------------------------------------


def _window(req: Request) -> tuple[str, dict[str, Any]]:
    """Time condition (and, with `q=`, the query's span condition) for tag listings."""
    since, until = recent_window(*unix_window(req.get("start"), req.get("end"), 1_000_000_000))
    q = req.get("q").strip()
    if q:
        try:
            tree = traceql.parse(q)
            if isinstance(tree, traceql.Spanset):
                sql = traceql.to_sql(tree, since, until)
                return sql.cond, sql.params
        except traceql.Unsupported:
            pass  # autocomplete sends half-typed queries: list without the filter
    sql = traceql.to_sql(traceql.Spanset(None), since, until)
    return sql.cond, sql.params


def _distinct(api: HttpApi, expr: str, cond: str, params: dict[str, Any],
              limit: int = MAX_TAG_VALUES) -> list[str]:
    return _store_method(api, "distinct_values")(expr, cond, params, limit)


def _span_keys(api: HttpApi, cond: str, params: dict[str, Any]) -> list[str]:
    keys = set(_distinct(
        api, "arrayJoin(arrayConcat(mapKeys(attributes), mapKeys(attributes_json)))",
        cond, params))
    keys.discard("otel.scope.name")
    keys.discard("zerotrace.otlp")  # OTLP fields kept whole (events, links...), not a tag
    return sorted(keys | set(VIRTUAL_ATTRIBUTES))


def _resource_keys(api: HttpApi, cond: str, params: dict[str, Any]) -> list[str]:
    return sorted(set(_distinct(api, "arrayJoin(mapKeys(resource))", cond, params))
                  | {"service.name"})


def tags_v1(api: HttpApi, req: Request) -> Response:
    cond, params = _window(req)
    names = sorted(set(_span_keys(api, cond, params)) | set(_resource_keys(api, cond, params))
                   | {"name", "status"})
    return json_response({"tagNames": names})


def tags_v2(api: HttpApi, req: Request) -> Response:
    scope = req.get("scope", "all") or "all"
    if scope not in ("all", "none", "span", "resource", "intrinsic"):
        raise HttpError(400, f"scope {scope!r} is not supported (span, resource, intrinsic)")
    cond, params = _window(req)
    scopes = []
    if scope in ("all", "none", "span"):
        scopes.append({"name": "span", "tags": _span_keys(api, cond, params)})
    if scope in ("all", "none", "resource"):
        scopes.append({"name": "resource", "tags": _resource_keys(api, cond, params)})
    if scope in ("all", "none", "intrinsic"):
        scopes.append({"name": "intrinsic", "tags": INTRINSIC_TAGS})
    return json_response({"scopes": scopes, "metrics": {}})


def _typed(v: str) -> dict[str, str]:
    """A value from the typed-attribute column (JSON text) with its TraceQL type."""
    try:
        x = json.loads(v)
    except ValueError:
        return {"type": "string", "value": v}
    if isinstance(x, bool):
        return {"type": "bool", "value": "true" if x else "false"}
    if isinstance(x, int):
        return {"type": "int", "value": str(x)}
    if isinstance(x, float):
        return {"type": "float", "value": v}
    return {"type": "string", "value": x if isinstance(x, str) else v}


def tag_values(api: HttpApi, f: traceql.Field, cond: str, params: dict[str, Any]
               ) -> list[dict[str, str]]:
    """Typed values of one field, as Tempo's v2 tag values lists them."""
    p = dict(params)
    p["tag_key"] = f.name
    k = "{tag_key:String}"
    out: list[dict[str, str]] = []
    if f.scope == "intrinsic":
        if f.name == "status":
            return [{"type": "keyword", "value": v} for v in ("error", "ok", "unset")]
        if f.name == "kind":
            p["model_key"] = MODEL_KEY
            return [{"type": "keyword", "value": v} for v in _distinct(
                api, traceql.kind_sql("{model_key:String}"), cond, p)]
        if f.name in ("name", "statusMessage"):
            col = "operation" if f.name == "name" else "error"
            return [{"type": "string", "value": v} for v in _distinct(api, col, cond, p)]
        return []
    if f.name == "service.name" and f.scope in ("resource", "any"):
        out += [{"type": "string", "value": v} for v in _distinct(api, "service", cond, p)]
        return out
    if f.scope in ("span", "any"):
        col = VIRTUAL_ATTRIBUTES.get(f.name)
        if col:
            typ = "int" if col in _NUMERIC_COLUMNS else "string"
            out += [{"type": typ, "value": v} for v in _distinct(api, col, cond, p)
                    if v != "0"]
        else:
            out += [{"type": "string", "value": v} for v in _distinct(
                api, f"attributes[{k}]", f"({cond}) AND mapContains(attributes, {k})", p)]
            out += [_typed(v) for v in _distinct(
                api, f"attributes_json[{k}]",
                f"({cond}) AND mapContains(attributes_json, {k})", p)]
    if f.scope in ("resource", "any"):
        out += [{"type": "string", "value": v} for v in _distinct(
            api, f"resource[{k}]", f"({cond}) AND mapContains(resource, {k})", p)]
    seen: set[tuple[str, str]] = set()
    uniq = []
    for v in out:
        key = (v["type"], v["value"])
        if key not in seen:
            seen.add(key)
            uniq.append(v)
    return uniq[:MAX_TAG_VALUES]


def _tag_field(name: str, scoped: bool) -> traceql.Field:
    if not scoped and name not in traceql.INTRINSICS:
        return traceql.Field("any", name)
    try:
        return traceql.parse_field(name)
    except traceql.Unsupported as e:
        raise HttpError(400, f"unsupported tag name: {e}") from None


def tag_values_v1(api: HttpApi, req: Request) -> Response:
    cond, params = _window(req)
    vals = tag_values(api, _tag_field(req.args["name"], scoped=False), cond, params)
    return json_response({"tagValues": sorted({v["value"] for v in vals})})


def tag_values_v2(api: HttpApi, req: Request) -> Response:
    cond, params = _window(req)
    name = req.args["name"]
    if name.partition(":")[2] or name in traceql.OTHER_INTRINSICS:
        # Grafana's autocomplete asks for intrinsics of its own list (trace:rootService,
        # event:name, ...); ones this server does not have simply have no values.
        if traceql.parse_field_or_none(name) is None:
            return json_response({"tagValues": [], "metrics": {}})
    vals = tag_values(api, _tag_field(name, scoped=True), cond, params)
    return json_response({"tagValues": vals, "metrics": {}})


ROUTES = [
    (r"/api/echo", echo),
    (r"/api/status/buildinfo", buildinfo),
    (r"/api/traces/(?P<trace_id>[^/]+)", trace_v1),
    (r"/api/v2/traces/(?P<trace_id>[^/]+)", trace_v2),
    (r"/api/search", search),
    (r"/api/search/tags", tags_v1),
    (r"/api/v2/search/tags", tags_v2),
    (r"/api/search/tag/(?P<name>[^/]+)/values", tag_values_v1),
    (r"/api/v2/search/tag/(?P<name>[^/]+)/values", tag_values_v2),
]
