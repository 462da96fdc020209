"""Interface -> pod: which pod a TC hook's interface belongs to, so that a hop is named
by its pod and not only by a network namespace.

A hook belongs to a pod in two ways:
- it is in the pod's own netns (the pod's `eth0`): side "pod";
- it is the host end of the pod's veth, whose peer (IFLA_LINK_NETNSID at attach time,
  agent/probes/tc.py) is in the pod's netns: side "host".

A netns is a pod's when the processes living in it (found through /proc/PID/ns/net)
are tagged with that pod by the Kubernetes enricher (agent/enrich: pid -> cgroup ->
container -> pod, its public `Enricher.enrich`).  Every process of the netns that the
enricher ties to a pod must name the same pod; processes it ties to none (a debugging
shell entered with nsenter) are ignored; two different pods, or the agent's own netns
(host-network pods share it), name nothing: a wrong pod is worse than none.

Resolution is slow (a /proc scan, a netlink query per candidate netns) and runs on the
hop thread when interfaces appear, never per packet or per span; a hook whose pod is
not known yet (the pod cache not synced, the pod just created) is tried again with a
growing back-off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proto.span import Span

log = logging.getLogger(__name__)

HookKey = tuple[int, int]  # netns inode, ifindex
Tags = Callable[[int], Mapping[str, str]]  # pid -> resource attributes


@dataclass(frozen=True, slots=True)
class PodRef:
    """The pod an interface belongs to."""

    name: str
    namespace: str
    uid: str
    workload: str = ""  # k8s.workload.name (Deployment, StatefulSet ...), "" if none
    side: str = "pod"  # "pod": in the pod's netns; "host": host end of its veth

    @property
    def group(self) -> str:
        """`namespace/workload` (or the pod when it has no workload): a bounded name."""
        return f"{self.namespace}/{self.workload or self.name}"

    def attributes(self, prefix: str) -> dict[str, str]:
        """Span attributes under `prefix` (`zerotrace.net.` or `zerotrace.net.from.`)."""
        out = {f"{prefix}pod": self.name, f"{prefix}pod.namespace": self.namespace,
               f"{prefix}pod.side": self.side}
        if self.workload:
            out[f"{prefix}workload"] = self.workload
        return out


def enricher_tags(enricher) -> Tags:
    """pid -> resource attributes, through the enricher's public `enrich`."""
    def tags(pid: int) -> Mapping[str, str]:
        s = Span(pid=pid)
        enricher.enrich(s)
        return s.resource
    return tags


def netns_pids(proc_root: str = "/proc", per_netns: int = 8) -> dict[int, list[int]]:
    """netns inode -> up to `per_netns` pids living in it."""
    out: dict[int, list[int]] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            inode = os.stat(f"{proc_root}/{name}/ns/net").st_ino
        except OSError:  # exited meanwhile, or a kernel thread we may not look at
            continue
        pids = out.setdefault(inode, [])
        if len(pids) < per_netns:
            pids.append(int(name))
    return out


def pod_of_pids(pids: list[int], tags: Tags) -> tuple[PodRef | None, str]:
    """The one pod the enricher ties these pids to, and why not when there is none."""
    found: dict[str, PodRef] = {}
    for pid in pids:
        try:
            res = tags(pid)
        except Exception as e:  # noqa: BLE001 - a pid that vanished mid-read
            log.debug("tags of pid %d: %s", pid, e)
            continue
        uid, name = res.get("k8s.pod.uid", ""), res.get("k8s.pod.name", "")
        if uid and name:
            found[uid] = PodRef(name, res.get("k8s.namespace.name", ""), uid,
                                res.get("k8s.workload.name", ""))
    if len(found) > 1:
        return None, "ambiguous"
    if not found:
        return None, "no pod"
    return next(iter(found.values())), ""


