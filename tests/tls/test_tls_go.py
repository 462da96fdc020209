"""Go crypto/tls plaintext (bpf/gotls.c, agent/probes/gotls.py) under the real probes:
a Go net/http HTTPS server and a Go client (one binary, tests/tls/programs/gotls.go,
built here with the Debian Go toolchain), each request compared with the same request
in clear text, client and server spans linked by the stitcher; curl (OpenSSL) to the Go
server and the Go client to a Python `ssl` server, so the virtual seqs of the two
implementations are checked to agree; a Go program without crypto/tls gets no probes;
a binary's probes go when its last process exits."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agent.demo.services import go_binary
from agent.probes import gotls
from agent.probes.loader import ProbeConfig, SocketTracer
from proto.span import KIND_CLIENT, KIND_SERVER
from tests.e2e.conftest import PY, of, run_client, wait_tcp
from tests.helpers.netns import kill_group, network
from tests.tls.test_tls_openssl import LAST_STATS, assert_linked, capture, pairs_of, shape

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain")]
CLIENT, SERVER = 0, 1
GO_TLS, GO_CLEAR, PY_TLS, GO_LATE, GO_PIE = 9443, 9080, 9444, 9445, 9446
PROGRAMS = Path(__file__).resolve().parent / "programs"
PATHS = ["/echo?n=10", "/echo?n=2000", "/nothere"]
# Go's 404 body is "404 page not found\n"
ANSWERS = [[200, 10], [200, 2000], [404, 19]]


def wait_probed(tracer: SocketTracer, pid: int, timeout: float = 30.0):
    """Poll (the scan runs from poll) until pid's executable has Go TLS probes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b in tracer.tls.go.attached():
            if pid in b.pids:
                return b
        tracer.poll(0.1)
    raise AssertionError(f"pid {pid} never probed: "
                         f"{[(b.path, b.error, b.pids) for b in tracer.tls.go.binaries.values()]}")


@pytest.fixture(scope="module")
def world():
    """Two namespaces, a certificate, the tracer, then the Go servers (TLS and clear)
    and a Python TLS server, all started after the tracer."""
    binary = str(go_binary(PROGRAMS / "gotls.go", "gotls"))
    tmp = tempfile.mkdtemp(prefix="zt-gotls-")
    with network(2, subnet=238) as net:
        try:
            srv = net.hosts[SERVER]
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem",
                            "-days", "1", "-subj", "/CN=zerotrace-go-test"],
                           check=True, capture_output=True)
            cfg = ProbeConfig(netns={h.inode for h in net.hosts})
            with SocketTracer(cfg) as tracer:
                tls_srv = net.spawn(srv, binary, "server", f"{srv.addr}:{GO_TLS}",
                                    f"{tmp}/cert.pem", f"{tmp}/key.pem",
                                    stdout=subprocess.DEVNULL)
                net.spawn(srv, binary, "server", f"{srv.addr}:{GO_CLEAR}",
                          stdout=subprocess.DEVNULL)
                net.spawn(srv, PY, str(PROGRAMS / "https_server.py"), srv.addr, str(PY_TLS),
                          f"{tmp}/cert.pem", f"{tmp}/key.pem", stdout=subprocess.DEVNULL)
                for port in (GO_TLS, GO_CLEAR, PY_TLS):
                    wait_tcp(srv, srv.addr, port)
                wait_probed(tracer, tls_srv.pid)
                yield net, tracer, binary, tmp
        finally:
            for p in net.procs:
                kill_group(p)
            shutil.rmtree(tmp, ignore_errors=True)


def in_order(pair):
    """(clients, servers), each in the order the requests were sent."""
    return tuple(sorted(x, key=lambda s: s.start_ns) for x in pair)


def go_client(host, binary, base):
    return json.loads(run_client(host, binary, "client", base, *PATHS).stdout)


