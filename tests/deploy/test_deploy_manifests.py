"""Every manifest in deploy/ parses, validates against the Kubernetes schemas, and
says what the agent needs; the Helm chart renders to the same objects."""

from __future__ import annotations

import copy
import re

import pytest

from .helm_render import Unsupported, render
from .manifests import DEPLOY, all_objects, chart_objects, plain_objects, validate

OBJECTS = all_objects()


@pytest.mark.parametrize(
    "doc", [d for _, d in OBJECTS], ids=[f"{n}:{d['kind']}" for n, d in OBJECTS]
)
def test_every_object_validates(doc) -> None:
    validate(doc)


def test_validation_catches_typos_and_missing_fields() -> None:
    ds = next(d for _, d in plain_objects() if d["kind"] == "DaemonSet")
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(ValueError, match="hostPid"):
        validate(typo)
    missing = copy.deepcopy(ds)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        validate(missing)
    wrong_group = dict(ds, apiVersion="extensions/v1beta1")
    with pytest.raises(ValueError, match="apps/v1"):
        validate(wrong_group)


def _one(kind: str, objects=None) -> dict:
    (doc,) = [d for _, d in (objects or plain_objects()) if d["kind"] == kind]
    return doc


def test_agent_daemonset_has_what_the_probes_need() -> None:
    ds = _one("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert (
        ds["spec"]["selector"]["matchLabels"].items()
        <= ds["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["hostPID"] is True
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc.get("privileged") is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = set(sc["capabilities"]["add"])
    assert {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"} <= added
    assert "SYS_ADMIN" not in added  # only for kernels < 5.8, by explicit choice
    env = {e["name"]: e for e in c["env"]}
    assert env["ZEROTRACE_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    host_paths = {
        mount: volumes[name]["hostPath"]["path"]
        for mount, name in mounts.items()
        if "hostPath" in volumes[name]
    }
    assert host_paths == {
        "/sys/kernel/tracing": "/sys/kernel/tracing",
        "/sys/kernel/debug": "/sys/kernel/debug",
        "/sys/fs/bpf": "/sys/fs/bpf",
        # no /lib/modules nor /usr/src: the image's own kernel headers (BCC_KERNEL_SOURCE)
        "/host/proc": "/proc",
        "/sys/fs/cgroup": "/sys/fs/cgroup",
    }
    assert set(mounts.values()) <= set(volumes)
    config_volume = volumes[mounts["/etc/zerotrace"]]["configMap"]["name"]
    assert config_volume == _one("ConfigMap")["metadata"]["name"]


def test_agent_config_is_a_valid_enrich_config() -> None:
    import yaml

    from agent.enrich import EnrichConfig

    text = _one("ConfigMap")["data"]["agent.yaml"]
    cfg = EnrichConfig.from_env(yaml.safe_load(text)["enrich"], env={"ZEROTRACE_NODE": "n1"})
    assert cfg.proc_root == "/host/proc" and cfg.kubernetes_enabled
    assert cfg.annotation_attributes == {"team": "team", "git.commit": "vcs.commit"}


def test_agent_config_passes_the_agents_own_check_with_its_payload_section(tmp_path) -> None:
    """The whole agent.yaml as `zerotrace agent --config` reads it (agent/config.py
    refuses unknown keys and bad payload switches): capture on, no namespace off."""
    from agent import config
    from agent.enrich.capture import CapturePolicy

    path = tmp_path / "agent.yaml"
    path.write_text(_one("ConfigMap")["data"]["agent.yaml"])
    conf = config.load(str(path))
    policy = CapturePolicy.from_mapping(conf["payload"])
    assert policy.default and not policy.switches_anything


def test_server_statefulset_volume_and_service_ports() -> None:
    objs = plain_objects()
    sts = _one("StatefulSet", objs)
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"grpc", "http", "traces", "otlp-http"}
    assert ports["otlp-http"] == 4318  # OTLP/HTTP's port: the SDKs' default
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    # The data volume, and the bearer tokens from a Secret (never in the manifests).
    assert {m["name"] for m in c["volumeMounts"]} == {claim["metadata"]["name"], "tokens"}
    (tokens,) = pod["volumes"]
    assert tokens["secret"]["secretName"] == "zerotrace-tokens"
    services = {d["metadata"]["name"]: d for _, d in objs if d["kind"] == "Service"}
    assert sts["spec"]["serviceName"] in services
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for svc in services.values():
        assert svc["spec"]["selector"].items() <= labels.items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports
    public = services["zerotrace-server"]
    assert {p["name"] for p in public["spec"]["ports"]} == {"grpc", "http", "traces",
                                                             "otlp-http"}
    # The agents' server address points at that Service and gRPC port.
    env = {
        e["name"]: e.get("value")
        for e in _one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    grpc = next(p["port"] for p in public["spec"]["ports"] if p["name"] == "grpc")
    assert env["ZEROTRACE_SERVER"] == f"zerotrace-server.zerotrace.svc:{grpc}"


def test_helm_chart_with_defaults_renders_the_plain_manifests() -> None:
    """The chart with its default values, installed as release `zerotrace` in namespace
    `zerotrace`, is the plain manifests, object for object (checked structurally, since
    no helm binary is available: tests/deploy/helm_render.py renders the subset of
    template syntax the chart is allowed to use); the plain manifests take tokens from
    a Secret you make instead of the chart's generated CA and tokens (issue 14:
    auth.generate, tested in test_helm_pki.py)."""
    plain = {(d["kind"], d["metadata"]["name"]): d for _, d in plain_objects()}
    plain.pop(("Namespace", "zerotrace"))  # helm install --create-namespace makes it
    rendered = {(d["kind"], d["metadata"]["name"]): d
                for _, d in chart_objects(values={"auth": {"generate": False}})}
    assert rendered == plain


def test_helm_values_reach_the_objects() -> None:
    objs = chart_objects(
        "observability",
        values={
            "image": {"tag": "9.9.9"},
            "clusterName": "prod-eu",
            "agent": {
                "serverAddress": "collector.example:4317",
                "capabilities": ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYS_ADMIN"],
            },
            "tags": {
                "labels": {"app.kubernetes.io/version": "service.version"},
                # maps merge with the defaults; null drops a default (as in Helm)
                "annotations": {"team": None, "owner": "team", "commit-sha": "vcs.commit"},
            },
        },
    )
    for _, d in objs:
        validate(d)
    ds = _one("DaemonSet", objs)
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert ds["metadata"]["namespace"] == "observability"
    assert c["image"].endswith(":9.9.9")
    assert "SYS_ADMIN" in c["securityContext"]["capabilities"]["add"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["ZEROTRACE_SERVER"] == "collector.example:4317"
    import yaml

    (cm,) = [d for _, d in objs
             if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "zerotrace-agent"]
    enrich = yaml.safe_load(cm["data"]["agent.yaml"])["enrich"]
    assert enrich["annotation_attributes"] == {
        "git.commit": "vcs.commit",
        "owner": "team",
        "commit-sha": "vcs.commit",
    }
    assert enrich["cluster_name"] == "prod-eu"
    binding = _one("ClusterRoleBinding", objs)
    assert binding["subjects"][0]["namespace"] == "observability"


def test_renderer_refuses_what_it_cannot_check() -> None:
    with pytest.raises(Unsupported):
        render("{{ range .Values.x }}a{{ end }}", {"Values": {"x": [1]}})
    with pytest.raises(Unsupported):
        render("{{ if .Values.x }}a", {"Values": {"x": 1}})
    with pytest.raises(Unsupported):
        render('{{ include "x" . }}', {})


def test_dockerfiles_build_the_documented_way() -> None:
    import tomllib

    for name in ("Dockerfile.agent", "Dockerfile.server"):
        text = (DEPLOY / "docker" / name).read_text()
        assert re.search(r"^FROM debian:bookworm", text, re.M), name
        assert "python3-bpfcc" in text
        assert "venv --system-site-packages" in text
        # the compiled core is built by pip from setup.py's extension list
        assert re.search(r"^COPY pyproject.toml setup.py ", text, re.M), name
        assert "gcc" in text and "python3-dev" in text
    agent = (DEPLOY / "docker" / "Dockerfile.agent").read_text()
    assert 'ENTRYPOINT ["zerotrace"]' in agent
    # slim: the compiler stays in the build stage, chDB out of the image entirely
    build, run = agent.split("\nFROM debian:bookworm-slim\n")
    assert "AS build" in build and "pip wheel" in build
    assert "gcc" not in run and "[server]" not in agent
    # generic kernel headers baked in and named for bcc: nodes need none
    assert "linux-headers-amd64" in run and "merge-kernel-headers.sh" in run
    assert "BCC_KERNEL_SOURCE=/opt/zerotrace-kernel-headers" in run
    server = (DEPLOY / "docker" / "Dockerfile.server").read_text()
    assert re.search(r"pip install [^\n]*'/src\[server\]'", server)
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    assert "chdb" not in deps and "clickhouse-connect" not in deps
    assert {d.split(">")[0] for d in project["optional-dependencies"]["server"]} == {
        "chdb", "clickhouse-connect"}


def test_server_args_parse_and_serve_metrics_on_the_declared_port() -> None:
    import argparse

    from server.cli import register

    sts = _one("StatefulSet", plain_objects())
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(c["args"])  # the real CLI accepts what the manifest says
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert args.listen.rpartition(":")[2] == str(ports["grpc"])
    assert args.metrics.rpartition(":")[2] == str(ports["http"])
    assert args.http.rpartition(":")[2] == str(ports["traces"])  # Grafana's data sources
    notes = sts["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/port"] == str(ports["http"])


def test_server_is_not_exposed_without_tokens() -> None:
    """The server listens on 0.0.0.0, which it refuses without TLS or tokens: the
    manifests give it a token file from a Secret, the agents their ingest token from
    the same Secret, and a NetworkPolicy keeps the unauthenticated HTTP ports in."""
    import argparse

    from server.auth import exposure_problem
    from server.cli import register

    objs = plain_objects()
    sts = _one("StatefulSet", objs)
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(c["args"])
    assert not args.insecure
    assert exposure_problem(args.listen, bool(args.tls_cert), bool(args.token_file),
                            args.insecure) == ""
    mount = next(m for m in c["volumeMounts"] if m["name"] == "tokens")
    assert args.token_file.startswith(mount["mountPath"] + "/")
    env = {e["name"]: e for e in _one("DaemonSet", objs)["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    ref = env["ZEROTRACE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "zerotrace-tokens", "key": "ingest-token"}
    pol = _one("NetworkPolicy", objs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    open_ports = {p["port"] for r in pol["spec"]["ingress"] if "from" not in r
                  for p in r["ports"]}
    # the ports that check tokens: gRPC, and OTLP/HTTP's (the ingest role, server/http)
    assert open_ports == {"grpc", "otlp-http"}
    assert args.otlp_http and args.token_file
    assert not any(kind == "Secret" for kind in (d["kind"] for _, d in objs))
