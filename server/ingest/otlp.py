"""OTLP `TraceService/Export` receiver: application spans (source "A") from SDKs.

They are stored beside eBPF spans; spans of one request share the W3C trace id
(the agent adopts the trace id of a `traceparent` it sees), so `GetTrace` returns
both without any extra join.  A request becomes the span table's Arrow columns
(`otlp_to_span_list`, then proto/convert.py `span_list_to_table`), has its secrets
masked with the agent's rules (server/ingest/redact.py; on unless the admission
says not) and takes the path of every other wire (server/ingest/service.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from proto.convert import span_list_to_table, span_row_class
from proto.span import SOURCE_APP, STATUS_ERROR, STATUS_OK, STATUS_UNSET
from proto.zerotrace.v1 import span_pb2
from server.auth import certificate_name
from server.ingest.admission import Admission, ByteBudget, bytes_or_abort, sender_of
from server.ingest.caps import FLAG as CAP_FLAG
from server.ingest.caps import MAX_ATTRIBUTES, MAX_KEY_BYTES, cap_maps, cut
from server.ingest.caps import flag as cap_flag
from server.ingest.redact import redact_table
from server.ingest.service import Batch, checked, store_admitted
from server.ingest.writer import BatchWriter

log = logging.getLogger(__name__)

# OTLP kinds onto the stored kind (what stitching and search reason about); a kind
# the column cannot say (producer, consumer, unspecified) is kept in MODEL_KEY.
_KINDS = {
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "client",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "internal",
}
_KIND_KEPT = {
    trace_pb2.Span.SPAN_KIND_CONSUMER: "consumer",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "producer",
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "unspecified",
}
_STATUS = {
    trace_pb2.Status.STATUS_CODE_OK: STATUS_OK,
    trace_pb2.Status.STATUS_CODE_ERROR: STATUS_ERROR,
}

# Where the parts of the OTLP model that have no column of their own are stored:
# one JSON object in `attributes_json` under MODEL_KEY (events, links, flags, a kind
# the column cannot say, a status message of a span that is not an error, the
# scope's version/attributes/schema URL, the resource's typed values/schema URL,
# dropped counts).  In the maps rather than new columns so that stored data, the
# agent's Arrow batches and tables made by earlier versions all stay as they are;
# server/http/otlp_map.py puts every part back in its OTLP field.  The scope name
# stays a plain attribute (SCOPE_NAME_KEY, searchable); trace state goes into
# `trace_headers["tracestate"]`, where the agent keeps the header it saw.
MODEL_KEY = "zerotrace.otlp"
SCOPE_NAME_KEY = "otel.scope.name"
# At most this many events and links a span (the SDK's default limits), attributes
# an event or link (as a span's), and bytes of the whole MODEL_KEY value: beyond,
# they are dropped and added to the OTLP dropped counts, and the span is flagged
# (caps.FLAG) as a capped span's attributes are.
MAX_EVENTS = 128
MAX_LINKS = 128
MAX_MODEL_BYTES = 256 * 1024


def any_value(v: common_pb2.AnyValue) -> Any:
    """The Python value of an OTLP AnyValue."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which)


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


# One encoder (json.dumps with separators builds one per call, ~3 us).
_json = json.JSONEncoder(separators=(",", ":")).encode


class _Capper:
    """Caps applied to the parts of a span kept under MODEL_KEY: counts what it cut
    and dropped, for the span's caps.FLAG."""

    def __init__(self) -> None:
        self.cuts = 0
        self.drops = 0

    def value(self, v: Any) -> Any:
        if isinstance(v, str):
            out = cut(v)
            self.cuts += out is not v
            return out
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        return v

    def attributes(self, kvs: Any) -> tuple[dict[str, Any], int]:
        """Capped attributes of a repeated KeyValue; (attributes, how many dropped)."""
        out: dict[str, Any] = {}
        dropped = 0
        for kv in kvs:
            if len(out) >= MAX_ATTRIBUTES or len(kv.key.encode()) > MAX_KEY_BYTES:
                dropped += 1
                continue
            out[kv.key] = self.value(any_value(kv.value))
        self.drops += dropped
        return out, dropped


_NO_CAPS = _Capper()  # the counts of a span with nothing to cap (never changed)


def _event(e: trace_pb2.Span.Event, capper: _Capper) -> dict[str, Any]:
    attrs, dropped = capper.attributes(e.attributes)
    out: dict[str, Any] = {"time": e.time_unix_nano, "name": cut(e.name)}
    if attrs:
        out["attributes"] = attrs
    if e.dropped_attributes_count + dropped:
        out["dropped"] = e.dropped_attributes_count + dropped
    return out


def _link(lk: trace_pb2.Span.Link, capper: _Capper) -> dict[str, Any]:
    attrs, dropped = capper.attributes(lk.attributes)
    out: dict[str, Any] = {"trace_id": lk.trace_id.hex(), "span_id": lk.span_id.hex()}
    if lk.trace_state:
        out["trace_state"] = cut(lk.trace_state)
    if attrs:
        out["attributes"] = attrs
    if lk.dropped_attributes_count + dropped:
        out["dropped"] = lk.dropped_attributes_count + dropped
    if lk.flags:
        out["flags"] = lk.flags
    return out


