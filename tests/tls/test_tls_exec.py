"""Executables that carry their own TLS code, started after the tracer and short-lived,
under the real probes: the exec hook (bpf/tls.c zt_tls_exec, agent/probes/tls.py
ExecHook) stops a process of a file never seen before its first instruction, the agent
looks at the file and attaches, then lets it run.

- a C client with OpenSSL linked in (libssl.a, libcrypto.a): SSL_read/SSL_write found
  in the executable's own symbol table;
- a Go client (crypto/tls) making one HTTPS request and exiting, as a plain and as a
  PIE build; its second run is not stopped: the kernel gives it its offsets.
Each against a Python `ssl` server (the system libssl), client and server linked; the
per-process counters exported to Prometheus name the clients."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from agent.demo.services import go_binary
from agent.metrics import AgentMetrics
from agent.probes import gotls, tls
from agent.probes.loader import ProbeConfig, SocketTracer
from tests.e2e.conftest import PY, run_client, wait_tcp
from tests.helpers.netns import kill_group, network
from tests.tls.builds import PROGRAMS, static_client
from tests.tls.test_tls_openssl import assert_linked, capture, pairs_of

pytestmark = pytest.mark.kernel
CLIENT, SERVER = 0, 1
PY_TLS = 8453


@pytest.fixture(scope="module")
def world():
    # holding is opt-in (ZEROTRACE_TLS_HOLD=1; docs/tls.md): these tests are about it
    old = os.environ.get(tls.HOLD_ENV)
    os.environ[tls.HOLD_ENV] = "1"
    try:
        yield from _world()
    finally:
        if old is None:
            os.environ.pop(tls.HOLD_ENV, None)
        else:
            os.environ[tls.HOLD_ENV] = old


def _world():
    tmp = tempfile.mkdtemp(prefix="zt-tls-exec-")
    with network(2, subnet=243) as net:
        try:
            srv = net.hosts[SERVER]
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem",
                            "-days", "1", "-subj", "/CN=zerotrace-exec"],
                           check=True, capture_output=True)
            cfg = ProbeConfig(netns={h.inode for h in net.hosts})
            with SocketTracer(cfg) as tracer:
                assert tracer.tls.exec_hook is not None and tracer.tls.exec_hook.hold
                net.spawn(srv, PY, str(PROGRAMS / "https_server.py"), srv.addr, str(PY_TLS),
                          f"{tmp}/cert.pem", f"{tmp}/key.pem", stdout=subprocess.DEVNULL)
                wait_tcp(srv, srv.addr, PY_TLS)
                yield net, tracer, tmp
        finally:
            for p in net.procs:
                kill_group(p)
            shutil.rmtree(tmp, ignore_errors=True)


def one_request(tracer, net, argv):
    """Run argv on the client host (one HTTPS request to the Python server); returns
    (its output, the client span, the server span, the trace's spans by id)."""
    def go():
        return run_client(net.hosts[CLIENT], *argv)

    run, spans, traced = capture(tracer, go, lambda ss: all(pairs_of(ss, PY_TLS)))
    cs, ss = pairs_of(spans, PY_TLS)
    assert len(cs) == len(ss) == 1, ([(x.kind, x.process, x.operation) for x in spans],
                                     tracer.tls.exec_hook.stats, tracer.tls_stats())
    c, s = cs[0], ss[0]
    return run, c, s, traced


def test_statically_linked_openssl(world):
    net, tracer, tmp = world
    exe = static_client(tmp)
    # really static: no libssl.so among what it needs, SSL_read in its own symbols
    needed = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
    assert "libssl" not in needed and "libcrypto" not in needed, needed
    assert {"SSL_read", "SSL_write"} <= tls.static_ssl_symbols(exe)
    hook = tracer.tls.exec_hook
    held = hook.stats["execs_held"]
    for n in (5, 3000):  # the first run stopped at exec and looked at; the second not
        run, c, s, traced = one_request(
            tracer, net, [exe, net.hosts[SERVER].addr, str(PY_TLS), f"/echo?n={n}"])
        assert json.loads(run.stdout) == [200, n]
        assert (c.operation, s.operation, s.status_code) == ("GET /echo",) * 2 + ("200",)
        assert c.process == "static_client"
        assert_linked(c, s, traced)
    assert hook.stats["execs_held"] == held + 1, hook.stats
    st = os.stat(exe)
    lib = tracer.tls.libraries[(st.st_dev, st.st_ino)]
    assert lib.static and {"SSL_read", "SSL_write"} <= set(lib.symbols)
    # exported to Prometheus per process name
    got = tracer.tls.process_counters()
    assert got["plaintext_bytes"][("static_client", "ingress")] >= 3000
    assert got["plaintext_bytes"][("static_client", "egress")] >= 2 * len("GET /echo")
    assert got["connections"][("static_client",)] >= 2
    metrics = AgentMetrics()
    metrics.add_tls(tls.TlsCollector(tracer.tls.process_counters))
    text = generate_latest(metrics.registry).decode()
    assert 'zerotrace_tls_plaintext_bytes_total{direction="ingress",process="static_client"}' \
        in text
    assert 'zerotrace_tls_connections_total{process="static_client"}' in text
    assert 'zerotrace_tls_exec_events_total{event="execs_held"}' in text


def pie_goclient(out: str) -> str:
    src = Path(out) / "src-pie"
    src.mkdir()
    shutil.copy2(PROGRAMS / "goclient.go", src / "main.go")
    (src / "go.mod").write_text("module goclientpie\n\ngo 1.19\n")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off",
           "GO111MODULE": "on", "GOPATH": f"{out}/gopath",
           "GOCACHE": "/var/cache/zerotrace/demo/go-build-cache"}
    subprocess.run(["go", "build", "-buildmode=pie", "-o", f"{out}/goclient-pie", "."],
                   cwd=src, env=env, check=True, capture_output=True, timeout=600)
    return f"{out}/goclient-pie"


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain")
@pytest.mark.parametrize("pie", [False, True], ids=["exec", "pie"])
def test_short_lived_go_client(world, pie):
    """A Go client that makes one HTTPS request and exits, from a file the agent has
    never seen: traced from its first run (stopped at exec until probed), and its second
    run (not stopped: the kernel writes its offsets, the PIE's itab moved by its load
    bias) too."""
    net, tracer, tmp = world
    if pie:
        exe = pie_goclient(tmp)
    else:  # a copy: a file of its own (by inode), never seen
        exe = os.path.join(tmp, "goclient")
        shutil.copy2(go_binary(PROGRAMS / "goclient.go", "goclient"), exe)
    assert gotls.facts(exe)["pie"] is pie
    hook = tracer.tls.exec_hook
    held, kernel_given = hook.stats["execs_held"], hook.stats["execs_go"]
    times = []
    for n in (10, 2000):
        run, c, s, traced = one_request(
            tracer, net, [exe, f"https://{net.hosts[SERVER].addr}:{PY_TLS}/echo?n={n}"])
        out = run.json()
        assert (out["status"], out["len"]) == (200, n)
        times.append(out["ms"])
        assert (c.operation, s.operation, s.status_code) == ("GET /echo",) * 2 + ("200",)
        assert c.process == os.path.basename(exe)[:15]
        assert c.attributes.get("tls") is True
        assert_linked(c, s, traced)
    assert hook.stats["execs_held"] == held + 1, hook.stats
    assert hook.stats["execs_go"] == kernel_given + 1, hook.stats
    # short-lived: the program's own time from main to exit (the hold not included)
    assert min(times) < 1000, times
    print(f"goclient{' (PIE)' if pie else ''}: own wall time per run {times} ms")


def test_exec_hook_ends_with_the_tracer(tmp_path):
    """Closed probes leave no hook behind: the exec thread notices the cleanup, detaches
    the raw tracepoint and stops; a new executable then runs without any stop."""
    import time

    with SocketTracer(ProbeConfig(ports={1})) as tracer:
        hook = tracer.tls.exec_hook
        assert hook is not None and hook._thread.is_alive()
    hook._thread.join(timeout=5)
    assert not hook._thread.is_alive() and hook._fd == -1 and not hook._held
    exe = tmp_path / "true-copy"  # a file no hook has seen
    shutil.copy2("/bin/true", exe)
    t0 = time.monotonic()
    subprocess.run([str(exe)], check=True, timeout=10)
    assert time.monotonic() - t0 < 2
