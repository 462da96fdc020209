"""The Kubernetes API calls the agent makes, through the official `kubernetes` client.

Four reads, all covered by the agent's ClusterRole (get/list/watch on pods,
replicasets, nodes): list + watch the node's pods, get a ReplicaSet, get the Node.
Bodies are read as raw JSON (see `pods.py` for why); API errors surface as the
client's `ApiException`, transport errors as urllib3/OS errors, malformed bodies as
`BadObject`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from agent.enrich.config import EnrichConfig
from agent.enrich.pods import BadObject


def client_configuration(cfg: EnrichConfig) -> k8s.Configuration:
    """In-cluster (service account) when running in a pod, else kubeconfig; or the
    configured `api_host` as is (tests, `kubectl proxy`)."""
    c = k8s.Configuration()
    if cfg.api_host:
        c.host = cfg.api_host
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(client_configuration=c)
    else:
        k8s_config.load_kube_config(config_file=cfg.kubeconfig, client_configuration=c)
    # The watcher does its own backoff; urllib3's silent retries would only hide
    # an outage for longer.
    c.retries = False
    return c


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BadObject(f"{what}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadObject(f"{what}: not a JSON object")
    return data


class KubeApi:
    """The pod source the watcher reads from (list, watch, and two lookups)."""

    def __init__(self, configuration: k8s.Configuration, request_timeout: float = 10.0) -> None:
        self._client = k8s.ApiClient(configuration)
        self._core = k8s.CoreV1Api(self._client)
        self._apps = k8s.AppsV1Api(self._client)
        self._timeout = request_timeout
        self._lock = threading.Lock()
        self._open: Any = None  # the watch response being read, so abort() can cut it
        self._closed = False

    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]:
        """The node's pods and the list's resourceVersion."""
        resp = self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}",
            _preload_content=False,
            _request_timeout=(self._timeout, self._timeout * 3),
        )
        try:
            data = _json(resp.data, "pod list")
        finally:
            resp.release_conn()
        items = data.get("items")
        rv = (data.get("metadata") or {}).get("resourceVersion")
        if not isinstance(items, list) or not isinstance(rv, str):
            raise BadObject("pod list without items or metadata.resourceVersion")
        return items, rv

    def watch_pods(
        self, node: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        """Watch events (`{"type": ..., "object": ...}`) from resource_version on,
        until the server ends the watch.  The request is made by this call (so a
        refused or failed watch raises here); events come as the iterator is read."""
        resp = self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}",
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            _preload_content=False,
            # Read timeout past the server's own: a silent, hung connection ends.
            _request_timeout=(self._timeout, timeout_seconds + 30),
        )
        with self._lock:
            if self._closed:
                resp.release_conn()
                return iter(())
            self._open = resp
        return self._events(resp)

    def _events(self, resp: Any) -> Iterator[dict[str, Any]]:
        try:
            buf = b""
            for chunk in resp.stream(amt=None, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield _json(line, "watch event")
            if buf.strip():
                yield _json(buf, "watch event")
        finally:
            with self._lock:
                self._open = None
            resp.release_conn()

    def get_replicaset(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self._apps.read_namespaced_replica_set, name, namespace)

    def get_node(self, name: str) -> dict[str, Any] | None:
        return self._get(self._core.read_node, name)

    def _get(self, fn: Any, *args: str) -> dict[str, Any] | None:
        try:
            resp = fn(
                *args, _preload_content=False, _request_timeout=(self._timeout, self._timeout)
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        try:
            return _json(resp.data, "object")
        finally:
            resp.release_conn()

    def abort(self) -> None:
        """Cut the watch being read (from another thread), and refuse new ones."""
        with self._lock:
            self._closed = True
            resp = self._open
        if resp is not None:
            shutdown = getattr(resp, "shutdown", None)  # urllib3 >= 2.3
            try:
                (shutdown or resp.close)()
            except Exception:  # noqa: BLE001 - best effort while closing
                pass

    def close(self) -> None:
        self.abort()
        self._client.close()
