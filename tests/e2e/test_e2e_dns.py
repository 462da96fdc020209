"""DNS: dnsmasq in one namespace answering over UDP and TCP; dig and dnspython in
another."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK
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
from tests.helpers.netns import kill_group

pytestmark = pytest.mark.kernel
PORT = 53
ANSWER = "10.231.0.9"


@pytest.fixture(scope="module")
def dns_server(net):
    if shutil.which("dig") is None:
        pytest.fail("dig is missing: install dnsutils (scripts/setup.sh does)")
    host = net.hosts[SERVER]
    tmp = tempfile.mkdtemp(prefix="zt-e2e-dns-")
    proc = None
    try:
        proc = net.spawn(host, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                         "--conf-file=/dev/null", f"--address=/x.test/{ANSWER}",
                         f"--port={PORT}", f"--listen-address={host.addr}",
                         "--bind-interfaces", f"--pid-file={tmp}/pid", "--user=root",
                         "--log-facility=-", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        wait_tcp(host, host.addr, PORT)
        time.sleep(0.1)
        yield host.addr
    finally:
        if proc is not None:
            kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def dns_pairs(spans, run_t0, run_t1, transport, by_port: bool = True):
    """(client, server) spans of one DNS exchange window: TCP joins on req_seq; UDP has
    no sequence numbers, so on the query and (by_port) the client's port."""
    mine = [s for s in spans if s.protocol == "dns" and s.transport == transport
            and within(s, run_t0, run_t1)]
    if transport == "tcp":
        return pair_by_seq(mine, PORT)
    servers = of(mine, KIND_SERVER, PORT)
    return [(c, s) for c in of(mine, KIND_CLIENT, PORT) for s in servers
            if s.operation == c.operation and (not by_port or s.remote.port == c.local.port)]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dig(net, sink, dns_server, transport):
    cli = net.hosts[CLIENT]
    flags = ["+tcp"] if transport == "tcp" else ["+notcp"]
    runs = [("A www.x.test", run_client(cli, "dig", f"@{dns_server}", *flags, "+tries=1",
                                       "+time=3", "www.x.test", "A"), "NOERROR"),
            ("A nothere.invalid", run_client(cli, "dig", f"@{dns_server}", *flags,
                                             "+tries=1", "+time=3", "nothere.invalid", "A"),
             "REFUSED")]
    assert ANSWER in runs[0][1].stdout and "status: REFUSED" in runs[1][1].stdout
    last = runs[-1][1]
    sink.wait_for(lambda s: s.protocol == "dns" and within(s, last.t0, last.t1), 2)
    for op, run, rcode in runs:
        pairs = dns_pairs(sink.spans, run.t0, run.t1, transport)
        assert len(pairs) == 1, (op, [(s.kind, s.operation, s.transport)
                                      for s in sink.spans if s.protocol == "dns"])
        c, s = pairs[0]
        assert c.operation == op
        assert_pair_timing(c, s, run.t0, run.t1)
        # comm is the thread's name: dig does its I/O on libisc threads ("isc-net-0000")
        assert (c.process == "dig" or c.process.startswith("isc-")) and s.process == "dnsmasq"
        assert c.status_code == s.status_code == rcode
        assert c.status == s.status == (STATUS_OK if rcode == "NOERROR" else STATUS_ERROR)


@pytest.fixture(scope="module")
def dnspython_run(net, sink, dns_server):
    run = run_client(net.hosts[CLIENT], PY, "-m", "tests.e2e.clients.dns_client", dns_server,
                     cwd=os.getcwd())
    info = run.json()
    last = info["ops"][-1]
    sink.wait_for(lambda s: s.protocol == "dns" and within(s, last["t0"], last["t1"]), 2)
    return info


def test_dnspython_udp_and_tcp(sink, dnspython_run):
    info = dnspython_run
    ops = info["ops"]
    assert ops[0]["answers"] == [ANSWER] and ops[2]["rcode"] == "REFUSED"
    for o in ops:
        # by_port=False: see test_udp_unconnected_client_span_has_its_port
        pairs = dns_pairs(sink.spans, o["t0"], o["t1"], o["transport"], by_port=False)
        assert len(pairs) == 1, o
        c, s = pairs[0]
        assert c.operation == s.operation == o["op"] and c.pid == info["pid"]
        assert_pair_timing(c, s, o["t0"], o["t1"])
        assert c.status_code == s.status_code == o["rcode"]
        if o["rcode"] == "NOERROR":
            assert c.status == STATUS_OK
        else:
            assert c.status == s.status == STATUS_ERROR


def test_udp_unconnected_client_span_has_its_port(sink, dnspython_run):
    for o in dnspython_run["ops"]:
        if o["transport"] != "udp":
            continue
        (c, s), = dns_pairs(sink.spans, o["t0"], o["t1"], "udp", by_port=False)
        assert c.local.port == s.remote.port != 0, (c.local, s.remote)


def test_udp_spans_not_marked_midstream(sink, dnspython_run):
    for o in dnspython_run["ops"]:
        if o["transport"] != "udp":
            continue
        (c, s), = dns_pairs(sink.spans, o["t0"], o["t1"], "udp", by_port=False)
        assert not c.attributes.get("zerotrace.midstream"), o["op"]
        assert not s.attributes.get("zerotrace.midstream"), o["op"]


def test_span_names_the_process_not_the_thread(net, sink, dns_server):
    run = run_client(net.hosts[CLIENT], "dig", f"@{dns_server}", "+notcp", "+tries=1",
                     "proc.x.test", "A")
    assert ANSWER in run.stdout
    sink.wait_for(lambda s: s.operation == "A proc.x.test" and s.kind == KIND_CLIENT, 1)
    c = [s for s in of(sink.spans, KIND_CLIENT, PORT) if s.operation == "A proc.x.test"]
    assert [(s.process, s.service) for s in c] == [("dig", "dig")]
