"""Prometheus metrics of the agent: RED per service/operation, and every loss.

RED (rate, errors, duration) comes twice, for two audiences:
- `zerotrace_requests_total` / `zerotrace_request_duration_seconds`: every server span,
  any protocol (DNS and database servers included), per service and operation;
- the OpenTelemetry semantic conventions' instruments, as OTel's Prometheus exporter
  names them: `http_server_request_duration_seconds`, `http_client_request_duration_seconds`,
  `rpc_server_duration_seconds`, `rpc_client_duration_seconds`,
  `db_client_operation_duration_seconds`, with the conventions' attribute names as
  labels (`http_route`, `db_system_name`, ...).  Histograms carry the span's trace id as
  an exemplar (exposed in the OpenMetrics format) so a slow bucket links to a trace.
Label cardinality is bounded: id-like path segments become `{id}` (the same folding as
span names), and past `max_operations` distinct operations per service the rest count
as `other`.  Losses and refusals of every stage are read at scrape time from the
counters each stage keeps, so the hot path pays nothing for them; each exporter's
outcomes are counters of one unit each (spans, batches, attempts), so `sum()` over a
family never adds spans to batches."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.routes import normalise_operation
from agent.routes import route as _route  # shared with span names (agent/routes.py)
from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, Span

_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_HTTP = ("http", "http2")
_DB = ("postgresql", "mysql", "redis", "memcached")


class AgentMetrics:
    """RED histograms (ours and OpenTelemetry's), process metrics, and collectors over
    stage and exporter counters."""

    def __init__(self, max_operations: int = 100) -> None:
        r = self.registry = CollectorRegistry()
        self.max_operations = max_operations
        # namespace: from the span's Kubernetes tags ("" outside Kubernetes); bounded by
        # the cluster's namespaces
        labels = ["namespace", "service", "operation", "protocol"]
        self.requests = Counter("zerotrace_requests", "Requests answered (server spans)",
                                labels + ["status"], registry=r)
        self.duration = Histogram("zerotrace_request_duration_seconds",
                                  "Server-side request duration", labels,
                                  buckets=_BUCKETS, registry=r)
        who = ["k8s_namespace_name", "service_name"]
        http = who + ["http_request_method", "http_route", "http_response_status_code",
                      "error_type"]
        self.http_server = Histogram(
            "http_server_request_duration", "Duration of HTTP server requests.", http,
            unit="seconds", buckets=_BUCKETS, registry=r)
        self.http_client = Histogram(
            "http_client_request_duration", "Duration of HTTP client requests.",
            who + ["http_request_method", "url_template", "http_response_status_code",
                   "error_type"], unit="seconds", buckets=_BUCKETS, registry=r)
        rpc = who + ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"]
        self.rpc_server = Histogram("rpc_server_duration", "Duration of inbound RPCs.", rpc,
                                    unit="seconds", buckets=_BUCKETS, registry=r)
        self.rpc_client = Histogram("rpc_client_duration", "Duration of outbound RPCs.", rpc,
                                    unit="seconds", buckets=_BUCKETS, registry=r)
        self.db_client = Histogram(
            "db_client_operation_duration", "Duration of database client operations.",
            who + ["db_system_name", "db_operation_name", "db_collection_name",
                   "error_type"], unit="seconds", buckets=_BUCKETS, registry=r)
        # process_* (CPU, memory, fds), python_info, python_gc_*: the agent's own cost
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._ops: dict[tuple[str, str], set[str]] = {}
        self._sources: list[tuple[str, Callable[[], dict]]] = []
        self._exporters: list[tuple[str, Callable[[], dict]]] = []
        r.register(_StageCollector(self._sources))
        r.register(_ExportCollector(self._exporters))

    def add_source(self, stage: str, counters: Callable[[], dict]) -> None:
        """counters() -> {reason: count}, exported as zerotrace_stage_events_total."""
        self._sources.append((stage, counters))

    def add_kernel(self, stats: Callable[[], dict], keep_ratio: Callable[[], float],
                   ring_fill: Callable[[], float]) -> None:
        """The probes' counters (SocketTracer.stats): what went into the ring, what was
        left out on purpose (zerotrace_shed_*: sampling under overload; zerotrace_skipped_*:
        bodies the parsers skip), and the sampling rate and ring fill as gauges."""
        self.registry.register(_KernelCollector(stats, keep_ratio, ring_fill))

    def add_tls(self, collector) -> None:
        """TLS per-process counters (agent/probes/tls.py TlsCollector over
        TlsAttacher.process_counters): zerotrace_tls_*_total, labels bounded there."""
        self.registry.register(collector)

    def add_exporter(self, name: str, counters: Callable[[], dict]) -> None:
        """counters() -> BatchExporter.metrics(): exported as zerotrace_export_*."""
        self._exporters.append((name, counters))

    def _bounded(self, kind: str, service: str, value: str) -> str:
        seen = self._ops.setdefault((kind, service), set())
        if value not in seen:
            if len(seen) >= self.max_operations:
                return "other"
            seen.add(value)
        return value

    def record(self, span: Span) -> None:
        if span.kind == KIND_SERVER:
            op = self._bounded("op", span.service, normalise_operation(span.operation))
            status = "error" if span.status == STATUS_ERROR else "ok"
            ns = span.resource.get("k8s.namespace.name", "")
            self.requests.labels(ns, span.service, op, span.protocol, status).inc()
            self.duration.labels(ns, span.service, op, span.protocol).observe(
                span.duration_ns / 1e9)
        elif span.kind != KIND_CLIENT:
            return
        self._record_semconv(span)

    def _record_semconv(self, span: Span) -> None:
        a = span.attributes
        proto = span.protocol
        server = span.kind == KIND_SERVER
        who = (span.resource.get("k8s.namespace.name", ""), span.service)
        err = _error_type(span)
        if proto == "grpc":
            h = self.rpc_server if server else self.rpc_client
            method = self._bounded("rpc", span.service,
                                   f"{a.get('rpc.service', '')}/{a.get('rpc.method', '')}")
            svc, _, meth = method.partition("/")
            labels = (*who, "grpc", svc, meth, str(a.get("rpc.grpc.status_code", "")))
        elif proto in _HTTP:
            method = str(a.get("http.request.method", ""))[:16]
            route = self._bounded("route", span.service,
                                  _route(str(a.get("url.path", ""))))
            code = str(a.get("http.response.status_code", span.status_code or ""))[:3]
            h = self.http_server if server else self.http_client
            labels = (*who, method, route, code, err)
        elif proto in _DB and not server:
            h = self.db_client
            op = str(a.get("db.operation.name", ""))[:32]
            coll = self._bounded("coll", span.service, str(a.get("db.collection.name", ""))[:64])
            labels = (*who, str(a.get("db.system", proto)), op, coll, err)
        else:
            return
        tid = span.trace_id
        h.labels(*labels).observe(span.duration_ns / 1e9,
                                  exemplar={"trace_id": tid} if tid else None)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


def _error_type(span: Span) -> str:
    """OTel's error.type: the status code of a failed request, else empty."""
    if span.status != STATUS_ERROR:
        return ""
    return (span.status_code or "error")[:32]


class _StageCollector:
    def __init__(self, sources: list[tuple[str, Callable[[], dict]]]) -> None:
        self.sources = sources

    def collect(self):
        fam = CounterMetricFamily("zerotrace_stage_events",
                                  "Per-stage counters: losses, refusals, drops, by reason",
                                  labels=["stage", "reason"])
        levels = GaugeMetricFamily("zerotrace_stage_queued_spans",
                                   "Spans waiting in a stage's queue",
                                   labels=["stage", "name"])
        for stage, fn in self.sources:
            try:
                counters = fn()
            except Exception:  # a stage's bug must not break the scrape
                continue
            for reason, value in counters.items():
                if isinstance(value, (int, float)):
                    if reason.endswith("_spans") and "queue" in reason:
                        levels.add_metric([stage, reason], value)
                    else:
                        fam.add_metric([stage, str(reason)], value)
        yield fam
        yield levels


# SocketTracer.stats() key -> (counter family, help)
_KERNEL_FAMILIES = {
    "ring_records": ("zerotrace_ring_records", "Records the probes put in the ring buffer"),
    "ring_bytes": ("zerotrace_ring_bytes", "Bytes of those records (headers and payloads)"),
    "shed_exchanges": ("zerotrace_shed_exchanges",
                       "Request/response exchanges not traced on purpose (overload sampling)"),
    "shed_connections": ("zerotrace_shed_connections",
                         "Connections of unknown role not traced on purpose (overload)"),
    "shed_syscalls": ("zerotrace_shed_syscalls", "Data syscalls left out by sampling"),
    "shed_bytes": ("zerotrace_shed_bytes",
                   "Bytes moved by shed syscalls decided at exit (a lower bound)"),
    "kept_exchanges": ("zerotrace_sampled_kept_exchanges",
                       "Exchanges decided while sampling, and traced"),
    "skipped_syscalls": ("zerotrace_skipped_syscalls",
                         "Data syscalls inside bodies the parsers skip, left out of the ring"),
    "skipped_bytes": ("zerotrace_skipped_bytes", "Payload bytes skip hints kept out of the ring"),
    "ring_cuts": ("zerotrace_probe_keep_cuts",
                  "Keep-rate cuts the probes made themselves on a full ring buffer"),
}


class _KernelCollector:
    def __init__(self, stats: Callable[[], dict], keep_ratio: Callable[[], float],
                 ring_fill: Callable[[], float]) -> None:
        self.stats, self.keep_ratio, self.ring_fill = stats, keep_ratio, ring_fill

    def collect(self):
        try:
            s = self.stats()
            keep, fill = self.keep_ratio(), self.ring_fill()
        except Exception:  # probes closing: never break the scrape
            return
        for key, (name, text) in _KERNEL_FAMILIES.items():
            if key in s:
                yield CounterMetricFamily(name, text, value=s[key])
        yield GaugeMetricFamily("zerotrace_sampling_keep_ratio",
                                "Share of exchanges traced (1: no sampling)", value=keep)
        yield GaugeMetricFamily("zerotrace_ring_fill_ratio",
                                "Share of the ring buffer waiting to be read", value=fill)


# BatchExporter counter -> (family, help, reason label value or None)
_EXPORT_FAMILIES = {
    "submitted": ("zerotrace_export_submitted_spans", "Spans handed to the exporter"),
    "sent": ("zerotrace_export_sent_spans", "Spans the receiver acknowledged"),
    "batches_sent": ("zerotrace_export_sent_batches", "Batches the receiver acknowledged"),
    "export_errors": ("zerotrace_export_failed_attempts",
                      "Export attempts that failed (each retried or dropped)"),
    "retries": ("zerotrace_export_retries", "Export attempts made again after a failure"),
}


class _ExportCollector:
    """Each exporter's outcomes, one unit per family: spans sent, spans dropped by
    reason, batches, attempts; the queue as a gauge."""

    def __init__(self, exporters: list[tuple[str, Callable[[], dict]]]) -> None:
        self.exporters = exporters

    def collect(self):
        fams = {k: CounterMetricFamily(n, h, labels=["exporter"])
                for k, (n, h) in _EXPORT_FAMILIES.items()}
        dropped = CounterMetricFamily("zerotrace_export_dropped_spans",
                                      "Spans the exporter gave up on, by reason",
                                      labels=["exporter", "reason"])
        queue = GaugeMetricFamily("zerotrace_export_queue_spans",
                                  "Spans waiting to be exported", labels=["exporter"])
        for name, fn in self.exporters:
            try:
                m = fn()
            except Exception:  # an exporter's bug must not break the scrape
                continue
            for key, value in m.items():
                if key == "zerotrace_export_queue_spans":
                    queue.add_metric([name], value)
                    continue
                k = key.removeprefix("zerotrace_export_").removesuffix("_total")
                if k in fams:
                    fams[k].add_metric([name], value)
                elif k.startswith("dropped_"):
                    dropped.add_metric([name, k.removeprefix("dropped_")], value)
        yield from fams.values()
        yield dropped
        yield queue
