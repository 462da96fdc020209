"""HTTP/1.1: nginx (static file) and a Python http.server in one namespace; curl and
http.client (several requests on one keep-alive connection) in another."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK, STATUS_UNSET
from tests.e2e.conftest import (
    CLIENT,
    PY,
    SERVER,
    assert_pair_timing,
    of,
    pair_by_seq,
    run_client,
    wait_tcp,
    within,
)
from tests.helpers.nginx import nginx_conf

pytestmark = pytest.mark.kernel
NGINX_PORT, PY_PORT = 80, 8080
BIG = 5000
HERE = os.path.dirname(os.path.abspath(__file__))



@pytest.fixture(scope="module")
def servers(net):
    host = net.hosts[SERVER]
    tmp = tempfile.mkdtemp(prefix="zt-e2e-http-")
    try:
        os.makedirs(f"{tmp}/www")
        with open(f"{tmp}/www/index.html", "w") as f:
            f.write("<h1>zerotrace</h1>\n")
        with open(f"{tmp}/www/file.txt", "w") as f:
            f.write("static " * 100)
        with open(f"{tmp}/www/big.bin", "wb") as f:
            f.write(b"b" * BIG)  # beyond the 1 KiB the probes capture
        with open(f"{tmp}/nginx.conf", "w") as f:
            f.write(nginx_conf(tmp, f"{host.addr}:{NGINX_PORT}"))
        net.spawn(host, "nginx", "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log",
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        net.spawn(host, PY, os.path.join(HERE, "clients", "http_server.py"), host.addr,
                  str(PY_PORT), stdout=subprocess.DEVNULL)
        wait_tcp(host, host.addr, NGINX_PORT)
        wait_tcp(host, host.addr, PY_PORT)
        yield host.addr
    finally:
        for p in list(net.procs[-2:]):
            from tests.helpers.netns import kill_group
            kill_group(p)
        shutil.rmtree(tmp, ignore_errors=True)


def curl(host, url: str):
    return run_client(host, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url)


@pytest.mark.parametrize("port,server_proc", [(NGINX_PORT, "nginx"), (PY_PORT, "python")])
def test_curl_static_and_404(net, sink, servers, port, server_proc):
    cli = net.hosts[CLIENT]
    path = "/file.txt" if port == NGINX_PORT else "/hello"
    runs = [(f"GET {path}", curl(cli, f"http://{servers}:{port}{path}"), "200"),
            ("GET /nothere", curl(cli, f"http://{servers}:{port}/nothere"), "404")]
    assert [r.stdout for _, r, _ in runs] == ["200", "404"]
    last = runs[-1][1]
    sink.wait_for(lambda s: s.operation == "GET /nothere" and within(s, last.t0, last.t1), 2)
    for op, run, code in runs:
        pairs = [(c, s) for c, s in pair_by_seq(sink.spans, port)
                 if within(c, run.t0, run.t1)]
        assert len(pairs) == 1, (op, [(s.kind, s.operation) for s in sink.spans])
        c, s = pairs[0]
        assert c.operation == s.operation == op
        assert c.protocol == s.protocol == "http"
        assert_pair_timing(c, s, run.t0, run.t1)
        assert c.process == "curl" and s.process.startswith(server_proc)
        assert c.status_code == s.status_code == code
        # OpenTelemetry: a 4xx is an error for the client, not for the server
        assert c.status == (STATUS_OK if code == "200" else STATUS_ERROR)
        assert s.status == (STATUS_OK if code == "200" else STATUS_UNSET)
        assert c.attributes.get("http.request.method") == "GET"
        assert str(c.attributes.get("http.response.status_code")) == code


@pytest.mark.parametrize("port", [NGINX_PORT, PY_PORT])
def test_keepalive_client_one_connection(net, sink, servers, port):
    paths = ["/index.html", "/big.bin", "/nothere", "/index.html"] if port == NGINX_PORT \
        else ["/hello", "/slow", "/nothere", "/hello"]
    run = run_client(net.hosts[CLIENT], PY, "-m", "tests.e2e.clients.http_client", servers,
                     str(port), *paths, cwd=os.getcwd())
    info = run.json()
    ops = info["ops"]
    assert len({o["sock"] for o in ops}) == 1  # one connection for every request
    assert [o["status"] for o in ops] == [200, 200, 404, 200]
    last = ops[-1]
    sink.wait_for(lambda s: s.protocol == "http" and within(s, last["t0"], last["t1"]), 2)
    conns = set()
    for o in ops:
        mine = [s for s in sink.spans if s.protocol == "http" and within(s, o["t0"], o["t1"])]
        client, server = of(mine, KIND_CLIENT, port), of(mine, KIND_SERVER, port)
        assert [s.operation for s in client] == [o["op"]], (o, [s.operation for s in mine])
        assert [s.operation for s in server] == [o["op"]]
        (c, s), = pair_by_seq(mine, port)
        assert_pair_timing(c, s, o["t0"], o["t1"], truncated_ok=o["op"] == "GET /big.bin")
        assert c.pid == info["pid"] and c.local.port == o["sock"] == s.remote.port
        assert c.status_code == s.status_code == str(o["status"])
        assert (c.status, s.status) == ((STATUS_OK, STATUS_OK) if o["status"] == 200
                                        else (STATUS_ERROR, STATUS_UNSET))
        assert c.trace_headers.get("x-request-id") == f"e2e-{o['op'].split()[1]}"
        assert s.trace_headers == c.trace_headers
        conns.add((c.local.port, s.local.port))
        if o["op"] == "GET /slow":  # the server's 20 ms shows on both sides
            assert s.duration_ns >= 20_000_000 and c.duration_ns >= s.duration_ns
        if o["op"] == "GET /big.bin":  # body past the capture: skipped by length
            assert o["size"] == BIG and c.resp_bytes == s.resp_bytes > BIG
    assert len(conns) == 1


def test_pipelined_requests_one_write(net, sink, servers):
    """Three GETs in one write to nginx: three client spans starting at that write,
    three server spans, each pair joined on its own req_seq.  The three responses
    together stay under the 1 KiB the probes capture per syscall: the client may read
    them with one recv, and a response head beyond the captured prefix is not seen."""
    paths = ["/index.html", "/nothere", "/index.html"]
    run = run_client(net.hosts[CLIENT], PY, "-m", "tests.e2e.clients.http_pipelined",
                     servers, str(NGINX_PORT), *paths, cwd=os.getcwd())
    info = run.json()
    o, = info["ops"]
    assert o["responses"] == 3
    sink.wait_for(lambda s: s.protocol == "http" and s.kind == KIND_CLIENT
                  and within(s, o["t0"], o["t1"]), 3)
    mine = [s for s in sink.spans if s.protocol == "http" and within(s, o["t0"], o["t1"])]
    client = sorted(of(mine, KIND_CLIENT, NGINX_PORT), key=lambda s: s.req_offset)
    assert [s.operation for s in client] == [f"GET {p}" for p in paths]
    assert len({s.start_ns for s in client}) == 1  # one write
    assert len({s.req_seq for s in client}) == 3
    pairs = pair_by_seq(mine, NGINX_PORT)
    assert sorted(c.operation for c, _ in pairs) == sorted(f"GET {p}" for p in paths)
    assert sum(c.resp_bytes for c, _ in pairs) < 1024
    for c, s in pairs:
        assert_pair_timing(c, s, o["t0"], o["t1"])
        assert c.local.port == o["sock"]
        assert c.status_code == s.status_code == ("404" if "nothere" in c.operation
                                                  else "200")
