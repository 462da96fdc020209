"""An OpenTelemetry-instrumented service among uninstrumented ones: its SDK spans (sent
as OTLP to the server) and the eBPF spans of the same request share one trace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent.export import BatchExporter, GrpcSpanExporter
from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.helpers.tracing import Draining

pytestmark = pytest.mark.kernel
HERE = os.path.join(os.path.dirname(__file__), "services")
ZT = [sys.executable, "-m", "agent.cli"]




def zt_json(*args: str):
    return json.loads(subprocess.run(ZT + list(args) + ["-o", "json"], capture_output=True,
                                     text=True, check=True, timeout=60).stdout)


def test_sdk_spans_and_ebpf_spans_share_the_trace(zt_server):
    server = zt_server
    procs = [
        subprocess.Popen([sys.executable, f"{HERE}/backend.py", "9300"],
                         start_new_session=True, stdout=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, f"{HERE}/otel_service.py", "9301",
                          "http://127.0.0.1:9300", f"http://{server}"],
                         start_new_session=True, stdout=subprocess.PIPE, text=True)]
    try:
        for p in procs:
            assert "ready" in p.stdout.readline()
        # Scoped by the services' ports: the SDK's own OTLP export is not traced.
        tracer = SocketTracer(ProbeConfig(ports={9300, 9301}))
        pipeline = Pipeline(agent_name="node-1")
        pipeline.exporters.append(("server", BatchExporter(GrpcSpanExporter(server))))
        nonces = [f"n{i:016x}" for i in range(4)]
        with Draining([(tracer, pipeline)], settle_s=2.5):
            for n in nonces:
                subprocess.run(["curl", "-sf", f"http://127.0.0.1:9301/{n}"], check=True,
                               capture_output=True, timeout=15)
        tracer.close()
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    time.sleep(1.0)
    shared = 0
    for r in zt_json("traces", "--server", server, "--limit", "50"):
        spans = zt_json("trace", r["trace_id"], "--server", server)["spans"]
        sources = {s["source"] for s in spans}
        if {"A", "S"} <= sources:
            shared += 1
            # span names are route-folded at export: the path is in url.path
            ops = " ".join(f'{s["operation"]} {s["attributes"].get("url.path", "")}'
                           for s in spans)
            assert sum(n in ops for n in nonces) == 1  # one request per trace
            backend = [s for s in spans if s["source"] == "S" and s["kind"] == "server"
                       and s["local"]["port"] == 9300]
            assert backend and backend[0]["trace_id"] == r["trace_id"]
    assert shared >= 3, f"only {shared} of 4 requests had SDK and eBPF spans together"
