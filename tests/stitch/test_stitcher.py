"""The stitcher's rules on synthetic timelines: links it must make, links it must
refuse.  A wrong parent is worse than a split trace, so most cases here are refusals."""

from __future__ import annotations

import itertools

import pytest

from agent.conn.spans import SpanContext
from agent.probes import abi
from agent.stitch import _stitcher, stitcher
from agent.stitch.runtime import MODE_GO, MODE_THREADS
from agent.stitch.stitcher import Trace
from proto.span import KIND_CLIENT, KIND_SERVER, Endpoint, Span

MS = 10**6
T0 = 1_700_000_000 * 10**9
_conn = itertools.count(1)
# Every case runs on the compiled stitcher (the agent's) and the Python reference.
IMPLS = {"compiled": _stitcher.Stitcher, "python": stitcher.Stitcher}
_impl = [_stitcher.Stitcher]


@pytest.fixture(autouse=True, params=sorted(IMPLS))
def implementation(request):
    _impl[0] = IMPLS[request.param]
    yield request.param
    _impl[0] = _stitcher.Stitcher


class FakeEvent:
    """The fields of SocketEvent the stitcher reads."""

    def __init__(self, pid, tid, conn_id, direction, offset, ts, role=0):
        self.pid, self.tid, self.conn_id, self.direction, self.offset = (
            pid, tid, conn_id, direction, offset)
        self.role = role
        self.ts_enter = self.ts_exit = ts


class Fixed:
    def __init__(self, modes=None):
        self.modes = modes or {}

    def mode(self, pid):
        return self.modes.get(pid, MODE_THREADS)


class World:
    """Builds spans and the thread moments behind them, as the pipeline would."""

    def __init__(self, modes=None):
        self.traces: list[Trace] = []
        self.st = _impl[0](self.traces.append, classifier=Fixed(modes))
        self.spans: list[SpanContext] = []

    def server(self, pid, tid, t_in, t_out, op, out_tid=None, seq=None, conn=None, size=10):
        conn = conn or next(_conn)
        out_tid = out_tid or tid
        self.st.observe(FakeEvent(pid, tid, conn, abi.DIR_INGRESS, 0, t_in, abi.ROLE_SERVER))
        self.st.observe(FakeEvent(pid, out_tid, conn, abi.DIR_EGRESS, 0, t_out, abi.ROLE_SERVER))
        s = Span(kind=KIND_SERVER, pid=pid, tid=tid, process=f"p{pid}", operation=op,
                 protocol="http", transport="tcp", start_ns=t_in, end_ns=t_out,
                 req_seq=seq, resp_seq=seq and seq + 1, req_offset=0, req_bytes=size,
                 resp_offset=0, resp_bytes=size,
                 local=Endpoint("10.0.0.2", 80), remote=Endpoint("10.0.0.1", 5000 + conn))
        ctx = SpanContext(s, conn, tid, t_in, out_tid, t_out, True)
        self.spans.append(ctx)
        return ctx

    def client(self, pid, tid, t_out, t_in, op, seq=None, conn=None, in_tid=None, size=10):
        conn = conn or next(_conn)
        in_tid = in_tid or tid
        self.st.observe(FakeEvent(pid, tid, conn, abi.DIR_EGRESS, 0, t_out, abi.ROLE_CLIENT))
        self.st.observe(FakeEvent(pid, in_tid, conn, abi.DIR_INGRESS, 0, t_in, abi.ROLE_CLIENT))
        s = Span(kind=KIND_CLIENT, pid=pid, tid=tid, process=f"p{pid}", operation=op,
                 protocol="http", transport="tcp", start_ns=t_out, end_ns=t_in,
                 req_seq=seq, resp_seq=seq and seq + 1, req_offset=0, req_bytes=size,
                 resp_offset=0, resp_bytes=size,
                 local=Endpoint("10.0.0.1", 5000 + conn), remote=Endpoint("10.0.0.2", 80))
        ctx = SpanContext(s, conn, in_tid, t_in, tid, t_out, True)
        self.spans.append(ctx)
        return ctx

    def run(self):
        for c in sorted(self.spans, key=lambda c: c.span.end_ns):
            self.st.add(c)
        self.st.tick(T0 + 10_000 * MS)
        self.st.close()
        return {c.span.operation: c.span for c in self.spans}


def parent_of(spans, op):
    pid = spans[op].parent_span_id
    return next((o for o, s in spans.items() if s.span_id == pid), None)


def test_thread_per_request_links_children_and_resumes_after_responses():
    w = World()
    w.server(1, 11, T0, T0 + 10 * MS, "GET /a")
    w.client(1, 11, T0 + 1 * MS, T0 + 2 * MS, "db a")
    w.client(1, 11, T0 + 3 * MS, T0 + 4 * MS, "cache a")  # after reading db's response
    spans = w.run()
    assert parent_of(spans, "db a") == "GET /a"
    assert parent_of(spans, "cache a") == "GET /a"
    assert len({s.trace_id for s in spans.values()}) == 1