def test_facts_of_the_go_binary(world):
    """Version, offsets and RET sites; the RETs are those Go's own disassembler lists."""
    _, tracer, binary, _ = world
    f = gotls.facts(binary)
    assert gotls.parse_version(f["version"]) >= (1, 17)
    # struct offsets are cached by toolchain and build settings: the same as this
    # binary's own DWARF says
    assert "GOARCH=amd64" in gotls.build_settings(binary)
    assert gotls._dwarf_offsets(binary) == f["offsets"]
    assert len(f["handshakes"]) == 2 and f["itab"]
    for key in ("conn_rawinput", "netfd_sysfd", "conn_hs", "buffer_off", "buffer_len",
                "input_len", "input_i"):
        assert key in f["offsets"]
    listing = subprocess.run(["go", "tool", "objdump", "-s",
                              r"^crypto/tls\.\(\*Conn\)\.(Read|Write)$", binary],
                             capture_output=True, text=True, check=True).stdout
    want: dict[str, list[int]] = {}
    fn = ""
    for line in listing.splitlines():
        if line.startswith("TEXT "):
            fn = line.split()[1].removesuffix("(SB)")
        elif line.split()[-1:] == ["RET"]:
            want.setdefault(fn, []).append(int(line.split()[1], 16) - f["syms"][fn])
    assert want == f["rets"] and len(want) == 2
    # the entry probes sit on the stack check's jump (the first instruction go tool
    # objdump lists as JBE, after CMPQ 0x10(R14)): Go 1.19's prologue has one in both
    jbe: dict[str, int] = {}
    for line in listing.splitlines():
        if line.startswith("TEXT "):
            fn = line.split()[1].removesuffix("(SB)")
        elif line.split()[3:4] == ["JBE"] and fn not in jbe:
            jbe[fn] = int(line.split()[1], 16) - f["syms"][fn]
    plan = gotls.probe_plan(binary, f)
    entries = {sym: (off, prog) for sym, off, prog in plan if prog != gotls.RET_PROGRAM}
    assert entries[gotls.WRITE] == (jbe[gotls.WRITE], "zt_gotls_write_sc")
    assert entries[gotls.READ] == (jbe[gotls.READ], "zt_gotls_read_sc")
    assert all(off > 0 and prog.endswith("_sc") for off, prog in entries.values())
    # Write, seen once a call at its entry, needs no RET probe; Read's RETs give n
    rets = [(sym, off) for sym, off, prog in plan if prog == gotls.RET_PROGRAM]
    assert rets == [(gotls.READ, off) for off in f["rets"][gotls.READ]]


@pytest.mark.parametrize("code,at", [
    (b"\x49\x3b\x66\x10\x76\x30", 4),                      # cmp ...,%rsp; jbe rel8
    (b"\x49\x3b\x66\x10\x0f\x86\x00\x01\x00\x00", 4),      # jbe rel32
    (b"\x4c\x8d\x64\x24\x98\x4d\x3b\x66\x10\x0f\x86", 9),  # lea disp8; cmp ...,%r12
    (b"\x4c\x8d\xa4\x24\xa8\xfe\xff\xff\x4d\x3b\x66\x10\x76\x10", 12),
    (b"\x4c\x8d\x64\x24\x98\x49\x3b\x66\x10\x76\x10", 0),  # lea, then cmp of %rsp
    (b"\x49\x3b\x66\x10\x74\x10", 0),                      # je: not the stack check
    (b"\x55\x48\x89\xe5", 0),                                # no stack check (NOSPLIT)
])
def test_stack_check_jump(code, at):
    assert gotls.stack_check_jump(code + b"\x90" * 8) == at


def test_go_client_to_go_server(world):
    """Three requests on one keep-alive TLS connection, against the same in clear text:
    the same spans, the TLS ones in plaintext, tls=true, client and server linked."""
    net, tracer, binary, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    before = tracer.tls_stats()

    def both():
        return [go_client(cli, binary, f"{scheme}://{srv.addr}:{port}")
                for scheme, port in (("https", GO_TLS), ("http", GO_CLEAR))]

    def want(ss):
        return all(len(x) >= 3 for port in (GO_TLS, GO_CLEAR) for x in pairs_of(ss, port))

    results, spans, traced = capture(tracer, both, want)
    assert results == [ANSWERS, ANSWERS]
    tcs, tss = in_order(pairs_of(spans, GO_TLS))
    ccs, css = in_order(pairs_of(spans, GO_CLEAR))
    assert [s.operation for s in tcs] == ["GET /echo", "GET /echo", "GET /nothere"]
    assert [s.status_code for s in tss] == ["200", "200", "404"]
    assert [shape(s) for s in tcs] == [shape(s) for s in ccs]
    assert [shape(s) for s in tss] == [shape(s) for s in css]
    for c, s in zip(tcs, tss, strict=True):
        assert_linked(c, s, traced)
    for c, s in zip(ccs, css, strict=True):
        assert_linked(c, s, traced, tls=False)
    assert tcs[1].req_offset == tcs[0].req_bytes  # plaintext offsets
    after = tracer.tls_stats()
    assert after["tls_plaintext_events"] > before.get("tls_plaintext_events", 0)
    # the Go sockets' ciphertext was skipped in the kernel, not parsed
    assert after["tls_ciphertext_syscalls_skipped"] > before.get(
        "tls_ciphertext_syscalls_skipped", 0)
    assert LAST_STATS.get("conns_http", 0) >= 4 and not LAST_STATS.get(
        "unknown_protocol_conns"), LAST_STATS


