"""Prometheus metrics of the agent: RED per service/operation, and every loss.

RED (rate, errors, duration) comes from server spans: the service's own view of the
requests it answered.  Label cardinality is bounded: id-like path segments become
`{id}`, and past `max_operations` distinct operations per service the rest count as
`other`.  Losses and refusals of every stage are read at scrape time from the
counters each stage keeps, so the hot path pays nothing for them."""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from proto.span import KIND_SERVER, STATUS_ERROR, Span

_ID_SEGMENT = re.compile(r"/(?=[^/]*\d)[A-Za-z0-9_\-.:]{6,}|/\d+")
_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


def normalise_operation(op: str) -> str:
    """`GET /order/n3fa9c01` -> `GET /order/{id}`; SQL and commands pass unchanged."""
    if " /" in op:
        verb, _, path = op.partition(" ")
        path = path.split("?", 1)[0]
        return f"{verb} {_ID_SEGMENT.sub('/{id}', path)}"
    return op[:80]


class AgentMetrics:
    """RED histograms plus a collector over stage counters."""

    def __init__(self, max_operations: int = 100) -> None:
        self.registry = CollectorRegistry()
        self.max_operations = max_operations
        # namespace: from the span's Kubernetes tags ("" outside Kubernetes); bounded by
        # the cluster's namespaces
        labels = ["namespace", "service", "operation", "protocol"]
        self.requests = Counter("zerotrace_requests", "Requests answered (server spans)",
                                labels + ["status"], registry=self.registry)
        self.duration = Histogram("zerotrace_request_duration_seconds",
                                  "Server-side request duration", labels,
                                  buckets=_BUCKETS, registry=self.registry)
        self._ops: dict[str, set[str]] = {}
        self._sources: list[tuple[str, Callable[[], dict]]] = []
        self.registry.register(_StageCollector(self._sources))

    def add_source(self, stage: str, counters: Callable[[], dict]) -> None:
        """counters() -> {reason: count}, exported as zerotrace_stage_events_total."""
        self._sources.append((stage, counters))

    def record(self, span: Span) -> None:
        if span.kind != KIND_SERVER:
            return
        op = normalise_operation(span.operation)
        seen = self._ops.setdefault(span.service, set())
        if op not in seen:
            if len(seen) >= self.max_operations:
                op = "other"
            else:
                seen.add(op)
        status = "error" if span.status == STATUS_ERROR else "ok"
        ns = span.resource.get("k8s.namespace.name", "")
        self.requests.labels(ns, span.service, op, span.protocol, status).inc()
        self.duration.labels(ns, span.service, op, span.protocol).observe(
            span.duration_ns / 1e9)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class _StageCollector:
    def __init__(self, sources: list[tuple[str, Callable[[], dict]]]) -> None:
        self.sources = sources

    def collect(self):
        fam = CounterMetricFamily("zerotrace_stage_events",
                                  "Per-stage counters: losses, refusals, drops, by reason",
                                  labels=["stage", "reason"])
        gauges = GaugeMetricFamily("zerotrace_stage_gauge", "Per-stage levels",
                                   labels=["stage", "name"])
        for stage, fn in self.sources:
            try:
                counters = fn()
            except Exception:  # a stage's bug must not break the scrape
                continue
            for reason, value in counters.items():
                if isinstance(value, (int, float)):
                    if reason.endswith("_spans") and "queue" in reason:
                        gauges.add_metric([stage, reason], value)
                    else:
                        fam.add_metric([stage, str(reason)], value)
        yield fam
        yield gauges
