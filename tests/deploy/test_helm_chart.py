"""The Helm chart installed twice in each of two namespaces, under two release names
(issue 15): names and addresses follow the release and the namespace, nothing of one
install selects, binds or overwrites another's, and every rendered manifest passes
`kubernetes-validate` (strict: unknown fields refused) for the last three Kubernetes
minor versions it knows.  Rendered by tests/deploy/helm_render.py (no helm here)."""

from __future__ import annotations

import os

import pytest

from .manifests import chart_objects

NAMESPACES = ("observability", "tracing-b")
RELEASES = ("zerotrace", "zt-prod")
OPTIONS = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "imagePullSecrets": [{"name": "regcred"}],
    "agent": {"nodeSelector": {"kubernetes.io/os": "linux"},
              "extraEnv": [{"name": "ZEROTRACE_EXTRA", "value": "1"}]},
}


def _kv():
    """kubernetes_validate (test extras), skipped where absent -- but never in CI."""
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate


def _installs(values: dict | None = None) -> dict[tuple[str, str], list[dict]]:
    import yaml

    from .helm_render import render_chart
    from .manifests import CHART

    out = {}
    for ns in NAMESPACES:
        for rel in RELEASES:
            docs = []
            for text in render_chart(CHART, ns, rel, values=values).values():
                docs += [d for d in yaml.safe_load_all(text) if d is not None]
            out[(ns, rel)] = docs
    return out


def _one(kind: str, docs: list[dict]) -> dict:
    (d,) = [d for d in docs if d["kind"] == kind]
    return d


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding")


def test_names_and_addresses_follow_release_and_namespace() -> None:
    installs = _installs(OPTIONS)
    seen: dict[tuple[str, str, str], tuple[str, str]] = {}
    for (ns, rel), docs in installs.items():
        for d in docs:
            meta = d["metadata"]
            assert meta["name"].startswith(rel + "-"), (rel, d["kind"], meta["name"])
            if d["kind"] in CLUSTER_SCOPED:
                assert "namespace" not in meta and meta["name"].endswith("-" + ns)
            else:
                assert meta["namespace"] == ns
            key = (d["kind"], meta.get("namespace", ""), meta["name"])
            assert key not in seen, f"{key} of {(ns, rel)} overwrites {seen.get(key)}"
            seen[key] = (ns, rel)
        by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        ds, sts = _one("DaemonSet", docs), _one("StatefulSet", docs)
        pod = ds["spec"]["template"]["spec"]
        (agent,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in agent["env"]}
        # the agents reach this release's server Service, in this namespace
        svc = by[("Service", f"{rel}-server")]
        grpc = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert env["ZEROTRACE_SERVER"] == f"{rel}-server.{ns}.svc:{grpc}"
        assert env["ZEROTRACE_EXTRA"] == "1"
        # references resolve inside the install
        assert ("ServiceAccount", pod["serviceAccountName"]) in by
        cm = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
        assert ("ConfigMap", cm) in by
        assert ("Service", sts["spec"]["serviceName"]) in by
        crb = _one("ClusterRoleBinding", docs)
        assert ("ClusterRole", crb["roleRef"]["name"]) in by
        assert crb["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": ns}]
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert "priorityClassName" not in pod  # opt-in
        # the ServiceMonitor scrapes this release's server Service, on a port it has
        sm = _one("ServiceMonitor", docs)
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        assert _selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [ns]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {
            p["name"] for p in svc["spec"]["ports"]}
    # no selector of one install picks the pods of another in the same namespace
    for ns in NAMESPACES:
        a, b = (installs[(ns, r)] for r in RELEASES)
        for mine, other in ((a, b), (b, a)):
            pods = [d["spec"]["template"]["metadata"]["labels"] for d in other
                    if d["kind"] in ("DaemonSet", "StatefulSet")]
            for d in mine:
                sel = (d["spec"].get("selector") if d["kind"] in ("Service",) else
                       d["spec"].get("selector", {}).get("matchLabels")
                       if d["kind"] in ("DaemonSet", "StatefulSet") else
                       d["spec"]["podSelector"]["matchLabels"]
                       if d["kind"] == "NetworkPolicy" else None)
                if sel:
                    assert not any(_selects(sel, p) for p in pods), (d["kind"], sel)


def test_priority_class_and_grpc_health_probes_are_configurable() -> None:
    docs = _installs({"agent": {"priorityClassName": "system-node-critical"},
                      "server": {"priorityClassName": "high", "grpcHealthProbes": True}})
    docs = docs[(NAMESPACES[0], RELEASES[1])]
    assert _one("DaemonSet", docs)["spec"]["template"]["spec"]["priorityClassName"] \
        == "system-node-critical"
    pod = _one("StatefulSet", docs)["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "high"
    (c,) = pod["containers"]
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    assert c["readinessProbe"]["grpc"] == {"port": port}
    assert c["livenessProbe"]["grpc"] == {"port": port}
    (c,) = _one("StatefulSet", chart_objects_docs())["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["tcpSocket"] == {"port": "grpc"}  # default: TCP


def chart_objects_docs() -> list[dict]:
    return [d for _, d in chart_objects()]


def _versions(kv) -> list[str]:
    """The last three Kubernetes minor versions kubernetes-validate has schemas for."""
    minors = sorted({tuple(int(x) for x in v.split(".")[:2])
                     for v in kv.utils.all_versions()})
    return [f"{a}.{b}.0" for a, b in minors[-3:]]


def test_every_rendered_manifest_validates_for_the_last_three_minor_versions() -> None:
    kv = _kv()
    versions = _versions(kv)
    assert len(versions) == 3
    variants = [None, OPTIONS, {"agent": {"priorityClassName": "system-node-critical",
                                          "serverAddress": "collector.example:4317"},
                                "server": {"grpcHealthProbes": True}}]
    checked = 0
    for values in variants:
        for (_ns, _rel), docs in _installs(values).items():
            for d in docs:
                if d["kind"] == "ServiceMonitor":
                    continue  # a CRD: no schema in kubernetes-validate (checked above)
                for v in versions:
                    kv.validate(d, v, strict=True)  # raises on any schema violation
                    checked += 1
    assert checked >= 3 * 4 * 9 * 3


def test_kubernetes_validate_refuses_a_bad_manifest() -> None:
    """What the check above would catch: an unknown field, a wrong type."""
    kv = _kv()
    v = _versions(kv)[-1]
    ds = _one("DaemonSet", chart_objects_docs())
    bad = {**ds, "spec": {**ds["spec"], "hostPid": True}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, v, strict=True)
    sts = _one("StatefulSet", chart_objects_docs())
    bad = {**sts, "spec": {**sts["spec"], "replicas": "one"}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, v, strict=True)
