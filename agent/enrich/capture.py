"""Payload capture per Kubernetes namespace and pod: the policy, the cgroups it names,
and the span-side safety net.

The agent's configuration file:

    payload:
      capture: on              # every process (default on)
      namespaces:              # per namespace, over `capture`
        payments: off
        kube-system: off

and a pod annotation over both: `zerotrace.io/payload-capture: "off"` (or "on").  An
annotation value that is neither is taken as "off" (fail closed: someone meant to say
something about capture), counted and logged once.

What "off" means:
- In the kernel: the syscalls of the pod's processes are still traced, but their
  records carry lengths, TCP seqs, times and addresses, never a payload byte
  (bpf/maps.h `capture_cgroups`, written by `CaptureSwitch` through
  agent/probes/capture.py).  With no bytes no protocol is inferred, so the pod's own
  syscalls make no span; context still follows its connections (docs/stitching.md),
  so the traces of the pods it talks to are not cut.  What its peers capture of the
  same conversation follows the peers' setting: switch both namespaces off to keep a
  conversation out.
- In the agent: spans of a pod switched off that still exist (bytes captured before
  its cgroups were known, an SDK's own spans) keep L4 facts only (`scrub`): times,
  addresses, ports, byte counts, the protocol, pod tags; the operation, status code,
  error text, trace headers and every payload-derived attribute are dropped, and
  `zerotrace.payload.capture=off` says why.

The kernel learns a pod's cgroups from a walk of the cgroup tree when the pods change,
every `interval` (10) seconds, and every 0.25 s while a pod listed in the last two
minutes has a cgroup or container not found yet.  The pod's own cgroup (the kubelet's
pod slice) is listed with the depth it sits at, and the probes check the ancestor at
that depth too: a container (re)started in a listed pod is covered from its first
syscall.  What is not covered: a pod's first moments when its cgroup appears between two
walks (0.25 s apart while it is young), and pods whose cgroups name neither pod UID nor
container id; the span-side scrub covers their spans, not their ring records.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.enrich.cgroup import cgroup2_mount, segment_container_id, segment_pod_uid
from agent.enrich.counters import Counters
from agent.enrich.pods import PodMeta
from agent.enrich.tags import PodTags
from proto.span import KIND_CLIENT, PARENT_UNKNOWN, Span

log = logging.getLogger("zerotrace.enrich")

ANNOTATION = "zerotrace.io/payload-capture"
ATTRIBUTE = "zerotrace.payload.capture"  # "off" on spans the safety net stripped

# counters (reasons of zerotrace_stage_events_total{stage="enrich"})
SPANS_SCRUBBED = "payload_off_spans_scrubbed"
ATTRIBUTES_DROPPED = "payload_off_attributes_dropped"
BAD_ANNOTATION = "payload_annotation_invalid"  # counted by agent/enrich/podcache.py

_ON = {"on", "true", "yes", "1", "enabled"}
_OFF = {"off", "false", "no", "0", "disabled"}

# Attributes that say nothing the payload said: L4 facts, the agent's own notes, and the
# peer pod's tags (from the peer's IP).  server.address/port and client.* are rebuilt
# from the connection (an HTTP Host header may have set them).
_KEEP = frozenset({"network.transport", "tls", "zerotrace.midstream", PARENT_UNKNOWN,
                   "go.goroutine.id", "peer.service"})
_KEEP_PREFIXES = ("k8s.peer.", "zerotrace.net.")


def parse_switch(value: Any, what: str) -> bool:
    """on/off (YAML booleans, or the words) -> bool; anything else is a ValueError."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _ON:
        return True
    if word in _OFF:
        return False
    raise ValueError(f"{what}: {value!r} is not on or off")


