"""The node's pods, kept current by one list + watch, answering lookups per span.

One background thread: list the node's pods (`spec.nodeName=<node>`), then watch from
the list's resourceVersion, resuming each new watch where the last ended.  A 410
Gone (expired resourceVersion) means events were missed: list again.  Any other
failure (refused, 5xx, timeout, 403, garbage) backs off exponentially with jitter
while the maps keep answering from the last good state: an API outage degrades
freshness, never the span flow.

Lookups read plain dicts without locks: the thread replaces or sets single keys,
which the GIL makes atomic for readers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from agent.enrich import capture
from agent.enrich import counters as reasons
from agent.enrich.config import EnrichConfig
from agent.enrich.counters import Counters
from agent.enrich.owners import WorkloadResolver
from agent.enrich.pods import BadObject, PodMeta, parse_pod
from agent.enrich.tags import PodTags, build_pod_tags, node_attributes

log = logging.getLogger(__name__)


class PodApi(Protocol):
    """What the cache reads from the API server (`kubeapi.KubeApi` in production)."""

    def list_pods(self, node: str) -> tuple[list[dict[str, Any]], str]: ...
    def watch_pods(
        self, node: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]: ...
    def get_replicaset(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def get_node(self, name: str) -> dict[str, Any] | None: ...
    def abort(self) -> None: ...


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone)."""