def test_openssl_and_go_ends_link(world):
    """curl (OpenSSL) to the Go server, and the Go client to a Python `ssl` server:
    the two implementations' virtual seqs agree, so their spans link."""
    net, tracer, binary, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]

    def both():
        code = run_client(cli, "curl", "--http1.1", "-k", "-s", "-o", "/dev/null", "-w",
                          "%{http_code}",
                          f"https://{srv.addr}:{GO_TLS}/echo?n=5").stdout
        return code, go_client(cli, binary, f"https://{srv.addr}:{PY_TLS}")

    def want(ss):
        return len(pairs_of(ss, GO_TLS)[1]) >= 1 and len(pairs_of(ss, PY_TLS)[1]) >= 3

    (code, py), spans, traced = capture(tracer, both, want)
    assert code == "200" and py == [[200, 10], [200, 2000], [404, 9]]
    (c,), (s,) = pairs_of(spans, GO_TLS)
    assert (c.process, c.operation, s.status_code) == ("curl", "GET /echo", "200")
    assert_linked(c, s, traced)
    cs, ss = in_order(pairs_of(spans, PY_TLS))
    assert [x.operation for x in cs] == ["GET /echo", "GET /echo", "GET /nothere"]
    for c, s in zip(cs, ss, strict=True):
        assert_linked(c, s, traced)


def test_go_without_crypto_tls_gets_no_probes(world):
    net, tracer, _, _ = world
    srv = net.hosts[SERVER]
    plain = str(go_binary(PROGRAMS / "goplain.go", "goplain"))
    p = net.spawn(srv, plain, f"{srv.addr}:9099", stdout=subprocess.DEVNULL)
    try:
        wait_tcp(srv, srv.addr, 9099)
        st = os.stat(plain)
        deadline = time.monotonic() + 30
        b = None
        while time.monotonic() < deadline and b is None:
            tracer.poll(0.1)
            b = tracer.tls.go.binaries.get((st.st_dev, st.st_ino))
        assert b is not None and b.error == "no crypto/tls" and not b.probes
        assert p.pid not in [k.value for k in tracer._bpf[b"gotls_procs"].keys()]
    finally:
        kill_group(p)


