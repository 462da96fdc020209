"""Pod -> workload: which Deployment, StatefulSet, DaemonSet, Job or CronJob runs it.

A Deployment's pods are owned by a ReplicaSet; only the ReplicaSet's own
ownerReferences name the Deployment, so it is read from the API (once per
ReplicaSet: an owner never changes).  When that read fails (403, outage) the
`pod-template-hash` naming rule still gives the right answer for Deployments.
Jobs made by a CronJob would need read access to Jobs; the CronJob controller's
naming rule (`<cronjob>-<scheduled minutes>`) answers without widening RBAC.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.enrich import counters as reasons
from agent.enrich.counters import Counters
from agent.enrich.pods import PodMeta

_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-\d{8}$")
_KIND_ATTR = {
    "Deployment": "k8s.deployment.name",
    "ReplicaSet": "k8s.replicaset.name",
    "StatefulSet": "k8s.statefulset.name",
    "DaemonSet": "k8s.daemonset.name",
    "Job": "k8s.job.name",
    "CronJob": "k8s.cronjob.name",
}

GetReplicaSet = Callable[[str, str], "dict[str, Any] | None"]


@dataclass(frozen=True, slots=True)
class Workload:
    kind: str = ""
    name: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


class WorkloadResolver:
    """Resolves a pod's workload; ReplicaSet owners are cached (bounded LRU)."""

    def __init__(
        self,
        get_replicaset: GetReplicaSet | None,
        counters: Counters,
        max_entries: int = 4096,
        retry_after: float = 60.0,
    ) -> None:
        self._get_rs = get_replicaset
        self._counters = counters
        self._max = max_entries
        self._retry_after = retry_after
        # (namespace, replicaset) -> deployment name ("" = not owned by one)
        self._rs_owner: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._failed_until: dict[tuple[str, str], float] = {}

    def resolve(self, pod: PodMeta) -> Workload:
        kind, name = pod.owner_kind, pod.owner_name
        if not kind:
            return Workload()
        attrs = {}
        if kind in _KIND_ATTR:
            attrs[_KIND_ATTR[kind]] = name
        if kind == "ReplicaSet":
            deployment = self._deployment_of(pod)
            if deployment:
                attrs["k8s.deployment.name"] = deployment
                return Workload("Deployment", deployment, attrs)
        elif kind == "Job":
            m = _CRONJOB_JOB.match(name)
            if m:
                attrs["k8s.cronjob.name"] = m.group("cronjob")
                return Workload("CronJob", m.group("cronjob"), attrs)
        return Workload(kind, name, attrs)

    def _deployment_of(self, pod: PodMeta) -> str:
        key = (pod.namespace, pod.owner_name)
        if key in self._rs_owner:
            self._rs_owner.move_to_end(key)
            return self._rs_owner[key]
        if self._get_rs is not None and time.monotonic() >= self._failed_until.get(key, 0.0):
            try:
                rs = self._get_rs(*key)
                if rs is None:
                    raise LookupError("not found")
            except Exception as e:  # noqa: BLE001 - any API failure means "use the name rule"
                self._counters.inc(reasons.REPLICASET_LOOKUP_FAILED)
                self._counters.warn_once(
                    "replicaset", "replicaset lookup failed (%s); naming rule used", e
                )
                self._failed_until[key] = time.monotonic() + self._retry_after
            else:
                owner = _controller_of(rs, "Deployment")
                self._remember(key, owner)
                return owner
        return _by_template_hash(pod)

    def _remember(self, key: tuple[str, str], owner: str) -> None:
        self._failed_until.pop(key, None)
        self._rs_owner[key] = owner
        if len(self._rs_owner) > self._max:
            self._rs_owner.popitem(last=False)


def _controller_of(obj: dict[str, Any], kind: str) -> str:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    for ref in refs:
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") == kind:
            return str(ref.get("name", ""))
    return ""


def _by_template_hash(pod: PodMeta) -> str:
    h = pod.labels.get("pod-template-hash", "")
    suffix = f"-{h}"
    if h and pod.owner_name.endswith(suffix):
        return pod.owner_name[: -len(suffix)]
    return ""