class PodCache:
    """Pod tags by container id, pod UID and pod IP, for one node."""

    def __init__(self, api: PodApi, cfg: EnrichConfig, counters: Counters) -> None:
        self._api = api
        self._cfg = cfg
        self._node = cfg.node_name
        self._counters = counters
        self._owners = WorkloadResolver(api.get_replicaset, counters)
        self._node_attrs: dict[str, str] = {}
        self._by_cid: dict[str, PodTags] = {}
        self._by_uid: dict[str, PodTags] = {}
        self._by_ip: dict[str, PodTags] = {}
        self._pods: dict[str, PodMeta] = {}
        self._graveyard: list[tuple[float, str]] = []  # (forget at, uid) of deleted pods
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zerotrace-pods", daemon=True)
        self.lists = 0  # how many full lists were made (tests, diagnostics)
        self._listeners: list[Callable[[], None]] = []

    # -- the lookup interface the Enricher uses -------------------------------------
    def pod_for(self, container_id: str, pod_uid: str) -> PodTags | None:
        tags = self._by_cid.get(container_id) if container_id else None
        if tags is None and pod_uid:
            # The container started before the pod status named its id: pod-level
            # tags are right, only the container name is missing.
            tags = self._by_uid.get(pod_uid)
        return tags

    def pod_for_ip(self, ip: str) -> PodTags | None:
        return self._by_ip.get(ip)

    # -- for the payload-capture switch (agent/enrich/capture.py) ----------------------
    def pods(self) -> list[PodMeta]:
        """The node's pods as last listed or watched (deleted ones until buried)."""
        return list(self._pods.values())

    def add_listener(self, fn: Callable[[], None]) -> None:
        """fn() is called (on the watch thread) after the pods changed."""
        self._listeners.append(fn)

    def _changed(self) -> None:
        for fn in self._listeners:
            fn()

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._api.abort()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # -- the list/watch loop ----------------------------------------------------------
    def _run(self) -> None:
        backoff = self._cfg.backoff_initial
        rv: str | None = None
        last_expired = float("-inf")
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                started = time.monotonic()
                rv, events = self._watch(rv)
            except Exception as e:  # noqa: BLE001 - every failure is sorted below
                if self._stop.is_set():
                    break
                if isinstance(e, _Expired) or (isinstance(e, ApiException) and e.status == 410):
                    self._counters.inc(reasons.WATCH_EXPIRED)
                    log.debug("pod watch expired (410 Gone): listing again")
                    rv = None
                    # One 410 is routine and relisted at once; a list that is stale
                    # again within seconds is a sick API server: back off.
                    now = time.monotonic()
                    again_soon, last_expired = now - last_expired < 5.0, now
                    if not again_soon:
                        continue
                else:
                    if isinstance(e, BadObject):
                        rv = None  # an event may be lost in the garbage: list again
                    self._count_failure(e)
            else:
                backoff = self._cfg.backoff_initial
                if events == 0 and time.monotonic() - started < 1.0:
                    # A server that ends every watch at once would make this loop spin.
                    self._stop.wait(backoff)
                continue
            self._stop.wait(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self._cfg.backoff_max)

    def _count_failure(self, e: Exception) -> None:
        if isinstance(e, ApiException) and e.status in (401, 403):
            self._counters.inc(reasons.API_FORBIDDEN)
            self._counters.warn_once(
                "api:forbidden",
                "Kubernetes API refused pods (%s): check the agent's RBAC",
                e.status,
            )
        elif isinstance(e, ApiException):
            self._counters.inc(reasons.API_ERROR)
            self._counters.warn_once("api:error", "Kubernetes API error %s: %s", e.status, e.reason)
        elif isinstance(e, BadObject):
            self._counters.inc(reasons.API_GARBAGE)
            self._counters.warn_once("api:garbage", "Kubernetes API sent garbage: %s", e)
        else:  # refused, reset, timeout: all "down"
            self._counters.inc(reasons.API_ERROR)
            self._counters.warn_once("api:down", "Kubernetes API unreachable: %s", e)

    def _relist(self) -> str:
        try:
            node = self._api.get_node(self._node)
            self._node_attrs = node_attributes(node)
        except Exception as e:  # noqa: BLE001 - zone/region are optional extras
            self._counters.inc(reasons.API_ERROR)
            self._counters.warn_once("node", "cannot read node %s: %s", self._node, e)
        items, rv = self._api.list_pods(self._node)
        pods: dict[str, PodMeta] = {}
        for item in items:
            try:
                meta = parse_pod(item)
            except BadObject:
                self._counters.inc(reasons.API_GARBAGE)
                continue
            pods[meta.uid] = meta
        by_cid: dict[str, PodTags] = {}
        by_uid: dict[str, PodTags] = {}
        by_ip: dict[str, PodTags] = {}
        for meta in pods.values():
            whole, per_container = self._tags(meta)
            by_uid[meta.uid] = whole
            by_cid.update(per_container)
            if not meta.host_network:
                for ip in meta.ips:
                    by_ip[ip] = whole
        # Swap whole maps: readers see the old state or the new one, never a mix.
        self._pods, self._by_cid, self._by_uid, self._by_ip = pods, by_cid, by_uid, by_ip
        self._graveyard.clear()
        self.lists += 1
        self._changed()
        self._synced.set()
        return rv

    def _watch(self, rv: str) -> tuple[str, int]:
        events = 0
        stream = self._api.watch_pods(self._node, rv, self._cfg.watch_timeout)
        self._counters.recovered("api", "Kubernetes API: watching pods again")
        for ev in stream:
            if self._stop.is_set():
                break
            kind, obj = ev.get("type"), ev.get("object")
            if kind == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else None
                if code == 410:
                    raise _Expired()
                raise ApiException(status=code or 0, reason=str((obj or {}).get("message", "")))
            if kind == "BOOKMARK":
                new_rv = ((obj or {}).get("metadata") or {}).get("resourceVersion")
                if not isinstance(new_rv, str):
                    raise BadObject("bookmark without resourceVersion")
                rv = new_rv
                continue
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                raise BadObject(f"watch event of type {kind!r}")
            meta = parse_pod(obj)
            if kind == "DELETED":
                self._delete(meta)
            else:
                self._upsert(meta)
            rv = meta.resource_version or rv
            events += 1
            self._bury()
        return rv, events

    def _tags(self, meta: PodMeta) -> tuple[PodTags, dict[str, PodTags]]:
        return build_pod_tags(
            meta,
            self._owners.resolve(meta),
            self._cfg.label_attributes,
            self._cfg.annotation_attributes,
            self._node_attrs,
            self._cfg.payload_capture.pod(meta.namespace, meta.annotations,
                                          self._bad_annotation),
        )

    def _bad_annotation(self, value: str) -> None:
        self._counters.inc(capture.BAD_ANNOTATION)
        self._counters.warn_once(f"capture:{value}", "pod annotation %s=%r is neither on "
                                 "nor off: payload capture off for that pod",
                                 capture.ANNOTATION, value)

    def _upsert(self, meta: PodMeta) -> None:
        old = self._pods.get(meta.uid)
        whole, per_container = self._tags(meta)
        self._by_uid[meta.uid] = whole
        self._by_cid.update(per_container)
        new_ips = () if meta.host_network else meta.ips
        for ip in new_ips:
            self._by_ip[ip] = whole
        if old is not None:
            for cid in old.containers.keys() - per_container.keys():
                self._by_cid.pop(cid, None)
            self._drop_ips(old, keep=new_ips)
        self._pods[meta.uid] = meta
        self._changed()

    def _delete(self, meta: PodMeta) -> None:
        old = self._pods.get(meta.uid, meta)
        # The IP can be handed to a new pod at once; the container ids cannot come
        # back, and spans of the dying pod still arrive for a while.
        self._drop_ips(old, keep=())
        self._graveyard.append((time.monotonic() + self._cfg.deleted_grace, meta.uid))

    def _drop_ips(self, old: PodMeta, keep: tuple[str, ...]) -> None:
        for ip in old.ips:
            if ip not in keep:
                tags = self._by_ip.get(ip)
                if tags is not None and tags.resource.get("k8s.pod.uid") == old.uid:
                    del self._by_ip[ip]

    def _bury(self) -> None:
        now = time.monotonic()
        while self._graveyard and self._graveyard[0][0] <= now:
            _, uid = self._graveyard.pop(0)
            meta = self._pods.pop(uid, None)
            self._by_uid.pop(uid, None)
            if meta is not None:
                for cid in meta.containers:
                    self._by_cid.pop(cid, None)
                self._changed()