def test_probes_detached_when_the_last_process_exits(world, tmp_path):
    """A copy of the binary (a file of its own) started after the tracer: probed, its
    TLS traced; killed: its probes and its process entry go at the next scan."""
    net, tracer, binary, tmp = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    tracer.tls.go.detach_grace_s = 0  # at once (the agent waits DETACH_GRACE_S)
    copy = tmp_path / "gotls-copy"
    shutil.copy2(binary, copy)
    p = net.spawn(srv, str(copy), "server", f"{srv.addr}:{GO_LATE}", f"{tmp}/cert.pem",
                  f"{tmp}/key.pem", stdout=subprocess.DEVNULL)
    wait_tcp(srv, srv.addr, GO_LATE)
    b = wait_probed(tracer, p.pid)
    assert b.shown_as.endswith("gotls-copy") and b.probes
    # bcc's name for each of its uprobes holds the path they were attached by
    tag = re.sub(r"[^a-zA-Z0-9_]", "_", b.path)
    assert sum(tag in k.decode() for k in tracer._bpf.uprobe_fds) == len(b.probes)
    out, spans, traced = capture(
        tracer, lambda: go_client(cli, binary, f"https://{srv.addr}:{GO_LATE}"),
        lambda ss: len(pairs_of(ss, GO_LATE)[1]) >= 3)
    assert out == ANSWERS
    cs, ss = in_order(pairs_of(spans, GO_LATE))
    assert [x.status_code for x in ss] == ["200", "200", "404"]
    for c, s in zip(cs, ss, strict=True):
        assert_linked(c, s, traced)
    kill_group(p)
    p.wait(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and b.probes:
        tracer.poll(0.1)
    assert not b.probes
    # really gone from the kernel, though the process that showed the file is gone
    assert not any(tag in k.decode() for k in tracer._bpf.uprobe_fds)
    assert p.pid not in [k.value for k in tracer._bpf[b"gotls_procs"].keys()]
    # the original file, still running, keeps its offsets by address (the copy's
    # functions sat at the same addresses): a client started now is traced at once
    # the entry probe's address: at the stack check's jump (gotls.probe_plan)
    read_at = next(gotls.facts(binary)["syms"][sym] + off
                   for sym, off, fn in gotls.probe_plan(binary, gotls.facts(binary))
                   if sym == gotls.READ and fn != gotls.RET_PROGRAM)
    assert read_at in [k.value for k in tracer._bpf[b"gotls_addrs"].keys()]
    tracer.tls.go.detach_grace_s = gotls.DETACH_GRACE_S


def test_http2_over_go_tls(world):
    """HTTP/2 (ALPN h2) between the Go client and the Go server, and from curl: the
    HTTP/2 parser reads the plaintext frames; the spans link."""
    net, tracer, binary, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    env = {**os.environ, "GOTLS_H2": "1"}

    def both():
        r = run_client(cli, binary, "client", f"https://{srv.addr}:{GO_TLS}", *PATHS, env=env)
        code = run_client(cli, "curl", "--http2", "-k", "-s", "-o", "/dev/null", "-w",
                          "%{http_version} %{http_code}",
                          f"https://{srv.addr}:{GO_TLS}/echo?n=7").stdout
        return json.loads(r.stdout), r.stderr.split(), code

    def want(ss):
        return len(of(ss, KIND_CLIENT, GO_TLS)) >= 4 and len(of(ss, KIND_SERVER, GO_TLS)) >= 4

    (out, protos, code), spans, traced = capture(tracer, both, want)
    assert out == ANSWERS and protos == ["h2"] * 3 and code == "2 200"
    cs, ss = in_order((of(spans, KIND_CLIENT, GO_TLS), of(spans, KIND_SERVER, GO_TLS)))
    assert {s.protocol for s in cs + ss} <= {"http2", "grpc"}, [s.protocol for s in cs]
    assert [s.operation for s in cs] == ["GET /echo", "GET /echo", "GET /nothere",
                                         "GET /echo"], ([(s.kind, s.protocol, s.process,
                                                          s.operation) for s in spans],
                                                        LAST_STATS, tracer.tls_stats())
    assert cs[-1].process == "curl"
    assert [s.status_code for s in ss] == ["200", "200", "404", "200"]
    for c, s in zip(cs, ss, strict=True):
        assert_linked(c, s, traced)


def test_concurrent_go_clients(world):
    """Six Go clients at once (one connection each, three requests): every request's
    client and server spans are linked, none to another's."""
    net, tracer, binary, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    n = 6

    def many():
        procs = [subprocess.Popen(cli.cmd(binary, "client", f"https://{srv.addr}:{GO_TLS}",
                                          f"/echo?n={100 + i}", f"/echo?n={200 + i}",
                                          f"/echo?n={300 + i}"),
                                  stdout=subprocess.PIPE, text=True) for i in range(n)]
        return [json.loads(p.communicate(timeout=60)[0]) for p in procs]

    out, spans, traced = capture(tracer, many,
                                 lambda ss: all(len(x) >= 3 * n for x in pairs_of(ss, GO_TLS)))
    assert out == [[[200, 100 + i], [200, 200 + i], [200, 300 + i]] for i in range(n)]
    cs, ss = pairs_of(spans, GO_TLS)
    assert len(cs) == len(ss) == 3 * n
    by_id = {c.span_id: c for c in cs}
    for s in ss:
        c = by_id[traced[s.span_id].parent_span_id]
        # the body length the server answered is the one the client asked for
        assert c.resp_bytes == s.resp_bytes and (c.req_seq, c.resp_seq) == (s.req_seq,
                                                                             s.resp_seq)
        assert s.attributes.get("tls") is True
    assert len({traced[s.span_id].parent_span_id for s in ss}) == 3 * n


def test_tls12_go_client(world):
    """TLS 1.2 (AES-GCM records: an explicit nonce before the ciphertext) from the Go
    client to the Go server and to the Python `ssl` server: linked like TLS 1.3."""
    net, tracer, binary, _ = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    env = {**os.environ, "GOTLS_TLS12": "1"}

    def both():
        return [json.loads(run_client(cli, binary, "client", f"https://{srv.addr}:{port}",
                                      *PATHS, env=env).stdout) for port in (GO_TLS, PY_TLS)]

    def want(ss):
        return all(len(x) >= 3 for port in (GO_TLS, PY_TLS) for x in pairs_of(ss, port))

    out, spans, traced = capture(tracer, both, want)
    assert out == [ANSWERS, [[200, 10], [200, 2000], [404, 9]]]
    for port in (GO_TLS, PY_TLS):
        cs, ss = in_order(pairs_of(spans, port))
        assert [s.status_code for s in ss] == ["200", "200", "404"]
        for c, s in zip(cs, ss, strict=True):
            assert_linked(c, s, traced)


def pie_binary(out: Path) -> str:
    """gotls.go built as a position-independent executable (loaded at a random base)."""
    src = out / "src"
    src.mkdir()
    shutil.copy2(PROGRAMS / "gotls.go", src / "main.go")
    (src / "go.mod").write_text("module gotlspie\n\ngo 1.19\n")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off",
           "GO111MODULE": "on", "GOPATH": str(out / "gopath"),
           "GOCACHE": "/var/cache/zerotrace/demo/go-build-cache"}
    subprocess.run(["go", "build", "-buildmode=pie", "-o", str(out / "gotls-pie"), "."],
                   cwd=src, env=env, check=True, capture_output=True, timeout=600)
    return str(out / "gotls-pie")


