"""Our spans as the models Grafana's data sources read: OTLP (Tempo) and Jaeger JSON.

S (syscall), N (network) and A (application) spans all map the same way: kind,
status, attributes (typed values stay typed), resource (`service.name` + the stored
resource attributes), and links.  Fields that only zerotrace has (source, protocol,
connection tuple, sequence numbers, process) become attributes under the names the
agent's own OTLP exporter uses, so a span reads the same in Grafana as anywhere else.
Links: a span joined from another node's fragment links to its stored trace, and a
`traceparent` header seen on the wire that names another trace links to that span.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from proto.span import SOURCE_APP, Span, valid_traceparent
from server.ingest.otlp import MODEL_KEY, SCOPE_NAME_KEY

SCOPE_NAME = "zerotrace"
SCOPE_VERSION = "0.1.0"

_KIND = {
    "server": trace_pb2.Span.SPAN_KIND_SERVER,
    "client": trace_pb2.Span.SPAN_KIND_CLIENT,
    "internal": trace_pb2.Span.SPAN_KIND_INTERNAL,
}
_STATUS = {
    "ok": trace_pb2.Status.STATUS_CODE_OK,
    "error": trace_pb2.Status.STATUS_CODE_ERROR,
}

# zerotrace-only span fields -> (attribute name, SQL expression over the span table).
# The SQL side is what TraceQL's `span.<name>` reads (traceql.py), so a value shown
# in Grafana can be searched for by the same name.
VIRTUAL_ATTRIBUTES: dict[str, str] = {
    "zerotrace.source": "source",
    "zerotrace.protocol": "protocol",
    "zerotrace.agent": "agent",
    "zerotrace.incomplete": "incomplete",
    "zerotrace.status_code": "status_code",
    "process.pid": "pid",
    "thread.id": "tid",
    "process.executable.name": "process",
    "network.transport": "transport",
    "network.local.address": "local_addr",
    "network.local.port": "local_port",
    "network.peer.address": "remote_addr",
    "network.peer.port": "remote_port",
    "zerotrace.req_seq": "req_seq",
    "zerotrace.resp_seq": "resp_seq",
}


def otlp_model(s: Span) -> dict[str, Any]:
    """The OTLP fields stored with an OTLP-received span that have no column of their
    own (server/ingest/otlp.py MODEL_KEY): events, links, scope, ...; {} if none."""
    m = s.attributes.get(MODEL_KEY)
    return m if isinstance(m, dict) else {}


def span_attributes(s: Span) -> dict[str, Any]:
    """The span's attributes plus its zerotrace-only fields (empty ones left out)."""
    attrs: dict[str, Any] = dict(s.attributes)
    attrs.pop(MODEL_KEY, None)  # not an attribute: OTLP fields (see otlp_model)
    values = {
        "zerotrace.source": s.source,
        "zerotrace.protocol": s.protocol,
        "zerotrace.agent": s.agent,
        "zerotrace.incomplete": s.incomplete,
        "zerotrace.status_code": s.status_code,
        "process.pid": s.pid,
        "thread.id": s.tid,
        "process.executable.name": s.process,
        "network.transport": s.transport,
        "network.local.address": s.local.addr,
        "network.local.port": s.local.port,
        "network.peer.address": s.remote.addr,
        "network.peer.port": s.remote.port,
        "zerotrace.req_seq": s.req_seq,
        "zerotrace.resp_seq": s.resp_seq,
    }
    for k, v in values.items():
        if v not in (None, "", 0) and k not in attrs:
            attrs[k] = v
    return attrs


def resource_attributes(s: Span) -> dict[str, Any]:
    """The span's resource attributes; typed values of an OTLP resource typed again."""
    res: dict[str, Any] = dict(s.resource)
    typed = otlp_model(s).get("resource", {}).get("typed")
    if isinstance(typed, dict):
        res.update((k, v) for k, v in typed.items() if k in res)
    if s.service:
        res["service.name"] = s.service
    return res


