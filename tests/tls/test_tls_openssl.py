"""TLS plaintext from the system's libssl (bpf/tls.c) under the real probes: nginx with
HTTPS and curl -k, Python `ssl` (http.client to a Python TLS server), each compared with
the same request in clear text, client and server spans linked by the stitcher.

nginx starts before the tracer (a process whose libssl was mapped before the probes
existed), the Python server and every client after it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from agent.pipeline import Pipeline
from agent.probes import tls
from agent.probes.loader import ProbeConfig, SocketTracer
from proto.span import KIND_CLIENT, KIND_SERVER
from tests.e2e.conftest import PY, of, run_client, wait_tcp
from tests.helpers.netns import kill_group, network
from tests.helpers.nginx import nginx_conf

pytestmark = pytest.mark.kernel
CLIENT, SERVER = 0, 1
NGINX_TLS, NGINX_CLEAR, PY_TLS, PY_CLEAR = 443, 80, 8443, 8080
HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "programs")
BIG = 3000  # a response larger than the 1 KiB the probes capture


@pytest.fixture(scope="module")
def world():
    """Two namespaces, a self-signed certificate, nginx (TLS and clear) started before
    the tracer, then the tracer, then the Python servers (TLS and clear)."""
    tmp = tempfile.mkdtemp(prefix="zt-tls-")
    with network(2, subnet=233) as net:
        try:
            srv = net.hosts[SERVER]
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem",
                            "-days", "1", "-subj", "/CN=zerotrace-test"],
                           check=True, capture_output=True)
            os.makedirs(f"{tmp}/www")
            with open(f"{tmp}/www/file.txt", "w") as f:
                f.write("static " * 100)
            with open(f"{tmp}/www/big.bin", "wb") as f:
                f.write(b"b" * BIG)
            with open(f"{tmp}/nginx.conf", "w") as f:
                f.write(nginx_conf(
                    tmp, f"{srv.addr}:{NGINX_TLS} ssl",
                    server=f"listen {srv.addr}:{NGINX_CLEAR};\n"
                           f"ssl_certificate {tmp}/cert.pem;\n"
                           f"ssl_certificate_key {tmp}/key.pem;"))
            net.spawn(srv, "nginx", "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_tcp(srv, srv.addr, NGINX_TLS)
            wait_tcp(srv, srv.addr, NGINX_CLEAR)
            nginx_pid = int(open(f"{tmp}/nginx.pid").read())
            # a TLS connection opened (handshake, one request) before the tracer
            early = net.spawn(net.hosts[CLIENT], PY,
                              os.path.join(PROGRAMS, "keepalive_client.py"), srv.addr,
                              str(NGINX_TLS), "/file.txt", stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
            assert json.loads(early.stdout.readline()) == [200, 700]
            cfg = ProbeConfig(netns={h.inode for h in net.hosts})
            with SocketTracer(cfg) as tracer:
                server = os.path.join(PROGRAMS, "https_server.py")
                net.spawn(srv, PY, server, srv.addr, str(PY_TLS), f"{tmp}/cert.pem",
                          f"{tmp}/key.pem", stdout=subprocess.DEVNULL)
                net.spawn(srv, PY, server, srv.addr, str(PY_CLEAR), stdout=subprocess.DEVNULL)
                wait_tcp(srv, srv.addr, PY_TLS)
                wait_tcp(srv, srv.addr, PY_CLEAR)
                yield net, tracer, nginx_pid, early
        finally:
            for p in net.procs:
                kill_group(p)
            shutil.rmtree(tmp, ignore_errors=True)


LAST_STATS: dict = {}  # the assembler's counters of the last capture()


def capture(tracer: SocketTracer, action, want, timeout: float = 20.0):
    """Run action() with a fresh pipeline fed from tracer until want(spans) or timeout;
    then close the pipeline (the stitcher decides every span).  Returns (action's
    result, spans, span_id -> span of the traces emitted)."""
    tracer.poll(0.01)  # what earlier tests left in the ring is not ours
    p = Pipeline()
    spans, traced = [], {}
    p.on_span = lambda ctx: spans.append(ctx.span)
    p.on_trace_obj = lambda t: traced.update({s.span_id: s for s in t.spans})
    out = action()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want(spans):
        p.process(tracer.poll(0.05))
        p.tick()
    p.process(tracer.poll(0.05))
    p.close()
    LAST_STATS.clear()
    LAST_STATS.update(p.assembler.stats)
    return out, spans, traced


def pairs_of(spans, port):
    return of(spans, KIND_CLIENT, port, "http"), of(spans, KIND_SERVER, port, "http")


def shape(s):
    """What a span says about its request, independent of the connection."""
    return (s.kind, s.operation, s.status, s.status_code, s.req_bytes, s.resp_bytes,
            s.incomplete)


def assert_linked(client, server, traced, tls: bool = True) -> None:
    """The stitcher made the client span the server span's parent, by TCP seq."""
    assert server.span_id in traced and client.span_id in traced
    assert traced[server.span_id].parent_span_id == client.span_id, (
        server.attributes, client.attributes)
    assert server.trace_id == client.trace_id
    assert (client.req_seq, client.resp_seq) == (server.req_seq, server.resp_seq)
    assert client.start_ns <= server.start_ns <= server.end_ns <= client.end_ns
    # TLS plaintext spans say so (tls=true); clear-text spans never do
    assert client.attributes.get("tls", False) is tls
    assert server.attributes.get("tls", False) is tls


