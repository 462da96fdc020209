"""gRPC `zerotrace.v1.QueryService`: what the CLI (and later Grafana) asks."""

from __future__ import annotations

import grpc

from proto.convert import span_to_pb
from proto.zerotrace.v1 import query_pb2, query_pb2_grpc
from server.flamegraph.stacks import fold
from server.join import join_trace
from server.query.joined import join_results, joined_trace
from server.storage.base import SpanStore, StorageError, TraceQuery
from server.storage.schema import check_hex


class QueryService(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, store: SpanStore) -> None:
        self.store = store

    def _abort_storage(self, context: grpc.ServicerContext, e: Exception) -> None:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"storage query failed: {str(e)[:300]}")

    def GetTrace(self, request, context):  # noqa: N802
        try:
            tid = check_hex(request.trace_id, 32)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad trace id: {e}")
        try:
            if request.no_join:
                spans, linked, ambiguous = self.store.get_trace(tid), 0, 0
            else:
                # under the joined trace's one id, whichever fragment's id was asked
                _tid, r = joined_trace(self.store, tid)
                spans, linked, ambiguous = r.spans, r.linked, r.ambiguous
        except StorageError as e:
            self._abort_storage(context, e)
        if not spans:
            context.abort(grpc.StatusCode.NOT_FOUND, f"trace {tid} not found")
        resp = query_pb2.GetTraceResponse()
        for s in spans:
            span_to_pb(s, resp.spans.add())
        resp.join.linked = linked
        resp.join.ambiguous = ambiguous
        return resp

    def SearchTraces(self, request, context):  # noqa: N802
        q = TraceQuery(
            service=request.service,
            operation=request.operation,
            since_ns=request.since_ns,
            until_ns=request.until_ns,
            min_duration_ns=request.min_duration_ns,
            max_duration_ns=request.max_duration_ns,
            status=request.status,
            tags=dict(request.tags),
            limit=request.limit or 20,
        )
        try:
            found = self.store.search_traces(q)
            # each joined trace once, under its one id (not once per fragment)
            found = join_results(self.store, found)
        except StorageError as e:
            self._abort_storage(context, e)
        resp = query_pb2.SearchTracesResponse()
        for t in found:
            resp.traces.add(
                trace_id=t.trace_id,
                root_service=t.root_service,
                root_operation=t.root_operation,
                start_ns=t.start_ns,
                duration_ns=t.duration_ns,
                span_count=t.span_count,
                error_count=t.error_count,
                services=t.services,
            )
        return resp

    def Services(self, request, context):  # noqa: N802
        try:
            stats = self.store.services(request.since_ns, request.until_ns)
        except StorageError as e:
            self._abort_storage(context, e)
        resp = query_pb2.ServicesResponse()
        for s in stats:
            resp.services.add(
                service=s.service,
                requests=s.requests,
                rate_per_s=s.rate_per_s,
                error_rate=s.error_rate,
                p50_ns=s.p50_ns,
                p99_ns=s.p99_ns,
            )
        return resp

    def Dependencies(self, request, context):  # noqa: N802
        try:
            links = self.store.dependencies(request.since_ns, request.until_ns)
        except StorageError as e:
            self._abort_storage(context, e)
        resp = query_pb2.DependenciesResponse()
        for d in links:
            resp.links.add(
                parent=d.parent,
                child=d.child,
                call_count=d.call_count,
                error_count=d.error_count,
            )
        return resp

    def FlameGraph(self, request, context):  # noqa: N802
        try:
            if request.trace_id:
                try:
                    tid = check_hex(request.trace_id, 32)
                except ValueError as e:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad trace id: {e}")
                spans = join_trace(self.store, tid).spans
                traces = 1 if spans else 0
            else:
                if not request.service:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give a trace id or a service")
                spans = self.store.spans_for_service(
                    request.service,
                    request.since_ns,
                    request.until_ns,
                    request.max_traces or 1000,
                )
                traces = len({s.trace_id for s in spans})
        except StorageError as e:
            self._abort_storage(context, e)
        if not spans:
            context.abort(grpc.StatusCode.NOT_FOUND, "no spans for this flame graph")
        resp = query_pb2.FlameGraphResponse(traces=traces)
        for stack, value in sorted(fold(spans).items()):
            resp.stacks.add(stack=stack, value=value)
        return resp