def test_interleaved_reads_on_an_event_loop_are_refused():
    w = World()
    w.server(2, 21, T0, T0 + 10 * MS, "GET /x")
    w.server(2, 21, T0 + 1 * MS, T0 + 11 * MS, "GET /y")  # read before any write
    w.client(2, 21, T0 + 2 * MS, T0 + 3 * MS, "call ?")
    spans = w.run()
    assert spans["call ?"].parent_span_id == ""
    assert w.st.per_process[2]["refused: reads of several requests interleave"] == 1


def test_token_evidence_resolves_an_interleaving_when_unique():
    w = World()
    w.server(2, 21, T0, T0 + 10 * MS, "GET /order/n0f3a9c2d81")
    w.server(2, 21, T0 + 1 * MS, T0 + 11 * MS, "GET /order/n77bb21e0aa")
    w.client(2, 21, T0 + 2 * MS, T0 + 3 * MS, "GET /stock/n0f3a9c2d81")
    spans = w.run()
    assert parent_of(spans, "GET /stock/n0f3a9c2d81") == "GET /order/n0f3a9c2d81"


def test_token_shared_by_both_candidates_is_no_evidence():
    w = World()
    w.server(2, 21, T0, T0 + 10 * MS, "GET /a/common1234")
    w.server(2, 21, T0 + 1 * MS, T0 + 11 * MS, "GET /b/common1234")
    w.client(2, 21, T0 + 2 * MS, T0 + 3 * MS, "GET /c/common1234")
    spans = w.run()
    assert spans["GET /c/common1234"].parent_span_id == ""


def test_work_handed_to_a_pool_thread_is_not_linked_to_that_threads_old_request():
    w = World()
    # pool thread 32 served /old, answered it; later writes a call for /new (read on 31)
    w.server(3, 32, T0, T0 + 1 * MS, "GET /old")
    w.server(3, 31, T0 + 2 * MS, T0 + 9 * MS, "GET /new")
    w.client(3, 32, T0 + 3 * MS, T0 + 4 * MS, "call for new")
    spans = w.run()
    assert spans["call for new"].parent_span_id == ""
    assert w.st.per_process[3]["refused: context already answered (hand-off?)"] == 1


def test_go_process_refuses_thread_links():
    w = World(modes={4: MODE_GO})
    w.server(4, 41, T0, T0 + 10 * MS, "GET /g")
    w.client(4, 41, T0 + 1 * MS, T0 + 2 * MS, "redis")
    spans = w.run()
    assert spans["redis"].parent_span_id == ""


def test_client_and_server_of_one_request_link_by_seq_across_processes():
    w = World()
    w.client(5, 51, T0, T0 + 5 * MS, "GET /up", seq=777)
    w.server(6, 61, T0 + 1 * MS, T0 + 4 * MS, "GET /up (server)", seq=777)
    spans = w.run()
    assert parent_of(spans, "GET /up (server)") == "GET /up"


def test_two_clients_with_one_seq_link_neither():
    w = World()
    w.client(5, 51, T0, T0 + 5 * MS, "c1", seq=888)
    w.client(7, 71, T0, T0 + 5 * MS, "c2", seq=888)
    w.server(6, 61, T0 + 1 * MS, T0 + 4 * MS, "s", seq=888)
    spans = w.run()
    assert spans["s"].parent_span_id == ""
    assert w.st.stats["remote_ambiguous"] == 1


def test_reused_socket_address_does_not_confuse_attribution():
    # the same thread serves two keep-alive requests on one connection; a call made
    # during the second belongs to the second, not to the first (same conn, offset 0/10)
    w = World()
    conn = next(_conn)
    first = w.server(8, 81, T0, T0 + 1 * MS, "GET /1", conn=conn)
    w.st.observe(FakeEvent(8, 81, conn, abi.DIR_INGRESS, 10, T0 + 2 * MS))
    second = Span(kind=KIND_SERVER, pid=8, tid=81, process="p8", operation="GET /2",
                  protocol="http", transport="tcp", start_ns=T0 + 2 * MS, end_ns=T0 + 9 * MS,
                  req_offset=10, req_bytes=10, resp_offset=10, resp_bytes=10)
    w.client(8, 81, T0 + 3 * MS, T0 + 4 * MS, "call")
    w.st.observe(FakeEvent(8, 81, conn, abi.DIR_EGRESS, 10, T0 + 9 * MS))
    w.spans.append(SpanContext(second, conn, 81, T0 + 2 * MS, 81, T0 + 9 * MS, True))
    spans = w.run()
    assert first.span.span_id != second.span_id
    assert parent_of(spans, "call") == "GET /2"


