"""A protocol record, seen by one process on one connection, becomes a span.

Beside the span, `SpanContext` keeps where and when on which thread the request and
response bytes moved: the stitcher orders those per thread to find parents."""

from __future__ import annotations

from dataclasses import dataclass

from agent.probes import abi
from agent.probes.events import SocketEvent
from agent.protocols.base import EGRESS, Message, Record
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


def record_to_span(r: Record, e: ConnMeta, role: int, req_dir: int | None,
                   agent: str = "", conn_id: int = 0) -> SpanContext | None:
    """The span of record r on the connection described by e."""
    req, resp = r.request, r.response
    first: Message | None = req or resp
    if first is None:
        return None
    if role == abi.ROLE_CLIENT or (role == abi.ROLE_UNKNOWN and req_dir == EGRESS):
        kind = KIND_CLIENT
    elif role == abi.ROLE_SERVER or req_dir is not None:
        kind = KIND_SERVER
    else:
        return None  # neither the socket nor the bytes say who asked
    local, remote = Endpoint(e.laddr, e.lport), Endpoint(e.raddr, e.rport)
    start = req.start_ns if req else resp.start_ns
    end = resp.end_ns if resp else (req.end_ns if req else start)
    span = Span(
        kind=kind, source=SOURCE_SYSCALL, protocol=r.protocol, operation=r.operation,
        status=r.status, status_code=r.status_code, error=r.error,
        start_ns=start, end_ns=max(end, start), service=e.comm, pid=e.pid,
        tid=req.tid if req else resp.tid, process=e.comm, cgroup_id=e.cgroup_id,
        netns=e.netns, transport=e.transport,
        local=local, remote=remote,
        req_seq=req.seq if req else None, resp_seq=resp.seq if resp else None,
        req_offset=req.offset if req else None, resp_offset=resp.offset if resp else None,
        req_bytes=req.size if req else 0, resp_bytes=resp.size if resp else 0,
        trace_headers=dict(r.trace_headers), attributes=dict(r.attributes),
        incomplete=r.incomplete, agent=agent,
    )
    a = span.attributes
    if span.tid >= GOROUTINE_BASE:  # Go: the pipeline keyed work by goroutine
        a["go.goroutine.id"] = span.tid - GOROUTINE_BASE
        span.tid = 0
    a.setdefault("network.transport", span.transport)
    if kind == KIND_CLIENT:
        a.setdefault("server.address", remote.addr)
        a.setdefault("server.port", remote.port)
    else:
        a.setdefault("client.address", remote.addr)
        a.setdefault("client.port", remote.port)
    if e.midstream:
        a["zerotrace.midstream"] = True
    # Moments on threads (request end/response start, or request start/response end).
    if kind == KIND_SERVER:
        in_tid, in_ns = (req.end_tid, req.end_ns) if req else (0, start)
        out_tid, out_ns = (resp.tid, resp.start_ns) if resp else (0, end)
    else:
        out_tid, out_ns = (req.tid, req.start_ns) if req else (0, start)
        in_tid, in_ns = (resp.end_tid, resp.end_ns) if resp else (0, end)
    return SpanContext(span, conn_id, in_tid, in_ns, out_tid, out_ns, resp is not None)
