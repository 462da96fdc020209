"""The agent's configuration file (YAML), found by --config or ZEROTRACE_CONFIG.

    enrich: {...}          # agent/enrich/config.py (labels/annotations -> attributes)
    server: host:port      # zerotrace server (gRPC); --server overrides; else $ZEROTRACE_SERVER
    otlp: host:port        # any OTLP/gRPC collector; --otlp overrides
    metrics_port: 9464     # Prometheus /metrics (default 9464 with --print none); 0 = off
    node: name             # this node (default: ZEROTRACE_NODE, else the host name)
    tls_ca: FILE           # TLS to the server and the OTLP collector (CA bundle, PEM)
    tls_cert: FILE         # client certificate and key for mTLS
    tls_key: FILE
    tls_server_name: NAME  # name to check the server certificate against
    token_file: FILE       # bearer token (else $ZEROTRACE_TOKEN); flags override all of these
    interfaces: REGEX      # network hops: TC probes on matching interfaces (--interfaces)
    payload:               # payload capture (agent/enrich/capture.py, docs/kubernetes.md)
      capture: on          #   every process; off: none but the namespaces/pods set on
      namespaces: {payments: off}   # per Kubernetes namespace; a pod's annotation
                           #   zerotrace.io/payload-capture: "off"|"on" is over both
    limits:                # what the agent may take of the node (docs/stitching.md,
      cpu_budget: 0.5      #   agent/probes/shedding.py): cores before it samples (0: none;
                           #   $ZEROTRACE_CPU_BUDGET over it)
      ring_mb: 8           #   the kernel ring it reads ($ZEROTRACE_RING_MB over it)
      backlog_spans: 16384 #   spans waiting to be stitched before it samples at once
      emitted_spans: 10000 #   emitted spans kept for late joiners (older ones go first)
"""

from __future__ import annotations

import os
import socket
from typing import Any

import yaml

KNOWN = {"enrich", "server", "otlp", "metrics_port", "node",
         "tls_ca", "tls_cert", "tls_key", "tls_server_name", "token_file",
         "interfaces", "payload", "limits"}
# limits: name -> (type, smallest value allowed)
LIMITS: dict[str, tuple[type, float]] = {
    "cpu_budget": (float, 0.0), "ring_mb": (int, 1), "backlog_spans": (int, 1),
    "emitted_spans": (int, 1)}


class ConfigError(ValueError):
    """The configuration file is unreadable or has unknown keys."""


def load(path: str | None) -> dict[str, Any]:
    path = path or os.environ.get("ZEROTRACE_CONFIG")
    if not path:
        return {}
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    unknown = sorted(set(data) - KNOWN)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {', '.join(unknown)}")
    if "limits" in data:
        data["limits"] = _limits(path, data["limits"])
    if "payload" in data:  # checked now: a typo must not leave payload captured
        from agent.enrich.capture import CapturePolicy

        try:
            CapturePolicy.from_mapping(data["payload"])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from e
    return data


def _limits(path: str, limits: Any) -> dict[str, float]:
    """The `limits:` mapping, checked: known names, numbers of the right kind, in range
    (a limit misread would bound nothing, so the agent refuses to start on it)."""
    if not isinstance(limits, dict):
        raise ConfigError(f"{path}: limits must be a mapping")
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise ConfigError(f"{path}: unknown limits {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(LIMITS))})")
    out: dict[str, float] = {}
    for name, value in limits.items():
        kind, least = LIMITS[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or value < least:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{path}: limits.{name} must be {what} >= {least:g}, "
                              f"not {value!r}")
        out[name] = kind(value)
    return out


def limit(cfg: dict[str, Any], name: str, env: str | None = None) -> float | None:
    """A limit from the environment variable `env` when set, else from the file's
    `limits:`, else None (the component's own default)."""
    if env and os.environ.get(env):
        return None  # the component reads its variable itself
    return cfg.get("limits", {}).get(name)


def node_name(cfg: dict[str, Any]) -> str:
    return cfg.get("node") or os.environ.get("ZEROTRACE_NODE") or socket.gethostname()
