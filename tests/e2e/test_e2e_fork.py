"""A server that forks per connection and closes the parent's copy of the socket while
the child still serves it (dnsmasq over TCP, PostgreSQL's postmaster, inetd-style)."""

from __future__ import annotations

import os
import subprocess

import pytest

from proto.span import KIND_SERVER
from tests.e2e.conftest import CLIENT, PY, SERVER, of, pair_by_seq, run_client, wait_tcp, within
from tests.helpers.netns import kill_group

pytestmark = pytest.mark.kernel
PORT = 8090
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def fork_server(net):
    host = net.hosts[SERVER]
    p = net.spawn(host, PY, os.path.join(HERE, "clients", "fork_server.py"), host.addr,
                  str(PORT), stdout=subprocess.DEVNULL)
    wait_tcp(host, host.addr, PORT)
    yield host.addr
    kill_group(p)


@pytest.fixture(scope="module")
def fork_run(net, sink, fork_server):
    run = run_client(net.hosts[CLIENT], "curl", "-s", "-o", "/dev/null", "-w",
                     "%{http_code}", f"http://{fork_server}:{PORT}/fork")
    assert run.stdout == "200"
    sink.wait_for(lambda s: s.protocol == "http" and within(s, run.t0, run.t1)
                  and s.kind == "client", 1)
    sink.pump(lambda ss: False, timeout=0.3)  # and whatever the server side still emits
    return run


def test_forked_child_request_has_client_and_server_span(sink, fork_run):
    """What works: both spans exist and join on req_seq."""
    run = fork_run
    pairs = [(c, s) for c, s in pair_by_seq(sink.spans, PORT) if within(c, run.t0, run.t1)]
    assert len(pairs) == 1
    c, s = pairs[0]
    assert c.operation == s.operation == "GET /fork" and c.status_code == "200"


def test_parent_close_after_fork_does_not_end_the_childs_connection(sink, fork_run):
    run = fork_run
    server = [s for s in of(sink.spans, KIND_SERVER, PORT) if within(s, run.t0, run.t1)]
    assert [(s.operation, s.status_code, s.incomplete) for s in server] == \
        [("GET /fork", "200", "")], [(s.operation, s.status_code, s.incomplete,
                                      s.attributes.get("zerotrace.midstream"))
                                     for s in server]
    assert "zerotrace.midstream" not in server[0].attributes
