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
"""

from __future__ import annotations

import os
import socket
from typing import Any

import yaml

KNOWN = {"enrich", "server", "otlp", "metrics_port", "node",
         "tls_ca", "tls_cert", "tls_key", "tls_server_name", "token_file",
         "interfaces", "payload"}


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
    if "payload" in data:  # checked now: a typo must not leave payload captured
        from agent.enrich.capture import CapturePolicy

        try:
            CapturePolicy.from_mapping(data["payload"])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{path}: {e}") from e
    return data


def node_name(cfg: dict[str, Any]) -> str:
    return cfg.get("node") or os.environ.get("ZEROTRACE_NODE") or socket.gethostname()
