"""Bad input: garbage, noise on text protocols, absurd lengths, connections cut short,
memory caps and the counters that say what was dropped."""

from __future__ import annotations

import os
import random

import pytest

from agent.protocols import http1, redis
from agent.protocols.base import EGRESS, INGRESS, MAX_BUFFER, MAX_PENDING, Chunk
from agent.protocols.registry import PROTOCOLS, STATS, new_parser


class Conn:
    """Feeds one connection from the client's side, keeping offsets."""

    def __init__(self, proto: str, client_side: bool | None = True) -> None:
        self.p = new_parser(proto, client_side)
        self.off = [0, 0]
        self.t = 1_000
        self.records = []

    def send(self, d: int, data: bytes, size: int | None = None, lost: int = 0) -> list:
        size = len(data) if size is None else size
        self.off[d] += lost
        self.t += 10
        out = self.p.feed(Chunk(d, data, size, self.off[d], self.t, 1, None))
        self.off[d] += size
        self.records += out
        return out

    def close(self) -> list:
        out = self.p.flush("closed")
        self.records += out
        return out


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_random_garbage_is_survived_and_bounded(proto):
    rnd = random.Random(7)
    c = Conn(proto)
    for _ in range(300):
        c.send(rnd.randint(0, 1), os.urandom(rnd.randint(0, 2000)), lost=rnd.choice([0, 0, 5]))
        for s in c.p.streams:
            assert len(s.buf) <= MAX_BUFFER
    c.close()


