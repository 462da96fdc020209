"""Real reverse proxies under concurrent load, traced by the real probes: haproxy (event
loop, threads, backend connections reused across requests) and nginx (one worker, an
upstream keep-alive pool) in front of the same backend.  Each request carries a nonce
in its path, which the proxy forwards: every link the stitcher makes, inside the proxy
(its server span -> its client span) and across processes (its client span -> the
backend's server span), is checked against it.  No wrong parent, ever; how many links
are made is measured and must not collapse."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from proto.span import PARENT_UNKNOWN
from tests.helpers.netns import network
from tests.helpers.nginx import nginx_conf
from tests.helpers.tracing import Draining
from tests.stitch.hops import HERE, hop_links, load, nonce_of, wait_ready

pytestmark = pytest.mark.kernel
BACKEND = 9200
PROXIES = {"haproxy": 9201, "nginx": 9202}
REQUESTS, CONCURRENCY = 160, 8


def haproxy_conf(listen: int, backend: int) -> str:
    # Two threads (haproxy's default on this 2-CPU machine), backend connections kept
    # alive and shared between client connections ("http-reuse always").
    return f"""global
    nbthread 2
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    http-reuse always
frontend fe
    bind 127.0.0.1:{listen}
    default_backend be
backend be
    server s1 127.0.0.1:{backend}
"""


def wait_port(host, port: int, proc: subprocess.Popen, name: str) -> None:
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=0.5).close()"
    deadline = time.monotonic() + 20
    while subprocess.run(host.cmd(sys.executable, "-c", code), capture_output=True).returncode:
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{name} did not start listening on {port}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("proxies"))
    os.makedirs(f"{tmp}/www", exist_ok=True)
    with open(f"{tmp}/haproxy.cfg", "w") as f:
        f.write(haproxy_conf(PROXIES["haproxy"], BACKEND))
    upstream = f"upstream be {{ server 127.0.0.1:{BACKEND}; keepalive 16; }}"
    location = ("location / { proxy_pass http://be; proxy_http_version 1.1; "
                "proxy_set_header Connection \"\"; }")
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(nginx_conf(tmp, f"127.0.0.1:{PROXIES['nginx']}", http=upstream,
                           server=location))
    with network(1, subnet=234) as net:
        host = net.hosts[0]
        backend = net.spawn(host, sys.executable, f"{HERE}/backend.py", str(BACKEND),
                            stdout=subprocess.PIPE, text=True)
        wait_ready(backend, "backend")
        procs = {
            "haproxy": net.spawn(host, "haproxy", "-db", "-f", f"{tmp}/haproxy.cfg",
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "nginx": net.spawn(host, "nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        }
        for name, p in procs.items():
            wait_port(host, PROXIES[name], p, name)
        pipeline = Pipeline()
        traces: list = []
        pipeline.on_trace_obj = traces.append
        with SocketTracer(ProbeConfig(netns={host.inode})) as tracer:
            with Draining([(tracer, pipeline)], settle_s=2.5):
                sent = {name: load(host, port, REQUESTS, CONCURRENCY)
                        for name, port in PROXIES.items()}
            # what a failure needs to be read: the stitcher's decisions and the ring's
            counts = {**pipeline.stitcher.stats, **tracer.drops(), **tracer.stats()}
        yield sent, traces, counts


def _check(traced, proxy: str) -> tuple[int, int, int, int]:
    sent, traces, _counts = traced
    return hop_links(traces, set(sent[proxy]), PROXIES[proxy], BACKEND)


def _unjoined(traced, proxy: str) -> str:
    """Why the proxy's forwarded requests that found no backend parent did not: the
    backend's span missing, or present with what the stitcher said of its parent."""
    sent, traces, counts = traced
    ours = set(sent[proxy])
    spans = [s for tr in traces for s in tr.spans if nonce_of(s) in ours]
    by_id = {s.span_id: s for s in spans}
    calls = {nonce_of(s): s for s in spans
             if s.kind == "client" and s.remote.port == BACKEND}
    why: Counter = Counter()
    for s in spans:
        if s.kind != "server" or s.local.port != BACKEND:
            continue
        p = by_id.get(s.parent_span_id)
        if p is not None and p.kind == "client":
            continue
        call = calls.get(nonce_of(s))
        gap = "no proxy call" if call is None else \
            f"call ends {(call.end_ns - s.end_ns) / 1e6:.0f} ms after"
        why[f"{s.attributes.get(PARENT_UNKNOWN, 'root')} ({gap})"[:120]] += 1
    served = {nonce_of(s) for s in spans if s.kind == "server" and s.local.port == BACKEND}
    why["no backend span"] = len(ours - served)
    return f"{dict(why.most_common(6))}; counts {counts}"


@pytest.mark.parametrize("proxy", list(PROXIES))
def test_proxy_links_are_never_wrong(traced, proxy):
    inside, inside_wrong, cross, cross_wrong = _check(traced, proxy)
    print(f"{proxy}: {inside} proxy server->client links ({inside_wrong} wrong), "
          f"{cross} client->backend links ({cross_wrong} wrong) of {REQUESTS} requests")
    assert inside_wrong == 0 and cross_wrong == 0


@pytest.mark.parametrize("proxy", list(PROXIES))
def test_proxy_spans_on_both_sides(traced, proxy):
    sent, traces, _counts = traced
    ours = set(sent[proxy])
    port = PROXIES[proxy]
    spans = [s for tr in traces for s in tr.spans if nonce_of(s) in ours]
    served = {nonce_of(s) for s in spans if s.kind == "server" and s.local.port == port}
    forwarded = {nonce_of(s) for s in spans if s.kind == "client" and s.remote.port == BACKEND}
    assert len(served) >= 0.9 * len(ours), f"{len(served)} proxy server spans"
    assert len(forwarded) >= 0.9 * len(ours), f"{len(forwarded)} proxy client spans"


@pytest.mark.parametrize("proxy", list(PROXIES))
def test_client_side_joins_the_backend(traced, proxy):
    # Across processes the key is the connection and its stream offsets, not a guess:
    # nearly every forwarded request must find the backend's server span.
    _inside, _w, cross, _cw = _check(traced, proxy)
    assert cross >= 0.9 * REQUESTS, \
        f"{cross} of {REQUESTS} joined to the backend: {_unjoined(traced, proxy)}"


@pytest.mark.parametrize("proxy", list(PROXIES))
def test_proxy_links_most_requests_inside(traced, proxy):
    # Several requests are in flight on each proxy thread at once, so the thread alone
    # is ambiguous; the forwarded path repeats the request's token, which is evidence
    # when exactly one open request holds it.
    # Usually 160/160; once 104/160 for nginx in a full CI run (2026-11-27, not
    # reproduced alone, under CPU hogs or in tests/stitch as a whole): links refused
    # rather than guessed, which is allowed; wrong links are tested above, strictly.
    inside, _w, _c, _cw = _check(traced, proxy)
    assert inside >= 0.6 * REQUESTS, f"{inside} of {REQUESTS} linked inside {proxy}"