def test_pie_go_server(world, tmp_path):
    """A PIE build of the server: offsets per process, the itab's address moved by the
    load bias; its spans link with the (non-PIE) Go client's."""
    net, tracer, binary, tmp = world
    cli, srv = net.hosts[CLIENT], net.hosts[SERVER]
    pie = pie_binary(tmp_path)
    f = gotls.facts(pie)
    assert f["pie"]
    p = net.spawn(srv, pie, "server", f"{srv.addr}:{GO_PIE}", f"{tmp}/cert.pem",
                  f"{tmp}/key.pem", stdout=subprocess.DEVNULL)
    try:
        wait_tcp(srv, srv.addr, GO_PIE)
        wait_probed(tracer, p.pid)
        leaf = tracer._bpf[b"gotls_procs"][tracer._bpf[b"gotls_procs"].Key(p.pid)]
        assert leaf.itab != f["itab"]  # loaded elsewhere than linked
        out, spans, traced = capture(
            tracer, lambda: go_client(cli, binary, f"https://{srv.addr}:{GO_PIE}"),
            lambda ss: all(len(x) >= 3 for x in pairs_of(ss, GO_PIE)))
        assert out == ANSWERS
        cs, ss = in_order(pairs_of(spans, GO_PIE))
        assert [s.status_code for s in ss] == ["200", "200", "404"]
        for c, s in zip(cs, ss, strict=True):
            assert_linked(c, s, traced)
    finally:
        kill_group(p)


def test_stripped_go_binary_refused(world):
    """A stripped build (no symbols, no DWARF): refused with the reason, no probes, and
    the program runs unharmed."""
    net, tracer, _, tmp = world
    srv = net.hosts[SERVER]
    stripped = str(go_binary(PROGRAMS / "gotls.go", "gotls", "-s -w"))
    with pytest.raises(gotls.GoTlsError, match="stripped"):
        gotls.facts(stripped)
    p = net.spawn(srv, stripped, "server", f"{srv.addr}:9447", f"{tmp}/cert.pem",
                  f"{tmp}/key.pem", stdout=subprocess.DEVNULL)
    try:
        wait_tcp(srv, srv.addr, 9447)
        st = os.stat(stripped)
        deadline = time.monotonic() + 30
        b = None
        while time.monotonic() < deadline and b is None:
            tracer.poll(0.1)
            b = tracer.tls.go.binaries.get((st.st_dev, st.st_ino))
        assert b is not None and "stripped" in b.error and not b.probes, b
        r = run_client(net.hosts[CLIENT], "curl", "--http1.1", "-k", "-s",
                       f"https://{srv.addr}:9447/echo?n=3")
        assert r.stdout == "xxx"
    finally:
        kill_group(p)
