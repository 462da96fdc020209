"""The one entry point: `Enricher.enrich(span)` fills `span.resource` and
`span.service` from the process, its container and, on Kubernetes, its pod.

Per span this is two dict lookups and a dict merge: everything slow (reading
/proc, parsing cgroup paths, talking to the API, building tags) happens once per
(pid, cgroup id) or once per pod change, elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from agent.enrich import counters as reasons
from agent.enrich.capture import CaptureSwitch
from agent.enrich.cgroup import HOST, ContainerRef, parse_path, read_pid_cgroup
from agent.enrich.cgroup_index import CgroupIndex
from agent.enrich.config import EnrichConfig
from agent.enrich.counters import Counters
from agent.enrich.process import host_name, read_environ, read_process, start_time
from agent.enrich.tags import PodTags
from proto.span import Span

if TYPE_CHECKING:
    from agent.enrich.podcache import PodCache

log = logging.getLogger("zerotrace.enrich")

# A runaway pid churn (fork bombs, short-lived CGI) must not grow the cache forever.
MAX_ENTRIES = 65536


class PodLookup(Protocol):
    """What the Enricher needs from a pod source: the production one is
    `podcache.PodCache` (list + watch of the API); tests plug in replays."""

    def pod_for(self, container_id: str, pod_uid: str) -> PodTags | None: ...
    def pod_for_ip(self, ip: str) -> PodTags | None: ...


@dataclass(slots=True)
class _Entry:
    ref: ContainerRef
    base: dict[str, str]  # host, process and container attributes
    service: str  # service name when no pod gives one
    start_time: int | None  # None: the pid was gone when first seen
    created: float
    pod: PodTags | None = None  # the pod tags `merged` was built from
    merged: dict[str, str] | None = None
    merged_service: str = ""
    # Attributes from the process's own environment (configured variables): the
    # application's word on itself, so they win over what the pod says.
    env: dict[str, str] | None = None


class Enricher:
    """Tags spans with host, process, container and Kubernetes attributes.

    `pods`: a PodLookup to use instead of watching the API (tests, or an agent that
    shares one cache between enrichers); by default one is started when the config
    enables Kubernetes, and closed by `close()`.
    """

    def __init__(self, config: EnrichConfig | None = None, pods: PodLookup | None = None) -> None:
        self.config = cfg = config or EnrichConfig()
        self._counters = Counters(log)
        self._host = cfg.host_name or cfg.node_name or host_name()
        self._cache: dict[tuple[int, int], _Entry] = {}
        self._by_cgroup: dict[int, ContainerRef] = {}
        self._index = CgroupIndex(cfg.cgroup_root)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._owned_pods: PodCache | None = None
        if pods is None and cfg.kubernetes_enabled:
            pods = self._owned_pods = self._start_pod_cache()
        self._pods = pods
        # Payload capture per namespace/pod (agent/enrich/capture.py): the kernel's list
        # once bound to the probes (`capture.bind`), the span-side safety net here.
        self.capture = CaptureSwitch(cfg.payload_capture, pods, cfg.cgroup_root,
                                     self._counters, self._stop)
        self._sweeper = threading.Thread(
            target=self._sweep_loop, name="zerotrace-enrich-sweep", daemon=True
        )
        self._sweeper.start()

    def _start_pod_cache(self) -> PodCache | None:
        # Imported here: hosts outside Kubernetes never load the client.
        from agent.enrich.kubeapi import KubeApi, client_configuration
        from agent.enrich.podcache import PodCache

        try:
            api = KubeApi(client_configuration(self.config), self.config.request_timeout)
        except Exception as e:  # noqa: BLE001 - no kubeconfig / token: host tags only
            self._counters.inc(reasons.API_ERROR)
            log.warning("Kubernetes tags off: no API configuration (%s)", e)
            return None
        cache = PodCache(api, self.config, self._counters)
        cache.start()
        return cache

    # -- per span ---------------------------------------------------------------------
    def enrich(self, span: Span) -> None:
        """Fill span.resource (and span.service when empty) and, when the remote end
        is a known pod, the span's peer attributes."""
        e = self._cache.get((span.pid, span.cgroup_id))
        if e is None:
            e = self._resolve(span)
        pods = self._pods
        if pods is not None and (e.ref.container_id or e.ref.pod_uid):
            tags = pods.pod_for(e.ref.container_id, e.ref.pod_uid)
            if tags is not e.pod or e.merged is None:
                self._merge(e, tags)
        elif e.merged is None:
            self._merge(e, None)
        res = span.resource
        if res:
            # Spans that bring a resource (OTLP from an SDK) keep their own values.
            for k, v in e.merged.items():  # type: ignore[union-attr]
                res.setdefault(k, v)
        else:
            res.update(e.merged)  # type: ignore[arg-type]
        if not span.service:
            span.service = e.merged_service
        if not self.capture.captures(e.pod):
            self.capture.scrub(span)
        addr = span.remote.addr
        if addr and pods is not None:
            if addr.startswith("::ffff:"):
                addr = addr[7:]
            peer = pods.pod_for_ip(addr)
            if peer is not None:
                span.attributes.update(peer.peer)

    def peer(self, ip: str) -> dict[str, str]:
        """Attributes of the pod with this IP (`peer.service`, `k8s.peer.*`), or {}."""
        if self._pods is None:
            return {}
        tags = self._pods.pod_for_ip(ip[7:] if ip.startswith("::ffff:") else ip)
        return dict(tags.peer) if tags is not None else {}

    @staticmethod
    def _merge(e: _Entry, tags: PodTags | None) -> None:
        e.pod = tags
        if tags is None:
            e.merged, e.merged_service = e.base, e.service
        else:
            e.merged, e.merged_service = {**e.base, **tags.resource}, tags.service
        if e.env:
            e.merged = {**e.merged, **e.env}
            e.merged_service = e.env.get("service.name", e.merged_service)

    # -- once per (pid, cgroup id) ------------------------------------------------------
    def _resolve(self, span: Span) -> _Entry:
        pid, cgid = span.pid, span.cgroup_id
        cfg = self.config
        proc = read_process(pid, cfg.proc_root) if pid else None
        ref = self._by_cgroup.get(cgid) if cgid else None
        if proc is not None and ref is None:
            try:
                ref = read_pid_cgroup(pid, cfg.proc_root)
            except OSError:
                proc = None
        if proc is None and pid:
            self._counters.inc(reasons.PID_GONE)
        if ref is None:
            # Gone before we looked: the cgroup usually outlives the process.
            path = self._index.path_of(cgid)
            ref = parse_path(path) if path is not None else HOST
        if ref.unknown:
            self._counters.inc(reasons.UNKNOWN_RUNTIME_PATH)
            self._counters.warn_once(
                "path", "cgroup path of an unknown container runtime (counted): %s", ref.path
            )

        base = {"host.name": self._host}
        name = proc.name if proc is not None else span.process
        if proc is not None:
            base["process.pid"] = str(pid)
            base["process.command_line"] = proc.cmdline
        if name:
            base["process.executable.name"] = name
        if ref.container_id:
            base["container.id"] = ref.container_id
            if ref.runtime:
                base["container.runtime"] = ref.runtime
        if ref.pod_uid:
            base["k8s.pod.uid"] = ref.pod_uid
        if ref.systemd_unit:
            base["systemd.unit"] = ref.systemd_unit
        if cfg.node_name:
            base["k8s.node.name"] = cfg.node_name
        if cfg.cluster_name:
            base["k8s.cluster.name"] = cfg.cluster_name
        service = cfg.service_name or name or "unknown_service"
        base["service.name"] = service
        e = _Entry(ref, base, service, proc.start_time if proc else None, time.monotonic())
        if proc is not None and cfg.env_attributes:
            env = read_environ(pid, cfg.env_attributes.keys(), cfg.proc_root)
            e.env = {cfg.env_attributes[k]: v for k, v in env.items()} or None
        if self._pods is not None and (ref.container_id or ref.pod_uid):
            if self._pods.pod_for(ref.container_id, ref.pod_uid) is None:
                self._counters.inc(reasons.POD_NOT_FOUND)
        with self._lock:
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
            self._cache[(pid, cgid)] = e
            if cgid and proc is not None:
                self._by_cgroup[cgid] = ref
        return e

    # -- invalidation -------------------------------------------------------------------
    def process_exited(self, pid: int) -> None:
        """Forget a pid now (for agents that see sched_process_exit); the periodic
        sweep does the same for the others."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == pid]:
                del self._cache[key]

    def sweep(self) -> None:
        """Drop entries of exited (or reused) pids, and cgroup ids nobody uses."""
        now = time.monotonic()
        proc_root = self.config.proc_root
        for key, e in list(self._cache.items()):
            if e.start_time is None:
                dead = now - e.created > self.config.sweep_interval
            else:
                dead = start_time(key[0], proc_root) != e.start_time
            if dead:
                with self._lock:
                    if self._cache.get(key) is e:
                        del self._cache[key]
        with self._lock:
            live = {cgid for _, cgid in self._cache}
            for cgid in [c for c in self._by_cgroup if c not in live]:
                del self._by_cgroup[cgid]

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.sweep_interval):
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a sweep bug must not kill enrichment
                log.exception("enrich sweep failed")

    # -- the rest -------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """reason -> count since start (see `agent.enrich.counters` for the reasons)."""
        return self._counters.snapshot()

    @property
    def pods(self) -> PodLookup | None:
        return self._pods

    def close(self) -> None:
        """Stop the sweep thread and, if this Enricher started it, the pod watch."""
        self._stop.set()
        if self._owned_pods is not None:
            self._owned_pods.close()
        if self._sweeper.is_alive():
            self._sweeper.join(timeout=2)

    def __enter__(self) -> Enricher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
