"""The HTTP API as Grafana's Tempo and Jaeger data sources call it, on a real server.

One `zerotrace server --http 127.0.0.1:0` process per module; spans pushed the way
agents (zerotrace gRPC) and SDKs (OTLP) push them; then every endpoint is asked over
HTTP with the parameters Grafana sends (URL-encoded TraceQL, double-encoded tags,
`Accept: application/protobuf`).  Protobuf answers are decoded with the official
`opentelemetry.proto` classes; JSON answers are checked field by field against the
shapes the Tempo and Jaeger API documentation gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from factory import MS, server_span, two_node_trace
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from agent.export import BatchExporter, GrpcSpanExporter
from agent.export.otlp_exporter import OtlpSpanExporter
from proto.span import Span, new_span_id, new_trace_id

REPO = Path(__file__).resolve().parents[2]
HEX = set("0123456789abcdef")


class Server:
    """`python -m server.cli server --http 127.0.0.1:0 ...`; `.grpc`, `.http` addresses."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.stderr = tmp / "server.stderr"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0",
             "--data", str(tmp / "data"), "--http", "127.0.0.1:0", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self.stderr.open("w"), text=True,
            start_new_session=True)
        line = self.proc.stdout.readline()
        assert "listening on" in line, (line, self.stderr.read_text()[-2000:])
        self.grpc = line.split("listening on ")[1].split()[0]
        line = self.proc.stdout.readline()
        assert "HTTP API" in line, (line, self.stderr.read_text()[-2000:])
        self.http = line.split("http://")[1].split()[0]

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


class Data:
    """What the module pushed, by name."""

    t0: int
    ta: str  # front's fragment (node-a)
    tb: str  # api's fragment (node-b), joined to ta by sequence numbers
    cart: str  # shop: GET /cart, error 503, a redis child
    evil: str  # a stored value that looks like SQL
    short: str  # a trace id with leading zeros
    order: str  # GET /order/n3fa9c01?x=1, which the agent's metrics fold to GET /order/{id}
    sdk: str  # an OTLP (application) trace
    cart_root: Span
    cart_child: Span


