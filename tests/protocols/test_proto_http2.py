"""HTTP/2 specifics: HPACK state across a connection seen midway, multiplexing."""

from __future__ import annotations

import json

from agent.protocols.base import Chunk
from agent.protocols.registry import new_parser

from .golden import GOLDEN, expected_path, load_capture, summary

GRPC = GOLDEN / "grpc" / "grpcio_unary_streaming.json"


def _key(s: dict) -> tuple:
    return (s["operation"], s["status_code"], tuple(s["request"] or ()),
            tuple(s["response"] or ()))


def test_connection_seen_midway_decodes_what_it_can_and_says_so():
    conn = load_capture(GRPC)["connections"][0]
    expected = {_key(r) for r in json.loads(expected_path(GRPC).read_text())}
    flagged = 0
    for first in range(2, len(conn)):
        p = new_parser("http2", None)
        offs = [0, 0]
        recs = []
        for i, (d, ts, raw) in enumerate(conn):
            if i >= first:
                recs += p.feed(Chunk(d, raw, len(raw), offs[d], 1000 + ts, 7, None))
            offs[d] += len(raw)
        recs += p.flush("closed")
        for r in map(summary, recs):
            if r["incomplete"]:
                flagged += "midstream" in r["incomplete"] or "gap" in r["incomplete"]
            elif r["request"] and r["response"]:
                assert _key(r) in expected, (first, r)
    assert flagged > 0


def test_multiplexed_calls_each_get_their_record():
    recs = [summary(r) for r in _replay(GRPC)]
    concurrent = [r for r in recs if r["operation"] == "/demo.v1.Greeter/SayHello"
                  and r["request"][1] == 47]
    assert len(concurrent) == 5
    assert len({r["request"][0] for r in concurrent}) == 5
    streaming = [r for r in recs if r["operation"].endswith(("/Count", "/Chat"))]
    assert [r["attributes"]["rpc.method"] for r in streaming] == ["Count", "Chat"]
    err = next(r for r in recs if r["status"] == "error")
    assert (err["status_code"], err["error"]) == ("5", "no such greeting")
    assert err["attributes"]["rpc.grpc.status_code"] == 5


def _replay(path):
    conn = load_capture(path)["connections"][0]
    p = new_parser("grpc", True)
    offs = [0, 0]
    out = []
    for d, ts, raw in conn:
        out += p.feed(Chunk(d, raw, len(raw), offs[d], ts, 1, None))
        offs[d] += len(raw)
    return out + p.flush("closed")