def test_binary_noise_on_http_then_a_real_exchange():
    c = Conn("http")
    c.send(EGRESS, bytes(range(256)) * 4)
    c.send(INGRESS, os.urandom(700))
    c.send(EGRESS, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert [(r.operation, r.status_code) for r in c.records] == [("GET /ok", "200")]


def test_two_gigabyte_content_length_is_skipped_not_buffered():
    c = Conn("http")
    head = b"POST /up HTTP/1.1\r\nContent-Length: 2000000000\r\n\r\n"
    c.send(EGRESS, head + b"x" * 1000, size=1_000_000)
    st = c.p.streams[EGRESS]
    assert len(st.buf) == 0 and st.skip == 2_000_000_000 - (1_000_000 - len(head))
    for _ in range(10):
        c.send(EGRESS, b"y" * 100, size=65536)  # body keeps streaming, never buffered
        assert len(st.buf) == 0
    c.send(INGRESS, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
    (r,) = c.records
    assert (r.operation, r.status_code, r.incomplete) == ("POST /up", "413", "truncated")


def test_connection_closed_midway_flushes_incomplete_records():
    for proto, req in (("http", b"GET /slow HTTP/1.1\r\n\r\n"),
                       ("redis", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
                       ("postgresql", b"Q\x00\x00\x00\x0eSELECT 1;\x00"),
                       ("mysql", b"\x09\x00\x00\x00\x03SELECT 1"),
                       ("memcached", b"get k\r\n"),
                       ("memcached", b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01"
                                     + bytes(12) + b"k")):
        c = Conn(proto)
        c.send(EGRESS, req)
        (r,) = c.close()
        assert r.incomplete == "closed" and r.response is None and r.operation, proto
        assert c.send(EGRESS, req) == []  # a closed parser ignores what comes after


def test_response_cut_midway_by_close():
    c = Conn("http")
    c.send(EGRESS, b"GET /big HTTP/1.1\r\n\r\n")
    c.send(INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc")
    assert c.records == []
    (r,) = c.close()
    assert r.operation == "GET /big" and r.incomplete == "closed"


def test_header_block_never_ending_is_capped():
    c = Conn("http")
    c.send(EGRESS, b"GET / HTTP/1.1\r\n")
    for _ in range(100):
        c.send(EGRESS, b"X-Filler: " + b"a" * 1000 + b"\r\n")
        assert len(c.p.streams[EGRESS].buf) <= MAX_BUFFER
    assert http1.STATS["head_too_long"] + http1.STATS["desync"] > 0


def test_pending_requests_are_capped_and_counted():
    c = Conn("redis")
    before = redis.STATS["pending_overflow"]
    cmd = b"*1\r\n$4\r\nPING\r\n"
    c.send(EGRESS, cmd * (MAX_PENDING + 50))
    assert len(c.p.pending) == MAX_PENDING
    assert redis.STATS["pending_overflow"] - before == 50
    evicted = [r for r in c.records if r.incomplete == "evicted"]
    assert len(evicted) == 50


def test_one_byte_writes():
    c = Conn("redis")
    for b in b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n":
        c.send(EGRESS, bytes([b]))
    for b in b"+OK\r\n":
        c.send(INGRESS, bytes([b]))
    (r,) = c.records
    assert (r.operation, r.status, r.request.size, r.response.size) == ("SET", "ok", 27, 5)


def test_redis_error_and_resp3_push_are_told_apart():
    c = Conn("redis")
    c.send(EGRESS, b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
    c.send(INGRESS, b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
    c.send(INGRESS, b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n")
    c.send(EGRESS, b"*1\r\n$4\r\nPING\r\n")
    c.send(INGRESS, b"-NOPERM no\r\n")
    assert [(r.operation, r.status, r.status_code) for r in c.records] == [
        ("SUBSCRIBE", "ok", ""), ("PING", "error", "NOPERM")]


def test_postgres_ssl_request_then_tls_stops_parsing():
    c = Conn("postgresql")
    c.send(EGRESS, b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    c.send(INGRESS, b"S")
    c.send(EGRESS, b"\x16\x03\x01\x02\x00" + os.urandom(500))  # TLS ClientHello
    assert c.records == [] and c.p.closed


def test_stats_are_exposed_per_protocol():
    assert set(STATS) >= {"http", "redis", "dns", "postgresql", "mysql", "memcached"}
    for counter in STATS.values():
        assert all(isinstance(v, int) for v in counter.values())


def test_gap_inside_known_length_keeps_sync():
    c = Conn("postgresql")
    sql = b"SELECT '" + b"x" * 3000 + b"'\x00"
    msg = b"Q" + (4 + len(sql)).to_bytes(4, "big") + sql
    c.send(EGRESS, msg[:1024], size=len(msg))  # 1 KiB prefix of a 3 KiB query
    c.send(INGRESS, b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I")
    c.send(EGRESS, b"Q\x00\x00\x00\x0eSELECT 2;\x00")
    c.send(INGRESS, b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I")
    assert [(r.operation, r.incomplete) for r in c.records] == [("SELECT", "truncated"),
                                                                ("SELECT", "")]
    assert c.records[0].request.size == len(msg)


def test_prepared_statements_are_capped_in_number_and_size():
    from agent.protocols import postgresql

    c = Conn("postgresql")
    for i in range(postgresql.MAX_STATEMENTS + 100):
        sql = b"SELECT " + b"x" * 6000 + b"\x00"
        name = b"s%d\x00" % i
        body = name + sql + b"\x00\x00"
        c.send(EGRESS, b"P" + (4 + len(body)).to_bytes(4, "big") + body
               + b"S\x00\x00\x00\x04")
    assert len(c.p.statements) <= postgresql.MAX_STATEMENTS
    assert max(len(s) for s in c.p.statements.values()) <= postgresql.MAX_SQL


def test_http2_streams_are_capped():
    from hpack import Encoder

    from agent.protocols import http2

    c = Conn("http2")
    enc = Encoder()
    c.send(EGRESS, http2.PREFACE)
    for sid in range(1, 2 * (http2.MAX_STREAMS + 40), 2):
        block = enc.encode([(":method", "GET"), (":path", f"/s{sid}"), (":scheme", "http"),
                            (":authority", "a")])
        frame = len(block).to_bytes(3, "big") + bytes([1, 0x4]) + sid.to_bytes(4, "big")
        c.send(EGRESS, frame + block)
    assert len(c.p.streams_) <= http2.MAX_STREAMS
    assert sum(r.incomplete == "evicted" for r in c.records) == 40


# -- hostile values found by review: each used to crash a parser, shift every later
# record of its connection by one, leak a secret, or grow without bound --------------

def test_http_status_above_599_does_not_crash_or_lose_the_request():
    c = Conn("http")
    for status in (b"200 OK", b"999 Request denied", b"200 OK"):
        c.send(EGRESS, b"GET / HTTP/1.1\r\nHost: x:8\xb2\r\n\r\n")  # and a latin-1 "port"
        c.send(INGRESS, b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    assert [r.status_code for r in c.records] == ["200", "999", "200"]
    assert not c.p.pending


def test_http2_unicode_digits_in_status_are_not_numbers():
    import hpack

    def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + \
            sid.to_bytes(4, "big") + payload

    req, resp = hpack.Encoder(), hpack.Encoder()
    c = Conn("http2")
    c.send(EGRESS, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(1, 5, 1, req.encode(
        [(":method", "POST"), (":path", "/svc/M"), (":scheme", "http"),
         (":authority", "x"), ("content-type", "application/grpc")])))
    c.send(INGRESS, frame(1, 4, 1, resp.encode([(":status", "\xb2\xb3")])) +
           frame(1, 5, 1, resp.encode([("grpc-status", "\xb9")])))
    (r,) = c.records
    assert r.operation == "/svc/M" and "rpc.grpc.status_code" not in r.attributes


def test_redis_array_reply_that_looks_like_a_push_is_data_unless_subscribed():
    def cmd(*args: bytes) -> bytes:
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    c = Conn("redis")
    c.send(EGRESS, cmd(b"LRANGE", b"events", b"0", b"-1"))
    c.send(INGRESS, b"*2\r\n$14\r\nuser_subscribe\r\n$5\r\nlogin\r\n")
    c.send(EGRESS, cmd(b"GET", b"a"))
    c.send(INGRESS, b"$1\r\n1\r\n")
    assert [r.operation for r in c.records] == ["LRANGE", "GET"]
    assert not c.p.pending


def _my(seq: int, body: bytes) -> bytes:
    return len(body).to_bytes(3, "little") + bytes([seq]) + body


def test_mysql_change_user_is_answered_and_later_queries_stay_matched():
    ok = _my(1, b"\x00\x00\x00\x02\x00\x00\x00")
    err = _my(1, b"\xff\x15\x04#28000Access denied")
    c = Conn("mysql")
    c.send(EGRESS, _my(0, b"\x11app\x00\x14" + b"S" * 20 + b"shop\x00"))
    c.send(INGRESS, ok)
    c.send(EGRESS, _my(0, b"\x11bad\x00\x14" + b"S" * 20 + b"shop\x00"))
    c.send(INGRESS, err)
    c.send(EGRESS, _my(0, b"\x03SELECT 2"))
    c.send(INGRESS, ok)
    assert [(r.operation, r.status) for r in c.records] == [
        ("CHANGE_USER", "ok"), ("CHANGE_USER", "error"), ("SELECT", "ok")]
    assert c.records[1].status_code == "1045" and not c.p.pending


def test_mysql_statements_cut_by_the_capture_are_forgotten_when_closed():
    big = ("SELECT * FROM t WHERE a IN (" + ",".join(["?"] * 600) + ")").encode()
    c = Conn("mysql")
    for sid in range(1, 3001):
        prep = _my(0, b"\x16" + big)
        c.send(EGRESS, prep[:1024], size=len(prep))
        c.send(INGRESS, _my(1, b"\x00" + sid.to_bytes(4, "little") + bytes(6)))
        c.send(EGRESS, _my(0, b"\x19" + sid.to_bytes(4, "little")))
    assert not c.p.statements and not c.p.partial


@pytest.mark.parametrize("sql, secret", [
    ("INSERT INTO cards VALUES ('4111 1111 1111 1111 123')", "4111"),
    ("INSERT INTO cards VALUES ('4111111111111111 12/27')", "4111"),
    ("INSERT INTO t VALUES ('card_4111111111111111')", "4111"),
    ("ALTER USER bob PASSWORD E'hunter2'", "hunter2"),
    ("ALTER ROLE bob PASSWORD $pw$hunter2$pw$", "hunter2"),
    ("ALTER USER bob PASSWORD 'SCRAM-SHA-256$4096:kkkkkkkk", "SCRAM"),  # cut by the capture
])
def test_sql_secrets_are_masked(sql, secret):
    from agent.protocols import redact

    assert secret not in redact.sql(sql)


def test_sql_redaction_keeps_ordinary_numbers():
    from agent.protocols import redact

    for sql in ("SELECT * FROM t WHERE id = 4111111111111112",  # not Luhn-valid
                "SELECT * FROM t WHERE ts > 1764200000000 AND n = 42"):
        assert redact.sql(sql) == sql


def test_repeated_content_length_list_keeps_keep_alive_framing():
    c = Conn("http")
    for _ in range(3):
        c.send(EGRESS, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        c.send(INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello")
    assert [r.status_code for r in c.records] == ["200"] * 3 and not c.p.pending


def test_database_error_messages_are_masked_like_sql():
    import struct

    c = Conn("mysql")
    c.send(EGRESS, _my(0, b"\x03INSERT INTO t VALUES ('x')"))
    c.send(INGRESS, _my(1, b"\xff\x26\x04#23000Duplicate entry '4111111111111111' for key 'c'"))
    body = b"SERROR\x00C23505\x00MKey (card)=(4111111111111111) already exists\x00\x00"
    pg = Conn("postgresql")
    q = b"INSERT INTO t VALUES (1)\x00"
    pg.send(EGRESS, b"Q" + struct.pack(">I", len(q) + 4) + q)
    pg.send(INGRESS, b"E" + struct.pack(">I", len(body) + 4) + body
            + b"Z" + struct.pack(">I", 5) + b"I")
    for r in c.records + pg.records:
        assert r.status == "error" and "4111" not in r.error, r.error


@pytest.mark.parametrize("tp, kept", [
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
    ("00-" + "g" * 32 + "-b7ad6b7169203331-01", False),  # not hex
    ("00-" + "0" * 32 + "-b7ad6b7169203331-01", False),  # all-zero trace id
    ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),  # upper case
])
def test_only_valid_traceparents_are_kept(tp, kept):
    c = Conn("http")
    c.send(EGRESS, b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: r1\r\ntraceparent: "
           + tp.encode() + b"\r\n\r\n")
    c.send(INGRESS, b"HTTP/1.1 204 No Content\r\n\r\n")
    (r,) = c.records
    assert ("traceparent" in r.trace_headers) is kept
    assert r.trace_headers["x-request-id"] == "r1"