@dataclass(frozen=True)
class CapturePolicy:
    """Whether a pod's payload is captured: its annotation, else its namespace's
    setting, else `default`."""

    default: bool = True
    namespaces: Mapping[str, bool] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> CapturePolicy:
        """The `payload` section of the agent's configuration (unknown keys refused)."""
        if data is not None and not isinstance(data, Mapping):
            raise ValueError("payload must be a mapping (capture: on|off, namespaces: {...})")
        data = dict(data or {})
        unknown = sorted(set(data) - {"capture", "namespaces"})
        if unknown:
            raise ValueError(f"unknown payload settings: {', '.join(unknown)}")
        default = parse_switch(data.get("capture", True), "payload.capture")
        ns = data.get("namespaces") or {}
        if not isinstance(ns, Mapping):
            raise ValueError("payload.namespaces must map a namespace to on or off")
        return cls(default, {str(k): parse_switch(v, f"payload.namespaces.{k}")
                             for k, v in ns.items()})

    @property
    def switches_anything(self) -> bool:
        """Whether the policy itself turns something off (a pod annotation may still,
        wherever pods are watched)."""
        return not self.default or not all(self.namespaces.values())

    def pod(self, namespace: str, annotations: Mapping[str, str],
            bad: Callable[[str], None] | None = None) -> bool:
        """True when the pod's payload is captured.  `bad(value)` is told of an
        annotation value that is neither on nor off (taken as off)."""
        raw = annotations.get(ANNOTATION)
        if raw is not None:
            try:
                return parse_switch(raw, ANNOTATION)
            except ValueError:
                if bad is not None:
                    bad(raw)
                return False
        return self.namespaces.get(namespace, self.default)


def scrub(span: Span) -> int:
    """Keep the L4 facts of a span of a pod switched off (the module's docstring);
    returns how many attributes were dropped."""
    a = span.attributes
    kept = {k: v for k, v in a.items() if k in _KEEP or k.startswith(_KEEP_PREFIXES)}
    dropped = len(a) - len(kept)
    if span.kind == KIND_CLIENT:
        kept["server.address"], kept["server.port"] = span.remote.addr, span.remote.port
    elif span.remote.addr:
        kept["client.address"], kept["client.port"] = span.remote.addr, span.remote.port
    kept[ATTRIBUTE] = "off"
    span.attributes = kept
    span.operation = span.protocol
    span.status_code = ""
    span.error = ""
    span.trace_headers = {}
    return dropped


class PodSource(Protocol):
    """What the switch reads from the pod cache (agent/enrich/podcache.py)."""

    def pods(self) -> list[PodMeta]: ...
    def add_listener(self, fn: Callable[[], None]) -> None: ...


class Sink(Protocol):
    """Where the switch writes (agent/probes/capture.py CaptureMap)."""

    def set(self, mode: int, cgroup_ids: Iterable[int], levels: Iterable[int] = ()) -> None: ...
    def counters(self) -> dict[str, int]: ...


MODE_ALL, MODE_DENY, MODE_ALLOW = 0, 1, 2  # agent/probes/capture.py (enrich imports no probes)


