"""Redis: redis-server in one namespace, redis-cli and redis-py (pipelined) in another."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time

import pytest

from proto.span import KIND_CLIENT, KIND_SERVER, STATUS_ERROR, STATUS_OK
from tests.e2e.conftest import (
    CLIENT,
    PY,
    SERVER,
    Sink,
    assert_pair_timing,
    of,
    pair_by_seq,
    run_client,
    run_py,
    wait_tcp,
    within,
)
from tests.helpers.netns import kill_group

pytestmark = pytest.mark.kernel
PORT = 6379

PIPELINE = """
import json, os, sys, time
import redis
r = redis.Redis(host=sys.argv[1], port=6379, protocol=2)
r.set("greeting", "hello")  # connection set-up and a first command, before the timing
p = r.pipeline(transaction=False)
for i in range(10):
    p.set(f"k{i}", f"v{i}")
    p.get(f"k{i}")
p.lpop("greeting")  # WRONGTYPE inside the pipeline
time.sleep(0.05)  # set-up traffic well before t0
t0 = time.time_ns()
out = p.execute(raise_on_error=False)
t1 = time.time_ns()
print(json.dumps({"pid": os.getpid(), "t0": t0, "t1": t1,
                  "last": type(out[-1]).__name__, "n": len(out)}))
