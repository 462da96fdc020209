"""Shared set-up of the end-to-end tests: namespaces, one tracer, a span sink.

One pair of network namespaces and one loaded tracer (scoped to those namespaces by
inode) serve the whole folder (package scope: the probes compile once, and are detached
and the namespaces removed when the folder's last test is done).  Each module gets its own
`Pipeline` (through `sink`), starts its servers once in namespace 1 (`SERVER`) and runs
its clients in namespace 0 (`CLIENT`), and asserts on the spans the pipeline emits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from agent.pipeline import Pipeline
from agent.probes.loader import ProbeConfig, SocketTracer
from proto.span import KIND_CLIENT, KIND_SERVER, Span
from tests.helpers.netns import Host, Network, network

PY = sys.executable
CLIENT, SERVER = 0, 1
# Clock slack between the kernel's monotonic stamps (made wall by one offset) and the
# client's time.time_ns() around the same request.
SLACK_NS = 200_000


@pytest.fixture(scope="package")
def net():
    with network(2) as n:
        yield n


@pytest.fixture(scope="package")
def tracer(net):
    cfg = ProbeConfig(netns={h.inode for h in net.hosts})
    with SocketTracer(cfg) as t:
        yield t


@dataclass
class Sink:
    """A Pipeline fed from the shared tracer; keeps every span it emits."""

    tracer: SocketTracer
    pipeline: Pipeline = field(default_factory=Pipeline)
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pipeline.on_span = lambda ctx: self.spans.append(ctx.span)

    def pump(self, done: Callable[[list[Span]], bool], timeout: float = 10.0) -> list[Span]:
        """Drain events into the pipeline until done(spans) or timeout; returns spans."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pipeline.process(self.tracer.poll(0.05))
            if done(self.spans):
                self.pipeline.process(self.tracer.poll(0.02))
                break
        return self.spans

    def wait_for(self, pred: Callable[[Span], bool], n: int, timeout: float = 10.0) -> list[Span]:
        """At least n spans matching pred (both kinds counted), or whatever came."""
        self.pump(lambda ss: sum(1 for s in ss if pred(s)) >= n, timeout)
        return [s for s in self.spans if pred(s)]


@pytest.fixture(scope="module")
def sink(tracer):
    tracer.poll(0.01)  # what earlier modules left in the ring is not ours
    s = Sink(tracer)
    yield s
    s.pipeline.close()


def wait_tcp(host: Host, addr: str, port: int, timeout: float = 30.0) -> None:
    """Until something in host's namespace listens on addr:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(host.cmd("ss", "-Htln", f"src {addr}:{port}"), capture_output=True,
                           text=True)
        if r.stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {addr}:{port} in {host.name}")


@dataclass
class Run:
    """A client program's run: its wall time and (for our scripts) its JSON report."""

    t0: int
    t1: int
    rc: int
    stdout: str
    stderr: str

    @property
    def wall_ns(self) -> int:
        return self.t1 - self.t0

    def json(self):
        return json.loads(self.stdout.strip().splitlines()[-1])


def run_client(host: Host, *argv: str, timeout: float = 30.0, check: bool = True,
               **kw) -> Run:
    t0 = time.time_ns()
    r = subprocess.run(host.cmd(*argv), capture_output=True, text=True, timeout=timeout, **kw)
    t1 = time.time_ns()
    if check and r.returncode != 0:
        raise AssertionError(f"{argv} failed ({r.returncode}): {r.stderr[-2000:]}")
    return Run(t0, t1, r.returncode, r.stdout, r.stderr)


def run_py(host: Host, script: str, *args: str, timeout: float = 60.0) -> Run:
    return run_client(host, PY, "-c", script, *args, timeout=timeout,
                      env=dict(os.environ, PYTHONPATH=os.getcwd()))


def of(spans: list[Span], kind: str, port: int, protocol: str | None = None) -> list[Span]:
    """Spans of one kind on connections to server port `port`."""
    key = "remote" if kind == KIND_CLIENT else "local"
    return [s for s in spans if s.kind == kind and getattr(s, key).port == port
            and (protocol is None or s.protocol == protocol)]


def within(span: Span, t0: int, t1: int) -> bool:
    return t0 - SLACK_NS <= span.start_ns <= span.end_ns <= t1 + SLACK_NS


def pair_by_seq(spans: list[Span], port: int) -> list[tuple[Span, Span]]:
    """(client, server) span pairs of one server port, joined on req_seq (TCP)."""
    servers = {s.req_seq: s for s in of(spans, KIND_SERVER, port) if s.req_seq is not None}
    return [(c, servers[c.req_seq]) for c in of(spans, KIND_CLIENT, port)
            if c.req_seq in servers]


def assert_pair_timing(c: Span, s: Span, t0: int, t1: int, truncated_ok: bool = False) -> None:
    """Client and server span of one request agree with each other and with the client's
    own clock: the client's span contains the server's, both inside the client's wall
    time [t0, t1]; both sides name the same request and response bytes."""
    assert c.kind == KIND_CLIENT and s.kind == KIND_SERVER
    assert c.operation == s.operation, (c, s)
    assert (c.req_seq, c.resp_seq) == (s.req_seq, s.resp_seq)
    if c.transport == "tcp":  # UDP "offsets" count a socket's bytes over all its peers
        assert (c.req_offset, c.resp_offset) == (s.req_offset, s.resp_offset)
    assert (c.req_bytes, c.resp_bytes) == (s.req_bytes, s.resp_bytes)
    ok = ("", "truncated") if truncated_ok else ("",)  # truncated: past the 1 KiB capture
    assert c.incomplete in ok and s.incomplete in ok, (c.incomplete, s.incomplete)
    assert c.duration_ns >= s.duration_ns, (c.duration_ns, s.duration_ns, c.operation)
    assert c.start_ns <= s.start_ns + SLACK_NS and s.end_ns <= c.end_ns + SLACK_NS
    assert within(c, t0, t1), (c.start_ns - t0, t1 - c.end_ns, c.operation)
    assert within(s, t0, t1), (s.start_ns - t0, t1 - s.end_ns, s.operation)
    assert c.duration_ns <= t1 - t0 and s.duration_ns <= t1 - t0


__all__ = ["CLIENT", "SERVER", "Network", "Sink", "Run", "run_client", "run_py", "of",
           "within", "pair_by_seq", "assert_pair_timing", "wait_tcp", "PY"]