def _bounded(items: Any, make: Any, limit: int, budget: list[int],
             capper: _Capper) -> tuple[list[dict[str, Any]], int]:
    """Up to `limit` converted items while `budget[0]` bytes last; (items, dropped)."""
    out: list[dict[str, Any]] = []
    for x in items:
        if len(out) >= limit:
            break
        d = make(x, capper)
        size = len(_json(d))
        if size > budget[0]:
            break
        budget[0] -= size
        out.append(d)
    dropped = len(items) - len(out)
    capper.drops += dropped
    return out, dropped


def _scope_model(ss: trace_pb2.ScopeSpans, capper: _Capper) -> dict[str, Any]:
    scope: dict[str, Any] = {}
    if ss.scope.version:
        scope["version"] = cut(ss.scope.version)
    attrs, dropped = capper.attributes(ss.scope.attributes)
    if attrs:
        scope["attributes"] = attrs
    if ss.scope.dropped_attributes_count + dropped:
        scope["dropped"] = ss.scope.dropped_attributes_count + dropped
    if ss.schema_url:
        scope["schema_url"] = cut(ss.schema_url)
    return scope


def _resource_model(rs: trace_pb2.ResourceSpans, typed: dict[str, Any],
                    dropped: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if typed:
        res["typed"] = typed  # the resource map holds their JSON text
    if rs.resource.dropped_attributes_count + dropped:
        res["dropped"] = rs.resource.dropped_attributes_count + dropped
    if rs.schema_url:
        res["schema_url"] = cut(rs.schema_url)
    return res


def _span_model(o: trace_pb2.Span, capper: _Capper, budget_bytes: int) -> dict[str, Any]:
    """The span's own part of its MODEL_KEY object ({} when it has none: the common
    span, whose object is then its scope's and resource's, encoded once)."""
    model: dict[str, Any] = {}
    budget = [budget_bytes]
    if o.kind in _KIND_KEPT:
        model["kind"] = _KIND_KEPT[o.kind]
    if o.flags:
        model["flags"] = o.flags
    if o.status.message and o.status.code != trace_pb2.Status.STATUS_CODE_ERROR:
        model["status_message"] = cut(o.status.message)
    events, lost_events = _bounded(o.events, _event, MAX_EVENTS, budget, capper)
    links, lost_links = _bounded(o.links, _link, MAX_LINKS, budget, capper)
    if events:
        model["events"] = events
    if links:
        model["links"] = links
    dropped = {"attributes": o.dropped_attributes_count,
               "events": o.dropped_events_count + lost_events,
               "links": o.dropped_links_count + lost_links}
    dropped = {k: v for k, v in dropped.items() if v}
    if dropped:
        model["dropped"] = dropped
    return model


def otlp_to_span_list(req: trace_service_pb2.ExportTraceServiceRequest) -> span_pb2.SpanList:
    """Convert an OTLP export request to our wire spans, keeping every OTLP field
    (see MODEL_KEY) within the ingest caps."""
    out = span_pb2.SpanList()
    _convert(req, out.spans.add)
    return out


def otlp_to_rows(req: trace_service_pb2.ExportTraceServiceRequest) -> list[Any]:
    """`otlp_to_span_list` into plain stand-ins of `zerotrace.v1.Span`
    (proto/convert.py `span_row_class`), which ingest turns into the span table's
    columns: writing and then reading back upb messages cost more than the
    conversion itself (~100 of ~200 us a span on a busy machine)."""
    rows: list[Any] = []
    row = span_row_class()

    def add() -> Any:
        r = row()
        rows.append(r)
        return r

    _convert(req, add)
    return rows


def _convert(req: trace_service_pb2.ExportTraceServiceRequest, add: Any) -> None:
    """The conversion of `otlp_to_span_list`; `add()` makes each span to fill."""
    for rs in req.resource_spans:
        resource: dict[str, str] = {}
        typed: dict[str, Any] = {}
        for kv in rs.resource.attributes:
            val = any_value(kv.value)
            resource[kv.key] = _text(val)
            if not isinstance(val, str):
                typed[kv.key] = val
        # Capped once, before the copy into each span (server/ingest/caps.py).
        rcuts, rdrops = cap_maps({}, {}, resource)
        rcapper = _Capper()
        typed = {k: rcapper.value(v) for k, v in typed.items() if k in resource}
        res_model = _resource_model(rs, typed, len(rs.resource.attributes) - len(resource))
        service = resource.get("service.name", "")
        for ss in rs.scope_spans:
            scope_capper = _Capper()
            shared: dict[str, Any] = {}
            scope = _scope_model(ss, scope_capper)
            if scope:
                shared["scope"] = scope
            if res_model:
                shared["resource"] = res_model
            shared_json = _json(shared) if shared else ""
            simple_json: dict[tuple[int, int], str] = {}
            scope_name = cut(ss.scope.name)
            budget = MAX_MODEL_BYTES - len(shared_json)
            for o in ss.spans:
                m = add()
                m.trace_id = o.trace_id
                m.span_id = o.span_id
                m.parent_span_id = o.parent_span_id
                m.kind = _KINDS.get(o.kind, "internal")
                m.source = SOURCE_APP
                m.operation = o.name
                m.status = _STATUS.get(o.status.code, STATUS_UNSET)
                m.error = o.status.message if m.status == STATUS_ERROR else ""
                m.start_ns = o.start_time_unix_nano
                m.end_ns = o.end_time_unix_nano
                m.service = service
                for kv in o.attributes:
                    val = any_value(kv.value)
                    if isinstance(val, str):
                        m.attributes[kv.key] = val
                    else:
                        m.attributes_json[kv.key] = _json(val)
                code = m.attributes_json.get("http.response.status_code", "")
                m.status_code = code or m.attributes.get("rpc.grpc.status_code", "")
                m.protocol = "http" if "http.request.method" in m.attributes else ""
                m.resource.update(resource)
                if o.trace_state:
                    m.trace_headers["tracestate"] = cut(o.trace_state)
                cuts, drops = cap_maps(m.attributes, m.attributes_json, None)
                # The model's parts are added after the caps: they are not attributes
                # and are capped by their own rules (_Capper, MAX_MODEL_BYTES).
                if scope_name:
                    m.attributes[SCOPE_NAME_KEY] = scope_name
                capper = _NO_CAPS
                if (o.events or o.links or o.status.message or o.dropped_attributes_count
                        or o.dropped_events_count or o.dropped_links_count):
                    capper = _Capper()
                    own = _span_model(o, capper, budget)
                    model_json = _json({**shared, **own}) if own else shared_json
                else:
                    # The common span: only flags and kind of its own (the SDK sets
                    # flags on every span), so its object is one of a few per scope.
                    simple = (o.flags, o.kind)
                    model_json = simple_json.get(simple)
                    if model_json is None:
                        own = _span_model(o, capper, budget)
                        model_json = _json({**shared, **own}) if own else shared_json
                        simple_json[simple] = model_json
                if model_json:
                    m.attributes_json[MODEL_KEY] = model_json
                cuts += capper.cuts + scope_capper.cuts + rcapper.cuts + rcuts
                drops += capper.drops + scope_capper.drops + rdrops
                if cuts or drops:
                    m.attributes[CAP_FLAG] = cap_flag(cuts, drops)


class _Undecodable:
    """A request body that is not an ExportTraceServiceRequest, and why."""

    def __init__(self, why: str) -> None:
        self.why = why


def _decode(data: bytes) -> trace_service_pb2.ExportTraceServiceRequest | _Undecodable:
    # Decoded here rather than by gRPC so that a bad body (invalid UTF-8 in a string,
    # above all) gets INVALID_ARGUMENT with the reason, not a bare INTERNAL.
    try:
        return trace_service_pb2.ExportTraceServiceRequest.FromString(data)
    except DecodeError as e:
        return _Undecodable(str(e).rpartition(": ")[2] or "undecodable")


class OtlpTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, writer: BatchWriter, admission: Admission | None = None,
                 budget: ByteBudget | None = None) -> None:
        self.writer = writer
        self.admission = admission or Admission()
        self.budget = budget

    def handler(self) -> grpc.GenericRpcHandler:
        """The gRPC handler for OTLP `TraceService` (the generated wire, own decoding)."""
        return grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(
                # Raw bytes: the byte cap is checked before the request is decoded.
                self.Export, request_deserializer=None,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse
                .SerializeToString)},
        )

    def Export(  # noqa: N802 - gRPC method name
        self, data: bytes, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with bytes_or_abort(self.budget, len(data), "otlp", context):
            return self._export(_decode(data), context)

    def _export(
        self, request: trace_service_pb2.ExportTraceServiceRequest | _Undecodable,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if isinstance(request, _Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"not a valid OTLP ExportTraceServiceRequest ({request.why}); "
                          "nothing stored")
        sender = sender_of("", context.peer(), certificate_name(context))
        return self.export(request, context, sender)

    def export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext, sender: str,
               ) -> trace_service_pb2.ExportTraceServiceResponse:
        """Admit, convert and store a decoded request of `sender`: shared by OTLP/gRPC
        and OTLP/HTTP (server/http/otlp_http.py, whose `context` maps `abort` to an
        HTTP status).  Some spans refused: `partial_success` says how many and why."""

        def encode() -> Batch:
            table = span_list_to_table(otlp_to_rows(request))
            if self.admission.redact:
                table = redact_table(table)
            return checked(table, capped=True)  # capped while converted, with its flag

        _accepted, rejected, errors = store_admitted(
            self.writer, self.admission, sender, context, encode)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = "; ".join(errors)
        return resp