def _push(addr: str, agent: str, spans: list[Span]) -> None:
    b = BatchExporter(GrpcSpanExporter(addr, agent=agent), schedule_delay_s=0.05)
    assert b.submit(spans) == len(spans)
    assert b.force_flush(10)
    assert b.metrics()["zerotrace_export_sent_total"] == len(spans)
    b.shutdown()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("http"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def data(srv) -> Data:
    d = Data()
    d.t0 = t0 = time.time_ns() - 2_000_000_000
    d.ta, d.tb, a, b = two_node_trace(t0)
    _push(srv.grpc, "node-a", a)
    _push(srv.grpc, "node-b", b)

    d.cart = new_trace_id()
    root = server_span(
        d.cart, service="shop", process="gunicorn", operation="GET /cart",
        start_ns=t0 + 50 * MS, end_ns=t0 + 70 * MS, status="error", status_code="503",
        error="upstream timed out", pid=4242,
        attributes={"http.request.method": "GET", "http.response.status_code": 503,
                    "customer": "vip", "retry": True, "ratio": 0.25},
        resource={"k8s.namespace.name": "prod", "k8s.pod.name": "shop-7f9"},
        trace_headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    child = Span(trace_id=d.cart, parent_span_id=root.span_id, kind="client", source="S",
                 protocol="redis", operation="GET cart:1", status="ok", service="shop",
                 start_ns=t0 + 52 * MS, end_ns=t0 + 55 * MS,
                 resource={"k8s.namespace.name": "prod", "k8s.pod.name": "shop-7f9"})
    net = Span(trace_id=d.cart, parent_span_id=child.span_id, kind="client", source="N",
               protocol="redis", operation="GET cart:1", status="ok", service="shop",
               start_ns=t0 + 52 * MS, end_ns=t0 + 54 * MS)
    d.cart_root, d.cart_child = root, child

    d.evil = new_trace_id()
    evil = server_span(d.evil, service="evil", operation="GET /q", start_ns=t0 + 80 * MS,
                       end_ns=t0 + 81 * MS, attributes={"q": "x' OR '1'='1"})
    d.short = "0000" + new_trace_id()[4:]
    short = server_span(d.short, service="tiny", operation="GET /z", start_ns=t0 + 90 * MS,
                        end_ns=t0 + 91 * MS)
    d.order = new_trace_id()
    order = server_span(d.order, service="orders", operation="GET /order/n3fa9c01?x=1",
                        start_ns=t0 + 95 * MS, end_ns=t0 + 96 * MS)
    _push(srv.grpc, "node-c", [root, child, net, evil, short, order])

    d.sdk = new_trace_id()
    sdk = Span(trace_id=d.sdk, span_id=new_span_id(), kind="server", source="A",
               operation="charge", status="ok", service="checkout-sdk",
               start_ns=t0 + 100 * MS, end_ns=t0 + 140 * MS, attributes={"amount": 12})
    exp = OtlpSpanExporter(srv.grpc)
    assert exp.export([sdk]).name == "SUCCESS"
    exp.shutdown()
    return d


# -- HTTP helpers ----------------------------------------------------------------


def get(srv: Server, path: str, accept: str = "", headers: dict | None = None
        ) -> tuple[int, str, bytes]:
    h = dict(headers or {})
    if accept:
        h["Accept"] = accept
    req = urllib.request.Request(f"http://{srv.http}{path}", headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def get_json(srv: Server, path: str, status: int = 200) -> dict:
    code, ctype, body = get(srv, path)
    assert code == status, (path, code, body[:500])
    assert ctype.startswith("application/json"), ctype
    return json.loads(body)


def q(text: str) -> str:
    """encodeURIComponent, as Grafana encodes a TraceQL query or a tag value."""
    return urllib.parse.quote(text, safe="")


def search(srv: Server, traceql: str, **params) -> list[dict]:
    qs = "&".join([f"q={q(traceql)}", "limit=20", "spss=3",
                   *(f"{k}={v}" for k, v in params.items())])
    return get_json(srv, f"/api/search?{qs}")["traces"]


def ids(traces: list[dict]) -> set[str]:
    return {t["traceID"] for t in traces}


def _any(v: common_pb2.AnyValue):
    return getattr(v, v.WhichOneof("value"))


def _attrs(kvs) -> dict:
    return {kv.key: _any(kv.value) for kv in kvs}


def _unwrap_field1(body: bytes) -> bytes:
    """Field 1 (length-delimited) of a protobuf message: the trace in TraceByIDResponse."""
    assert body[0] == 0x0A, body[:4]
    n, shift, i = 0, 0, 1
    while True:
        b = body[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    return body[i:i + n]


def _otlp_spans(td: trace_pb2.TracesData) -> dict[str, tuple]:
    """span id hex -> (span, resource attributes, scope name)."""
    out = {}
    for rs in td.resource_spans:
        res = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out[s.span_id.hex()] = (s, res, ss.scope.name)
    return out


# -- Tempo: status and trace by id -----------------------------------------------


def test_echo_and_buildinfo(srv):
    code, ctype, body = get(srv, "/api/echo")
    assert (code, body) == (200, b"echo") and ctype.startswith("text/plain")
    info = get_json(srv, "/api/status/buildinfo")
    assert set(info) >= {"version", "revision", "branch", "buildUser", "buildDate", "goVersion"}
    major, minor = (int(x) for x in info["version"].split(".")[:2])
    assert (major, minor) >= (2, 0)  # Grafana enables TraceQL and v2 tags from Tempo 2


def test_keep_alive_answers_do_not_wait_for_a_delayed_ack(srv, data):
    """Grafana keeps its connection open: an answer's headers and body leave in two
    writes, and with Nagle's algorithm the body waited for the client's delayed ACK
    (~40 ms on Linux) on every request once the client's socket left quick-ACK mode.
    So a fetch on a kept connection must cost what one on a new connection costs (a new
    socket is in quick-ACK mode: no wait there either way), not 40 ms more.  Relative,
    and the fastest of each kind: the server's own time varies with the machine's load."""
    import http.client

    def fetch(conn: http.client.HTTPConnection) -> float:
        t = time.perf_counter()
        conn.request("GET", f"/api/traces/{data.ta}",
                     headers={"Accept": "application/protobuf"})
        r = conn.getresponse()
        assert r.status == 200 and r.read()
        return time.perf_counter() - t

    kept_conn = http.client.HTTPConnection(srv.http, timeout=30)
    kept = [fetch(kept_conn) for _ in range(20)][4:]
    kept_conn.close()
    fresh = []
    for _ in range(8):
        c = http.client.HTTPConnection(srv.http, timeout=30)
        fresh.append(fetch(c))
        c.close()
    assert min(kept) < min(fresh) + 0.020, (
        [round(x * 1000, 1) for x in kept], [round(x * 1000, 1) for x in fresh])


@pytest.mark.parametrize("path", ["/api/traces/{}", "/api/v2/traces/{}"])
def test_trace_by_id_protobuf(srv, data, path):
    code, ctype, body = get(srv, path.format(data.cart), "application/protobuf")
    assert code == 200 and ctype == "application/protobuf"
    if "/v2/" in path:
        body = _unwrap_field1(body)  # TraceByIDResponse.trace
    td = trace_pb2.TracesData.FromString(body)
    spans = _otlp_spans(td)
    assert set(spans) == {data.cart_root.span_id, data.cart_child.span_id} | {
        sid for sid, (s, _r, _sc) in spans.items() if s.parent_span_id.hex() ==
        data.cart_child.span_id}
    assert len(spans) == 3
    root, res, scope = spans[data.cart_root.span_id]
    assert root.trace_id.hex() == data.cart and root.parent_span_id == b""
    assert root.name == "GET /cart"
    assert root.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert root.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert root.status.message == "upstream timed out"
    assert root.start_time_unix_nano == data.cart_root.start_ns
    assert root.end_time_unix_nano == data.cart_root.end_ns
    a = _attrs(root.attributes)
    assert a["http.response.status_code"] == 503  # typed: int_value
    assert root.attributes[[kv.key for kv in root.attributes].index(
        "http.response.status_code")].value.WhichOneof("value") == "int_value"
    assert a["retry"] is True and a["ratio"] == 0.25 and a["customer"] == "vip"
    assert a["zerotrace.source"] == "S" and a["zerotrace.protocol"] == "http"
    assert a["zerotrace.status_code"] == "503" and a["process.pid"] == 4242
    assert a["zerotrace.flamegraph.url"].endswith(f"/api/flamegraph/{data.cart}?format=html")
    assert res == {"service.name": "shop", "k8s.namespace.name": "prod",
                   "k8s.pod.name": "shop-7f9"}
    assert scope == "zerotrace"
    # a traceparent of another trace seen on the wire is a link
    assert [(lk.trace_id.hex(), lk.span_id.hex()) for lk in root.links] == [
        ("ab" * 16, "cd" * 8)]
    assert _attrs(root.links[0].attributes) == {"zerotrace.link": "traceparent"}
    child, _res, _ = spans[data.cart_child.span_id]
    assert child.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert child.parent_span_id.hex() == data.cart_root.span_id
    assert child.status.code == trace_pb2.Status.STATUS_CODE_OK
    net = [s for s, _r, _sc in spans.values() if _attrs(s.attributes).get(
        "zerotrace.source") == "N"]
    assert len(net) == 1 and net[0].parent_span_id.hex() == data.cart_child.span_id


def test_trace_by_id_json_v1_and_v2(srv, data):
    v1 = get_json(srv, f"/api/traces/{data.cart}")
    v2 = get_json(srv, f"/api/v2/traces/{data.cart}")
    assert set(v2) >= {"trace"} and v2["trace"] == v1
    assert list(v1) == ["resourceSpans"]
    found = {}
    for rs in v1["resourceSpans"]:
        assert set(rs) <= {"resource", "scopeSpans", "schemaUrl"}
        res = {kv["key"]: kv["value"] for kv in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            assert ss["scope"]["name"] == "zerotrace"
            for s in ss["spans"]:
                found[s["spanId"]] = (s, res)
    root, res = found[data.cart_root.span_id]
    assert res["service.name"] == {"stringValue": "shop"}
    # OTLP/JSON: hex ids, integer enums, 64-bit integers as strings
    assert root["traceId"] == data.cart and set(root["traceId"]) <= HEX
    assert "parentSpanId" not in root
    assert root["kind"] == 2 and root["status"] == {"code": 2, "message": "upstream timed out"}
    assert root["startTimeUnixNano"] == str(data.cart_root.start_ns)
    assert root["endTimeUnixNano"] == str(data.cart_root.end_ns)
    attrs = {kv["key"]: kv["value"] for kv in root["attributes"]}
    assert attrs["http.response.status_code"] == {"intValue": "503"}
    assert attrs["retry"] == {"boolValue": True}
    assert attrs["ratio"] == {"doubleValue": 0.25}
    assert attrs["customer"] == {"stringValue": "vip"}
    assert root["links"][0]["traceId"] == "ab" * 16
    child, _ = found[data.cart_child.span_id]
    assert child["parentSpanId"] == data.cart_root.span_id and child["kind"] == 3


def test_trace_id_forms_and_errors(srv, data):
    # Tempo accepts ids without their leading zeros, and upper case
    code, _, body = get(srv, f"/api/traces/{data.short.lstrip('0').upper()}",
                        "application/protobuf")
    assert code == 200
    (span,) = (s for s, _r, _sc in _otlp_spans(trace_pb2.TracesData.FromString(body)).values())
    assert span.trace_id.hex() == data.short
    code, ctype, body = get(srv, f"/api/v2/traces/{new_trace_id()}", "application/protobuf")
    assert code == 404 and b"trace not found" in body
    code, _, body = get(srv, "/api/traces/not-hex")
    assert code == 400 and b"invalid trace id" in body
    code, _, body = get(srv, "/api/traces/" + "1" * 33)
    assert code == 400


def test_application_span_from_otlp(srv, data):
    code, _, body = get(srv, f"/api/traces/{data.sdk}", "application/protobuf")
    assert code == 200
    ((span, res, scope),) = _otlp_spans(trace_pb2.TracesData.FromString(body)).values()
    assert span.name == "charge" and span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert res["service.name"] == "checkout-sdk"
    assert _attrs(span.attributes)["zerotrace.source"] == "A"
    assert scope  # the SDK's instrumentation scope (the exporter's), not ours


def test_cross_node_join_over_http(srv, data):
    """Asking for api's fragment returns front's spans too (the server's join)."""
    code, _, body = get(srv, f"/api/traces/{data.tb}", "application/protobuf")
    spans = _otlp_spans(trace_pb2.TracesData.FromString(body))
    services = {r["service.name"] for _s, r, _sc in spans.values()}
    assert services == {"front", "api"}
    assert all(s.trace_id.hex() == data.tb for s, _r, _sc in spans.values())
    joined = [s for s, _r, _sc in spans.values()
              if _attrs(s.attributes).get("zerotrace.fragment_trace_id") == data.ta]
    assert joined and all(lk.trace_id.hex() == data.ta for s in joined for lk in s.links)


# -- Tempo: search ---------------------------------------------------------------


def test_search_result_shape(srv, data):
    start, end = data.t0 // 10**9 - 60, data.t0 // 10**9 + 60
    (t,) = search(srv, '{resource.service.name="shop" && name="GET /cart"}',
                  start=start, end=end)
    assert t["traceID"] == data.cart
    assert t["rootServiceName"] == "shop" and t["rootTraceName"] == "GET /cart"
    assert t["startTimeUnixNano"] == str(data.cart_root.start_ns)
    assert t["durationMs"] == 20
    (ss,) = t["spanSets"]
    assert ss == t["spanSet"] and ss["matched"] == 1
    (sp,) = ss["spans"]
    assert sp["spanID"] == data.cart_root.span_id
    assert sp["startTimeUnixNano"] == str(data.cart_root.start_ns)
    assert sp["durationNanos"] == str(20 * MS)
    assert {"key": "service.name", "value": {"stringValue": "shop"}} in sp["attributes"]


@pytest.mark.parametrize(("traceql", "expect"), [
    # what Grafana's search builder writes: scoped attributes, intrinsics, && between them
    ('{resource.service.name="shop" && name="GET /cart" && status=error && duration>5ms}',
     {"cart"}),
    ('{resource.service.name="shop" && status=ok}', {"cart"}),
    ('{resource.service.name=~"sho.*|tin."}', {"cart", "short"}),
    ('{resource.service.name!~"sho.*" && resource.service.name="tiny"}', {"short"}),
    ('{span.http.response.status_code>=500}', {"cart"}),
    ('{span.http.response.status_code=503 && span.http.request.method="GET"}', {"cart"}),
    ('{.customer="vip"}', {"cart"}),
    ('{resource.k8s.namespace.name="prod" && kind=client}', {"cart"}),
    ('{span.retry=true}', {"cart"}),
    # typed equalities narrowed on the search index by their stored JSON spellings
    ('{span.ratio=0.25}', {"cart"}),
    ('{span.http.response.status_code=503.0 && span.retry=true}', {"cart"}),
    ('{span.http.response.status_code=500}', set()),
    ('{span.retry=false}', set()),
    ('{span.ratio<0.5 && span.ratio>0.1}', {"cart"}),
    ('{span.zerotrace.protocol="redis" && span.zerotrace.source="N"}', {"cart"}),
    ('{span.process.pid=4242}', {"cart"}),
    ('{name="charge" && kind=server}', {"sdk"}),
    ('{resource.service.name="evil" || resource.service.name="tiny"}', {"evil", "short"}),
    ('{(name="GET /q" || name="GET /z") && duration<2ms}', {"evil", "short"}),
    ('{resource.service.name="shop"} && {span.zerotrace.source="N"}', {"cart"}),
    ('{resource.service.name="shop"} && {resource.service.name="tiny"}', set()),
    ('{resource.service.name="shop"} || {resource.service.name="tiny"}', {"cart", "short"}),
    ('{statusMessage="upstream timed out"}', {"cart"}),
    ('{span.customer!=nil && !(status=ok)}', {"cart"}),
    ('{span.nothing="here"}', set()),
    ('{duration>1s}', set()),
    # a RED panel's operation label, id segments folded by the agent's metrics
    ('{resource.service.name="orders" && name="GET /order/{id}"}', {"order"}),
    ('{name="GET /order/{id}/items"}', set()),
])
def test_traceql_search(srv, data, traceql, expect):
    names = {getattr(data, k): k for k in ("ta", "tb", "cart", "evil", "short", "sdk", "order")}
    got = {names.get(t, t) for t in ids(search(srv, traceql))}
    assert got & set(names.values()) == expect


def test_search_time_window_and_limit(srv, data):
    assert ids(search(srv, "{}", start=data.t0 // 10**9 - 30, end=data.t0 // 10**9 + 30))
    assert not ids(search(srv, "{}", start=data.t0 // 10**9 - 3600,
                          end=data.t0 // 10**9 - 3000))
    body = get_json(srv, f"/api/search?q={q('{}')}&limit=2")
    assert len(body["traces"]) == 2
    # newest first
    starts = [int(t["startTimeUnixNano"]) for t in search(srv, "{}")]
    assert starts == sorted(starts, reverse=True)


def test_legacy_tag_search(srv, data):
    tags = "service.name=shop customer=vip"
    body = get_json(srv, f"/api/search?tags={q(tags)}&minDuration=10ms&maxDuration=1s"
                         "&limit=20")
    assert ids(body["traces"]) == {data.cart}
    # Grafana URL-encodes the value, then the URL: the value arrives encoded twice
    body = get_json(srv, f"/api/search?tags={q(q('service.name=tiny'))}")
    assert ids(body["traces"]) == {data.short}
    body = get_json(srv, f"/api/search?tags={q('service.name=shop')}&minDuration=30ms")
    assert body["traces"] == []
    body = get_json(srv, f"/api/search?tags={q('error=true')}")
    assert data.cart in ids(body["traces"]) and data.short not in ids(body["traces"])
    code, _, msg = get(srv, "/api/search?minDuration=fast")
    assert code == 400 and b"minDuration" in msg


@pytest.mark.parametrize(("traceql", "names"), [
    ('{resource.service.name="shop"} | count() > 1', "pipelines"),
    ('{resource.service.name="shop"} | select(span.x)', "pipelines"),
    ('{resource.service.name="shop"} >> {name="GET cart:1"}', "structural operator '>>'"),
    ('{resource.service.name="shop"} ~ {name="x"}', "structural operator '~'"),
    ('{traceDuration > 1s}', "intrinsic 'traceDuration'"),
    ('{rootServiceName = "shop"}', "intrinsic 'rootServiceName'"),
    ('{trace:duration > 1s}', "intrinsic 'trace:duration'"),
    ('{event.name = "x"}', "scope 'event'"),
    ('{span.a + 1 > 2}', "arithmetic '+'"),
    ('{span.a = "x"', "expected '}'"),
    ('{span.a =~ "("}', "bad regex"),
    ('{status = 200}', "status compared with a int"),
    ('{duration > "fast"}', "duration compared with a string"),
    ('{span.a}', "without a comparison"),
    ('{foo = 1}', "unknown field 'foo'"),
    ('resource.service.name = "x"', "expected a spanset"),
    ('{span.a = bar}', "value 'bar'"),
])
def test_unsupported_traceql_is_400_naming_the_part(srv, data, traceql, names):
    code, ctype, body = get(srv, f"/api/search?q={q(traceql)}")
    assert code == 400, body
    assert ctype.startswith("text/plain")
    assert body.decode().startswith("unsupported TraceQL:")
    assert names in body.decode(), body


@pytest.mark.parametrize("traceql", [
    '{resource.service.name = "shop\' OR 1=1 --"}',
    '{resource.service.name = "x\\") OR 1=1 OR (\\"a"}',
    '{span."a\') OR 1=1 OR (\'" = "x"}',
    '{name =~ ".*\') OR 1=1 --"}',
    '{span.q = "x\' OR \'1\'=\'1\' OR \'"}',
    '{resource.service.name = "shop"; DROP TABLE zerotrace.spans"}',
    '{.customer = "vip\\\\\' OR 1=1 --"}',
])
def test_sql_injection_through_traceql_finds_nothing(srv, data, traceql):
    code, _, body = get(srv, f"/api/search?q={q(traceql)}")
    assert code in (200, 400), body
    if code == 200:
        assert json.loads(body)["traces"] == []
    # and the data is all still there
    assert data.cart in ids(search(srv, '{resource.service.name="shop"}'))


def test_stored_sql_like_value_is_matched_literally(srv, data):
    assert ids(search(srv, '{span.q = "x\' OR \'1\'=\'1"}')) == {data.evil}
    body = get_json(srv, f"/api/search?tags={q(chr(34).join(['q=', 'x', '']))}")
    assert body["traces"] == []  # q="x" is not q="x' OR '1'='1"


# -- Tempo: tags -----------------------------------------------------------------


def test_tags_v2_scopes(srv, data):
    body = get_json(srv, "/api/v2/search/tags")
    scopes = {s["name"]: s["tags"] for s in body["scopes"]}
    assert set(scopes) == {"span", "resource", "intrinsic"}
    assert {"http.request.method", "http.response.status_code", "customer",
            "zerotrace.protocol", "zerotrace.source"} <= set(scopes["span"])
    assert {"service.name", "k8s.namespace.name", "k8s.pod.name"} <= set(scopes["resource"])
    assert {"name", "status", "duration", "kind"} <= set(scopes["intrinsic"])
    # the OTLP fields kept whole for the SDK span (server/ingest/otlp.py) are no tag
    assert "zerotrace.otlp" not in scopes["span"] and "otel.scope.name" not in scopes["span"]
    only = get_json(srv, "/api/v2/search/tags?scope=resource")
    assert [s["name"] for s in only["scopes"]] == ["resource"]
    code, _, _ = get(srv, "/api/v2/search/tags?scope=event")
    assert code == 400


def test_tag_values_v2_typed(srv, data):
    def values(name: str, extra: str = "") -> list[dict]:
        return get_json(srv, f"/api/v2/search/tag/{q(name)}/values{extra}")["tagValues"]

    svc = values("resource.service.name")
    assert {"type": "string", "value": "shop"} in svc
    assert {"type": "string", "value": "checkout-sdk"} in svc
    assert values("span.http.response.status_code") == [{"type": "int", "value": "503"}]
    assert values("span.retry") == [{"type": "bool", "value": "true"}]
    assert values(".customer") == [{"type": "string", "value": "vip"}]
    assert values("resource.k8s.namespace.name") == [{"type": "string", "value": "prod"}]
    assert {"type": "keyword", "value": "error"} in values("status")
    assert {v["value"] for v in values("kind")} >= {"server", "client"}
    assert {"type": "string", "value": "GET /cart"} in values("name")
    # Grafana narrows values with the query being typed
    narrowed = values("name", "?q=" + q('{resource.service.name="tiny"}'))
    assert narrowed == [{"type": "string", "value": "GET /z"}]
    # intrinsics from Grafana's own list that this server lacks: no values, no error
    assert values("trace:rootService") == [] and values("event:name") == []
    assert values("traceDuration") == []
    assert get(srv, f"/api/v2/search/tag/{q('span.a b')}/values")[0] == 400
    # an old window has nothing
    assert values("resource.service.name", "?start=1000&end=2000") == []


def test_tags_v1(srv, data):
    names = get_json(srv, "/api/search/tags")["tagNames"]
    assert {"service.name", "http.request.method", "customer"} <= set(names)
    vals = get_json(srv, "/api/search/tag/service.name/values")["tagValues"]
    assert {"shop", "tiny", "front", "api"} <= set(vals)
    assert get_json(srv, "/api/search/tag/customer/values")["tagValues"] == ["vip"]


# -- Jaeger ----------------------------------------------------------------------


def _check_envelope(body: dict) -> None:
    assert set(body) == {"data", "total", "limit", "offset", "errors"}
    assert body["errors"] is None


def test_jaeger_services_and_operations(srv, data):
    for prefix in ("/jaeger", ""):
        body = get_json(srv, f"{prefix}/api/services")
        _check_envelope(body)
        assert {"shop", "tiny", "front", "api", "checkout-sdk"} <= set(body["data"])
        assert body["total"] == len(body["data"])
    ops = get_json(srv, "/jaeger/api/services/shop/operations")
    _check_envelope(ops)
    assert ops["data"] == ["GET /cart", "GET cart:1"]
    ops = get_json(srv, "/jaeger/api/operations?service=shop&spanKind=server")
    assert ops["data"] == [{"name": "GET /cart", "spanKind": "server"}]


def test_jaeger_trace_model(srv, data):
    body = get_json(srv, f"/jaeger/api/traces/{data.cart}")
    _check_envelope(body)
    (trace,) = body["data"]
    assert set(trace) == {"traceID", "spans", "processes", "warnings"}
    assert trace["traceID"] == data.cart
    spans = {s["spanID"]: s for s in trace["spans"]}
    root = spans[data.cart_root.span_id]
    assert set(root) == {"traceID", "spanID", "flags", "operationName", "references",
                         "startTime", "duration", "tags", "logs", "processID", "warnings"}
    assert root["operationName"] == "GET /cart"
    assert root["startTime"] == data.cart_root.start_ns // 1000  # microseconds
    assert root["duration"] == 20_000
    assert root["logs"] == [] and root["warnings"] is None
    assert root["references"] == [
        {"refType": "FOLLOWS_FROM", "traceID": "ab" * 16, "spanID": "cd" * 8}]
    tags = {t["key"]: t for t in root["tags"]}
    assert tags["error"] == {"key": "error", "type": "bool", "value": True}
    assert tags["span.kind"] == {"key": "span.kind", "type": "string", "value": "server"}
    assert tags["otel.status_code"]["value"] == "ERROR"
    assert tags["otel.status_description"]["value"] == "upstream timed out"
    assert tags["http.response.status_code"] == {
        "key": "http.response.status_code", "type": "int64", "value": 503}
    assert tags["ratio"]["type"] == "float64" and tags["retry"]["type"] == "bool"
    child = spans[data.cart_child.span_id]
    assert child["references"] == [{"refType": "CHILD_OF", "traceID": data.cart,
                                    "spanID": data.cart_root.span_id}]
    proc = trace["processes"][root["processID"]]
    assert proc["serviceName"] == "shop"
    assert {"key": "k8s.namespace.name", "type": "string", "value": "prod"} in proc["tags"]
    assert all(s["processID"] in trace["processes"] for s in trace["spans"])


def test_jaeger_find_traces(srv, data):
    start_us = data.t0 // 1000 - 60_000_000
    end_us = data.t0 // 1000 + 60_000_000
    base = f"/jaeger/api/traces?service=shop&start={start_us}&end={end_us}&limit=20"
    body = get_json(srv, base)
    _check_envelope(body)
    assert [t["traceID"] for t in body["data"]] == [data.cart]
    assert len(body["data"][0]["spans"]) == 3  # whole traces, not the matching span
    tags = json.dumps({"customer": "vip"})
    assert [t["traceID"] for t in get_json(srv, f"{base}&tags={q(tags)}")["data"]] == [
        data.cart]
    # double-encoded tags (Grafana encodes the JSON, then the URL)
    assert [t["traceID"] for t in get_json(srv, f"{base}&tags={q(q(tags))}")["data"]] == [
        data.cart]
    assert get_json(srv, f"{base}&tags={q(json.dumps({'customer': 'nobody'}))}")["data"] == []
    assert get_json(srv, f"{base}&operation={q('GET /cart')}&minDuration=10ms")["data"]
    assert get_json(srv, f"{base}&minDuration=30ms")["data"] == []
    assert get_json(srv, f"{base}&maxDuration=1ms")["data"] == []  # the shortest: 2ms
    assert get_json(srv, f"{base}&maxDuration=2500us")["data"]
    err = q(json.dumps({"error": "true"}))
    assert [t["traceID"] for t in get_json(srv, f"{base}&tags={err}")["data"]] == [data.cart]
    # Jaeger searches the way TraceQL does: zerotrace's own fields, Jaeger's tag names
    for tags, expect in [({"zerotrace.protocol": "redis"}, [data.cart]),
                         ({"span.kind": "client", "zerotrace.source": "N"}, [data.cart]),
                         ({"otel.status_code": "ERROR"}, [data.cart]),
                         ({"error": "false", "customer": "vip"}, []),
                         ({"k8s.namespace.name": "prod"}, [data.cart])]:
        got = get_json(srv, f"{base}&tags={q(json.dumps(tags))}")["data"]
        assert [t["traceID"] for t in got] == expect, tags
    # logfmt tags, as typed in the Jaeger UI
    got = get_json(srv, f"{base}&tags={q('customer=vip retry=true')}")["data"]
    assert [t["traceID"] for t in got] == [data.cart]
    # several traces by id (the Jaeger UI's compare view)
    got = get_json(srv, f"/jaeger/api/traces?traceID={data.cart}&traceID={data.short}")
    assert [t["traceID"] for t in got["data"]] == [data.cart, data.short]
    body = get_json(srv, "/jaeger/api/traces?limit=20", status=400)
    assert body["data"] is None and body["errors"][0]["code"] == 400
    assert "service" in body["errors"][0]["msg"]


def test_jaeger_not_found_and_dependencies(srv, data):
    body = get_json(srv, f"/jaeger/api/traces/{new_trace_id()}", status=404)
    assert body["data"] is None and body["errors"] == [
        {"code": 404, "msg": body["errors"][0]["msg"]}]
    deps = get_json(srv, "/jaeger/api/dependencies?endTs="
                         f"{time.time_ns() // 10**6}&lookback=3600000")
    _check_envelope(deps)
    assert {"parent": "front", "child": "api", "callCount": 1} in deps["data"]


# -- flame graphs ----------------------------------------------------------------


def test_flamegraph_speedscope_svg_html(srv, data):
    code, ctype, body = get(srv, f"/api/flamegraph/{data.cart}")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    (prof,) = doc["profiles"]
    assert prof["type"] == "sampled" and prof["unit"] == "nanoseconds"
    names = [f["name"] for f in doc["shared"]["frames"]]
    assert "[S] shop: GET /cart" in names and "[N] shop: GET cart:1" in names
    assert sum(prof["weights"]) == 20 * MS
    code, ctype, body = get(srv, f"/api/flamegraph/{data.cart}?format=svg")
    assert code == 200 and ctype == "image/svg+xml" and b"<svg" in body and b"GET /cart" in body
    code, ctype, body = get(srv, f"/api/flamegraph/{data.cart}?format=html")
    assert code == 200 and ctype.startswith("text/html") and b"<script" in body
    code, _, _ = get(srv, f"/api/flamegraph/{data.cart}?format=png")
    assert code == 400
    code, _, _ = get(srv, "/api/flamegraph?service=shop&since=1h&format=folded")
    assert code == 200


def test_unknown_endpoint_and_method(srv, data):
    code, _, body = get(srv, "/api/metrics/query_range")
    assert code == 404 and b"no such endpoint" in body
    req = urllib.request.Request(f"http://{srv.http}/api/search", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code in (405, 501)


# -- the flag ---------------------------------------------------------------------


def test_http_off_and_exposure_refused(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0",
         "--data", str(tmp_path / "d"), "--http", "0.0.0.0:0"],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0:0" in r.stderr

    import argparse
    import socket

    from server.cli import _start_http
    assert _start_http(argparse.Namespace(http=""), None, None) is None

    with socket.socket() as busy:  # an explicit --http on a taken port: exit 1, at once
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0",
             "--data", str(tmp_path / "d"), "--http", f"127.0.0.1:{port}"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"cannot serve HTTP on 127.0.0.1:{port}" in r.stderr
    assert not (tmp_path / "d").exists()  # found before the store opened


def test_tokens_guard_the_http_api(tmp_path):
    """With --token-file, every request needs a token of role `read` (as on gRPC)."""
    from server.auth import BAD_TOKEN, NO_TOKEN, TokenTable
    from server.http import HttpApi

    path = tmp_path / "tokens"
    read, ingest = "read-" + "c3" * 16, "ingest-" + "a1" * 16
    path.write_text(f"read {read} grafana\ningest {ingest} node-a\n")
    path.chmod(0o600)
    api = HttpApi(store=None, listen="127.0.0.1:0", tokens=TokenTable(str(path)))  # type: ignore[arg-type]
    port = api.start()
    srv = type("S", (), {"http": f"127.0.0.1:{port}"})()
    try:
        code, _, body = get(srv, "/api/echo")
        assert code == 401 and body.decode().strip() == NO_TOKEN
        code, _, body = get(srv, "/api/echo", headers={"Authorization": "Bearer " + "x" * 40})
        assert code == 401 and body.decode().strip() == BAD_TOKEN
        code, _, body = get(srv, "/api/echo", headers={"Authorization": f"Bearer {ingest}"})
        assert code == 403 and ingest.encode() not in body
        code, _, body = get(srv, "/api/echo", headers={"Authorization": f"Bearer {read}"})
        assert (code, body) == (200, b"echo")
        code, _, body = get(srv, "/jaeger/api/services")
        assert code == 401 and json.loads(body)["errors"][0]["code"] == 401
    finally:
        api.stop()
