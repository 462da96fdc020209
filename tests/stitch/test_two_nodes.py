"""Two agents standing for two nodes, one server: a request that crosses the nodes is
one trace when asked for, joined by the server from the two agents' fragments (the
client span on node A and the server span on node B share TCP sequence numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agent.export import BatchExporter, GrpcSpanExporter
from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.helpers.netns import network
from tests.helpers.tracing import Draining

pytestmark = pytest.mark.kernel
HERE = os.path.join(os.path.dirname(__file__), "services")
ZT = [sys.executable, "-m", "agent.cli"]

FRONT = """
import sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with urllib.request.urlopen("http://%s:9200/down" + self.path) as r:
            body = r.read()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("0.0.0.0", 9201), H)
print("ready", flush=True)
srv.serve_forever()
"""




SERVICE_IP = "10.96.0.10"  # a Kubernetes-style Service address, DNAT'ed on node A


@pytest.mark.parametrize("via", ["direct", "dnat"])
def test_a_trace_across_two_nodes_is_returned_whole(zt_server, via):
    # "dnat": node A calls a Service address that its netfilter rewrites to node B (as
    # kube-proxy does), so A's socket names the Service and B's names A: the tuples do
    # not mirror, and only the sequence numbers of both directions join the halves.
    server = zt_server
    with network(2, subnet=236 if via == "dnat" else 234) as net:
        a, b = net.hosts
        back = net.spawn(b, sys.executable, f"{HERE}/backend.py", "9200", "0.0.0.0",
                         stdout=subprocess.PIPE, text=True)
        target = b.addr
        if via == "dnat":
            # A route for the Service range first (locally sent packets are routed
            # before OUTPUT's DNAT), as a node's default route would give.
            dev = subprocess.run(a.cmd("ip", "-o", "-4", "addr", "show"), capture_output=True,
                                 text=True, check=True).stdout
            dev = next(ln.split()[1] for ln in dev.splitlines() if f" {a.addr}/" in ln)
            subprocess.run(a.cmd("ip", "route", "add", "10.96.0.0/12", "dev", dev), check=True)
            subprocess.run(a.cmd("iptables", "-t", "nat", "-A", "OUTPUT", "-d", SERVICE_IP,
                                 "-p", "tcp", "--dport", "9200", "-j", "DNAT",
                                 "--to-destination", f"{b.addr}:9200"), check=True)
            target = SERVICE_IP
        front = net.spawn(a, sys.executable, "-c", FRONT % target, stdout=subprocess.PIPE,
                          text=True)
        assert "ready" in back.stdout.readline() and "ready" in front.stdout.readline()
        agents = []
        for name, host in (("node-a", a), ("node-b", b)):
            tracer = SocketTracer(ProbeConfig(netns={host.inode}))
            p = Pipeline(agent_name=name)
            exp = BatchExporter(GrpcSpanExporter(server, agent=name))
            p.exporters.append(("server", exp))
            agents.append((tracer, p))
        nonces = [f"n{i:016x}" for i in range(5)]
        with Draining(agents, settle_s=2.0):
            for n in nonces:
                subprocess.run(a.cmd("curl", "-sf", f"http://127.0.0.1:9201/{n}"), check=True,
                               capture_output=True, timeout=10)
        for tracer, _p in agents:
            tracer.close()
    rows = json.loads(subprocess.run(
        ZT + ["traces", "--server", server, "--limit", "50", "-o", "json"],
        capture_output=True, text=True, check=True, timeout=60).stdout)
    assert rows, "no trace reached the server"
    whole = 0
    for r in rows:
        tr = json.loads(subprocess.run(
            ZT + ["trace", r["trace_id"], "--server", server, "-o", "json"],
            capture_output=True, text=True, check=True, timeout=60).stdout)
        spans = tr["spans"]
        agents_seen = {s["agent"] for s in spans}
        # span names are route-folded at export: the request's path is in url.path
        ops = [f'{s["operation"]} {s["attributes"].get("url.path", "")}' for s in spans]
        if agents_seen == {"node-a", "node-b"}:
            whole += 1
            # one nonce per trace, on both nodes
            ns = {n for n in nonces if any(n in o for o in ops)}
            assert len(ns) == 1, ops
            ids = {s["span_id"]: s for s in spans}
            for s in spans:
                if s["agent"] == "node-b" and s["kind"] == "server":
                    parent = ids.get(s["parent_span_id"])
                    assert parent is not None and parent["agent"] == "node-a"
                    assert parent["kind"] == "client"
    assert whole >= 4, f"only {whole} of 5 requests came back whole across the two nodes"
