"""Real runtimes under concurrent load, traced by the real probes: a Java thread pool,
a Node.js event loop, a Python hand-off to a pool.  Every link the stitcher makes is
checked against the nonce each request carries: no wrong parent, ever."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.helpers.netns import network
from tests.helpers.tracing import Draining
from tests.stitch.hops import HERE, links, load, nonce_of, wait_ready

pytestmark = pytest.mark.kernel
BACKEND = 9100
SERVICES = {"java-pool": 9101, "node-loop": 9102, "py-handoff": 9103}


@pytest.fixture(scope="module")
def traced():
    with network(1, subnet=233) as net:
        host = net.hosts[0]
        procs = {}
        procs["backend"] = net.spawn(host, sys.executable, f"{HERE}/backend.py", str(BACKEND),
                                     stdout=subprocess.PIPE, text=True)
        be = f"http://127.0.0.1:{BACKEND}"
        procs["java-pool"] = net.spawn(host, "java", f"{HERE}/Pool.java",
                                       str(SERVICES["java-pool"]), be,
                                       stdout=subprocess.PIPE, text=True)
        procs["node-loop"] = net.spawn(host, "node", f"{HERE}/loop.js",
                                       str(SERVICES["node-loop"]), be,
                                       stdout=subprocess.PIPE, text=True)
        procs["py-handoff"] = net.spawn(host, sys.executable, f"{HERE}/handoff.py",
                                        str(SERVICES["py-handoff"]), be,
                                        stdout=subprocess.PIPE, text=True)
        for name, p in procs.items():
            wait_ready(p, name)
        pipeline = Pipeline()
        traces = []
        pipeline.on_trace_obj = traces.append
        with SocketTracer(ProbeConfig(netns={host.inode})) as tracer, \
                Draining([(tracer, pipeline)], settle_s=2.5):
            sent = {name: load(host, port, 80, 8) for name, port in SERVICES.items()}
            sent["py-handoff+rid"] = load(host, SERVICES["py-handoff"], 20, 4, request_id=True)
        yield sent, traces, pipeline, {n: p.pid for n, p in procs.items()}


@pytest.mark.parametrize("service", list(SERVICES))
def test_no_wrong_links(traced, service):
    sent, traces, pipeline, _pids = traced
    port = SERVICES[service]
    ours = set(sent[service])
    checked = wrong = 0
    for p, c in links(traces):
        pn, cn = nonce_of(p), nonce_of(c)
        if pn in ours or cn in ours:
            if pn and cn:
                checked += 1
                wrong += pn != cn
    assert wrong == 0, f"{service}: {wrong} wrong links of {checked}"
    # the server span of each request exists on the service's port
    served = {nonce_of(s) for tr in traces for s in tr.spans
              if s.kind == "server" and s.local.port == port}
    assert len(served & ours) >= 0.9 * len(ours)


def test_thread_pool_links_every_downstream_call(traced):
    sent, traces, _p, _pids = traced
    ours = set(sent["java-pool"])
    linked = {nonce_of(c) for p, c in links(traces)
              if c.kind == "client" and p.kind == "server" and p.local.port == 9101}
    assert len(linked & ours) >= 0.9 * len(ours)


def test_handoff_is_refused_not_guessed(traced):
    _sent, _traces, pipeline, pids = traced
    counts = next(r["counts"] for r in pipeline.stitcher.process_report()
                  if r["pid"] == pids["py-handoff"])
    assert not any(k.startswith("linked by thread") for k in counts), counts


def test_handoff_joined_by_a_forwarded_request_id(traced):
    sent, traces, pipeline, pids = traced
    ours = set(sent["py-handoff+rid"])
    linked = wrong = 0
    for p, c in links(traces):
        if p.kind == "server" and p.local.port == SERVICES["py-handoff"] and c.kind == "client":
            if nonce_of(p) in ours:
                linked += 1
                wrong += nonce_of(c) != nonce_of(p)
    assert wrong == 0
    counts = next(r["counts"] for r in pipeline.stitcher.process_report()
                  if r["pid"] == pids["py-handoff"])
    assert linked >= 0.9 * len(ours), \
        f"{linked} of {len(ours)} joined by X-Request-ID; decisions: {dict(counts)}"