class CaptureSwitch:
    """Keeps the kernel's list of cgroups in step with the policy and the node's pods.

    Under a `default` of on the list names the cgroups of pods switched off (DENY),
    under off those of pods switched on (ALLOW), with the depths of the pods' own
    cgroups.  `bind(sink)` starts a thread that recomputes the list when the pods change
    and every `interval` seconds, every `fast_interval` while a pod listed in the last
    `young_s` seconds has a cgroup or a container not found yet.
    """

    def __init__(self, policy: CapturePolicy, pods: PodSource | Any,
                 cgroup_root: str | None, counters: Counters, stop: threading.Event,
                 interval: float = 10.0, fast_interval: float = 0.25,
                 young_s: float = 120.0) -> None:
        self.policy = policy
        self._default = policy.default
        # a pod lookup that cannot list the pods (a test's replay of tags) names none
        if not (hasattr(pods, "pods") and hasattr(pods, "add_listener")):
            pods = None
        self._pods: PodSource | None = pods
        self._root = cgroup_root
        self._counters = counters
        self._stop = stop
        self.interval, self.fast_interval, self.young_s = interval, fast_interval, young_s
        self._first_seen: dict[str, float] = {}  # pod uid -> when first seen
        self._wake = threading.Event()
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.listed: frozenset[int] = frozenset()  # cgroup ids last written
        self.levels: frozenset[int] = frozenset()  # depths of the pods' own cgroups
        if pods is not None:
            pods.add_listener(self._wake.set)
        counters.add_source(self._sink_counters)

    @property
    def mode(self) -> int:
        return MODE_DENY if self.policy.default else MODE_ALLOW

    def may_switch(self) -> bool:
        """Whether anything can ever be switched off: pods are watched (an annotation
        can turn any of them off) or the policy says off somewhere."""
        return self._pods is not None or self.policy.switches_anything

    def captures(self, tags: PodTags | None) -> bool:
        """Whether spans of a process with these pod tags keep their payload-derived
        fields (per span: kept to one attribute read)."""
        return self._default if tags is None else tags.capture

    def scrub(self, span: Span) -> None:
        """The safety net on one span of a pod switched off, counted."""
        self._counters.inc(SPANS_SCRUBBED)
        n = scrub(span)
        if n:
            self._counters.inc(ATTRIBUTES_DROPPED, n)

    def targets(self) -> tuple[set[str], set[str], dict[str, set[str]]]:
        """(pod uids, container ids, {uid: container ids} of the young ones) of the
        pods the list names: switched off under DENY, on under ALLOW.  Young: first
        seen less than `young_s` ago, when containers are still being started."""
        want_on = self.mode == MODE_ALLOW
        uids: set[str] = set()
        cids: set[str] = set()
        young: dict[str, set[str]] = {}
        if self._pods is None:
            return uids, cids, young
        now = time.monotonic()
        seen, first = {}, self._first_seen
        for meta in self._pods.pods():
            seen[meta.uid] = t = first.get(meta.uid, now)
            # (a bad annotation is counted by the pod cache, once a pod change)
            if self.policy.pod(meta.namespace, meta.annotations) == want_on:
                uids.add(meta.uid)
                cids.update(meta.containers)
                if now - t < self.young_s:
                    young[meta.uid] = set(meta.containers)
        self._first_seen = seen
        return uids, cids, young

    def compute(self) -> tuple[set[int], set[int], bool]:
        """(cgroup ids to list, depths of the pods' own cgroups among them, whether a
        young targeted pod has a cgroup or a container not found yet: the next walk then
        comes sooner)."""
        uids, cids, young = self.targets()
        ids: set[int] = set()
        levels: set[int] = set()
        found_uids: set[str] = set()
        found_cids: set[str] = set()
        root = self._root if self._root is not None else cgroup2_mount()
        if (uids or cids) and root:
            # One walk; below a targeted pod's cgroup everything is that pod's.  Names
            # are matched segment by segment (a whole-path parse per directory cost
            # ~50 us a directory: 90 ms for a node of 1 700 cgroups at load 9).
            stack = [(root, 0, False)]
            while stack:
                directory, depth, inside = stack.pop()
                try:
                    with os.scandir(directory) as it:
                        entries = [(e.path, e.name, e.inode()) for e in it
                                   if e.is_dir(follow_symlinks=False)]
                except OSError:
                    continue  # removed while walking: the next walk sees it
                for path, name, ino in entries:
                    hit = inside
                    if not hit:
                        uid = segment_pod_uid(name)
                        if uid and uid in uids:
                            hit = True
                            found_uids.add(uid)
                            levels.add(depth + 1)
                    cid = segment_container_id(name)
                    if cid and cid in cids:
                        hit = True
                        found_cids.add(cid)
                    if hit:
                        ids.add(ino)
                    stack.append((path, depth + 1, hit))
        missing = any(uid not in found_uids or not c <= found_cids
                      for uid, c in young.items())
        return ids, levels, missing

    def refresh(self) -> bool:
        """Recompute and write the list now; True while a targeted pod's cgroups are
        still to be found."""
        ids, levels, missing = self.compute()
        if self._sink is not None:
            # nothing to deny: no look-up at all in the probes
            mode = MODE_ALL if self.mode == MODE_DENY and not ids else self.mode
            self._sink.set(mode, ids, levels)
        self.listed = frozenset(ids)
        self.levels = frozenset(levels)
        self.refreshes += 1
        return missing

    def bind(self, sink: Sink) -> None:
        """Write into `sink` (the probes' maps) from now on, kept current by a thread."""
        self._sink = sink
        self._wake.clear()  # pod changes so far: this refresh sees them
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="zerotrace-capture",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        missing = False
        while not self._stop.is_set():
            # in slices of at most 1 s: the enricher's close() sets only its stop event
            deadline = time.monotonic() + (self.fast_interval if missing else self.interval)
            while not self._stop.is_set() and not self._wake.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(min(left, 1.0))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                missing = self.refresh()
            except Exception:  # noqa: BLE001 - the next turn tries again
                log.exception("payload capture switch: refresh failed")

    def _sink_counters(self) -> dict[str, int]:
        sink = self._sink
        if sink is None:
            return {}
        try:
            return sink.counters()
        except Exception:  # noqa: BLE001 - probes closing: never break a scrape
            return {}
