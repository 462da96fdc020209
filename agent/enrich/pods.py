"""A v1 Pod (the API's JSON, as a dict) reduced to the facts tags are made of.

Raw dicts rather than the `kubernetes` client's models: deserialising a PodList into
models costs milliseconds per pod in Python, and a dict makes a malformed object an
explicit, countable `BadObject` instead of a deep validation error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class BadObject(ValueError):
    """The API returned something that is not the object it should be."""


@dataclass(frozen=True, slots=True)
class PodMeta:
    uid: str
    name: str
    namespace: str
    node: str = ""
    ip: str = ""
    ips: tuple[str, ...] = ()
    host_network: bool = False
    service_account: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    owner_kind: str = ""  # the controlling ownerReference
    owner_name: str = ""
    # container id (runtime prefix stripped) -> (container name, image)
    containers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    resource_version: str = ""


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadObject(f"{what} is not an object")
    return {str(k): str(v) for k, v in value.items()}


def _strip_runtime(container_id: str) -> str:
    # "containerd://<id>", "cri-o://<id>", "docker://<id>"
    return container_id.rpartition("://")[2]


def parse_pod(obj: Any) -> PodMeta:
    """PodMeta of one v1 Pod dict; raises BadObject when it is not a Pod."""
    if not isinstance(obj, dict):
        raise BadObject("pod is not an object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise BadObject("pod without metadata")
    uid, name, ns = meta.get("uid"), meta.get("name"), meta.get("namespace")
    if not (isinstance(uid, str) and isinstance(name, str) and isinstance(ns, str)):
        raise BadObject("pod metadata lacks uid, name or namespace")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise BadObject("pod spec/status is not an object")

    owner_kind = owner_name = ""
    owners = meta.get("ownerReferences") or []
    if not isinstance(owners, list):
        raise BadObject("ownerReferences is not a list")
    for ref in owners:
        if isinstance(ref, dict) and ref.get("controller"):
            owner_kind, owner_name = str(ref.get("kind", "")), str(ref.get("name", ""))
            break

    containers: dict[str, tuple[str, str]] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        statuses = status.get(key) or []
        if not isinstance(statuses, list):
            raise BadObject(f"{key} is not a list")
        for cs in statuses:
            if isinstance(cs, dict) and cs.get("containerID"):
                cid = _strip_runtime(str(cs["containerID"]))
                containers[cid] = (str(cs.get("name", "")), str(cs.get("image", "")))

    ips = tuple(
        str(p["ip"]) for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")
    )
    ip = str(status.get("podIP") or "")
    if ip and ip not in ips:
        ips = (ip, *ips)
    return PodMeta(
        uid=uid,
        name=name,
        namespace=ns,
        node=str(spec.get("nodeName") or ""),
        ip=ip,
        ips=ips,
        host_network=bool(spec.get("hostNetwork")),
        service_account=str(spec.get("serviceAccountName") or ""),
        labels=_str_map(meta.get("labels"), "labels"),
        annotations=_str_map(meta.get("annotations"), "annotations"),
        owner_kind=owner_kind,
        owner_name=owner_name,
        containers=containers,
        resource_version=str(meta.get("resourceVersion") or ""),
    )
