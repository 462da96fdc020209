"""OTLP `TraceService/Export` receiver: application spans (source "A") from SDKs.

They are stored beside eBPF spans; spans of one request share the W3C trace id
(the agent adopts the trace id of a `traceparent` it sees), so `GetTrace` returns
both without any extra join.
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

from proto.span import SOURCE_APP, STATUS_ERROR, STATUS_OK, STATUS_UNSET
from proto.zerotrace.v1 import span_pb2
from server.auth import certificate_name
from server.ingest.admission import Admission, ByteBudget, bytes_or_abort, sender_of
from server.ingest.caps import FLAG as CAP_FLAG
from server.ingest.caps import cap_maps
from server.ingest.caps import flag as cap_flag
from server.ingest.service import Batch, store_admitted
from server.ingest.writer import BatchWriter

log = logging.getLogger(__name__)

_KINDS = {
    trace_pb2.Span.SPAN_KIND_SERVER: "server",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "server",
    trace_pb2.Span.SPAN_KIND_CLIENT: "client",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "client",
}
_STATUS = {
    trace_pb2.Status.STATUS_CODE_OK: STATUS_OK,
    trace_pb2.Status.STATUS_CODE_ERROR: STATUS_ERROR,
}


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
    return v if isinstance(v, str) else str(v)


def otlp_to_span_list(req: trace_service_pb2.ExportTraceServiceRequest) -> span_pb2.SpanList:
    """Convert an OTLP export request to our wire spans."""
    out = span_pb2.SpanList()
    for rs in req.resource_spans:
        resource = {kv.key: _text(any_value(kv.value)) for kv in rs.resource.attributes}
        # Capped once, before the copy into each span (server/ingest/caps.py).
        rcuts, rdrops = cap_maps({}, {}, resource)
        service = resource.get("service.name", "")
        for ss in rs.scope_spans:
            for o in ss.spans:
                m = out.spans.add()
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
                        m.attributes_json[kv.key] = json.dumps(val, separators=(",", ":"))
                code = m.attributes_json.get("http.response.status_code", "")
                m.status_code = code or m.attributes.get("rpc.grpc.status_code", "")
                m.protocol = "http" if "http.request.method" in m.attributes else ""
                m.resource.update(resource)
                if ss.scope.name:
                    m.attributes["otel.scope.name"] = ss.scope.name
                cuts, drops = cap_maps(m.attributes, m.attributes_json, None)
                if cuts or drops or rcuts or rdrops:
                    m.attributes[CAP_FLAG] = cap_flag(cuts + rcuts, drops + rdrops)
    return out


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

        def encode() -> Batch:
            spans = otlp_to_span_list(request)
            return Batch(spans.SerializeToString(), len(spans.spans))

        sender = sender_of("", context.peer(), certificate_name(context))
        _accepted, rejected, errors = store_admitted(
            self.writer, self.admission, sender, context, encode)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            resp.partial_success.rejected_spans = rejected
            resp.partial_success.error_message = "; ".join(errors)
        return resp
