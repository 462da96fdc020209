"""gRPC over HTTP/2: a grpcio server in one namespace, a grpcio client (unary and
server-streaming calls on one channel) in another; stubs generated with grpc_tools at
test time."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

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

HERE = os.path.dirname(os.path.abspath(__file__))
PORT = 50051
PROTO = """
syntax = "proto3";
package demo.v1;
message HelloRequest { string name = 1; }
message HelloReply { string message = 1; }
message CountRequest { int32 n = 1; }
message Number { int32 value = 1; }
service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply);
  rpc Count (CountRequest) returns (stream Number);
}
"""

pytestmark = pytest.mark.kernel




@pytest.fixture(scope="module")
def grpc_server(net):
    host = net.hosts[SERVER]
    tmp = tempfile.mkdtemp(prefix="zt-e2e-grpc-")
    proc = None
    try:
        with open(os.path.join(tmp, "greeter.proto"), "w") as f:
            f.write(PROTO)
        subprocess.run([PY, "-m", "grpc_tools.protoc", f"-I{tmp}", f"--python_out={tmp}",
                        f"--grpc_python_out={tmp}", os.path.join(tmp, "greeter.proto")],
                       check=True, capture_output=True)
        proc = net.spawn(host, PY, os.path.join(HERE, "clients", "grpc_server.py"), tmp,
                         host.addr, str(PORT), "default", stdout=subprocess.DEVNULL)
        wait_tcp(host, host.addr, PORT)
        yield host.addr, tmp
    finally:
        if proc is not None:
            kill_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def calls(net, sink, grpc_server) -> dict:
    """One client run: a warm-up call, then unary OK, unary with a 20 ms handler, unary
    NOT_FOUND, server-streaming (5 messages), all on one channel."""
    addr, stubs = grpc_server
    run = run_client(net.hosts[CLIENT], PY, "-m", "tests.e2e.clients.grpc_client", stubs,
                     addr, str(PORT), "default", cwd=os.getcwd())
    info = run.json()
    ops = info["ops"]
    assert [o.get("code") for o in ops] == ["0", "0", "5", "0"]
    assert ops[-1]["values"] == [0, 1, 2, 3, 4]
    last = ops[-1]
    sink.wait_for(lambda s: s.protocol == "grpc" and within(s, last["t0"], last["t1"]), 2)
    return info


def pairs_of(sink, o: dict) -> tuple[list, list, list]:
    mine = [s for s in sink.spans if s.protocol == "grpc" and within(s, o["t0"], o["t1"])]
    return of(mine, KIND_CLIENT, PORT), of(mine, KIND_SERVER, PORT), pair_by_seq(mine, PORT)


def test_grpc_unary_and_server_streaming(sink, calls):
    """What survives the probe limitation below: each call has exactly one client and one
    server span, joined by req_seq, timed consistently; the server span (which parsed
    the request as received, one recvmsg) has the method; the client span (which parsed
    the response as received) has the grpc-status and message."""
    conns = set()
    for o in calls["ops"]:
        client, server, pairs = pairs_of(sink, o)
        assert len(client) == len(server) == len(pairs) == 1, o
        (c, s), = pairs
        assert c.pid == calls["pid"] and c.protocol == s.protocol == "grpc"
        assert s.operation == o["op"]
        assert s.attributes["rpc.service"] == "demo.v1.Greeter"
        assert s.attributes["rpc.method"] == o["op"].rsplit("/", 1)[1]
        assert c.status_code == o["code"]
        assert c.status == (STATUS_OK if o["code"] == "0" else STATUS_ERROR)
        if o["code"] == "5":
            assert c.error == s.error == "no such greeting" and s.status == STATUS_ERROR
            assert s.status_code == "5"
        if o.get("reply") == "hello slow":
            assert s.duration_ns >= 20_000_000
            assert s.trace_headers.get("x-request-id") == "grpc-slow"
        # timing as assert_pair_timing, without its operation equality
        assert c.duration_ns >= s.duration_ns
        assert within(c, o["t0"], o["t1"]) and within(s, o["t0"], o["t1"])
        conns.add((c.local.port, s.remote.port))
    (cport, sport), = conns  # one channel, one connection
    assert cport == sport != 0


def test_grpc_spans_complete_on_both_sides(sink, calls):
    for o in calls["ops"]:
        client, server, pairs = pairs_of(sink, o)
        assert [s.operation for s in client] == [s.operation for s in server] == [o["op"]]
        (c, s), = pairs
        assert_pair_timing(c, s, o["t0"], o["t1"])
        assert not c.incomplete and not s.incomplete, (c.incomplete, s.incomplete)
        assert c.status_code == s.status_code == o["code"], (c.status_code, s.status_code)
        assert c.status == s.status == (STATUS_OK if o["code"] == "0" else STATUS_ERROR)
        assert c.attributes["rpc.method"] == o["op"].rsplit("/", 1)[1]
        if o.get("reply") == "hello slow":
            assert c.trace_headers.get("x-request-id") == "grpc-slow"