def curl(host, url):
    return run_client(host, "curl", "-k", "-s", "-o", "/dev/null", "-w", "%{http_code}", url)


def test_libssl_found(world):
    net, tracer, nginx_pid, _ = world
    libs = [lib for lib in tracer.tls.libraries.values() if lib.symbols]
    assert libs, [(lib.path, lib.error) for lib in tracer.tls.libraries.values()]
    assert {"SSL_read", "SSL_write"} <= set(libs[0].symbols)
    # nginx, running before the tracer, was found mapping one of them
    assert any(nginx_pid in lib.pids for lib in libs)
    # Debian 12's OpenSSL 3.0: read and write are probed on the internal functions the
    # wrappers call (agent/probes/tls.py INNER), each the target of a call in both
    # SSL_read and SSL_read_ex (SSL_write, SSL_write_ex) by objdump's own reading of
    # the file, and starting with a push (an instruction the kernel emulates)
    system = next(lib for lib in libs if lib.path == os.path.realpath(tls.system_libssl()[0]))
    assert set(system.inner) == {"read", "write"}, system.sites
    for kind, (ex, plain) in tls.INNER.items():
        addr = system.inner[kind]
        assert ("", addr) in system.sites
        assert not {plain, ex} & {sym for sym, _a in system.sites}  # not probed twice
        for sym in (ex, plain):
            assert addr in call_targets(system.path, sym), (kind, sym, hex(addr))
        first = tls.first_instruction(system.path, addr)
        assert 0x50 <= first[0] <= 0x57 or (first[0] == 0x41 and 0x50 <= first[1] <= 0x57), first


def call_targets(path: str, sym: str) -> set[int]:
    """The direct call/jmp targets in function sym of path, by objdump."""
    out = subprocess.run(["objdump", "-d", f"--disassemble={sym}", path], check=True,
                         capture_output=True, text=True).stdout
    got = set()
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[2].split()[:1] in (["call"], ["jmp"]):
            target = parts[2].split()[1]
            if all(c in "0123456789abcdef" for c in target):
                got.add(int(target, 16))
    return got