class HookPods:
    """Pods of the TC hooks; `update(hooks)` resolves the hooks not known yet, `get`
    answers from what is resolved (a dict read: safe from the emitting thread)."""

    def __init__(self, tags: Tags, proc_root: str = "/proc", retry_s: float = 5.0,
                 retry_max_s: float = 300.0, nsid_of: Callable | None = None) -> None:
        self._tags = tags
        self._proc = proc_root
        self._retry = retry_s
        self._retry_max = retry_max_s
        self._nsid_of = nsid_of or _nsid_of
        self._own = os.stat(f"{proc_root}/self/ns/net").st_ino
        self._owners: dict[HookKey, PodRef] = {}
        self._next: dict[HookKey, tuple[float, float]] = {}  # key -> (when, back-off)
        self.refused: dict[HookKey, str] = {}  # why a hook has no pod (diagnostics)

    def get(self, key: HookKey) -> PodRef | None:
        return self._owners.get(key)

    def update(self, hooks: Mapping[HookKey, object], now: float | None = None) -> int:
        """Resolve the hooks without a pod whose retry time has come; returns how many
        got one."""
        now = time.monotonic() if now is None else now
        for table in (self._owners, self._next, self.refused):
            for k in [k for k in table if k not in hooks]:  # the device went away
                del table[k]
        todo = [(k, h) for k, h in list(hooks.items()) if k not in self._owners
                and self._next.get(k, (0.0, 0.0))[0] <= now]
        if not todo:
            return 0
        pids = netns_pids(self._proc)
        by_netns: dict[int, tuple[PodRef | None, str]] = {}
        nsids: dict[str, dict[int, int]] = {}  # hook netns name -> nsid -> inode

        def pod_of(inode: int) -> tuple[PodRef | None, str]:
            if inode == self._own:
                return None, "the agent's netns"  # host-network pods live here too
            if inode not in by_netns:
                by_netns[inode] = pod_of_pids(pids.get(inode, []), self._tags)
            return by_netns[inode]

        got = 0
        for key, hook in todo:
            ref, why = pod_of(key[0])
            # the host end of a veth: named by its peer's netns (an interface in any
            # other netns belongs to that netns, whatever its peer)
            if key[0] == self._own and getattr(hook, "peer_nsid", None) is not None:
                where = getattr(hook, "netns", "host")
                if where not in nsids:
                    nsids[where] = self._peer_map(where, key[0], pids)
                peer = nsids[where].get(hook.peer_nsid)
                if peer is not None:
                    pref, pwhy = pod_of(peer)
                    if pref is not None:
                        ref = PodRef(pref.name, pref.namespace, pref.uid, pref.workload,
                                     side="host")
                    else:
                        why = f"peer: {pwhy}"
                else:
                    why = "peer netns not found"
            if ref is not None:
                self._owners[key] = ref
                self._next.pop(key, None)
                self.refused.pop(key, None)
                got += 1
                continue
            self.refused[key] = why
            if key[0] == self._own and getattr(hook, "peer_nsid", None) is None:
                self._next[key] = (float("inf"), 0.0)  # the host's own device: never a pod's
                continue
            _, back = self._next.get(key, (0.0, self._retry / 2))
            back = min(back * 2, self._retry_max)
            self._next[key] = (now + back, back)
        return got

    def _peer_map(self, where: str, inode: int, pids: dict[int, list[int]]) -> dict[int, int]:
        """nsid (as the netns `where` numbers its peers) -> netns inode, for the netns
        that have a process."""
        cand = {plist[0]: other for other, plist in pids.items() if other != inode and plist}
        try:
            ids = self._nsid_of(where, list(cand))
        except Exception as e:  # noqa: BLE001 - netns gone mid-scan: try again later
            log.debug("nsid map of %s: %s", where, e)
            return {}
        return {nsid: cand[pid] for pid, nsid in ids.items() if pid in cand}


NSID_NONE = 0xFFFFFFFF  # NETNSA_NSID of a netns given no id (-1, read unsigned)


def _nsid_of(where: str, pids: list[int]) -> dict[int, int]:
    """pid -> the id netns `where` ("host" or a name under /run/netns) gives the netns
    of that pid (one RTM_GETNSID each, on one netlink socket); pids whose netns has no
    id there are left out."""
    from pyroute2 import IPRoute

    out: dict[int, int] = {}
    with (IPRoute() if where == "host" else IPRoute(netns=where)) as ipr:
        for pid in pids:
            try:
                r = ipr.get_netnsid(pid=pid)
            except Exception:  # noqa: BLE001 - the pid exited
                continue
            nsid = r.get("nsid") if r else None
            if isinstance(nsid, int) and nsid != NSID_NONE:
                out[pid] = nsid
    return out
