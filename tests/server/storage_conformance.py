"""The storage conformance suite: every `SpanStore` backend must pass all of it.

A backend's test module subclasses `StorageConformance` and provides a `store`
fixture that yields an empty store (Jaeger's storage integration-test pattern).
"""

from __future__ import annotations

import time

import pytest
from factory import MS, client_server_pair, server_span

from proto.columns import spans_to_table
from proto.convert import span_list_to_table, spans_to_list
from proto.span import Endpoint, Span, new_trace_id
from proto.zerotrace.v1 import span_pb2
from server.storage.base import StorageError, TraceQuery

H = 3_600_000_000_000


def _full_span(tid: str, t0: int) -> Span:
    return Span(
        trace_id=tid,
        kind="server",
        source="S",
        protocol="http",
        operation="POST /orders",
        status="error",
        status_code="503",
        error="upstream timeout",
        start_ns=t0,
        end_ns=t0 + 12 * MS,
        service="orders",
        pid=4242,
        tid=4243,
        process="orders-bin",
        cgroup_id=987654321,
        netns=4026531992,
        transport="tcp",
        local=Endpoint("10.0.0.1", 8080),
        remote=Endpoint("fd00::2", 51234),
        req_seq=4_000_000_000,
        resp_seq=17,
        req_offset=0,
        resp_offset=2**40,
        req_bytes=512,
        resp_bytes=2048,
        trace_headers={"traceparent": f"00-{tid}-00f067aa0ba902b7-01", "x-request-id": "r-1"},
        attributes={
            "http.request.method": "POST",
            "http.response.status_code": 503,
            "retry": True,
            "ratio": 0.25,
            "tags": ["a", "b"],
        },
        resource={"k8s.pod.name": "orders-7d9", "host.name": "node-1"},
        incomplete="",
        agent="node-1",
    )


