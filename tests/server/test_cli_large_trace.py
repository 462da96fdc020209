"""The CLI reads a trace larger than gRPC's default 4 MiB receive limit (issue 14,
item 4: "the CLI fails on any trace over 4 MiB"); the server sends up to 32 MiB."""

from __future__ import annotations

import json

from cli_capture import run_cli
from factory import now_ns, server_span

from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc


def test_trace_of_6_mib(zt_server, capsys):
    import grpc

    t = now_ns()
    spans = [server_span(start_ns=t, end_ns=t + 10, attributes={"big": "x" * (3 << 20)})]
    spans.append(server_span(spans[0].trace_id, start_ns=t + 1, end_ns=t + 9,
                             parent_span_id=spans[0].span_id, attributes={"big": "y" * (3 << 20)}))
    req = ingest_pb2.PushRequest()
    for s in spans:
        span_to_pb(s, req.spans.add())
    with grpc.insecure_channel(zt_server.addr) as ch:
        assert ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=60).accepted == 2
    rc, out, err = run_cli(capsys, "trace", spans[0].trace_id, "--server", zt_server.addr,
                           "-o", "json")
    assert rc == 0, err
    got = json.loads(out)["spans"]
    assert sorted(len(s["attributes"]["big"]) for s in got) == [3 << 20, 3 << 20]
