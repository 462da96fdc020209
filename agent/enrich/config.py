"""Configuration of tag enrichment: where to find the node's pods, which labels and
annotations become span attributes, and the timings of the Kubernetes watch."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.enrich.capture import CapturePolicy

DEFAULT_LABELS = {"app.kubernetes.io/version": "service.version"}
DEFAULT_ANNOTATIONS = {"team": "team", "git.commit": "vcs.commit"}
# An application that names itself the OTel way is believed.
DEFAULT_ENV = {"OTEL_SERVICE_NAME": "service.name"}


@dataclass
class EnrichConfig:
    """Everything `Enricher` needs; `from_mapping` reads the agent's YAML section."""

    # Kubernetes node this agent runs on (the DaemonSet sets ZEROTRACE_NODE from the
    # downward API).  Empty: not in Kubernetes, host/process tags only.
    node_name: str = ""
    # None: on when node_name is set.  False forces host-only tags.
    kubernetes: bool | None = None
    # Outside the cluster: kubeconfig file (None: $KUBECONFIG or ~/.kube/config).
    # Inside, the service account is used.  api_host overrides the API URL.
    kubeconfig: str | None = None
    api_host: str | None = None
    # Service name when Kubernetes gives none (or outside Kubernetes); empty: the
    # process name.
    service_name: str = ""
    host_name: str = ""  # empty: socket.gethostname()
    # Pod label / annotation key -> span resource attribute name.
    label_attributes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    annotation_attributes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ANNOTATIONS))
    # Process environment variable -> attribute, read once per process from
    # /proc/PID/environ (only these keys are ever read out of it).  A variable mapped
    # to service.name also sets span.service.
    env_attributes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))
    cluster_name: str = ""  # k8s.cluster.name (the API does not say it)
    proc_root: str = "/proc"
    cgroup_root: str | None = None  # None: the cgroup2 mount from /proc/self/mountinfo
    sweep_interval: float = 5.0  # how often exited pids leave the cache (s)
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    watch_timeout: int = 300  # server-side timeoutSeconds of one watch (s)
    request_timeout: float = 10.0  # connect and list read timeout (s)
    deleted_grace: float = 30.0  # a deleted pod's tags still answer late spans (s)
    # Payload capture per namespace / pod annotation (the agent config's `payload`
    # section, agent/enrich/capture.py).
    payload_capture: CapturePolicy = field(default_factory=CapturePolicy)

    @property
    def kubernetes_enabled(self) -> bool:
        return bool(self.node_name) if self.kubernetes is None else self.kubernetes

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> EnrichConfig:
        """Build from a parsed YAML/dict; unknown keys are an error (typos would
        otherwise silently drop a mapping)."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown enrich settings: {', '.join(unknown)}")
        for key in ("label_attributes", "annotation_attributes", "env_attributes"):
            if key in data and not isinstance(data[key], Mapping):
                raise ValueError(f"{key} must map a key to an attribute name")
            if key in data:
                data[key] = {str(k): str(v) for k, v in data[key].items()}
        if "payload_capture" in data and not isinstance(data["payload_capture"], CapturePolicy):
            data["payload_capture"] = CapturePolicy.from_mapping(data["payload_capture"])
        return cls(**data)

    @classmethod
    def from_env(
        cls, data: Mapping[str, Any] | None = None, env: Mapping[str, str] = os.environ,
        payload: Mapping[str, Any] | None = None,
    ) -> EnrichConfig:
        """`from_mapping`, then ZEROTRACE_NODE / ZEROTRACE_SERVICE_NAME /
        ZEROTRACE_CLUSTER / KUBECONFIG from the environment where the mapping leaves
        them unset; `payload`: the agent config's `payload` section."""
        cfg = cls.from_mapping(data)
        if payload is not None:
            cfg.payload_capture = CapturePolicy.from_mapping(payload)
        if not cfg.node_name:
            cfg.node_name = env.get("ZEROTRACE_NODE", "")
        if not cfg.service_name:
            cfg.service_name = env.get("ZEROTRACE_SERVICE_NAME", "")
        if not cfg.cluster_name:
            cfg.cluster_name = env.get("ZEROTRACE_CLUSTER", "")
        if cfg.kubeconfig is None and env.get("KUBECONFIG"):
            cfg.kubeconfig = env["KUBECONFIG"]
        return cfg
