"""Pod facts -> span resource attributes (OpenTelemetry resource semconv names).

Built once per pod change (in the watcher thread), never per span: the per-span path
only merges the ready dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.enrich.owners import Workload
from agent.enrich.pods import PodMeta

SERVICE_NAME_LABEL = "app.kubernetes.io/name"
# Node labels worth a resource attribute (well-known topology labels).
NODE_LABELS = {
    "topology.kubernetes.io/zone": "cloud.availability_zone",
    "topology.kubernetes.io/region": "cloud.region",
}


@dataclass(frozen=True, slots=True)
class PodTags:
    """Ready attributes of one pod (and, when known, one of its containers)."""

    resource: dict[str, str]
    service: str
    # Attributes for a span whose *remote* end is this pod.
    peer: dict[str, str] = field(default_factory=dict)
    # Payload capture of the pod (agent/enrich/capture.py): False, its spans keep L4
    # facts only.
    capture: bool = True


def node_attributes(node: Mapping | None) -> dict[str, str]:
    """Zone/region of a v1 Node dict, from its well-known topology labels."""
    labels = ((node or {}).get("metadata") or {}).get("labels") or {}
    return {attr: str(labels[key]) for key, attr in NODE_LABELS.items() if key in labels}


def build_pod_tags(
    pod: PodMeta,
    workload: Workload,
    label_attributes: Mapping[str, str],
    annotation_attributes: Mapping[str, str],
    node_attrs: Mapping[str, str] | None = None,
    capture: bool = True,
) -> tuple[PodTags, dict[str, PodTags]]:
    """Tags of the pod as a whole, and per container id; `capture`: whether the pod's
    payload is captured (agent/enrich/capture.py)."""
    res: dict[str, str] = dict(node_attrs or {})
    if pod.node:
        res["k8s.node.name"] = pod.node
    res["k8s.namespace.name"] = pod.namespace
    res["k8s.pod.name"] = pod.name
    res["k8s.pod.uid"] = pod.uid
    if pod.ip:
        res["k8s.pod.ip"] = pod.ip
    if pod.service_account:
        # No semconv attribute exists for it; named after the k8s.* family.
        res["k8s.serviceaccount.name"] = pod.service_account
    res.update(workload.attributes)
    if workload.kind:
        res["k8s.workload.kind"] = workload.kind
        res["k8s.workload.name"] = workload.name
    for key, attr in label_attributes.items():
        if key in pod.labels:
            res[attr] = pod.labels[key]
    for key, attr in annotation_attributes.items():
        if key in pod.annotations:
            res[attr] = pod.annotations[key]
    service = pod.labels.get(SERVICE_NAME_LABEL) or workload.name or pod.name
    res["service.name"] = service
    peer = {
        "peer.service": service,
        "k8s.peer.namespace.name": pod.namespace,
        "k8s.peer.pod.name": pod.name,
    }
    if workload.kind:
        peer["k8s.peer.workload.kind"] = workload.kind
        peer["k8s.peer.workload.name"] = workload.name
    whole = PodTags(res, service, peer, capture)
    per_container = {}
    for cid, (name, image) in pod.containers.items():
        cres = dict(res)
        cres["container.id"] = cid
        cres["k8s.container.name"] = name
        if image:
            cres["container.image.name"] = image
        per_container[cid] = PodTags(cres, service, peer, capture)
    return whole, per_container
