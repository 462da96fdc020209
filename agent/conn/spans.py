"""A protocol record, seen by one process on one connection, becomes a span.

Beside the span, `SpanContext` keeps where and when on which thread the request and
response bytes moved: the stitcher orders those per thread to find parents."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from agent.probes import abi
from agent.probes.events import SocketEvent
from agent.protocols.base import EGRESS, Record
from agent.stitch.runtime import GOROUTINE_BASE
from proto.span import KIND_CLIENT, KIND_SERVER, SOURCE_SYSCALL, Endpoint, Span

_PROTO_ATTRS = {"http": "http", "http2": "http", "grpc": "grpc"}


@dataclass(slots=True)
class SpanContext:
    """A span plus the thread-level moments the stitcher needs.

    For a server span: `in_tid`/`in_ns` = thread and time the request's last byte was
    read, `out_tid`/`out_ns` = thread and time the response's first byte was written.
    For a client span: `out_*` = the request written, `in_*` = the response read."""

    span: Span
    conn_id: int
    in_tid: int
    in_ns: int
    out_tid: int
    out_ns: int
    has_response: bool


class ConnMeta:
    """What every span of one connection shares, computed once per connection."""

    __slots__ = ("laddr", "lport", "raddr", "rport", "comm", "pid", "cgroup_id", "netns",
                 "transport", "midstream")

    def __init__(self, e: SocketEvent) -> None:
        self.laddr, self.lport, self.raddr, self.rport = e.laddr, e.lport, e.raddr, e.rport
        self.comm, self.pid, self.cgroup_id, self.netns = e.comm, e.pid, e.cgroup_id, e.netns
        self.transport = "udp" if e.transport == abi.IPPROTO_UDP else "tcp"
        self.midstream = bool(e.flags & abi.F_MIDSTREAM)


# record_to_span builds Span positionally (half the cost of 30 keywords, measured
# 1.25 vs 2.9 us): the order it relies on, checked once here.
_SPAN_FIELDS = ("trace_id", "span_id", "parent_span_id", "kind", "source", "protocol",
                "operation", "status", "status_code", "error", "start_ns", "end_ns",
                "service", "pid", "tid", "process", "cgroup_id", "netns", "transport",
                "local", "remote", "req_seq", "resp_seq", "req_offset", "resp_offset",
                "req_bytes", "resp_bytes", "trace_headers", "attributes", "resource",
                "incomplete", "agent")
if tuple(f.name for f in fields(Span)) != _SPAN_FIELDS:
    raise ImportError("proto.span.Span fields changed: update agent/conn/spans.py")
_getrandbits = random.getrandbits
_ROLE_CLIENT = abi.ROLE_CLIENT
_ROLE_SERVER = abi.ROLE_SERVER
_ROLE_UNKNOWN = abi.ROLE_UNKNOWN


def new_span_id() -> str:
    """A random 64-bit span id, 16 hex digits: a span id needs to be unique, not
    secret, and random.getrandbits costs half of os.urandom (0.3 against 0.66 us)."""
    return "%016x" % (_getrandbits(64) or 1)


def record_to_span(r: Record, e: ConnMeta, role: int, req_dir: int | None,
                   agent: str = "", conn_id: int = 0) -> SpanContext | None:
    """The span of record r on the connection described by e."""
    req, resp = r.request, r.response
    if req is None and resp is None:
        return None
    if role == _ROLE_CLIENT or (role == _ROLE_UNKNOWN and req_dir == EGRESS):
        kind = KIND_CLIENT
    elif role == _ROLE_SERVER or req_dir is not None:
        kind = KIND_SERVER
    else:
        return None  # neither the socket nor the bytes say who asked
    if req is not None:
        start = req.start_ns
        tid = req.tid
        req_seq, req_offset, req_bytes = req.seq, req.offset, req.size
    else:
        start = resp.start_ns
        tid = resp.tid
        req_seq = req_offset = None
        req_bytes = 0
    if resp is not None:
        end = resp.end_ns
        resp_seq, resp_offset, resp_bytes = resp.seq, resp.offset, resp.size
    else:
        end = req.end_ns
        resp_seq = resp_offset = None
        resp_bytes = 0
    remote = Endpoint(e.raddr, e.rport)
    a = dict(r.attributes)
    if tid >= GOROUTINE_BASE:  # Go: the pipeline keyed work by goroutine
        a["go.goroutine.id"] = tid - GOROUTINE_BASE
        tid = 0
    comm = e.comm
    transport = e.transport
    span = Span(
        "", new_span_id(), "", kind, SOURCE_SYSCALL, r.protocol, r.operation,
        r.status, r.status_code, r.error, start, end if end > start else start, comm,
        e.pid, tid, comm, e.cgroup_id, e.netns, transport,
        Endpoint(e.laddr, e.lport), remote, req_seq, resp_seq, req_offset, resp_offset,
        req_bytes, resp_bytes, dict(r.trace_headers), a, {}, r.incomplete, agent)
    if "network.transport" not in a:
        a["network.transport"] = transport
    if kind == KIND_CLIENT:
        if "server.address" not in a:
            a["server.address"] = remote.addr
        if "server.port" not in a:
            a["server.port"] = remote.port
    else:
        if "client.address" not in a:
            a["client.address"] = remote.addr
        if "client.port" not in a:
            a["client.port"] = remote.port
    if e.midstream:
        a["zerotrace.midstream"] = True
    # Moments on threads (request end/response start, or request start/response end).
    if kind == KIND_SERVER:
        in_tid, in_ns = (req.end_tid, req.end_ns) if req is not None else (0, start)
        out_tid, out_ns = (resp.tid, resp.start_ns) if resp is not None else (0, end)
    else:
        out_tid, out_ns = (req.tid, req.start_ns) if req is not None else (0, start)
        in_tid, in_ns = (resp.end_tid, resp.end_ns) if resp is not None else (0, end)
    return SpanContext(span, conn_id, in_tid, in_ns, out_tid, out_ns, resp is not None)
