"""Span export: a batcher (bounded, retrying, never blocking) in front of exporters.

exporter = GrpcSpanExporter("127.0.0.1:4317", agent="node-1")   # or OtlpSpanExporter
batcher = BatchExporter(exporter)
batcher.submit(spans)          # from the agent's hot path; never blocks
batcher.metrics()              # {"zerotrace_export_sent_total": ..., ...}
batcher.shutdown()
"""

from agent.export.base import ExportResult, SpanExporter
from agent.export.batcher import BatchExporter
from agent.export.memory import InMemoryExporter

__all__ = [
    "BatchExporter",
    "ExportResult",
    "GrpcSpanExporter",
    "InMemoryExporter",
    "OtlpSpanExporter",
    "SpanExporter",
]


def __getattr__(name: str):
    # gRPC and the OTel SDK load only when an exporter that needs them is built.
    if name == "GrpcSpanExporter":
        from agent.export.grpc_exporter import GrpcSpanExporter

        return GrpcSpanExporter
    if name == "OtlpSpanExporter":
        from agent.export.otlp_exporter import OtlpSpanExporter

        return OtlpSpanExporter
    raise AttributeError(name)