def span_links(s: Span) -> list[tuple[str, str, str]]:
    """(trace id, span id, why) of the spans this one links to besides its parent."""
    out = []
    frag = s.attributes.get("zerotrace.fragment_trace_id")
    if isinstance(frag, str) and len(frag) == 32 and frag != s.trace_id:
        out.append((frag, s.span_id, "fragment"))
    tp = s.trace_headers.get("traceparent", "")
    if tp and valid_traceparent(tp):
        _ver, tid, sid, _flags = tp.split("-")[:4]
        if tid != s.trace_id:
            out.append((tid, sid, "traceparent"))
    return out


# -- OTLP ------------------------------------------------------------------------


def any_value(v: Any) -> common_pb2.AnyValue:
    """A Python value as an OTLP AnyValue (bool before int: bool is an int)."""
    if v is None:  # an empty AnyValue (OTLP allows one), stored as JSON null
        return common_pb2.AnyValue()
    if isinstance(v, bool):
        return common_pb2.AnyValue(bool_value=v)
    if isinstance(v, int) and -(2**63) <= v < 2**63:
        return common_pb2.AnyValue(int_value=v)
    if isinstance(v, float):
        return common_pb2.AnyValue(double_value=v)
    if isinstance(v, list | tuple):
        return common_pb2.AnyValue(
            array_value=common_pb2.ArrayValue(values=[any_value(x) for x in v]))
    if isinstance(v, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(
            values=[common_pb2.KeyValue(key=str(k), value=any_value(x)) for k, x in v.items()]))
    if isinstance(v, bytes):
        return common_pb2.AnyValue(bytes_value=v)
    return common_pb2.AnyValue(string_value=str(v))


