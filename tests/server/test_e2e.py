"""Agent exporter -> real gRPC server -> CLI, end to end, with the cross-node join."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from cli_capture import run_cli
from factory import MS, client_server_pair, server_span, two_node_trace

from agent.export import BatchExporter, GrpcSpanExporter
from proto.span import Endpoint, Span, new_span_id, new_trace_id


def _send(addr: str, agent: str, spans: list[Span]) -> dict[str, int]:
    b = BatchExporter(GrpcSpanExporter(addr, agent=agent), schedule_delay_s=0.05)
    assert b.submit(spans) == len(spans)
    assert b.force_flush(10)
    m = b.metrics()
    b.shutdown()
    return m


def test_exporter_server_cli(zt_server, capsys, tmp_path):
    t0 = time.time_ns()
    tid = new_trace_id()
    root = server_span(
        tid,
        service="shop",
        process="gunicorn",
        operation="GET /cart",
        start_ns=t0,
        end_ns=t0 + 20 * MS,
        attributes={"customer": "vip"},
    )
    kids = [
        Span(
            trace_id=tid,
            parent_span_id=root.span_id,
            kind="client",
            source="S",
            protocol="redis",
            operation="GET cart:1",
            status="ok",
            service="shop",
            start_ns=t0 + (1 + 3 * i) * MS,
            end_ns=t0 + (3 + 3 * i) * MS,
        )
        for i in range(3)
    ]
    kids[2].status = "error"
    m = _send(zt_server.addr, "node-1", [root, *kids])
    assert m["zerotrace_export_sent_total"] == 4
    assert m["zerotrace_export_dropped_total"] == 0

    rc, out, err = run_cli(capsys, "trace", tid, "--server", zt_server.addr, "-o", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert {s["span_id"] for s in doc["spans"]} == {root.span_id, *(k.span_id for k in kids)}
    assert all(s["agent"] == "node-1" for s in doc["spans"])  # stamped from identity

    rc, out, _ = run_cli(capsys, "trace", tid, "--server", zt_server.addr)
    assert rc == 0
    assert "shop/gunicorn" in out and "GET /cart" in out and "self" in out
    assert "error" in out and "14ms" in out  # root self time = 20 - 3*2 ms

    rc, out, _ = run_cli(
        capsys,
        "traces",
        "--server",
        zt_server.addr,
        "--service",
        "shop",
        "--since",
        "15m",
        "--min-duration",
        "10ms",
        "--tag",
        "customer=vip",
        "--limit",
        "5",
        "-o",
        "json",
    )
    assert rc == 0 and [t["trace_id"] for t in json.loads(out)] == [tid]
    rc, out, _ = run_cli(capsys, "traces", "--server", zt_server.addr, "--status", "error")
    assert rc == 0 and tid[:8] in out

    rc, out, _ = run_cli(capsys, "services", "--server", zt_server.addr, "-o", "json")
    assert rc == 0 and json.loads(out)[0]["service"] == "shop"
    rc, out, _ = run_cli(capsys, "services", "--server", zt_server.addr)
    assert "shop" in out and "p99" in out

    for ext in ("svg", "html", "json", "folded"):
        f = tmp_path / f"fg.{ext}"
        rc, _, err = run_cli(capsys, "flamegraph", tid, "-o", str(f), "--server", zt_server.addr)
        assert rc == 0, err
        assert f.stat().st_size > 0
    assert (tmp_path / "fg.svg").read_text().count('class="bar"') == 4
    f = tmp_path / "agg.folded"
    rc, _, err = run_cli(
        capsys,
        "flamegraph",
        "--service",
        "shop",
        "--since",
        "1h",
        "-o",
        str(f),
        "--server",
        zt_server.addr,
    )
    assert rc == 0, err
    assert "[S] shop: GET /cart" in f.read_text()


def test_two_agents_joined_by_seq_and_tuple(zt_server, capsys):
    ta, tb, spans_a, spans_b = two_node_trace()
    _send(zt_server.addr, "node-a", spans_a)
    _send(zt_server.addr, "node-b", spans_b)
    client = spans_a[1]
    server = spans_b[0]
    for asked in (ta, tb):  # whole from either half
        rc, out, err = run_cli(capsys, "trace", asked, "--server", zt_server.addr, "-o", "json")
        assert rc == 0, err
        doc = json.loads(out)
        got = {s["span_id"]: s for s in doc["spans"]}
        assert set(got) == {s.span_id for s in spans_a + spans_b}
        assert got[server.span_id]["parent_span_id"] == client.span_id
        assert {s["agent"] for s in doc["spans"]} == {"node-a", "node-b"}
        assert doc["join"] == {"linked": 1, "ambiguous": 0}
    rc, out, _ = run_cli(capsys, "trace", ta, "--server", zt_server.addr)
    # tree: the api server span (other node) sits under the front client span
    lines = out.splitlines()
    i_cli = next(i for i, x in enumerate(lines) if "cli" in x and "front" in x)
    assert "api" in lines[i_cli + 1] and "ser" in lines[i_cli + 1]
    rc, out, _ = run_cli(capsys, "trace", ta, "--no-join", "--server", zt_server.addr, "-o", "json")
    assert len(json.loads(out)["spans"]) == 2
    rc, out, _ = run_cli(capsys, "dependencies", "--server", zt_server.addr, "-o", "json")
    assert {"parent": "front", "child": "api", "calls": 1, "errors": 0} in json.loads(out)


def test_ambiguous_key_links_none(zt_server, capsys):
    t0 = time.time_ns()
    ta, tb, tc = new_trace_id(), new_trace_id(), new_trace_id()
    c, s1 = client_server_pair(ta, tb, t0, seq=555_555)
    _, s2 = client_server_pair(new_trace_id(), tc, t0, seq=555_555)
    s2.span_id = new_span_id()
    _send(zt_server.addr, "node-a", [c])
    _send(zt_server.addr, "node-b", [s1])
    _send(zt_server.addr, "node-c", [s2])
    rc, out, _ = run_cli(capsys, "trace", ta, "--server", zt_server.addr, "-o", "json")
    doc = json.loads(out)
    assert [s["span_id"] for s in doc["spans"]] == [c.span_id]
    assert doc["join"] == {"linked": 0, "ambiguous": 1}
    rc, out, _ = run_cli(capsys, "trace", ta, "--server", zt_server.addr)
    assert "ambiguous" in out


def test_x_request_id_join(zt_server, capsys):
    t0 = time.time_ns()
    ta, tb = new_trace_id(), new_trace_id()
    c, s = client_server_pair(ta, tb, t0)
    c.req_seq = s.req_seq = None
    c.trace_headers = {"x-request-id": "req-77"}
    s.trace_headers = {"x-request-id": "req-77"}
    _send(zt_server.addr, "node-a", [c, s])
    rc, out, _ = run_cli(capsys, "trace", tb, "--server", zt_server.addr, "-o", "json")
    doc = json.loads(out)
    assert len(doc["spans"]) == 2 and doc["join"]["linked"] == 1


OTEL_APP = textwrap.dedent(
    """
    import sys
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.propagate import extract
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
    tracer = provider.get_tracer("shop.checkout")
    # The request arrived with this traceparent header (as the agent saw it on the wire).
    ctx = extract({"traceparent": sys.argv[2]})
    with tracer.start_as_current_span("POST /checkout", context=ctx,
                                      kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("http.request.method", "POST")
        span.set_attribute("http.response.status_code", 201)
        with tracer.start_as_current_span("charge card") as inner:
            inner.set_attribute("amount", 12.5)
    provider.shutdown()
    """
)


def test_otel_sdk_app_spans_share_the_trace(zt_server, capsys, tmp_path):
    t0 = time.time_ns()
    tid = new_trace_id()
    client_span_id = new_span_id()
    traceparent = f"00-{tid}-{client_span_id}-01"
    # The eBPF side of the same request: the caller's client span, whose id is the
    # traceparent parent id, and the server span the agent saw in the checkout pod.
    ebpf = [
        Span(
            trace_id=tid,
            span_id=client_span_id,
            kind="client",
            source="S",
            protocol="http",
            operation="POST /checkout",
            status="ok",
            start_ns=t0,
            end_ns=t0 + 50 * MS,
            service="front",
            trace_headers={"traceparent": traceparent},
        ),
        Span(
            trace_id=tid,
            parent_span_id=client_span_id,
            kind="server",
            source="S",
            protocol="http",
            operation="POST /checkout",
            status="ok",
            start_ns=t0 + MS,
            end_ns=t0 + 49 * MS,
            service="checkout",
            trace_headers={"traceparent": traceparent},
        ),
    ]
    _send(zt_server.addr, "node-a", ebpf)
    app = tmp_path / "app.py"
    app.write_text(OTEL_APP)
    subprocess.run(
        [sys.executable, str(app), zt_server.addr, traceparent],
        check=True,
        timeout=60,
        capture_output=True,
    )
    rc, out, err = run_cli(capsys, "trace", tid, "--server", zt_server.addr, "-o", "json")
    assert rc == 0, err
    spans = json.loads(out)["spans"]
    by_src = {}
    for s in spans:
        by_src.setdefault(s["source"], []).append(s)
    assert len(by_src["S"]) == 2 and len(by_src["A"]) == 2
    app_server = next(s for s in by_src["A"] if s["kind"] == "server")
    assert app_server["parent_span_id"] == client_span_id
    assert app_server["service"] == "checkout"
    assert app_server["attributes"]["http.response.status_code"] == 201
    inner = next(s for s in by_src["A"] if s["operation"] == "charge card")
    assert inner["parent_span_id"] == app_server["span_id"]
    assert inner["attributes"]["amount"] == 12.5


def test_cli_as_a_process(zt_server):
    tid = new_trace_id()
    _send(zt_server.addr, "n", [server_span(tid, service="p", start_ns=1, end_ns=5)])
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "trace", tid, "--server", zt_server.addr],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert tid in r.stdout and "p" in r.stdout


def test_join_across_nat_by_both_sequence_numbers(zt_server, capsys):
    # The client called a Service address (DNAT): its remote end is not the pod the
    # server span saw as local, so tuples do not mirror; the sequence numbers of both
    # directions, which NAT leaves alone, still say it is one exchange.
    t0 = time.time_ns()
    ta, tb = new_trace_id(), new_trace_id()
    c, s = client_server_pair(ta, tb, t0)
    c.remote = Endpoint("10.96.0.10", 80)  # the ClusterIP
    _send(zt_server.addr, "node-a", [c])
    _send(zt_server.addr, "node-b", [s])
    rc, out, _ = run_cli(capsys, "trace", ta, "--server", zt_server.addr, "-o", "json")
    doc = json.loads(out)
    assert doc["join"] == {"linked": 1, "ambiguous": 0}
    got = {x["span_id"]: x for x in doc["spans"]}
    assert got[s.span_id]["parent_span_id"] == c.span_id
    # Without the response's number, the tuple must mirror: no link across the NAT.
    c2, s2 = client_server_pair(new_trace_id(), new_trace_id(), t0)
    c2.remote = Endpoint("10.96.0.10", 80)
    c2.resp_seq = None
    _send(zt_server.addr, "node-a", [c2])
    _send(zt_server.addr, "node-b", [s2])
    rc, out, _ = run_cli(capsys, "trace", c2.trace_id, "--server", zt_server.addr, "-o", "json")
    assert json.loads(out)["join"] == {"linked": 0, "ambiguous": 0}


def test_trace_view_says_why_a_span_has_no_parent(zt_server, capsys):
    """A span the agent refused to link shows "parent unknown: <reason>", not a silent
    root; once the span has a parent in the trace, the note is not shown."""
    t0 = time.time_ns()
    tid = new_trace_id()
    root = server_span(tid, service="api", process="java", operation="GET /order",
                       start_ns=t0, end_ns=t0 + 10 * MS)
    orphan = Span(trace_id=tid, kind="client", source="S", protocol="redis",
                  operation="GET stock", status="ok", service="api",
                  start_ns=t0 + 2 * MS, end_ns=t0 + 3 * MS,
                  attributes={"zerotrace.parent.unknown": "context already answered"})
    linked = Span(trace_id=tid, parent_span_id=root.span_id, kind="client", source="S",
                  protocol="redis", operation="SET stock", status="ok", service="api",
                  start_ns=t0 + 4 * MS, end_ns=t0 + 5 * MS,
                  attributes={"zerotrace.parent.unknown": "stale note"})
    _send(zt_server.addr, "node-1", [root, orphan, linked])
    rc, out, _ = run_cli(capsys, "trace", tid, "--server", zt_server.addr)
    assert rc == 0
    line = next(ln for ln in out.splitlines() if "GET stock" in ln)
    assert "parent unknown: context already answered" in line
    assert "stale note" not in out
