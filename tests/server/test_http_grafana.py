"""deploy/grafana: the provisioned data sources reach the server's HTTP API, and the
dashboard's RED panels link to trace searches this server answers."""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path

import pytest
import yaml

from server.http import traceql

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
RED_PANELS = {"Request rate", "Error ratio", "Latency p50", "Latency p99",
              "Top operations by rate"}
# Example values Grafana would interpolate into a data link.
EXAMPLES = {"__field.labels.service": "shop", "__data.fields.service": "orders",
            "__data.fields.operation": "GET /order/{id}", "__from": "1700000000000",
            "__to": "1700003600000"}


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "zerotrace.yaml")
                         .read_text())
    assert doc["apiVersion"] == 1
    return {d["type"]: d for d in doc["datasources"]}


def test_datasources(datasources):
    assert set(datasources) == {"tempo", "jaeger", "prometheus"}
    tempo, jaeger = datasources["tempo"], datasources["jaeger"]
    assert tempo["url"] == "${ZEROTRACE_HTTP_URL}"
    # Jaeger's API under /jaeger: at the root /api/traces/<id> is Tempo's
    assert jaeger["url"] == "${ZEROTRACE_HTTP_URL}/jaeger"
    # the server answers Tempo's HTTP search, not its gRPC streaming
    assert tempo["jsonData"]["streamingEnabled"] == {"search": False, "metrics": False}
    prom_uid = datasources["prometheus"]["uid"]
    for ds in (tempo, jaeger):
        assert ds["access"] == "proxy"
        t2m = ds["jsonData"]["tracesToMetrics"]
        assert t2m["datasourceUid"] == prom_uid
        for q in t2m["queries"]:
            # `$$` is Grafana's escape for a literal `$` in provisioning files
            assert "$$__tags" in q["query"] and "zerotrace_request" in q["query"]
            assert not re.search(r"(?<!\$)\$(?!\$|\{|__)", q["query"].replace("$$", ""))


def test_helm_values_match_provisioning_and_the_chart(datasources):
    values = yaml.safe_load((GRAFANA / "helm-values.yaml").read_text())
    prov = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "zerotrace.yaml")
                          .read_text())
    assert values["datasources"]["zerotrace.yaml"] == prov
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "zerotrace.yaml")
                          .read_text())
    assert values["dashboardProviders"]["zerotrace.yaml"] == dash
    (provider,) = dash["providers"]
    assert provider["options"]["path"].endswith("/" + provider["name"])
    assert provider["name"] in values["dashboardsConfigMaps"]
    chart = yaml.safe_load((REPO / "deploy" / "helm" / "zerotrace" / "values.yaml").read_text())
    url = urllib.parse.urlsplit(values["env"]["ZEROTRACE_HTTP_URL"])
    assert url.hostname == "zerotrace-server.zerotrace.svc"
    assert url.port == chart["server"]["tracesPort"]


def _interpolate(text: str) -> str:
    def sub(m: re.Match) -> str:
        name, _, fmt = m.group(1).partition(":")
        value = EXAMPLES[name]
        return urllib.parse.quote(value, safe="") if fmt == "percentencode" else value

    return re.sub(r"\$\{([^}]+)\}", sub, text)


def test_red_panels_link_to_trace_searches(datasources):
    dash = json.loads((GRAFANA / "zerotrace-red.json").read_text())
    panels = {p["title"]: p for p in dash["panels"]}
    tempo_uid = datasources["tempo"]["uid"]
    for title in RED_PANELS:
        assert panels[title]["fieldConfig"]["defaults"]["links"], title
    for title, panel in panels.items():
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
            url = urllib.parse.urlsplit(_interpolate(link["url"]))
            assert url.path == "/explore"
            panes = json.loads(urllib.parse.parse_qs(url.query)["panes"][0])
            (pane,) = panes.values()
            assert pane["datasource"] == tempo_uid
            assert pane["range"] == {"from": EXAMPLES["__from"], "to": EXAMPLES["__to"]}
            (query,) = pane["queries"]
            assert query["datasource"] == {"type": "tempo", "uid": tempo_uid}
            assert query["queryType"] == "traceql"
            tree = traceql.parse(query["query"])  # this server answers it
            traceql.to_sql(tree)
            fields = {(f.scope, f.name) for f in traceql.spanset_fields(tree)}
            assert ("resource", "service.name") in fields
            if title == "Top operations by rate":
                assert ("intrinsic", "name") in fields
                assert 'name="GET /order/{id}"' in query["query"]
            else:
                assert 'resource.service.name="shop"' in query["query"]
