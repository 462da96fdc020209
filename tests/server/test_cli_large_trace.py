"""The CLI reads a trace larger than gRPC's default 4 MiB receive limit (issue 14,
item 4: "the CLI fails on any trace over 4 MiB"); the server sends up to 32 MiB.

Values are capped at 4 KiB at ingest (server/ingest/caps.py), so the 6 MiB trace is
1 600 spans of 3 values of 1.3 KiB each, not two spans of 3 MiB."""

from __future__ import annotations

import json

from cli_capture import run_cli
from factory import now_ns, server_span

from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc

SPANS = 1600


def test_trace_of_6_mib(zt_server, capsys):
    import grpc

    t = now_ns()
    root = server_span(start_ns=t, end_ns=t + 10_000)
    spans = [root] + [
        server_span(root.trace_id, start_ns=t + i, end_ns=t + i + 5,
                    parent_span_id=root.span_id,
                    attributes={f"v{k}": f"{i:05d}{k}" * 220 for k in range(3)})
        for i in range(1, SPANS)]
    req = ingest_pb2.PushRequest()
    for s in spans:
        span_to_pb(s, req.spans.add())
    assert req.ByteSize() > 6 << 20
    with grpc.insecure_channel(zt_server.addr) as ch:
        assert ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=60).accepted == SPANS
    rc, out, err = run_cli(capsys, "trace", root.trace_id, "--server", zt_server.addr,
                           "-o", "json", "--timeout", "120")
    assert rc == 0, err
    got = json.loads(out)["spans"]
    assert len(got) == SPANS
    assert sum(len(v) for s in got for v in s["attributes"].values()) > 6 << 20
