"""The span model shared by the agent and the server.

One `Span` is one request/response exchange seen by one process on one side of one
connection (kind "server" or "client"), or one network hop seen on an interface
(source "N"), or an application span received over OTLP (source "A").  Attribute
names follow the OpenTelemetry semantic conventions (`http.request.method`,
`db.system`, ...).  The wire form is `zerotrace.v1.Span` in `proto/zerotrace/v1/`;
this plain class is what code on both sides works with, because building protobuf
messages on the per-event hot path costs several times more than slots.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

# Span kinds (OpenTelemetry SpanKind, lower-cased).
KIND_SERVER = "server"
KIND_CLIENT = "client"
KIND_INTERNAL = "internal"

# Where a span was observed: a syscall (S), a network interface (N), an application
# SDK (A).  Flame graphs mark bars with these letters.
SOURCE_SYSCALL = "S"
SOURCE_NETWORK = "N"
SOURCE_APP = "A"

STATUS_UNSET = "unset"
STATUS_OK = "ok"
STATUS_ERROR = "error"

# Attribute on a span the agent left without a parent: why it refused to link it
# (a trace view says "parent unknown: <reason>" instead of showing a silent root).
PARENT_UNKNOWN = "zerotrace.parent.unknown"

# Headers whose values are kept as correlation keys, lower-case.
TRACE_HEADERS = ("traceparent", "tracestate", "x-request-id", "uber-trace-id", "sw8")


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def valid_traceparent(value: str) -> bool:
    """A W3C traceparent a receiver may continue: well formed, ids not all zero
    (an invalid one is ignored, as the W3C Trace Context rules say)."""
    m = _TRACEPARENT.match(value)
    return m is not None and m.group(1) != "0" * 32 and m.group(2) != "0" * 16


def new_trace_id() -> str:
    """A random 128-bit W3C trace id, as 32 lower-case hex digits."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """A random 64-bit span id, as 16 lower-case hex digits."""
    return os.urandom(8).hex()


@dataclass(slots=True)
class Endpoint:
    """One end of a connection: address (text form) and port."""

    addr: str = ""
    port: int = 0


@dataclass(slots=True)
class Span:
    """A request/response span with its correlation keys.

    Times are Unix epoch nanoseconds.  `start_ns` is the first request byte and
    `end_ns` the last response byte as seen by the observing process.  `req_seq` /
    `resp_seq` are TCP sequence numbers of the first byte of request / response (in
    the direction each travels); `req_offset` / `resp_offset` the byte offsets of the
    same bytes within their direction of the connection's stream.  These link the
    client span of a request to the server span of the same request: on one host by
    tuple + offset, across hosts and NAT by sequence number.
    """

    trace_id: str = ""
    span_id: str = field(default_factory=new_span_id)
    parent_span_id: str = ""
    kind: str = KIND_INTERNAL
    source: str = SOURCE_SYSCALL
    protocol: str = ""  # http, http2, grpc, dns, redis, postgresql, mysql, ...
    operation: str = ""  # "GET /users", "SET", "SELECT orders", "/pkg.Svc/Method"
    status: str = STATUS_UNSET
    status_code: str = ""  # "200", "NXDOMAIN", SQLSTATE "23505", grpc-status "5"
    error: str = ""  # short error message when status is error
    start_ns: int = 0
    end_ns: int = 0
    service: str = ""  # service name (configured, k8s workload, or process name)
    # Process and thread that observed the span (agent-side spans).
    pid: int = 0
    tid: int = 0
    process: str = ""  # comm / executable name
    cgroup_id: int = 0
    netns: int = 0
    # Connection tuple as seen by the observing process.
    transport: str = ""  # "tcp" | "udp"
    local: Endpoint = field(default_factory=Endpoint)
    remote: Endpoint = field(default_factory=Endpoint)
    # Correlation keys (None when unknown).
    req_seq: int | None = None
    resp_seq: int | None = None
    req_offset: int | None = None
    resp_offset: int | None = None
    req_bytes: int = 0
    resp_bytes: int = 0
    trace_headers: dict[str, str] = field(default_factory=dict)
    # OpenTelemetry-style attributes of the span, and of its resource (k8s tags, host).
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, str] = field(default_factory=dict)
    # Set when part of the exchange was not seen (lost events, prefix truncation,
    # connection seen midway, no response before expiry); says why.
    incomplete: str = ""
    # Which agent produced the span (node name or host), for cross-node joins.
    agent: str = ""

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by `-o json` and tests)."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "kind": self.kind,
            "source": self.source,
            "protocol": self.protocol,
            "operation": self.operation,
            "status": self.status,
            "status_code": self.status_code,
            "error": self.error,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "service": self.service,
            "pid": self.pid,
            "tid": self.tid,
            "process": self.process,
            "cgroup_id": self.cgroup_id,
            "netns": self.netns,
            "transport": self.transport,
            "local": {"addr": self.local.addr, "port": self.local.port},
            "remote": {"addr": self.remote.addr, "port": self.remote.port},
            "req_seq": self.req_seq,
            "resp_seq": self.resp_seq,
            "req_offset": self.req_offset,
            "resp_offset": self.resp_offset,
            "req_bytes": self.req_bytes,
            "resp_bytes": self.resp_bytes,
            "trace_headers": dict(self.trace_headers),
            "attributes": dict(self.attributes),
            "resource": dict(self.resource),
            "incomplete": self.incomplete,
            "agent": self.agent,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        d = dict(d)
        d["local"] = Endpoint(**d.get("local", {}))
        d["remote"] = Endpoint(**d.get("remote", {}))
        return cls(**d)
