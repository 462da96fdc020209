"""Loading deploy/ manifests and checking them against the Kubernetes object
schemas available offline: the `kubernetes` client's models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from .helm_render import render_chart

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "zerotrace"

API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "ConfigMap": "v1",
    "Service": "v1",
    "DaemonSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Job": "batch/v1",
}


def plain_objects() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every document in deploy/kubernetes/."""
    out = []
    for path in sorted(MANIFESTS.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def chart_objects(namespace: str = "zerotrace", values: dict | None = None):
    out = []
    for name, text in render_chart(CHART, namespace, values=values).items():
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out.append((name, doc))
    return out


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    return plain_objects() + [(f"helm/{n}", d) for n, d in chart_objects()]


def validate(doc: dict[str, Any]) -> Any:
    """The typed object, or an exception naming what is wrong.

    Two passes: `ApiClient.deserialize`, the client's own reading path (it drops
    unknown keys), and pydantic `model_validate`, which refuses unknown keys and
    missing required fields -- a misspelt `hostPid` would otherwise pass unseen."""
    kind = doc.get("kind")
    if kind not in API_VERSIONS:
        raise ValueError(f"unexpected kind {kind!r}")
    if doc.get("apiVersion") != API_VERSIONS[kind]:
        raise ValueError(f"{kind} must be {API_VERSIONS[kind]}, not {doc.get('apiVersion')}")
    model = f"V1{kind}"
    ApiClient().deserialize(json.dumps(doc), model, "application/json")
    return getattr(k8s, model).model_validate(doc)