def test_public_symbols_fallback(world):
    """With the internal functions off (what an OpenSSL build the check refuses gets),
    the public symbols' probes give the same spans, linked."""
    net, tracer, _, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    tracer.tls.detach_all()
    tracer.tls.inner = False
    try:
        tracer.tls.reattach_all()
        system = next(lib for lib in tracer.tls.libraries.values()
                      if lib.path == os.path.realpath(tls.system_libssl()[0]))
        assert not system.inner and {("SSL_read", 0), ("SSL_write_ex", 0)} <= set(system.sites)

        def both():
            return (curl(cli, f"https://{srv.addr}:{NGINX_TLS}/file.txt").stdout,
                    run_client(cli, PY, os.path.join(PROGRAMS, "https_client.py"), "https",
                               srv.addr, str(PY_TLS), "/echo?n=2000").stdout)

        def want(ss):
            return all(len(x) >= 1 for port in (NGINX_TLS, PY_TLS) for x in pairs_of(ss, port))

        (code, _py), spans, traced = capture(tracer, both, want)
        assert code == "200"
        for port in (NGINX_TLS, PY_TLS):  # curl/nginx: SSL_read/SSL_write; Python: _ex
            (c,), (s,) = pairs_of(spans, port)
            assert_linked(c, s, traced)
    finally:
        tracer.tls.detach_all()
        tracer.tls.inner = True
        tracer.tls.reattach_all()


@pytest.mark.parametrize("path,code", [("/file.txt", "200"), ("/big.bin", "200"),
                                       ("/nothere", "404")])
def test_nginx_https_curl(world, path, code):
    net, tracer, _, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]

    def both():
        return (curl(cli, f"https://{srv.addr}:{NGINX_TLS}{path}").stdout,
                curl(cli, f"http://{srv.addr}:{NGINX_CLEAR}{path}").stdout)

    def want(ss):
        return all(len(x) >= 1 for port in (NGINX_TLS, NGINX_CLEAR) for x in pairs_of(ss, port))

    codes, spans, traced = capture(tracer, both, want)
    assert codes == (code, code)
    (tc,), (ts,) = pairs_of(spans, NGINX_TLS)
    (cc,), (cs,) = pairs_of(spans, NGINX_CLEAR)
    assert tc.operation == f"GET {path}" and tc.status_code == code
    assert tc.process == "curl" and ts.process == "nginx"
    # the same request and response as in clear text (nginx's headers differ in
    # nothing but the Date value, of the same length)
    assert shape(tc) == shape(cc) and shape(ts) == shape(cs)
    assert_linked(tc, ts, traced)
    assert_linked(cc, cs, traced, tls=False)
    st = tracer.tls_stats()
    assert st["tls_plaintext_events"] > 0 and st["tls_ciphertext_syscalls_skipped"] > 0
    # no ciphertext reached the parsers: every connection spoke HTTP
    assert LAST_STATS.get("conns_http", 0) >= 4 and \
        not LAST_STATS.get("unknown_protocol_conns"), \
        LAST_STATS


def test_python_ssl_http_client(world):
    """Three requests on one keep-alive TLS connection (http.client to a Python server
    started after the tracer), against the same in clear text."""
    net, tracer, _, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    paths = ["/echo?n=10", "/echo?n=2000", "/nothere"]
    client = os.path.join(PROGRAMS, "https_client.py")

    def both():
        return [json.loads(run_client(cli, PY, client, scheme, srv.addr, str(port),
                                      *paths).stdout)
                for scheme, port in (("https", PY_TLS), ("http", PY_CLEAR))]

    def want(ss):
        return all(len(x) >= 3 for port in (PY_TLS, PY_CLEAR) for x in pairs_of(ss, port))

    results, spans, traced = capture(tracer, both, want)
    assert results[0] == results[1] == [[200, 10], [200, 2000], [404, 9]]
    tcs, tss = pairs_of(spans, PY_TLS)
    ccs, css = pairs_of(spans, PY_CLEAR)
    assert [s.operation for s in tcs] == ["GET /echo", "GET /echo", "GET /nothere"]
    assert [s.status_code for s in tcs] == ["200", "200", "404"]
    assert [shape(s) for s in tcs] == [shape(s) for s in ccs]
    assert [shape(s) for s in tss] == [shape(s) for s in css]
    for c, s in zip(tcs, tss, strict=True):
        assert_linked(c, s, traced)
    # plaintext offsets: the second request starts where the first ended, in plaintext
    assert tcs[1].req_offset == tcs[0].req_bytes


