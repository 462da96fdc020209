"""deploy/grafana/zerotrace-red.json queries only what zerotrace really exports.

The metrics come from the real registries, scraped the way Prometheus scrapes them:
an agent pipeline wired by `Pipeline.serve_metrics` (RED from recorded server spans,
every stage source it registers, a real `BatchExporter` so the export keys exist, the
kernel drop reasons of the probes' ABI), and the server's `ServerCollector` over real
`Admission`s.  Every PromQL expression of the dashboard is then checked against that
scrape: metric names, grouping labels, label matchers and the values they select.
Nothing here lists metric names: renaming one in the code, or mistyping one in the
dashboard, fails this test.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "zerotrace-red.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
# Labels Prometheus attaches at scrape time (the target), never in the exposition.
TARGET_LABELS = {"instance", "job"}
# Grafana's own variables the queries may use.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# zerotrace's own families, and the OpenTelemetry semantic-convention instruments the
# agent exports (spelled out: label names such as http_route must not read as metrics)
_SELECTOR = re.compile(
    r"\b(zerotrace_[a-zA-Z0-9_:]*|(?:http_server_request|http_client_request|rpc_server"
    r"|rpc_client|db_client_operation)_duration_seconds(?:_bucket|_count|_sum)?)"
    r"\s*(\{[^}]*\})?")
# Runtime metrics every Prometheus client exports (process_*, python_*): charted by
# the standard runtime dashboards, not this one.
_RUNTIME = ("process_", "python_")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")')
_AGG_BY = re.compile(
    r"\b(?:sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)"
    r"\s+(?:by|without)\s*\(([^)]*)\)\s*\(")
_GROUPING_WORD = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(")
_RANGE = re.compile(r"\[([^\]]*)\]")
_VARIABLE = re.compile(r"\$\{?(\w+)|\[\[(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


# -- the real metrics ------------------------------------------------------------


class Scrape:
    """Sample name -> {label: values seen}, and sample name -> family type."""

    def __init__(self) -> None:
        self.labels: dict[str, dict[str, set[str]]] = {}
        self.kind: dict[str, str] = {}
        self.families: dict[str, set[str]] = {}  # family -> its sample names

    def add(self, exposition: str) -> None:
        for fam in text_string_to_metric_families(exposition):
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue  # creation timestamps, not something to chart
                seen = self.labels.setdefault(s.name, {})
                for k, v in s.labels.items():
                    seen.setdefault(k, set()).add(v)
                self.kind[s.name] = fam.type
                self.families.setdefault(fam.name, set()).add(s.name)


def _spans():
    from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK, Span

    shop = {"k8s.namespace.name": "shop"}
    db = {"k8s.namespace.name": "db"}
    ms = 1_000_000
    return [
        Span(trace_id="a" * 32, kind=KIND_SERVER, service="checkout", protocol="http",
             operation="GET /order/n3fa9c01", status=STATUS_OK, status_code="200",
             start_ns=0, end_ns=3 * ms, resource=dict(shop)),
        Span(trace_id="a" * 32, kind=KIND_SERVER, service="checkout", protocol="http",
             operation="POST /pay", status=STATUS_ERROR, status_code="503",
             start_ns=0, end_ns=80 * ms, resource=dict(shop)),
        Span(trace_id="a" * 32, kind=KIND_SERVER, service="stock", protocol="postgresql",
             operation="SELECT items", status=STATUS_OK, start_ns=0, end_ns=1 * ms,
             resource=dict(db)),
        Span(trace_id="a" * 32, kind=KIND_CLIENT, service="checkout", protocol="http",
             operation="GET /stock", status=STATUS_OK, start_ns=0, end_ns=2 * ms,
             resource=dict(shop), attributes={"http.request.method": "GET",
                                              "url.path": "/stock",
                                              "http.response.status_code": 200}),
        Span(trace_id="a" * 32, kind=KIND_CLIENT, service="checkout", protocol="http",
             operation="POST /stock", status=STATUS_ERROR, status_code="500", start_ns=0,
             end_ns=2 * ms, resource=dict(shop),
             attributes={"http.request.method": "POST", "url.path": "/stock",
                         "http.response.status_code": 500}),
        Span(trace_id="a" * 32, kind=KIND_SERVER, service="cart", protocol="grpc",
             operation="shop.Cart/Get", status=STATUS_OK, start_ns=0, end_ns=2 * ms,
             resource=dict(shop), attributes={"rpc.service": "shop.Cart",
                                              "rpc.method": "Get"}),
        Span(trace_id="a" * 32, kind=KIND_CLIENT, service="checkout", protocol="grpc",
             operation="shop.Cart/Get", status=STATUS_OK, start_ns=0, end_ns=2 * ms,
             resource=dict(shop), attributes={"rpc.service": "shop.Cart",
                                              "rpc.method": "Get"}),
        Span(trace_id="a" * 32, kind=KIND_CLIENT, service="checkout", protocol="postgresql",
             operation="SELECT items", status=STATUS_OK, start_ns=0, end_ns=1 * ms,
             resource=dict(shop), attributes={"db.system": "postgresql",
                                              "db.operation.name": "SELECT",
                                              "db.collection.name": "items"}),
    ]


def _agent_exposition() -> str:
    from agent.enrich import EnrichConfig, Enricher
    from agent.export import BatchExporter, InMemoryExporter
    from agent.metrics import AgentMetrics
    from agent.pipeline import DEFAULT_METRICS_PORT, Pipeline
    from agent.probes import abi
    from agent.stitch.stitcher import Trace

    p = Pipeline(agent_name="node-1")
    p.enricher = Enricher(EnrichConfig(kubernetes=False))
    sink = InMemoryExporter()
    batcher = BatchExporter(sink, schedule_delay_s=0.01)
    p.exporters.append(("server", batcher))
    # What SocketTracer.drops() returns, without loading probes: the ABI's reasons.
    p.kernel_drops = lambda: dict.fromkeys(abi.DROP_SLOTS.values(), 0)
    try:
        # The pipeline registers its own stage sources; only the HTTP listener is left out.
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(AgentMetrics, "serve", lambda self, port, addr="0.0.0.0": None)
            p.serve_metrics(DEFAULT_METRICS_PORT)
        assert p.metrics is not None
        spans = _spans()
        p._trace(Trace(trace_id=spans[0].trace_id, spans=spans, root=spans[0]))
        assert batcher.force_flush(10)
        assert len(sink.spans) == len(spans)
        return generate_latest(p.metrics.registry).decode()
    finally:
        p.close()


def _server_exposition() -> str:
    from server.ingest.admission import Admission
    from server.metrics import ServerCollector

    agents = Admission(limit=1)
    assert agents.enter("node-1")
    agents.leave("node-1", accepted=120, rejected=2)
    assert agents.enter("node-2")  # still in flight at scrape time
    assert not agents.enter("node-2")  # throttled
    otlp = Admission()
    assert otlp.enter("10.0.0.9")
    otlp.leave("10.0.0.9", failed=True)
    # BatchWriter needs a store; chDB allows one data directory per process and
    # tests/server owns it, so the writer is reduced to the one attribute read.
    writer = SimpleNamespace(inserts=3)
    registry = CollectorRegistry()
    registry.register(ServerCollector({"zerotrace": agents, "otlp": otlp}, writer))
    return generate_latest(registry).decode()


@pytest.fixture(scope="module")
def scrape() -> Scrape:
    sc = Scrape()
    sc.add(_agent_exposition())
    sc.add(_server_exposition())
    return sc


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


# -- reading the dashboard -------------------------------------------------------


def all_panels(dash: dict) -> list[dict]:
    """Top-level panels, and those inside collapsed rows."""
    out = []
    for p in dash.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def variable_query(var: dict) -> str:
    q = var.get("query", "")
    return q.get("query", "") if isinstance(q, dict) else q


def expressions(dash: dict) -> list[tuple[str, str, bool]]:
    """(where, PromQL, is a panel query) for every panel target and query variable."""
    out = []
    for p in all_panels(dash):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r} target {t.get('refId')}",
                        t.get("expr", ""), True))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            out.append((f"variable {v.get('name')!r}", variable_query(v), False))
    return out


def _mask_strings(expr: str) -> str:
    """String literals blanked, same length: metric names inside them are not metrics."""
    return _STRING.sub(lambda m: '"' + "\0" * (len(m.group()) - 2) + '"', expr)


def _close_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _unquote(literal: str) -> str:
    return literal[1:-1].encode().decode("unicode_escape")


def check_expr(where: str, expr: str, panel: bool, sc: Scrape, variables: set[str]
               ) -> list[str]:
    """What is wrong with one expression against the scrape (empty: nothing)."""
    problems: list[str] = []
    label_name = None
    if not panel:  # label_values(selector, label)
        m = _LABEL_VALUES.match(expr)
        if m is None:
            return [f"{where}: not label_values(metric, label): {expr!r}"]
        expr, label_name = m.group(1), m.group(2)
    masked = _mask_strings(expr)
    for a, b in ("()", "{}", "[]"):
        if masked.count(a) != masked.count(b):
            problems.append(f"{where}: unbalanced {a}{b} in {expr!r}")
    for name, alt in _VARIABLE.findall(expr):
        if (name or alt) not in variables | GRAFANA_BUILTINS:
            problems.append(f"{where}: undefined variable ${name or alt}")

    selectors = []  # (start, metric, matchers text)
    for m in _SELECTOR.finditer(masked):
        metric = m.group(1)
        matchers = expr[m.start(2):m.end(2)] if m.group(2) else ""
        selectors.append((m.start(), metric, matchers, m.end()))
    if not selectors:
        problems.append(f"{where}: no zerotrace metric in {expr!r}")

    for _start, metric, matchers, end in selectors:
        if metric not in sc.labels:
            problems.append(f"{where}: {metric} is not exported (no such sample)")
            continue
        have = sc.labels[metric]
        ranged = masked[end:].lstrip().startswith("[")
        kind = sc.kind[metric]
        if panel and ranged and kind not in ("counter", "histogram"):
            problems.append(f"{where}: rate over {metric}, a {kind}")
        if panel and not ranged and kind != "gauge":
            problems.append(f"{where}: {metric} is a {kind}; chart its rate")
        for label, op, literal in _MATCHER.findall(matchers):
            value = _unquote(literal)
            if label not in have:
                if label not in TARGET_LABELS:
                    problems.append(f"{where}: {metric} has no label {label!r}")
                continue
            if "$" in value:
                continue  # a Grafana variable: its values come from the data
            seen = have[label]
            if op in ("=", "!="):
                hit = value in seen
            else:
                try:
                    rx = re.compile(value)
                except re.error as e:
                    problems.append(f"{where}: bad regex {value!r}: {e}")
                    continue
                hit = any(rx.fullmatch(v) for v in seen)
            if not hit:
                problems.append(f"{where}: {metric}{{{label}{op}{literal}}} selects no "
                                f"value exported (seen: {sorted(seen)})")
    if label_name is not None:
        for _start, metric, _matchers, _end in selectors:
            if metric in sc.labels and label_name not in sc.labels[metric]:
                problems.append(f"{where}: {metric} has no label {label_name!r}")

    # Grouping: `agg by (labels) (inner)`, each label on every metric of the inner part.
    understood = 0
    for m in _AGG_BY.finditer(masked):
        understood += 1
        close = _close_paren(masked, m.end() - 1)
        inner = [s for s in selectors if m.end() <= s[0] < close]
        if not inner:
            problems.append(f"{where}: grouping over no zerotrace metric")
        for label in (x.strip() for x in m.group(1).split(",")):
            if not label or label in TARGET_LABELS:
                continue
            for _start, metric, _matchers, _end in inner:
                if metric in sc.labels and label not in sc.labels[metric]:
                    problems.append(f"{where}: grouping by {label!r}, which {metric} "
                                    "does not have")
    if len(_GROUPING_WORD.findall(masked)) != understood:
        problems.append(f"{where}: grouping this check does not read (write `agg by "
                        f"(labels) (expr)`; no on/ignoring/group_*): {expr!r}")

    if panel:
        for rng in _RANGE.findall(masked):
            if rng.strip() != "$__rate_interval":
                problems.append(f"{where}: range [{rng}], use [$__rate_interval]")
    return problems


def dashboard_problems(dash: dict, sc: Scrape) -> list[str]:
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    problems = []
    for where, expr, panel in expressions(dash):
        problems += check_expr(where, expr, panel, sc, variables)
    return problems


# -- the tests -------------------------------------------------------------------


def test_scrape_has_what_the_dashboard_is_about(scrape):
    """The fixture really produced RED, stage, export, kernel and server samples."""
    req = scrape.labels["zerotrace_requests_total"]
    assert req["status"] == {"ok", "error"}
    assert req["namespace"] == {"shop", "db"}
    assert "le" in scrape.labels["zerotrace_request_duration_seconds_bucket"]
    stages = scrape.labels["zerotrace_stage_events_total"]["stage"]
    assert {"connections", "kernel"} <= stages
    assert scrape.labels["zerotrace_export_queue_spans"]["exporter"] == {"server"}
    assert scrape.labels["zerotrace_export_sent_spans_total"]["exporter"] == {"server"}
    assert "http_route" in scrape.labels["http_server_request_duration_seconds_bucket"]
    assert scrape.labels["zerotrace_server_spans_accepted_total"]["sender"] == {
        "node-1", "node-2", "10.0.0.9"}


def test_every_query_matches_the_real_metrics(dashboard, scrape):
    assert expressions(dashboard)
    assert dashboard_problems(dashboard, scrape) == []


def test_every_exported_family_is_charted(dashboard, scrape):
    """A metric added to the agent or server shows up here until it has a panel."""
    used = {metric for _w, expr, _p in expressions(dashboard)
            for metric, _matchers in _SELECTOR.findall(_mask_strings(expr))}
    unused = sorted(f for f, names in scrape.families.items()
                    if not names & used and not f.startswith(_RUNTIME))
    assert unused == []


@pytest.mark.parametrize(("mutate", "expect"), [
    (lambda e: e.replace("zerotrace_requests_total", "zerotrace_request_total"),
     "is not exported"),
    (lambda e: e.replace("sum by (service)", "sum by (svc)"), "does not have"),
    (lambda e: e.replace("zerotrace_export_sent_spans_total", "zerotrace_export_sent_total"),
     "is not exported"),
    (lambda e: e.replace('error_type!=""', 'error_type="none"'), "selects no value"),
    (lambda e: e.replace('stage="kernel"', 'stage="kernal"'), "selects no value"),
    (lambda e: e.replace("$__rate_interval", "5m"), "use [$__rate_interval]"),
    (lambda e: e.replace("$namespace", "$ns"), "undefined variable"),
    (lambda e: e.replace("(zerotrace_server_batches_inflight)",
                         "(rate(zerotrace_server_batches_inflight[$__rate_interval]))"),
     "rate over"),
])
def test_the_check_catches_mistakes(dashboard, scrape, mutate, expect):
    """The checker itself fails on the mistakes it exists for."""
    bad = copy.deepcopy(dashboard)
    for p in all_panels(bad):
        for t in p.get("targets", []):
            t["expr"] = mutate(t["expr"])
    problems = dashboard_problems(bad, scrape)
    assert any(expect in p for p in problems), problems


def test_label_values_variables_are_checked(dashboard, scrape):
    bad = copy.deepcopy(dashboard)
    for v in bad["templating"]["list"]:
        if v["name"] == "service":
            v["query"]["query"] = v["query"]["query"].replace(", service)", ", svc)")
    assert any("no label 'svc'" in p for p in dashboard_problems(bad, scrape))


def test_dashboard_model(dashboard):
    d = dashboard
    assert d["schemaVersion"] == 39
    assert d["uid"] == "zerotrace-red"
    assert d["title"] == "zerotrace: requests, agents and ingest"
    panels = all_panels(d)
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for p in panels:
        g = p.get("gridPos")
        assert g is not None, p.get("title")
        assert all(isinstance(g.get(k), int) for k in "hwxy"), p.get("title")
        assert g["h"] > 0 and g["w"] > 0 and g["x"] >= 0 and g["y"] >= 0
        assert g["x"] + g["w"] <= GRID_WIDTH, p.get("title")
        boxes.append((p.get("title"), g))
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                       and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
            assert not overlap, f"{ta!r} overlaps {tb!r}"
    for p in panels:
        if p["type"] == "row":
            assert not p.get("targets")
            continue
        assert p.get("datasource") == DATASOURCE, p.get("title")
        refs = [t.get("refId") for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p.get("title")
        for t in p["targets"]:
            assert t.get("datasource") == DATASOURCE, p.get("title")
            assert t.get("expr"), p.get("title")
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    assert rows == ["RED by service", "Agent health", "Server ingest",
                    "OpenTelemetry RED (semantic-convention instruments)"]
    # every row has panels under it
    kinds = [p["type"] for p in d["panels"]]
    assert all(a != "row" or b != "row" for a, b in zip(kinds, kinds[1:], strict=False))
    assert kinds[-1] != "row"


def test_templating(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in ("namespace", "service"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], name
        assert v["datasource"] == DATASOURCE, name
        q = variable_query(v)
        assert q.startswith("label_values(zerotrace_requests_total") and q.endswith(
            f", {name})"), q
        assert v.get("definition", q) == q
