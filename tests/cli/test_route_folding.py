"""HTTP span names are low-cardinality at export, the real path in `url.path`
(issue 15; OpenTelemetry HTTP conventions): spans named `GET /order/naed35c5bd9014696`
by the parser go through the agent's real BatchExporter to a real `zerotrace server`
and come back as `GET /order/{id}` with `url.path` = the path asked; the metric label
`http.route` folds by the same rule (agent/routes.py)."""

from __future__ import annotations

import json
import time

from cli_proc import MS, push, zt

from agent.metrics import AgentMetrics
from agent.routes import fold_span, route
from proto.span import Span, new_span_id, new_trace_id


def _http(tid: str, op: str, t0: int, protocol: str = "http", path: str | None = None,
          kind: str = "server") -> Span:
    attrs = {"http.request.method": op.split(" ")[0]}
    if path is not None:
        attrs["url.path"] = path
    return Span(trace_id=tid, span_id=new_span_id(), kind=kind, source="S",
                protocol=protocol, operation=op, status="ok", status_code="200",
                service="shop", start_ns=t0, end_ns=t0 + MS, attributes=attrs)


def test_route_rule():
    assert route("/order/naed35c5bd9014696") == "/order/{id}"
    assert route("/users/42/orders/7?page=2") == "/users/{id}/orders/{id}"
    assert route("/api/v2/health") == "/api/v2/health"  # short segments stay
    assert route("/u/3f2504e0-4f89-11d3-9a0c-0305e82c3301") == "/u/{id}"
    assert route("") == "/" and len(route("/a" * 500)) == 120


def test_fold_span_keeps_the_path_and_leaves_others_alone():
    t0 = time.time_ns()
    s = _http("1" * 32, "GET /order/naed35c5bd9014696?x=1", t0,
              path="/order/naed35c5bd9014696")
    f = fold_span(s)
    assert f is not s and s.operation == "GET /order/naed35c5bd9014696?x=1"  # a copy
    assert f.operation == "GET /order/{id}"
    assert f.attributes["url.path"] == "/order/naed35c5bd9014696"
    g = fold_span(_http("1" * 32, "GET /cart/12345678", t0))  # no url.path from the parser
    assert g.operation == "GET /cart/{id}" and g.attributes["url.path"] == "/cart/12345678"
    for keep in (_http("1" * 32, "GET /health", t0),
                 _http("1" * 32, "/shop.Cart/Get123456", t0, protocol="http2"),  # gRPC
                 Span(trace_id="1" * 32, span_id=new_span_id(), protocol="postgresql",
                      operation="SELECT /order/12345678", start_ns=t0, end_ns=t0 + 1)):
        assert fold_span(keep) is keep


def test_exported_span_names_are_folded(server):
    t0 = time.time_ns() - 30 * 1_000_000_000
    tid = new_trace_id()
    paths = ["/order/naed35c5bd9014696", "/order/nb81f0c2d33a2e117", "/order/42"]
    spans = [_http(tid, f"GET {p}", t0 + i * 2 * MS, path=p) for i, p in enumerate(paths)]
    spans.append(_http(tid, "POST /cart/items/1234567/checkout", t0 + 9 * MS,
                       protocol="http2", kind="client"))
    push(server, spans)
    r = zt("trace", tid, "-o", "json", "--server", server)
    assert r.rc == 0, r.err
    got = {s["span_id"]: s for s in json.loads(r.out)["spans"]}
    for s, p in zip(spans, paths, strict=False):
        assert got[s.span_id]["operation"] == "GET /order/{id}"
        assert got[s.span_id]["attributes"]["url.path"] == p
    last = got[spans[3].span_id]
    assert last["operation"] == "POST /cart/items/{id}/checkout"
    assert last["attributes"]["url.path"] == "/cart/items/1234567/checkout"
    # one name for the three requests: what search and the services view group by
    r = zt("traces", "-o", "json", "--operation", "GET /order/{id}", "--since", "5m",
           "--server", server)
    assert r.rc == 0 and [t["trace_id"] for t in json.loads(r.out)] == [tid]


def test_metric_label_uses_the_same_rule():
    m = AgentMetrics()
    t0 = time.time_ns()
    for p in ("/order/naed35c5bd9014696", "/order/nb81f0c2d33a2e117"):
        m.record(_http("2" * 32, f"GET {p}", t0, path=p))
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()
    routes = {line.split('http_route="')[1].split('"')[0] for line in text.splitlines()
              if "http_route=" in line and not line.startswith("#")}
    assert routes == {route("/order/naed35c5bd9014696")} == {"/order/{id}"}
