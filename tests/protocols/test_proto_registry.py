"""Protocol inference from first bytes (ports only as a hint) and the parser factory."""

from __future__ import annotations

import os

import pytest

from agent.protocols.base import EGRESS, INGRESS
from agent.protocols.registry import PROTOCOLS, infer, new_parser

from .golden import captures, load_capture

FILES = captures()


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_first_bytes_of_every_golden_connection(path):
    doc = load_capture(path)
    for conn in doc["connections"]:
        d, _, data = conn[0]
        # An unusual port on both ends: the content alone must tell.
        got = infer(data, d, 40000, 8080, doc["transport"])
        # gRPC is found as HTTP/2; the parser tells them apart by content-type.
        assert got == {"grpc": "http2"}.get(doc["protocol"], doc["protocol"]), (data[:40], got)


@pytest.mark.parametrize("data,ports,proto", [
    (b"*1\r\n$4\r\nPING\r\n", (8080, 51000), "redis"),
    (b"+OK\r\n", (51000, 6379), "redis"),
    (b"+OK\r\n", (51000, 8080), None),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (1, 2), "http2"),
    (b"\x00\x00\x12\x04\x00\x00\x00\x00\x00" + b"\x00" * 18, (50051, 40000), "http2"),
    (b"HTTP/1.1 200 OK\r\n", (80, 40000), "http"),
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", (5432, 40000), "postgresql"),
    (b"Q\x00\x00\x00\x0eSELECT 1;\x00", (9999, 40000), "postgresql"),
    (b"\x09\x00\x00\x00\x03SELECT 1", (9999, 40000), "mysql"),
    (b"hello there, general kenobi", (80, 40000), None),
    (b"get user:1 user:2\r\n", (40000, 8080), "memcached"),
    (b"set k 0 3600 5\r\nhello\r\n", (40000, 8080), "memcached"),
    (b"mg k v t\r\n", (40000, 8080), "memcached"),
    (b"get k\r\n", (40000, 6379), "redis"),  # Redis takes inline commands too
    (b"VALUE k 0 5\r\nhello\r\nEND\r\n", (8080, 40000), "memcached"),
    (b"STORED\r\n", (11211, 40000), "memcached"),
    (b"STORED\r\n", (8080, 40000), None),
    (b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01" + bytes(12) + b"k", (1, 2),
     "memcached"),
    (b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x09" + bytes(12) + b"k", (1, 2),
     None),  # body longer than the key a get carries: not a get
    (b"\x81\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x05" + bytes(12), (11211, 40000),
     "memcached"),
    (b"get\r\n", (40000, 8080), None),

    (b"", (80, 40000), None),
])
def test_infer_cases(data, ports, proto):
    assert infer(data, EGRESS, ports[0], ports[1], "tcp") == proto


def test_infer_never_raises_on_noise():
    for i in range(2000):
        data = os.urandom(i % 64)
        for transport in ("tcp", "udp"):
            infer(data, i % 2, 1000 + i, 53 if i % 3 == 0 else 6379, transport)


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("side", [True, False, None])
def test_new_parser_contract(proto, side):
    p = new_parser(proto, side)
    assert p.protocol in (proto, "http2")
    assert p.feed.__call__ and p.flush("closed") == []
    if side is not None:
        assert p.req_dir == (EGRESS if side else INGRESS)