class StorageConformance:
    """Behaviour every backend shares; `store` is an empty backend."""

    def test_round_trip_every_field(self, store):
        t0 = time.time_ns()
        tid = new_trace_id()
        s = _full_span(tid, t0)
        child = Span(
            trace_id=tid,
            parent_span_id=s.span_id,
            kind="client",
            source="N",
            start_ns=t0 + MS,
            end_ns=t0 + 2 * MS,
            service="orders",
        )
        assert store.write_spans([s, child]) == 2
        got = store.get_trace(tid)
        assert [g.span_id for g in got] == [s.span_id, child.span_id]
        assert got[0] == s
        assert got[1] == child
        assert got[1].req_seq is None and got[1].parent_span_id == s.span_id

    def test_round_trip_arrow_table(self, store):
        # The one write method takes the agent's wire format (proto/columns.py) as it is.
        t0 = time.time_ns()
        s = _full_span(new_trace_id(), t0)
        child = Span(trace_id=s.trace_id, parent_span_id=s.span_id, kind="client",
                     start_ns=t0 + MS, end_ns=t0 + 2 * MS, service="orders")
        assert store.write(spans_to_table([s, child])) == 2
        assert store.get_trace(s.trace_id) == [s, child]
        rev = server_span(start_ns=10, end_ns=5)
        with pytest.raises(StorageError):
            store.write(spans_to_table([rev]))
        assert store.stats()["spans"] == 2
        assert store.write(spans_to_table([])) == 0

    def test_round_trip_protobuf_as_table(self, store):
        # The protobuf wire reaches the store as the same table (proto/convert.py).
        t0 = time.time_ns()
        s = _full_span(new_trace_id(), t0)
        child = Span(trace_id=s.trace_id, parent_span_id=s.span_id, kind="client",
                     start_ns=t0 + MS, end_ns=t0 + 2 * MS, service="orders")
        msgs = span_pb2.SpanList.FromString(spans_to_list([s, child]).SerializeToString())
        table = span_list_to_table(msgs.spans)
        assert table.schema.equals(spans_to_table([s, child]).schema)
        assert store.write(table) == 2
        assert store.get_trace(s.trace_id) == [s, child]

    def test_unknown_trace_is_empty(self, store):
        assert store.get_trace(new_trace_id()) == []

    def test_bad_trace_id_is_refused(self, store):
        with pytest.raises(ValueError):
            store.get_trace("abc'; DROP TABLE spans --")

    def test_write_is_readable_at_once(self, store):
        # Reads are consistent with acknowledged writes: no wait, no flush.
        for _ in range(5):
            s = server_span(start_ns=time.time_ns(), end_ns=time.time_ns() + MS)
            store.write_spans([s])
            assert [x.span_id for x in store.get_trace(s.trace_id)] == [s.span_id]

    def test_invalid_spans_are_refused_whole(self, store):
        bad = Span(trace_id="abcd", span_id="0011223344556677", start_ns=1, end_ns=2)
        with pytest.raises(StorageError):
            store.write_spans([bad])
        rev = server_span(start_ns=10, end_ns=5)
        with pytest.raises(StorageError):
            store.write_spans([rev])
        assert store.stats()["spans"] == 0

    def test_search_filters(self, store):
        t0 = time.time_ns()
        spans = []
        tids = []
        for i in range(6):
            tid = new_trace_id()
            tids.append(tid)
            spans.append(
                server_span(
                    tid,
                    service="web" if i % 2 == 0 else "db",
                    operation=f"GET /p{i % 3}",
                    start_ns=t0 + i * MS,
                    end_ns=t0 + i * MS + (i + 1) * 10 * MS,
                    status="error" if i == 4 else "ok",
                    attributes={
                        "http.response.status_code": 500 if i == 4 else 200,
                        "customer": f"c{i}",
                    },
                    resource={"k8s.pod.name": f"pod-{i}"},
                )
            )
        old = server_span(
            service="web", operation="GET /p0", start_ns=t0 - 2 * H, end_ns=t0 - 2 * H + MS
        )
        store.write_spans([*spans, old])

        def ids(**kw):
            return [t.trace_id for t in store.search_traces(TraceQuery(**kw))]

        assert ids(service="web", since_ns=t0 - H) == [tids[4], tids[2], tids[0]]
        assert set(ids(service="web")) == {tids[4], tids[2], tids[0], old.trace_id}
        assert ids(service="web", operation="GET /p0", since_ns=t0 - H) == [tids[0]]
        assert ids(min_duration_ns=45 * MS) == [tids[5], tids[4]]
        assert ids(status="error") == [tids[4]]
        assert ids(tags={"customer": "c3"}) == [tids[3]]
        assert ids(tags={"k8s.pod.name": "pod-2"}) == [tids[2]]
        assert ids(tags={"customer": "c3", "k8s.pod.name": "pod-2"}) == []
        assert ids(tags={"http.response.status_code": "500"}) == [tids[4]]
        assert len(ids(limit=2)) == 2
        summary = store.search_traces(TraceQuery(status="error"))[0]
        assert summary.span_count == 1 and summary.error_count == 1
        assert summary.root_service == "web" and summary.duration_ns == 50 * MS

    def test_search_all_filters_on_one_span(self, store):
        # A trace matches when one span meets every filter, not when the filters are
        # met by different spans of it (the search index keeps per-trace unions, so
        # this is the case it must not get wrong).
        t0 = time.time_ns()
        tid = new_trace_id()
        slow_ok = server_span(
            tid, service="api", operation="GET /a", start_ns=t0, end_ns=t0 + 90 * MS
        )
        fast_err = server_span(
            tid,
            parent_span_id=slow_ok.span_id,
            service="api",
            operation="GET /b",
            start_ns=t0 + MS,
            end_ns=t0 + 2 * MS,
            status="error",
            attributes={"customer": "c1"},
        )
        store.write_spans([slow_ok, fast_err])

        def ids(**kw):
            return [t.trace_id for t in store.search_traces(TraceQuery(**kw))]

        assert ids(service="api", status="error") == [tid]
        assert ids(status="error", min_duration_ns=50 * MS) == []
        assert ids(operation="GET /a", status="error") == []
        assert ids(operation="GET /b", tags={"customer": "c1"}) == [tid]
        assert ids(operation="GET /a", tags={"customer": "c1"}) == []
        assert ids(max_duration_ns=5 * MS, operation="GET /b") == [tid]
        assert ids(max_duration_ns=5 * MS, operation="GET /a") == []
        # time filters apply to the matching span itself
        assert ids(operation="GET /b", since_ns=t0 + MS // 2) == [tid]
        assert ids(operation="GET /a", since_ns=t0 + MS // 2) == []
        assert ids(operation="GET /a", until_ns=t0 + 1) == [tid]
        assert ids(operation="GET /b", until_ns=t0 + MS) == []

    def test_search_durations_and_times_are_exact(self, store):
        # Durations and times a hair either side of a bound (the index rounds them).
        t0 = (time.time_ns() // 10**9) * 10**9
        a = server_span(service="s", start_ns=t0, end_ns=t0 + 10 * MS)
        b = server_span(service="s", start_ns=t0 + 1, end_ns=t0 + 1 + 10 * MS + 1)
        store.write_spans([a, b])

        def ids(**kw):
            return [t.trace_id for t in store.search_traces(TraceQuery(service="s", **kw))]

        assert ids(min_duration_ns=10 * MS + 1) == [b.trace_id]
        assert ids(max_duration_ns=10 * MS) == [a.trace_id]
        assert ids(since_ns=t0 + 1) == [b.trace_id]
        assert ids(until_ns=t0 + 1) == [a.trace_id]

    def test_search_long_tag_values(self, store):
        # Values longer than what an index keeps whole still match exactly.
        long_a = "x" * 100 + "a"
        long_b = "x" * 100 + "b"
        sa = server_span(service="s", start_ns=1_000, end_ns=2_000, attributes={"q": long_a})
        sb = server_span(service="s", start_ns=3_000, end_ns=4_000, attributes={"q": long_b})
        store.write_spans([sa, sb])
        got = store.search_traces(TraceQuery(tags={"q": long_a}))
        assert [t.trace_id for t in got] == [sa.trace_id]
        assert store.search_traces(TraceQuery(tags={"q": "x" * 100})) == []

    def test_search_newest_matching_first_past_non_matches(self, store):
        # Many newer traces look like candidates (right service, an error span and a
        # slow span) but have no slow error span; the older traces that do must
        # still be found, newest first, and the limit respected.
        t0 = time.time_ns() - H
        spans = []
        for i in range(60):
            tid = new_trace_id()
            st = t0 + (100 + i) * 10**9
            spans.append(server_span(tid, service="api", start_ns=st, end_ns=st + 90 * MS))
            spans.append(
                server_span(
                    tid, service="api", start_ns=st + MS, end_ns=st + 2 * MS, status="error"
                )
            )
        good = []
        for i in range(5):
            tid = new_trace_id()
            good.append(tid)
            st = t0 + i * 10**9
            spans.append(
                server_span(tid, service="api", start_ns=st, end_ns=st + 90 * MS, status="error")
            )
        store.write_spans(spans)
        q = TraceQuery(service="api", status="error", min_duration_ns=50 * MS, limit=3)
        assert [t.trace_id for t in store.search_traces(q)] == good[::-1][:3]
        q.limit = 20
        assert [t.trace_id for t in store.search_traces(q)] == good[::-1]

    def test_search_trace_written_in_parts(self, store):
        # Spans of one trace arriving in separate batches: found once, whole summary.
        t0 = time.time_ns()
        tid = new_trace_id()
        root = server_span(tid, service="web", start_ns=t0, end_ns=t0 + 10 * MS)
        store.write_spans([root])
        kid = server_span(
            tid,
            parent_span_id=root.span_id,
            service="web",
            operation="GET /late",
            start_ns=t0 + MS,
            end_ns=t0 + 3 * MS,
        )
        store.write_spans([kid])
        (s,) = store.search_traces(TraceQuery(service="web"))
        assert s.trace_id == tid and s.span_count == 2
        (s,) = store.search_traces(TraceQuery(operation="GET /late"))
        assert s.trace_id == tid and s.root_operation == root.operation

    def test_search_summary_root_and_services(self, store):
        t0 = time.time_ns()
        tid = new_trace_id()
        root = server_span(
            tid, service="front", operation="GET /", start_ns=t0, end_ns=t0 + 10 * MS
        )
        kid = server_span(
            tid,
            parent_span_id=root.span_id,
            service="api",
            operation="GET /x",
            start_ns=t0 - MS,
            end_ns=t0 + 12 * MS,
        )
        store.write_spans([kid, root])
        (s,) = store.search_traces(TraceQuery(service="api"))
        assert (s.root_service, s.root_operation) == ("front", "GET /")
        assert s.services == ["api", "front"] and s.duration_ns == 13 * MS

    def test_services_stats(self, store):
        t0 = time.time_ns()
        spans = [
            server_span(
                service="api",
                start_ns=t0 + i * MS,
                end_ns=t0 + i * MS + (i + 1) * MS,
                status="error" if i < 10 else "ok",
            )
            for i in range(100)
        ]
        spans.append(
            Span(
                trace_id=new_trace_id(),
                kind="client",
                service="api",
                start_ns=t0,
                end_ns=t0 + 999 * MS,
            )
        )
        store.write_spans(spans)
        (st,) = store.services(t0 - 1, t0 + 100 * MS)
        assert st.service == "api" and st.requests == 100
        assert st.error_rate == pytest.approx(0.10)
        assert 45 * MS <= st.p50_ns <= 56 * MS
        assert 95 * MS <= st.p99_ns <= 100 * MS
        assert st.rate_per_s == pytest.approx(1000, rel=0.05)

    def test_dependencies(self, store):
        t0 = time.time_ns()
        ta, tb = new_trace_id(), new_trace_id()
        root = server_span(ta, service="front", start_ns=t0, end_ns=t0 + 10 * MS)
        c, s = client_server_pair(ta, tb, t0 + MS, client_parent=root.span_id)
        inner = server_span(
            ta,
            parent_span_id=root.span_id,
            service="cache",
            start_ns=t0,
            end_ns=t0 + MS,
            status="error",
        )
        store.write_spans([root, c, s, inner])
        deps = {
            (d.parent, d.child): (d.call_count, d.error_count) for d in store.dependencies(0, 0)
        }
        assert deps == {("front", "api"): (1, 0), ("front", "cache"): (1, 1)}

    def test_find_by_keys(self, store):
        t0 = time.time_ns()
        c, s = client_server_pair(new_trace_id(), new_trace_id(), t0, seq=77_777)
        c.trace_headers["x-request-id"] = "req-42"
        store.write_spans([c, s])
        assert [x.span_id for x in store.find_by_req_seq([77_777], "server")] == [s.span_id]
        assert [x.span_id for x in store.find_by_req_seq([77_777], "client")] == [c.span_id]
        assert store.find_by_req_seq([1], "server") == []
        assert [x.span_id for x in store.find_by_header("x-request-id", ["req-42"])] == [c.span_id]

    def test_spans_for_service(self, store):
        t0 = time.time_ns()
        ta, tb = new_trace_id(), new_trace_id()
        a = server_span(ta, service="front", start_ns=t0, end_ns=t0 + MS)
        a2 = server_span(ta, parent_span_id=a.span_id, service="api", start_ns=t0, end_ns=t0 + MS)
        b = server_span(tb, service="other", start_ns=t0, end_ns=t0 + MS)
        store.write_spans([a, a2, b])
        got = store.spans_for_service("api", 0, 0, 10)
        assert sorted(s.span_id for s in got) == sorted([a.span_id, a2.span_id])

    def test_retention_by_age(self, store):
        now = time.time_ns()
        old = [
            server_span(start_ns=now - 48 * H + i, end_ns=now - 48 * H + i + 1) for i in range(10)
        ]
        new = [server_span(start_ns=now + i, end_ns=now + i + 1) for i in range(5)]
        store.write_spans(old + new)
        assert store.apply_retention(max_age_s=24 * 3600) == 10
        assert store.stats()["spans"] == 5
        assert store.get_trace(old[0].trace_id) == []
        assert store.get_trace(new[0].trace_id) != []

    def test_retention_by_size(self, store):
        now = time.time_ns()
        for batch in range(4):
            store.write_spans(
                [
                    server_span(
                        start_ns=now + batch * H + i,
                        end_ns=now + batch * H + i + 5,
                        operation=f"op{i}",
                    )
                    for i in range(2000)
                ]
            )
        before = store.stats()
        assert before["spans"] == 8000
        deleted = store.apply_retention(max_bytes=before["bytes"] // 2)
        after = store.stats()
        assert 0 < deleted < 8000
        assert after["spans"] == 8000 - deleted
        # the oldest went first
        rest = store.search_traces(TraceQuery(limit=10_000))
        assert min(t.start_ns for t in rest) > now
