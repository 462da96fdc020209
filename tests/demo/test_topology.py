"""The demo topology for real: pods come up, requests cross every hop, DNS is used,
and nothing is left behind (namespaces, bridge, processes, /etc/netns, temp dir).
Needs root and network namespaces (no eBPF), hence the `kernel` mark."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time

import pytest

from agent.demo import probes, services, stale
from agent.demo.topology import DemoTopology, StartupError

pytestmark = pytest.mark.kernel


def snapshot(topo: DemoTopology) -> dict:
    return {"netns": [p.netns for p in topo.pods.values()], "bridge": topo.bridge,
            "pids": [pid for p in topo.pods.values() for pid in p.pids], "tmp": topo.tmp}


def assert_gone(snap: dict) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in snap["netns"]:
        assert ns not in listed
        assert not os.path.exists(f"/run/netns/{ns}")
        assert not os.path.exists(f"/etc/netns/{ns}")
    assert not os.path.exists(f"/sys/class/net/{snap['bridge']}")
    assert snap["tmp"] is None or not os.path.exists(snap["tmp"])
    deadline = time.monotonic() + 5
    alive = snap["pids"]
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if os.path.exists(f"/proc/{p}")]
        time.sleep(0.05)
    assert not alive, f"processes left: {alive}"


def check_requests(topo: DemoTopology, n: int) -> None:
    res = topo.run_load(requests=n, rate=100, concurrency=4, timeout=10, max_seconds=20)
    assert len(res) == n
    assert [r.status for r in res] == [200] * n
    assert len({r.nonce for r in res}) == n
    assert all(r.start_ns < r.end_ns for r in res)
    for r in res:
        assert topo.pg_query("SELECT count(*) FROM orders WHERE note = %s", (r.nonce,)) == [(1,)]
        assert topo.redis("EXISTS", f"stock:{r.nonce}") == 1
    log = topo.dns_log()
    api, inv = topo.pods["api"].addr, topo.pods["inventory"].addr
    # Python asks once per request; Go's resolver merges concurrent look-ups of one
    # name (singleflight), so it may ask a little less often than once per request.
    for name, asker, least in (("inventory", api, n), ("postgres", api, n),
                               ("redis", inv, n // 2)):
        asked = log.count(f"query[A] {name}.demo.zt from {asker}")
        assert asked >= least, f"{name}.demo.zt asked {asked} times by {asker}"


def test_go_topology_end_to_end_and_teardown() -> None:
    with DemoTopology(variant="go") as topo:
        assert topo.startup_seconds < 30
        assert set(topo.pods) == {"dns", "gw", "api", "inventory", "redis", "postgres",
                                  "client", "licence", "pricing"}
        assert len({p.inode for p in topo.pods.values()}) == 9
        assert all(p.addr.startswith("10.232.0.") for p in topo.pods.values())
        assert len(topo.pods["gw"].pids) == 3  # nginx master + 2 workers
        assert topo.gateway_url == f"http://{topo.pods['gw'].addr}"
        with open(f"/etc/netns/{topo.pods['api'].netns}/resolv.conf") as f:
            assert topo.pods["dns"].addr in f.read()
        check_requests(topo, 20)
        # the Go inventory's further calls: PostgreSQL through lib/pq, pricing over HTTP
        status, body = topo.run_in("client", probes.http_get, topo.pods["inventory"].addr,
                                   services.PORTS["inventory"], "/stock/n00000000000000aa")
        assert status == 200 and b'"orders": 0' in body and b'"price": ' in body, body
        answer = topo.run_in("client", probes.licence_check, topo.pods["licence"].addr,
                             services.PORTS["licence"])
        assert answer == "LIC! granted healthz"
        snap = snapshot(topo)
    assert_gone(snap)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_variant() -> None:
    with DemoTopology(variant="node") as topo:
        assert "node" in open(f"/proc/{topo.pods['inventory'].procs[0].pid}/cmdline").read()
        check_requests(topo, 5)
        snap = snapshot(topo)
    assert_gone(snap)


def test_ctrl_c_inside_tears_down() -> None:
    snap = None
    with pytest.raises(KeyboardInterrupt):
        with DemoTopology() as topo:
            snap = snapshot(topo)
            raise KeyboardInterrupt
    assert snap is not None
    assert_gone(snap)


def test_failed_service_is_named_with_its_log(monkeypatch: pytest.MonkeyPatch) -> None:
    real = services.redis_argv
    monkeypatch.setattr(services, "redis_argv",
                        lambda tmp, addr: [*real(tmp, addr), "--no-such-option", "x"])
    topo = DemoTopology(startup_timeout=10)
    with pytest.raises(StartupError) as e:
        topo.start()
    assert "'redis'" in str(e.value)
    assert "no-such-option" in str(e.value).lower() or "bad directive" in str(e.value).lower()
    assert_gone({"netns": [p.netns for p in topo.pods.values()], "bridge": topo.bridge,
                 "pids": [], "tmp": topo.tmp})


OWNER = """
import signal, sys, time
from agent.demo.topology import DemoTopology
topo = DemoTopology()
topo.start()
print(topo.tag, flush=True)
time.sleep(60)
"""


def test_stale_topology_of_a_killed_owner_is_removed() -> None:
    p = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        tag = p.stdout.readline().strip()
        assert tag, "the owner did not start its topology"
    finally:
        p.kill()
        p.wait()
    names = [f"ztd-{tag}-{pod}" for pod in ("dns", "api", "client")]
    assert all(os.path.exists(f"/run/netns/{n}") for n in names)  # left behind
    assert tag in stale.remove_stale()
    assert_gone({"netns": names, "bridge": f"ztdbr{tag}", "pids": [], "tmp": None})
    assert not glob.glob(f"/tmp/zt-demo-{tag}-*")
