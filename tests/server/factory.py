"""Spans built the way the agent builds them, for server tests."""

from __future__ import annotations

import itertools
import time

from proto.span import Endpoint, Span, new_trace_id

_seq = itertools.count(100_000)
MS = 1_000_000


def now_ns() -> int:
    return time.time_ns()


def server_span(trace_id: str = "", **kw) -> Span:
    kw.setdefault("kind", "server")
    kw.setdefault("protocol", "http")
    kw.setdefault("status", "ok")
    kw.setdefault("status_code", "200")
    kw.setdefault("source", "S")
    return Span(trace_id=trace_id or new_trace_id(), **kw)


def client_server_pair(
    client_trace: str,
    server_trace: str,
    start_ns: int,
    client_parent: str = "",
    seq: int | None = None,
    client_agent: str = "node-a",
    server_agent: str = "node-b",
    client_service: str = "front",
    server_service: str = "api",
    op: str = "GET /api/items",
) -> tuple[Span, Span]:
    """A client span on one node and the server span of the same request on another,
    linked only by the TCP sequence number and the mirrored tuple."""
    seq = next(_seq) if seq is None else seq
    cli_ep = Endpoint("10.1.0.5", 40000 + seq % 20000)
    srv_ep = Endpoint("10.2.0.7", 8080)
    c = Span(
        trace_id=client_trace,
        parent_span_id=client_parent,
        kind="client",
        source="S",
        protocol="http",
        operation=op,
        status="ok",
        status_code="200",
        start_ns=start_ns,
        end_ns=start_ns + 8 * MS,
        service=client_service,
        process="front-bin",
        pid=101,
        transport="tcp",
        local=cli_ep,
        remote=srv_ep,
        req_seq=seq,
        resp_seq=seq + 7,
        agent=client_agent,
    )
    s = Span(
        trace_id=server_trace,
        kind="server",
        source="S",
        protocol="http",
        operation=op,
        status="ok",
        status_code="200",
        start_ns=start_ns + 1 * MS,
        end_ns=start_ns + 7 * MS,
        service=server_service,
        process="api-bin",
        pid=202,
        transport="tcp",
        local=Endpoint(srv_ep.addr, srv_ep.port),
        remote=Endpoint(cli_ep.addr, cli_ep.port),
        req_seq=seq,
        resp_seq=seq + 7,
        agent=server_agent,
    )
    return c, s


def two_node_trace(start_ns: int | None = None) -> tuple[str, str, list[Span], list[Span]]:
    """(trace of node A, trace of node B, spans of A, spans of B): A's front server
    span calls api on B; B's api server span queries the db on B (same trace)."""
    t0 = start_ns or now_ns()
    ta, tb = new_trace_id(), new_trace_id()
    root = server_span(
        ta,
        operation="GET /",
        service="front",
        process="front-bin",
        start_ns=t0,
        end_ns=t0 + 10 * MS,
        agent="node-a",
    )
    c, s = client_server_pair(ta, tb, t0 + 1 * MS, client_parent=root.span_id)
    db = Span(
        trace_id=tb,
        parent_span_id=s.span_id,
        kind="client",
        source="S",
        protocol="postgresql",
        operation="SELECT items",
        status="ok",
        start_ns=t0 + 2 * MS,
        end_ns=t0 + 5 * MS,
        service="api",
        process="api-bin",
        agent="node-b",
    )
    return ta, tb, [root, c], [s, db]
