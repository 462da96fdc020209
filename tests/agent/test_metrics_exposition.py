"""The agent's and the server's /metrics pass `promtool check metrics` (Prometheus's own
linter), carry OpenTelemetry-named RED instruments with trace-id exemplars, export
outcomes one unit per family, process metrics, and keep label sets bounded."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics
from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK, Span
from tests.deploy.test_grafana_dashboard import _agent_exposition, _server_exposition

MS = 1_000_000


def promtool(exposition: str) -> str:
    tool = shutil.which("promtool")
    if tool is None:  # installed by scripts/setup.sh (Debian's prometheus)
        pytest.fail("promtool not found: run scripts/setup.sh")
    r = subprocess.run([tool, "check", "metrics"], input=exposition, capture_output=True,
                       text=True, timeout=60)
    return (r.stdout + r.stderr).strip() + ("" if r.returncode == 0 else f" (exit {r.returncode})")


def test_agent_exposition_passes_promtool():
    assert promtool(_agent_exposition()) == ""


def test_server_exposition_passes_promtool():
    assert promtool(_server_exposition()) == ""


def _span(kind, protocol, attrs, status=STATUS_OK, code="", trace="ab" * 16, service="shop"):
    return Span(trace_id=trace, kind=kind, service=service, protocol=protocol,
                operation="x", status=status, status_code=code, start_ns=0, end_ns=3 * MS,
                attributes=attrs, resource={"k8s.namespace.name": "prod"})


def _samples(m: AgentMetrics) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_semantic_convention_instruments_and_exemplars():
    m = AgentMetrics()
    m.record(_span(KIND_SERVER, "http", {"http.request.method": "GET",
                                         "url.path": "/order/n3fa9c01d2?x=1",
                                         "http.response.status_code": 200}, code="200"))
    m.record(_span(KIND_CLIENT, "http", {"http.request.method": "POST", "url.path": "/pay",
                                         "http.response.status_code": 503},
                   status=STATUS_ERROR, code="503"))
    m.record(_span(KIND_SERVER, "grpc", {"rpc.service": "shop.Cart", "rpc.method": "Get",
                                         "rpc.grpc.status_code": 0}))
    m.record(_span(KIND_CLIENT, "postgresql", {"db.system": "postgresql",
                                               "db.operation.name": "SELECT",
                                               "db.collection.name": "orders"}))
    m.record(_span(KIND_SERVER, "postgresql", {"db.system": "postgresql"}))  # no db server
    s = _samples(m)
    (http,) = [x for x in s["http_server_request_duration_seconds_count"]]
    assert http.labels == {"k8s_namespace_name": "prod", "service_name": "shop",
                           "http_request_method": "GET", "http_route": "/order/{id}",
                           "http_response_status_code": "200", "error_type": ""}
    (cli,) = s["http_client_request_duration_seconds_count"]
    assert cli.labels["error_type"] == "503" and cli.labels["url_template"] == "/pay"
    (rpc,) = s["rpc_server_duration_seconds_count"]
    assert (rpc.labels["rpc_service"], rpc.labels["rpc_method"]) == ("shop.Cart", "Get")
    (db,) = s["db_client_operation_duration_seconds_count"]
    assert (db.labels["db_system_name"], db.labels["db_operation_name"],
            db.labels["db_collection_name"]) == ("postgresql", "SELECT", "orders")
    assert sum(x.value for x in s["zerotrace_requests_total"]) == 3  # every server span
    assert "process_resident_memory_bytes" in s
    om = openmetrics(m.registry).decode()
    assert '# {trace_id="' + "ab" * 16 + '"}' in om


def test_labels_stay_bounded():
    m = AgentMetrics(max_operations=20)
    for i in range(300):
        m.record(_span(KIND_SERVER, "http", {"http.request.method": "GET",
                                             "url.path": f"/item/n{i:08x}a1"}))
        m.record(_span(KIND_SERVER, "http", {"http.request.method": "GET",
                                             "url.path": f"/page{chr(97 + i % 26)}/x{i}y"}))
    routes = {x.labels["http_route"]
              for x in _samples(m)["http_server_request_duration_seconds_count"]}
    assert "/item/{id}" in routes and "other" in routes
    assert len(routes) <= 21


def test_export_outcomes_are_one_unit_per_family():
    s = {}
    for fam in text_string_to_metric_families(_agent_exposition()):
        s[fam.name] = fam
    assert {"zerotrace_export_sent_spans", "zerotrace_export_dropped_spans",
            "zerotrace_export_sent_batches", "zerotrace_export_queue_spans"} <= set(s)
    # no pre-summed total next to its parts
    assert all(x.labels.get("reason") != "total" for x in s["zerotrace_export_dropped_spans"]
               .samples)
    assert "zerotrace_stage_gauge" not in s


def test_server_sender_label_is_bounded():
    from server.ingest.admission import Admission
    from server.metrics import ServerCollector

    adm = Admission(limit=1)
    for i in range(250):
        assert adm.enter(f"node-{i}")
        adm.leave(f"node-{i}", accepted=10)
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    reg.register(ServerCollector({"zerotrace": adm}, SimpleNamespace(inserts=1),
                                 max_senders=100))
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    acc = fams["zerotrace_server_spans_accepted"].samples
    senders = {x.labels["sender"]: x.value for x in acc if x.name.endswith("_total")}
    assert len(senders) == 101 and senders["other"] == 150 * 10
    assert sum(senders.values()) == 250 * 10