def key_values(attrs: dict[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in sorted(attrs.items())]


_KEPT_KINDS = {
    "producer": trace_pb2.Span.SPAN_KIND_PRODUCER,
    "consumer": trace_pb2.Span.SPAN_KIND_CONSUMER,
    "unspecified": trace_pb2.Span.SPAN_KIND_UNSPECIFIED,
}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _kv_items(attrs: Any) -> list[common_pb2.KeyValue]:
    return key_values(attrs) if isinstance(attrs, dict) else []


def to_otlp_span(s: Span) -> trace_pb2.Span:
    model = otlp_model(s)
    attrs = span_attributes(s)
    attrs.pop(SCOPE_NAME_KEY, None)  # carried on the ScopeSpans, not the span
    message = s.error if s.status == "error" else str(model.get("status_message", ""))
    m = trace_pb2.Span(
        trace_id=bytes.fromhex(s.trace_id),
        span_id=bytes.fromhex(s.span_id),
        parent_span_id=bytes.fromhex(s.parent_span_id) if s.parent_span_id else b"",
        # An application span keeps its name, even an empty one
        name=s.operation if s.source == SOURCE_APP else s.operation or s.protocol or s.kind,
        kind=_KEPT_KINDS.get(str(model.get("kind")),
                             _KIND.get(s.kind, trace_pb2.Span.SPAN_KIND_UNSPECIFIED)),
        start_time_unix_nano=s.start_ns,
        end_time_unix_nano=s.end_ns,
        attributes=key_values(attrs),
        status=trace_pb2.Status(
            code=_STATUS.get(s.status, trace_pb2.Status.STATUS_CODE_UNSET),
            message=message,
        ),
        flags=_int(model.get("flags")),
    )
    for e in model.get("events") or ():
        m.events.add(time_unix_nano=_int(e.get("time")), name=str(e.get("name", "")),
                     attributes=_kv_items(e.get("attributes")),
                     dropped_attributes_count=_int(e.get("dropped")))
    for lk in model.get("links") or ():
        try:
            tid, sid = bytes.fromhex(lk["trace_id"]), bytes.fromhex(lk["span_id"])
        except (KeyError, TypeError, ValueError):
            continue
        m.links.add(trace_id=tid, span_id=sid, trace_state=str(lk.get("trace_state", "")),
                    attributes=_kv_items(lk.get("attributes")),
                    dropped_attributes_count=_int(lk.get("dropped")),
                    flags=_int(lk.get("flags")))
    for tid, sid, why in span_links(s):
        m.links.add(trace_id=bytes.fromhex(tid), span_id=bytes.fromhex(sid),
                    attributes=key_values({"zerotrace.link": why}))
    dropped = model.get("dropped") or {}
    m.dropped_attributes_count = _int(dropped.get("attributes"))
    m.dropped_events_count = _int(dropped.get("events"))
    m.dropped_links_count = _int(dropped.get("links"))
    tp = s.trace_headers.get("tracestate")
    if tp:
        m.trace_state = tp
    return m


def _key(obj: Any) -> str:
    """A hashable, order-independent key of a JSON-able value."""
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def to_traces_data(spans: Sequence[Span]) -> trace_pb2.TracesData:
    """OTLP `TracesData`: one ResourceSpans per resource, one ScopeSpans per
    instrumentation scope (the SDK's for A spans, `zerotrace` for S and N); scope
    version, attributes and schema URLs as received over OTLP."""
    td = trace_pb2.TracesData()
    groups: dict[str, tuple[dict[str, Any], dict[str, tuple[str, dict, list[Span]]]]] = {}
    for s in spans:
        model = otlp_model(s)
        res = resource_attributes(s)
        res_model = model.get("resource") or {}
        rkey = _key([res, res_model.get("schema_url", ""), res_model.get("dropped", 0)])
        if s.source == SOURCE_APP:  # the scope it came with, even an empty one
            scope = str(s.attributes.get(SCOPE_NAME_KEY, ""))
            scope_model = model.get("scope") or {}
        else:
            scope, scope_model = SCOPE_NAME, {"version": SCOPE_VERSION}
        skey = _key([scope, scope_model])
        entry = groups.setdefault(rkey, ({"attributes": res, **res_model}, {}))
        entry[1].setdefault(skey, (scope, scope_model, []))[2].append(s)
    for res_info, scopes in groups.values():
        rs = td.resource_spans.add(resource=resource_pb2.Resource(
            attributes=key_values(res_info["attributes"]),
            dropped_attributes_count=_int(res_info.get("dropped"))))
        rs.schema_url = str(res_info.get("schema_url", ""))
        for scope, scope_model, members in scopes.values():
            ss = rs.scope_spans.add()
            ss.scope.name = scope
            ss.scope.version = str(scope_model.get("version", ""))
            ss.scope.attributes.extend(_kv_items(scope_model.get("attributes")))
            ss.scope.dropped_attributes_count = _int(scope_model.get("dropped"))
            ss.schema_url = str(scope_model.get("schema_url", ""))
            ss.spans.extend(to_otlp_span(s) for s in members)
    return td


def _hex_ids(obj: Any) -> Any:
    """protojson writes bytes as base64; OTLP/JSON wants trace and span ids in hex."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                out[k] = base64.b64decode(v).hex()
            else:
                out[k] = _hex_ids(v)
        return out
    if isinstance(obj, list):
        return [_hex_ids(x) for x in obj]
    return obj


def traces_data_json(td: trace_pb2.TracesData) -> dict[str, Any]:
    """OTLP/JSON of `td` (camelCase names, integer enums, hex ids)."""
    return _hex_ids(MessageToDict(td, use_integers_for_enums=True))


# -- Jaeger ----------------------------------------------------------------------


def jaeger_tag(key: str, v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"key": key, "type": "bool", "value": v}
    if isinstance(v, int):
        return {"key": key, "type": "int64", "value": v}
    if isinstance(v, float):
        return {"key": key, "type": "float64", "value": v}
    if isinstance(v, list | tuple | dict):
        import json

        return {"key": key, "type": "string", "value": json.dumps(v, sort_keys=True)}
    return {"key": key, "type": "string", "value": str(v)}


def _jaeger_log(event: dict[str, Any]) -> dict[str, Any]:
    """An OTLP span event as a Jaeger log: its name under `event`, as OTel maps it."""
    fields = [jaeger_tag("event", event.get("name", ""))]
    attrs = event.get("attributes")
    if isinstance(attrs, dict):
        fields += [jaeger_tag(k, v) for k, v in sorted(attrs.items())]
    return {"timestamp": _int(event.get("time")) // 1000, "fields": fields}


def jaeger_trace(trace_id: str, spans: Sequence[Span]) -> dict[str, Any]:
    """One trace in the Jaeger query service's JSON model (`structuredui.Trace`)."""
    processes: dict[str, dict[str, Any]] = {}
    pids: dict[str, str] = {}
    out_spans = []
    ids = {s.span_id for s in spans}
    for s in spans:
        res = resource_attributes(s)
        pkey = _key(res)
        if pkey not in pids:
            pids[pkey] = f"p{len(pids) + 1}"
            processes[pids[pkey]] = {
                "serviceName": s.service or "unknown",
                "tags": [jaeger_tag(k, v) for k, v in sorted(res.items()) if k != "service.name"],
            }
        model = otlp_model(s)
        refs = []
        if s.parent_span_id:
            refs.append({"refType": "CHILD_OF", "traceID": trace_id,
                         "spanID": s.parent_span_id})
        for lk in model.get("links") or ():
            if isinstance(lk, dict) and lk.get("trace_id") and lk.get("span_id"):
                refs.append({"refType": "FOLLOWS_FROM", "traceID": lk["trace_id"],
                             "spanID": lk["span_id"]})
        for tid, sid, _why in span_links(s):
            refs.append({"refType": "FOLLOWS_FROM", "traceID": tid, "spanID": sid})
        tags = [jaeger_tag(k, v) for k, v in sorted(span_attributes(s).items())]
        kind = s.kind if s.kind in ("server", "client") else "internal"
        if model.get("kind") in ("producer", "consumer"):
            kind = model["kind"]
        # OTel's mapping to non-OTLP formats: dropped counts and the scope version as tags
        for what, n in sorted((model.get("dropped") or {}).items()):
            tags.append(jaeger_tag(f"otel.dropped_{what}_count", n))
        if (model.get("scope") or {}).get("version"):
            tags.append(jaeger_tag("otel.scope.version", model["scope"]["version"]))
        tags.append(jaeger_tag("span.kind", kind))
        if s.status == "error":
            tags.append(jaeger_tag("error", True))
            tags.append(jaeger_tag("otel.status_code", "ERROR"))
            if s.error:
                tags.append(jaeger_tag("otel.status_description", s.error))
        elif s.status == "ok":
            tags.append(jaeger_tag("otel.status_code", "OK"))
        warnings = None
        if s.incomplete:
            warnings = [f"incomplete: {s.incomplete}"]
        if s.parent_span_id and s.parent_span_id not in ids:
            warnings = (warnings or []) + [
                f"parent span {s.parent_span_id} is not in this trace"]
        out_spans.append({
            "traceID": trace_id,
            "spanID": s.span_id,
            "flags": 1,
            "operationName": s.operation or s.protocol or s.kind,
            "references": refs,
            "startTime": s.start_ns // 1000,
            "duration": max(0, s.end_ns - s.start_ns) // 1000,
            "tags": tags,
            "logs": [_jaeger_log(e) for e in model.get("events") or ()
                     if isinstance(e, dict)],
            "processID": pids[pkey],
            "warnings": warnings,
        })
    return {"traceID": trace_id, "spans": out_spans, "processes": processes, "warnings": None}


def envelope(data: Any, total: int | None = None, errors: Iterable[dict] | None = None,
             limit: int = 0, offset: int = 0) -> dict[str, Any]:
    """Jaeger's `structuredResponse` envelope."""
    if total is None:
        total = len(data) if isinstance(data, list) else 0
    errs = list(errors) if errors else None
    return {"data": data, "total": total, "limit": limit, "offset": offset, "errors": errs}