"""


@pytest.fixture(scope="module")
def redis_server(net):
    host = net.hosts[SERVER]
    with tempfile.TemporaryDirectory(prefix="zt-e2e-redis-") as tmp:
        p = net.spawn(host, "redis-server", "--port", str(PORT), "--bind", host.addr,
                      "--save", "", "--appendonly", "no", "--dir", tmp,
                      "--protected-mode", "no")
        wait_tcp(host, host.addr, PORT)
        yield host.addr
        kill_group(p)


def test_redis_cli_commands_and_error(net, sink, redis_server):
    cli = net.hosts[CLIENT]
    runs = {}
    for args in (["SET", "e2e:key", "hello"], ["GET", "e2e:key"], ["INCR", "e2e:key"]):
        runs[args[0]] = run_client(cli, "redis-cli", "-h", redis_server, "-p", str(PORT), *args)
    assert "ERR" in runs["INCR"].stdout
    sink.wait_for(lambda s: s.protocol == "redis" and s.operation == "INCR", 2)
    for op, run in runs.items():
        pairs = [(c, s) for c, s in pair_by_seq(sink.spans, PORT)
                 if c.operation == op and c.start_ns >= run.t0 - 2_000_000
                 and c.end_ns <= run.t1 + 2_000_000]
        assert len(pairs) == 1, (op, [(s.kind, s.operation) for s in sink.spans])
        c, s = pairs[0]
        assert_pair_timing(c, s, run.t0, run.t1)
        assert c.protocol == s.protocol == "redis"
        assert c.process == "redis-cli" and s.process.startswith("redis-server")
        if op == "INCR":
            assert c.status == s.status == STATUS_ERROR
            assert c.error.startswith("ERR value is not an integer"), c.error
        else:
            assert c.status == s.status == STATUS_OK


def test_redis_py_pipeline_one_write(net, sink, redis_server):
    run = run_py(net.hosts[CLIENT], PIPELINE, redis_server)
    info = run.json()
    assert info["n"] == 21 and info["last"] == "ResponseError"
    t0, t1 = info["t0"], info["t1"]

    def mine(s):
        return s.protocol == "redis" and s.start_ns >= t0 - 2_000_000 and s.end_ns <= t1 + 2e6

    sink.wait_for(lambda s: mine(s) and s.operation == "LPOP", 2)
    spans = [s for s in sink.spans if mine(s)]
    client = sorted(of(spans, KIND_CLIENT, PORT), key=lambda s: s.req_offset)
    server = of(spans, KIND_SERVER, PORT)
    assert [s.operation for s in client] == ["SET", "GET"] * 10 + ["LPOP"]
    assert len(server) == 21
    assert all(s.pid == info["pid"] for s in client)
    # one write carried the whole pipeline: every client span starts at that write
    assert len({s.start_ns for s in client}) == 1
    pairs = pair_by_seq(spans, PORT)
    assert len(pairs) == 21
    for c, s in pairs:
        assert_pair_timing(c, s, t0, t1)
    lpop = [p for p in pairs if p[0].operation == "LPOP"][0]
    assert lpop[0].status == lpop[1].status == STATUS_ERROR
    assert lpop[0].status_code == "WRONGTYPE" or "WRONGTYPE" in lpop[0].error
    assert all(c.status == STATUS_OK for c, _ in pairs if c.operation != "LPOP")


RESP3 = """
import json, os, sys, time
import redis
r = redis.Redis(host=sys.argv[1], port=6379, protocol=3)
r.ping()
time.sleep(0.05)
t0 = time.time_ns()
r.hset("e2e:h", mapping={"a": "1", "b": "2"})
m = r.hgetall("e2e:h")  # a RESP3 map reply
r.zadd("e2e:z", {"x": 1.5})
z = r.zrange("e2e:z", 0, -1, withscores=True)  # doubles
t1 = time.time_ns()
print(json.dumps({"pid": os.getpid(), "t0": t0, "t1": t1, "n": len(m), "z": z[0][1]}))
"""


def test_redis_py_resp3(net, sink, redis_server):
    info = run_py(net.hosts[CLIENT], RESP3, redis_server).json()
    assert info["n"] == 2 and info["z"] == 1.5
    t0, t1 = info["t0"], info["t1"]
    sink.wait_for(lambda s: s.operation == "ZRANGE" and s.start_ns >= t0, 2)
    pairs = [(c, s) for c, s in pair_by_seq(sink.spans, PORT)
             if c.start_ns >= t0 and c.end_ns <= t1]
    assert [c.operation for c, _ in sorted(pairs, key=lambda p: p[0].start_ns)] == \
        ["HSET", "HGETALL", "ZADD", "ZRANGE"]
    for c, s in pairs:
        assert_pair_timing(c, s, t0, t1)
        assert c.status == s.status == STATUS_OK and c.pid == info["pid"]


MIDWAY = """
import json, os, sys, time
import redis
r = redis.Redis(host=sys.argv[1], port=6379, protocol=2)
r.set("e2e:mid", "before")  # the connection is set up and used before the agent starts
print("ready", flush=True)
sys.stdin.readline()
time.sleep(0.05)
t0 = time.time_ns()
r.get("e2e:mid")
r.set("e2e:mid", "after")
r.get("e2e:mid")
t1 = time.time_ns()
print(json.dumps({"pid": os.getpid(), "t0": t0, "t1": t1}), flush=True)
"""


def test_connection_seen_midway(net, tracer, redis_server):
    """A connection opened before this pipeline existed: its later commands still come
    out as client and server spans, joined on req_seq and marked midstream."""
    cli = net.hosts[CLIENT]
    p = subprocess.Popen(cli.cmd(PY, "-c", MIDWAY, redis_server), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        for _ in range(5):
            tracer.poll(0.05)  # everything so far is dropped: the agent starts now
        fresh = Sink(tracer)
        p.stdin.write("go\n")
        p.stdin.flush()
        info = json.loads(p.stdout.readline())
        assert p.wait(timeout=20) == 0
    finally:
        kill_group(p)
    t0, t1 = info["t0"], info["t1"]
    fresh.wait_for(lambda s: s.protocol == "redis" and s.start_ns >= t0, 6)
    pairs = [(c, s) for c, s in pair_by_seq(fresh.spans, PORT)
             if c.start_ns >= t0 and c.end_ns <= t1]
    assert [c.operation for c, _ in sorted(pairs, key=lambda p: p[0].start_ns)] == \
        ["GET", "SET", "GET"]
    for c, s in pairs:
        assert c.pid == info["pid"] and c.status == s.status == STATUS_OK
        assert c.duration_ns >= s.duration_ns and within(c, t0, t1) and within(s, t0, t1)
        assert c.attributes.get("zerotrace.midstream") and s.attributes.get(
            "zerotrace.midstream")
    fresh.pipeline.close()