def _wait_library(tracer: SocketTracer, path: str, timeout: float = 15.0):
    """Poll (the rescan runs from poll) until the file at path has probes."""
    st = os.stat(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lib = tracer.tls.libraries.get((st.st_dev, st.st_ino))
        if lib is not None and lib.symbols:
            return lib
        tracer.poll(0.1)
    raise AssertionError(f"{path} never got probes: {tracer.tls.libraries}")


def test_own_libssl_started_after_and_upgraded_on_disk(world, tmp_path):
    """A server loading its own copy of libssl (as a container would), started after
    the tracer: found by the rescan, its TLS traced and linked.  Then the file is
    replaced on disk while the server runs (an upgrade: a new inode): the running server
    stays traced on the old one, and a server started afterwards is found on the new."""
    net, tracer, _, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    system = [p for p in tracer.tls.libraries.values() if p.symbols][0].path
    libdir = tmp_path / "lib"
    libdir.mkdir()
    shutil.copy2(system, libdir / "libssl.so.3")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=own"],
                   check=True, capture_output=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
    server = os.path.join(PROGRAMS, "https_server.py")
    client = os.path.join(PROGRAMS, "https_client.py")

    def start(port):
        p = net.spawn(srv, PY, server, srv.addr, str(port), str(cert), str(key), env=env,
                      stdout=subprocess.DEVNULL)
        wait_tcp(srv, srv.addr, port)
        return p

    def request(port):
        def go():
            return json.loads(run_client(cli, PY, client, "https", srv.addr, str(port),
                                         "/echo?n=5").stdout)
        return capture(tracer, go, lambda ss: all(pairs_of(ss, port)))

    p1 = start(8444)
    old = _wait_library(tracer, str(libdir / "libssl.so.3"))
    assert p1.pid in old.pids
    for _ in range(2):  # before and after the upgrade on disk
        out, spans, traced = request(8444)
        assert out == [[200, 5]]
        (c,), (s,) = pairs_of(spans, 8444)
        assert (c.operation, s.operation, s.status_code) == ("GET /echo", "GET /echo", "200")
        assert_linked(c, s, traced)
        # the upgrade: a new file renamed over the old path (the running server keeps
        # the old inode mapped)
        shutil.copy2(system, libdir / "libssl.so.3.new")
        os.rename(libdir / "libssl.so.3.new", libdir / "libssl.so.3")
    p2 = start(8445)
    new = _wait_library(tracer, str(libdir / "libssl.so.3"))
    assert new.key != old.key and p2.pid in new.pids
    out, spans, traced = request(8445)
    (c,), (s,) = pairs_of(spans, 8445)
    assert_linked(c, s, traced)
    for p in (p1, p2):
        kill_group(p)


def test_connection_opened_before_the_tracer(world):
    """Requests on a TLS connection whose handshake the agent missed (opened before
    it): counted as such, parsed from the next request on, and linked, since both ends
    start their virtual seqs at the same ciphertext record (the first one each traced
    call carried)."""
    net, tracer, _, early = world
    before = tracer.tls_stats().get("tls_connections_midstream", 0)

    def go():
        out = []
        for path in ("/file.txt", "/nothere"):
            early.stdin.write(path + "\n")
            early.stdin.flush()
            out.append(json.loads(early.stdout.readline()))
        return out

    out, spans, traced = capture(tracer, go, lambda ss: all(len(x) >= 2 for x in
                                                            pairs_of(ss, NGINX_TLS)))
    assert [o[0] for o in out] == [200, 404] and out[0][1] == 700
    cs, ss = pairs_of(spans, NGINX_TLS)
    assert [s.operation for s in cs] == [s.operation for s in ss] == \
        ["GET /file.txt", "GET /nothere"]
    assert [s.status_code for s in ss] == ["200", "404"]
    assert all(s.attributes.get("zerotrace.midstream") for s in cs + ss)
    for c, s in zip(cs, ss, strict=True):
        assert_linked(c, s, traced)
    assert tracer.tls_stats()["tls_connections_midstream"] >= before + 2  # both ends
    # per process, for Prometheus: nginx's end of it, its handshake missed
    assert tracer.tls.process_counters()["connections_midstream"].get(("nginx",), 0) >= 1
