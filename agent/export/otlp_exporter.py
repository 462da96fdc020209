"""Exporter to any OpenTelemetry collector over OTLP/gRPC (opentelemetry-sdk).

Our spans become SDK `ReadableSpan`s; zerotrace-only fields (source, tuple,
sequence numbers, process) travel as `zerotrace.*` / semantic-convention attributes
so nothing is lost on the way.  Retries are ours (BatchExporter), so the SDK
exporter is built with no retryable codes of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from agent.export.base import ExportResult, SpanExporter
from proto.credentials import ClientSecurity
from proto.span import Span

log = logging.getLogger(__name__)

_KIND = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}
_STATUS = {"ok": StatusCode.OK, "error": StatusCode.ERROR}
_SCOPE = InstrumentationScope("zerotrace", "0.1.0")


def _attr(v: Any) -> Any:
    if isinstance(v, str | bool | int | float):
        return v
    if isinstance(v, list | tuple) and all(isinstance(x, str | bool | int | float) for x in v):
        return list(v)
    return str(v)


def to_readable_span(s: Span) -> ReadableSpan:
    """An SDK span carrying everything our span knows."""
    ctx = SpanContext(
        int(s.trace_id, 16), int(s.span_id, 16), is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    parent = None
    if s.parent_span_id:
        parent = SpanContext(int(s.trace_id, 16), int(s.parent_span_id, 16), is_remote=True)
    attrs: dict[str, Any] = {k: _attr(v) for k, v in s.attributes.items()}
    extra = {
        "zerotrace.source": s.source,
        "zerotrace.protocol": s.protocol,
        "zerotrace.agent": s.agent,
        "zerotrace.incomplete": s.incomplete,
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
        "zerotrace.status_code": s.status_code,
    }
    for k, v in extra.items():
        if v not in (None, "", 0) and k not in attrs:
            attrs[k] = v
    resource = dict(s.resource)
    if s.service:
        resource.setdefault("service.name", s.service)
    code = _STATUS.get(s.status, StatusCode.UNSET)
    return ReadableSpan(
        name=s.operation or s.protocol or s.kind,
        context=ctx,
        parent=parent,
        resource=Resource.create(resource) if resource else Resource.get_empty(),
        attributes=attrs,
        kind=_KIND.get(s.kind, SpanKind.INTERNAL),
        status=Status(code, s.error if code == StatusCode.ERROR else None),
        start_time=s.start_ns,
        end_time=s.end_ns,
        instrumentation_scope=_SCOPE,
    )


class OtlpSpanExporter(SpanExporter):
    """`export()` = one OTLP `TraceService/Export` to `endpoint` (HOST:PORT)."""

    def __init__(self, endpoint: str = "127.0.0.1:4317", timeout_s: float = 10.0,
                 security: ClientSecurity | None = None) -> None:
        security = security or ClientSecurity()
        creds = security.channel_credentials()
        # The token travels as the standard `authorization` header (metadata): the
        # SDK adds its headers to every call, TLS or not.
        self._otlp = OTLPSpanExporter(
            endpoint=endpoint, insecure=creds is None, credentials=creds,
            headers=dict(security.metadata()) or None, timeout=timeout_s,
            retryable_error_codes=(),
            channel_options=((("grpc.ssl_target_name_override", security.server_name),)
                             if security.server_name and creds is not None else None),
        )
        self.lost: dict[str, int] = {}
        self._warned = False

    def export(self, spans: Sequence[Span]) -> ExportResult:
        if not spans:
            return ExportResult.SUCCESS
        readable = []
        for s in spans:
            try:
                readable.append(to_readable_span(s))
            except (ValueError, TypeError) as e:
                # A malformed id: drop that span alone, counted, not the batch.
                self.count_lost("invalid")
                if not self._warned:
                    self._warned = True
                    log.warning("a span could not be encoded for OTLP and was dropped "
                                "(counted in zerotrace_export_dropped_invalid_total): %s", e)
        if not readable:
            return ExportResult.SUCCESS
        res = self._otlp.export(readable)
        # The SDK exporter does not tell "refused" from "unreachable"; retry both
        # and let the batcher's attempt limit drop a batch that never goes through.
        return ExportResult.SUCCESS if res == SpanExportResult.SUCCESS else ExportResult.RETRYABLE

    def shutdown(self) -> None:
        self._otlp.shutdown()
