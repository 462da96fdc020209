"""Payload capture per namespace and pod (agent/enrich/capture.py): the policy, the
cgroups it names on real cgroups of the recorded pods (replayed API, list then a watch
event that switches a pod off), the span-side safety net, and the config file."""

from __future__ import annotations

import json
import threading

import pytest

from agent import config as agent_config
from agent.enrich import EnrichConfig
from agent.enrich.capture import (
    ANNOTATION,
    ATTRIBUTE,
    ATTRIBUTES_DROPPED,
    BAD_ANNOTATION,
    SPANS_SCRUBBED,
    CapturePolicy,
    scrub,
)
from agent.enrich.cgroup import cgroup_id_of
from agent.probes import capture
from proto.span import KIND_CLIENT, KIND_SERVER, Endpoint, Span

from .conftest import C_CHECKOUT, C_DB, C_EXPORTER, U_CHECKOUT, U_DB, systemd_pod_slice
from .fakeproc import add_process
from .kubereplay import Reply, fixture_json, wait_until

U_EXPORTER = "c4d2e8a1-7f3b-4b9e-8a6c-1e5d2f9b3a70"  # monitoring/node-exporter


class Sink:
    """Records what the switch writes (the probes' side is tests/probes/
    test_payload_switch.py, on the real maps)."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, frozenset[int]]] = []
        self.levels: list[frozenset[int]] = []
        self.changed = threading.Event()

    def set(self, mode: int, ids, levels=()) -> None:
        self.writes.append((mode, frozenset(ids)))
        self.levels.append(frozenset(levels))
        self.changed.set()

    def counters(self) -> dict[str, int]:
        return {"payload_off_records": 7, "payload_off_bytes": 700}


def test_policy_annotation_over_namespace_over_default() -> None:
    p = CapturePolicy.from_mapping({"capture": True, "namespaces": {"payments": False,
                                                                     "shop": "on"}})
    assert p.pod("default", {}) is True
    assert p.pod("payments", {}) is False
    assert p.pod("payments", {ANNOTATION: "on"}) is True
    assert p.pod("shop", {ANNOTATION: " Off "}) is False
    bad: list[str] = []
    assert p.pod("shop", {ANNOTATION: "nope"}, bad.append) is False  # fail closed
    assert bad == ["nope"]
    q = CapturePolicy.from_mapping({"capture": "off", "namespaces": {"shop": "on"}})
    assert (q.pod("shop", {}), q.pod("other", {}), q.switches_anything) == (True, False, True)
    assert not CapturePolicy.from_mapping(None).switches_anything


@pytest.mark.parametrize("bad", [{"capture": "maybe"}, {"namespaces": ["a"]},
                                 {"capture": True, "pods": {}}, {"namespaces": {"a": 2}},
                                 "off"])
def test_policy_refuses_what_it_cannot_read(bad) -> None:
    with pytest.raises(ValueError):
        CapturePolicy.from_mapping(bad)


def test_agent_config_payload_section(tmp_path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("payload:\n  capture: on\n  namespaces:\n    payments: off\n")
    conf = agent_config.load(str(good))
    cfg = EnrichConfig.from_env(conf.get("enrich"), env={}, payload=conf.get("payload"))
    assert cfg.payload_capture == CapturePolicy(True, {"payments": False})
    typo = tmp_path / "typo.yaml"
    typo.write_text("payload:\n  namespaces:\n    payments: of\n")
    with pytest.raises(agent_config.ConfigError, match="payments"):
        agent_config.load(str(typo))


def _span(kind: str) -> Span:
    return Span(kind=kind, protocol="http", operation="GET /users?api_key=s3cr3t",
                status_code="500", error="ssn='123'",
                trace_headers={"x-request-id": "alice@example.com"},
                local=Endpoint("10.0.0.1", 8080), remote=Endpoint("10.0.0.2", 40000),
                req_bytes=120, resp_bytes=512,
                attributes={"url.path": "/users", "url.query": "api_key=s3cr3t",
                            "server.address": "internal.example", "server.port": 80,
                            "http.request.header.authorization": "Bearer x",
                            "network.transport": "tcp", "tls": True,
                            "k8s.peer.pod.name": "db-0", "zerotrace.midstream": True})


def test_scrub_keeps_l4_facts_only() -> None:
    s = _span(KIND_CLIENT)
    assert scrub(s) == 5
    text = json.dumps(s.to_dict())
    for secret in ("s3cr3t", "ssn", "alice", "Bearer", "internal.example", "/users"):
        assert secret not in text
    assert s.operation == "http" and s.status_code == "" and s.trace_headers == {}
    assert s.attributes == {"network.transport": "tcp", "tls": True,
                            "k8s.peer.pod.name": "db-0", "zerotrace.midstream": True,
                            "server.address": "10.0.0.2", "server.port": 40000,
                            ATTRIBUTE: "off"}
    assert (s.req_bytes, s.resp_bytes, s.local.port) == (120, 512, 8080)
    srv = _span(KIND_SERVER)
    scrub(srv)
    assert (srv.attributes["client.address"], srv.attributes["client.port"]) == ("10.0.0.2",
                                                                              40000)


@pytest.mark.kernel
def test_switch_follows_pods_on_real_cgroups(lab, replay, make_enricher, tmp_path) -> None:
    """The recorded pods in real cgroups: monitoring off by namespace, then db-0 off by
    an annotation arriving in a watch event; the list follows at once (not at the next
    periodic walk), and spans of the pods off are scrubbed, counted."""
    made = {}
    for name, qos, uid, prefix, cid in [
        ("checkout", "burstable", U_CHECKOUT, "cri-containerd", C_CHECKOUT),
        ("db", "besteffort", U_DB, "crio", C_DB),
        ("exporter", "besteffort", U_EXPORTER, "cri-containerd", C_EXPORTER),
    ]:
        cg = lab.make(f"{systemd_pod_slice(qos, uid)}/{prefix}-{cid}.scope")
        made[name] = (lab.spawn(cg).pid, cgroup_id_of(str(cg)))
    # a cgroup of a container the pod status does not name yet: found by the pod uid
    extra = lab.make(f"{systemd_pod_slice('besteffort', U_EXPORTER)}/cri-containerd-"
                     f"{'e' * 64}.scope")

    podlist = fixture_json("podlist.json")
    db_item = next(i for i in podlist["items"] if i["metadata"]["name"] == "db-0")
    db_item["metadata"]["annotations"] = {ANNOTATION: "off"}
    db_item["metadata"]["resourceVersion"] = "1500"
    gate = threading.Event()
    replay.script("watch", Reply(lines=[json.dumps({"type": "MODIFIED",
                                                    "object": db_item}).encode() + b"\n"],
                                 gate=gate, hold=True))
    policy = CapturePolicy.from_mapping({"namespaces": {"monitoring": "off"}})
    enricher = make_enricher(replay.url, payload_capture=policy)
    assert enricher.pods.wait_synced(5)
    switch = enricher.capture
    switch.interval = 3600.0  # only a pod change may wake it within the test
    switch.fast_interval = 3600.0
    sink = Sink()
    switch.bind(sink)
    # the pod's slice, its container's scope and the one not named yet
    exporter = {made["exporter"][1], cgroup_id_of(str(extra)), cgroup_id_of(str(extra.parent))}
    db = {made["db"][1], cgroup_id_of(str(extra.parent.parent /
                                          systemd_pod_slice("besteffort", U_DB).split("/")[-1]))}
    assert sink.writes[-1] == (1, frozenset(exporter))
    # the pod's own cgroup is at this depth: the probes check the ancestor there too
    assert sink.levels[-1] == {len(extra.parent.relative_to(lab.v2).parts)}

    sink.changed.clear()
    gate.set()
    assert sink.changed.wait(5)
    assert wait_until(lambda: sink.writes[-1] == (1, frozenset(exporter | db)))

    spans = {}
    for name, (pid, cgid) in made.items():
        s = _span(KIND_SERVER)
        s.pid, s.cgroup_id = pid, cgid
        enricher.enrich(s)
        spans[name] = s
    assert wait_until(lambda: enricher.pods.pod_for(C_DB, U_DB).capture is False)
    assert ATTRIBUTE not in spans["checkout"].attributes
    assert spans["checkout"].operation.startswith("GET /users")
    assert spans["exporter"].attributes[ATTRIBUTE] == "off"
    assert spans["exporter"].resource["k8s.pod.name"].startswith("node-exporter")
    late = _span(KIND_SERVER)
    late.pid, late.cgroup_id = made["db"]
    enricher.enrich(late)
    assert late.attributes[ATTRIBUTE] == "off" and "s3cr3t" not in json.dumps(late.to_dict())
    c = enricher.counters()
    assert c[SPANS_SCRUBBED] >= 2 and c[ATTRIBUTES_DROPPED] >= 10
    assert (c["payload_off_records"], c["payload_off_bytes"]) == (7, 700)  # the sink's


def test_default_off_lists_the_pods_switched_on(replay, make_enricher, tmp_path) -> None:
    """capture: off with a namespace on: the probes are told which cgroups may be
    captured (ALLOW); a bad annotation value is counted once per pod change, and off."""
    add_process(tmp_path, 1001, f"0::/{systemd_pod_slice('burstable', U_CHECKOUT)}/"
                f"cri-containerd-{C_CHECKOUT}.scope\n")
    podlist = fixture_json("podlist.json")
    chk = next(i for i in podlist["items"] if i["metadata"]["namespace"] == "shop"
               and i["metadata"]["name"].startswith("checkout"))
    chk["metadata"]["annotations"][ANNOTATION] = "sometimes"
    replay.fallback["list"] = Reply(body=json.dumps(podlist).encode())
    policy = CapturePolicy.from_mapping({"capture": False, "namespaces": {"shop": True}})
    enricher = make_enricher(replay.url, payload_capture=policy, proc_root=str(tmp_path),
                             cgroup_root=str(tmp_path / "no-cgroups"))
    assert enricher.pods.wait_synced(5)
    switch = enricher.capture
    uids, cids, _young = switch.targets()
    assert uids == {U_DB} and cids == {C_DB}  # checkout's bad annotation: off
    sink = Sink()
    switch.bind(sink)
    assert sink.writes[-1] == (2, frozenset())  # ALLOW, nothing found: all withheld
    assert enricher.counters()[BAD_ANNOTATION] == 1
    s = _span(KIND_SERVER)
    s.pid = 1001
    enricher.enrich(s)
    assert s.attributes[ATTRIBUTE] == "off"
    host = _span(KIND_SERVER)  # no pod: the default (off)
    enricher.enrich(host)
    assert host.attributes[ATTRIBUTE] == "off"


def test_nothing_to_switch_costs_nothing(make_enricher) -> None:
    """Outside Kubernetes with the default policy the switch never binds, and spans
    keep everything."""
    enricher = make_enricher()
    assert not enricher.capture.may_switch()
    assert capture.bind(enricher, tracer=None) is None  # the probes are never touched
    s = _span(KIND_CLIENT)
    enricher.enrich(s)
    assert ATTRIBUTE not in s.attributes and s.attributes["url.query"] == "api_key=s3cr3t"