def test_traceparent_sets_the_trace_id():
    w = World()
    s = w.server(9, 91, T0, T0 + 2 * MS, "GET /otel")
    s.span.trace_headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    spans = w.run()
    assert spans["GET /otel"].trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_decision_waits_for_the_parent_span_to_complete():
    traces = []
    st = _impl[0](traces.append, classifier=Fixed())
    conn_s, conn_c = next(_conn), next(_conn)
    st.observe(FakeEvent(1, 11, conn_s, abi.DIR_INGRESS, 0, T0))
    st.observe(FakeEvent(1, 11, conn_c, abi.DIR_EGRESS, 0, T0 + 1 * MS))
    st.observe(FakeEvent(1, 11, conn_c, abi.DIR_INGRESS, 0, T0 + 2 * MS))
    child = Span(kind=KIND_CLIENT, pid=1, tid=11, operation="child", transport="tcp",
                 start_ns=T0 + 1 * MS, end_ns=T0 + 2 * MS, req_offset=0, req_bytes=5,
                 resp_offset=0, resp_bytes=5)
    st.add(SpanContext(child, conn_c, 11, T0 + 2 * MS, 11, T0 + 1 * MS, True))
    st.tick(T0 + 500 * MS)  # the server span is still in flight: nothing decided
    assert not traces
    parent = Span(kind=KIND_SERVER, pid=1, tid=11, operation="parent", transport="tcp",
                  start_ns=T0, end_ns=T0 + 900 * MS, req_offset=0, req_bytes=5,
                  resp_offset=0, resp_bytes=5)
    st.observe(FakeEvent(1, 11, conn_s, abi.DIR_EGRESS, 0, T0 + 900 * MS))
    st.add(SpanContext(parent, conn_s, 11, T0, 11, T0 + 900 * MS, True))
    st.close()
    assert child.parent_span_id == parent.span_id and child.trace_id == parent.trace_id


def test_call_queued_by_one_request_written_after_reading_another_is_not_misattributed():
    # Node keep-alive agent: B's call is queued; request A is read; then B's queued call
    # is written.  Last read says A; A and B are both open, so only evidence may decide.
    w = World()
    w.server(2, 21, T0, T0 + 20 * MS, "GET /b/n11112222333344aa")
    w.server(2, 21, T0 + 5 * MS, T0 + 20 * MS, "GET /a/n5555666677778888")
    w.client(2, 21, T0 + 6 * MS, T0 + 8 * MS, "GET /down/n11112222333344aa")
    w.client(2, 21, T0 + 9 * MS, T0 + 10 * MS, "GET /down/plain")
    spans = w.run()
    assert parent_of(spans, "GET /down/n11112222333344aa") == "GET /b/n11112222333344aa"
    assert spans["GET /down/plain"].parent_span_id == ""


def test_handoff_is_joined_by_a_forwarded_request_id():
    w = World()
    w.server(3, 32, T0, T0 + 1 * MS, "GET /old")
    new = w.server(3, 31, T0 + 2 * MS, T0 + 9 * MS, "GET /new")
    new.span.trace_headers["x-request-id"] = "req-77"
    call = w.client(3, 32, T0 + 3 * MS, T0 + 4 * MS, "call for new")
    call.span.trace_headers["x-request-id"] = "req-77"
    spans = w.run()
    assert parent_of(spans, "call for new") == "GET /new"
    assert w.st.per_process[3]["linked by header"] == 1


def test_an_id_shared_by_two_open_requests_links_nothing():
    w = World()
    for op, t in (("GET /a", T0), ("GET /b", T0 + 1 * MS)):
        w.server(3, 31, t, T0 + 9 * MS, op).span.trace_headers["x-request-id"] = "dup"
    call = w.client(3, 35, T0 + 3 * MS, T0 + 4 * MS, "call")
    call.span.trace_headers["x-request-id"] = "dup"
    spans = w.run()
    assert spans["call"].parent_span_id == ""


def test_thread_and_propagated_id_disagreeing_link_nothing():
    w = World()
    w.server(4, 40, T0, T0 + 9 * MS, "GET /other").span.trace_headers["x-request-id"] = "r-2"
    w.server(4, 41, T0 + 1 * MS, T0 + 9 * MS, "GET /mine").span.trace_headers[
        "x-request-id"] = "r-1"
    call = w.client(4, 41, T0 + 2 * MS, T0 + 3 * MS, "call")
    call.span.trace_headers["x-request-id"] = "r-2"  # says /other; its thread says /mine
    spans = w.run()
    assert spans["call"].parent_span_id == ""
    assert w.st.per_process[4]["refused: thread and propagated id disagree"] == 1
