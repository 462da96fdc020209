"""A protocol record, seen by one process on one connection, becomes a span.

Beside the span, `SpanContext` keeps where and when on which thread the request and
response bytes moved: the stitcher orders those per thread to find parents."""

from __future__ import annotations

from dataclasses import fields

from agent.conn._ctx import SpanContext
from proto.span import Span

# SpanContext is compiled (agent/conn/_ctx.pyx): a C struct the core fills and the
# stitcher reads without attribute lookups.  Its fields: span, conn_id, in_tid, in_ns,
# out_tid, out_ns, has_response.  For a server span: `in_tid`/`in_ns` = thread and time
# the request's last byte was read, `out_tid`/`out_ns` = thread and time the response's
# first byte was written.  For a client span: `out_*` = the request written, `in_*` =
# the response read.

# record_to_span fills a Span's slots in this order (agent/conn/_core.pyx, which checks
# the same at import): the order it relies on, checked once here.
_SPAN_FIELDS = ("trace_id", "span_id", "parent_span_id", "kind", "source", "protocol",
                "operation", "status", "status_code", "error", "start_ns", "end_ns",
                "service", "pid", "tid", "process", "cgroup_id", "netns", "transport",
                "local", "remote", "req_seq", "resp_seq", "req_offset", "resp_offset",
                "req_bytes", "resp_bytes", "trace_headers", "attributes", "resource",
                "incomplete", "agent")
if tuple(f.name for f in fields(Span)) != _SPAN_FIELDS:
    raise ImportError("proto.span.Span fields changed: update agent/conn/spans.py")

# ConnMeta, new_span_id and record_to_span are compiled (agent/conn/_core.pyx, issue
# 13): the same code with C-typed locals.
from agent.conn._core import ConnMeta, new_span_id, record_to_span  # noqa: E402

__all__ = ["SpanContext", "ConnMeta", "new_span_id", "record_to_span"]
