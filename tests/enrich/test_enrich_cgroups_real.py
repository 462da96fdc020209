"""pid -> container id on real cgroups: directories named as containerd, CRI-O and
Docker name them, a real process in each, read back through /proc/PID/cgroup."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from agent.enrich import counters as reasons
from agent.enrich.cgroup import cgroup_id_of, read_pid_cgroup
from proto.span import Span

from .conftest import U_CHECKOUT, U_DB, systemd_pod_slice

pytestmark = pytest.mark.kernel


def _cid(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


LAYOUTS = [
    # (relative cgroup path, expected runtime, expected pod uid)
    (
        f"{systemd_pod_slice('burstable', U_CHECKOUT)}/cri-containerd-{_cid('a')}.scope",
        "containerd",
        U_CHECKOUT,
    ),
    (f"{systemd_pod_slice('besteffort', U_DB)}/crio-{_cid('b')}.scope", "cri-o", U_DB),
    (f"system.slice/docker-{_cid('c')}.scope", "docker", ""),
    (f"docker/{_cid('d')}", "docker", ""),
    (f"kubepods/burstable/pod{U_CHECKOUT}/{_cid('e')}", "", U_CHECKOUT),
]


def test_pid_to_container_id_for_each_runtime_layout(lab) -> None:
    procs = []
    for rel, runtime, uid in LAYOUTS:
        cg = lab.make(rel)
        procs.append((lab.spawn(cg), cg, rel, runtime, uid))
    for proc, cg, rel, runtime, uid in procs:
        ref = read_pid_cgroup(proc.pid)
        assert ref.container_id == rel.rsplit("/", 1)[1].split("-")[-1].removesuffix(".scope")
        assert (ref.runtime, ref.pod_uid) == (runtime, uid), rel
        # The id a probe reports for this process is the directory's inode.
        assert cgroup_id_of(str(cg)) == os.stat(cg).st_ino


def test_cgroup_v1_hierarchy_answers_when_v2_is_silent(lab) -> None:
    if not lab.v1_systemd:
        pytest.skip("this host has no cgroup v1 name=systemd hierarchy (pure v2)")
    cid = _cid("v1")
    proc = lab.spawn(lab.make(f"docker/{cid}", v1=True))
    ref = read_pid_cgroup(proc.pid)
    assert (ref.container_id, ref.runtime) == (cid, "docker")


def test_enricher_caches_per_cgroup_and_survives_exit(lab, make_enricher) -> None:
    cid = _cid("exit")
    cg = lab.make(f"{systemd_pod_slice('burstable', U_CHECKOUT)}/cri-containerd-{cid}.scope")
    first = lab.spawn(cg)
    cgid = cgroup_id_of(str(cg))
    enricher = make_enricher()
    span = Span(pid=first.pid, cgroup_id=cgid)
    enricher.enrich(span)
    assert span.resource["container.id"] == cid
    assert span.resource["k8s.pod.uid"] == U_CHECKOUT
    assert span.resource["process.executable.name"] == "sleep"
    assert span.service == "sleep"

    # A pid that exits before it is resolved: the cgroup id still names the container.
    second = lab.spawn(cg)
    second.kill()
    second.wait()
    late = Span(pid=second.pid, cgroup_id=cgid, process="sleep")
    enricher.enrich(late)
    assert late.resource["container.id"] == cid
    assert enricher.counters()[reasons.PID_GONE] == 1

    # Exit invalidates: the sweep drops the dead pid's entry and keeps the live one.
    enricher.sweep()
    assert (first.pid, cgid) in enricher._cache
    first.kill()
    first.wait()
    time.sleep(0.25)  # past sweep_interval: the unresolvable dead pid's entry ages out too
    enricher.sweep()
    assert (first.pid, cgid) not in enricher._cache
    assert cgid not in enricher._by_cgroup
