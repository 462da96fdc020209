"""memcached: text, meta and binary commands, quiet and noreply matching, spans' content,
truncation and the server's own quirks (golden streams are in golden/memcached/)."""

from __future__ import annotations

import struct

import pytest

from agent.protocols import memcached
from agent.protocols.base import EGRESS, INGRESS, MAX_BUFFER, MAX_PENDING

from .test_proto_bad_input import Conn


def _bin(op: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"", opaque: int = 0,
         magic: int = 0x80, status: int = 0) -> bytes:
    body = extras + key + value
    return struct.pack(">BBHBBHIIQ", magic, op, len(key), len(extras), 0, status, len(body),
                       opaque, 0) + body


def _ops(c: Conn) -> list[tuple]:
    return [(r.operation, r.status, r.status_code, r.incomplete) for r in c.records]


def test_storage_retrieval_and_outcomes():
    c = Conn("memcached")
    c.send(EGRESS, b"set user:1 0 60 5\r\nhello\r\n")
    c.send(INGRESS, b"STORED\r\n")
    c.send(EGRESS, b"get user:1 user:2 user:3\r\n")
    c.send(INGRESS, b"VALUE user:1 0 5\r\nhello\r\nVALUE user:3 0 2\r\nhi\r\nEND\r\n")
    c.send(EGRESS, b"get nope\r\n")
    c.send(INGRESS, b"END\r\n")
    c.send(EGRESS, b"delete nope\r\n")
    c.send(INGRESS, b"NOT_FOUND\r\n")
    c.send(EGRESS, b"add user:1 0 0 1\r\nx\r\n")
    c.send(INGRESS, b"NOT_STORED\r\n")
    c.send(EGRESS, b"incr user:1 1\r\n")
    c.send(INGRESS, b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
    assert _ops(c) == [("set", "ok", "", ""), ("get", "ok", "", ""), ("get", "ok", "", ""),
                       ("delete", "ok", "NOT_FOUND", ""), ("add", "ok", "NOT_STORED", ""),
                       ("incr", "error", "CLIENT_ERROR", "")]
    get = c.records[1]
    assert get.attributes == {"db.system": "memcached", "db.operation.name": "get",
                              "db.query.text": "get user:1 user:2 user:3",
                              "db.operation.batch.size": 3, "db.response.returned_rows": 2}
    assert c.records[2].attributes["db.response.returned_rows"] == 0  # a miss is no error
    assert c.records[3].attributes["db.response.status_code"] == "NOT_FOUND"
    assert c.records[5].error.startswith("CLIENT_ERROR cannot increment")
    assert (get.request.size, get.response.size) == (26, 52)


def test_values_never_reach_a_record():
    c = Conn("memcached")
    secret = b"4111111111111111 top-secret-token"
    c.send(EGRESS, b"set card 0 0 %d\r\n%s\r\n" % (len(secret), secret))
    c.send(INGRESS, b"STORED\r\n")
    c.send(EGRESS, b"get card\r\n")
    c.send(INGRESS, b"VALUE card 0 %d\r\n%s\r\nEND\r\n" % (len(secret), secret))
    c.send(EGRESS, b"ms card %d T0\r\n%s\r\n" % (len(secret), secret))
    c.send(INGRESS, b"HD\r\n")
    c.send(EGRESS, _bin(0x01, b"card", bytes(8), secret, 1))
    c.send(INGRESS, _bin(0x01, magic=0x81, opaque=1))
    assert len(c.records) == 4
    text = repr([(r.operation, r.attributes, r.error) for r in c.records])
    assert b"top-secret".decode() not in text and "4111" not in text


def test_card_number_in_a_key_is_masked():
    c = Conn("memcached")
    c.send(EGRESS, b"get card:4111111111111111\r\n")
    c.send(INGRESS, b"END\r\n")
    (r,) = c.records
    assert r.attributes["db.query.text"] == "get card:?"


def test_many_keys_are_counted_not_all_shown():
    c = Conn("memcached")
    keys = [b"k%d" % i for i in range(40)]
    c.send(EGRESS, b"gets " + b" ".join(keys) + b"\r\n")
    c.send(INGRESS, b"END\r\n")
    (r,) = c.records
    assert r.attributes["db.operation.batch.size"] == 40
    assert r.attributes["db.query.text"] == "gets k0 k1 k2 k3 k4 k5 k6 k7 k8 k9 ...(+30)"


def test_noreply_commands_are_recorded_at_once_and_skip_matching():
    c = Conn("memcached")
    out = c.send(EGRESS, b"set a 0 0 1 noreply\r\n1\r\ndelete b noreply\r\nincr c 1 noreply\r\n"
                         b"get a\r\n")
    assert [(r.operation, r.status, r.response) for r in out] == [
        ("set", "unset", None), ("delete", "unset", None), ("incr", "unset", None)]
    assert all(r.attributes["memcached.noreply"] for r in out)
    c.send(INGRESS, b"VALUE a 0 1\r\n1\r\nEND\r\n")
    assert c.records[-1].operation == "get" and c.records[-1].response.size == 21
    assert not c.p.pending


def test_noreply_block_longer_than_announced_keeps_pairs_in_step():
    # memcached reads the announced 3 bytes + 2, then answers ERROR to the stray "\r\n".
    c = Conn("memcached")
    c.send(EGRESS, b"set k 0 0 3 noreply\r\nabcde\r\nget k\r\n")
    c.send(INGRESS, b"ERROR\r\nEND\r\n")
    assert _ops(c) == [("set", "unset", "", ""), ("(empty line)", "error", "ERROR", ""),
                       ("get", "ok", "", "")]


def test_pipelined_requests_in_one_write_and_replies_in_pieces():
    c = Conn("memcached")
    c.send(EGRESS, b"".join(b"set k%d 0 0 2\r\nv%d\r\n" % (i, i) for i in range(5))
           + b"get k0 k4\r\nversion\r\nstats\r\n")
    replies = (b"STORED\r\n" * 5 + b"VALUE k0 0 2\r\nv0\r\nVALUE k4 0 2\r\nv4\r\nEND\r\n"
               + b"VERSION 1.6.18\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\n")
    for i in range(0, len(replies), 7):
        c.send(INGRESS, replies[i:i + 7])
    assert [r.operation for r in c.records] == ["set"] * 5 + ["get", "version", "stats"]
    assert all(r.status == "ok" and not r.incomplete for r in c.records)
    assert c.records[-1].response.size == 32


def test_long_value_is_skipped_by_length_not_buffered():
    c = Conn("memcached")
    c.send(EGRESS, b"set big 0 0 100000\r\n" + b"x" * 1000, size=65536)
    assert not c.p.streams[EGRESS].buf and c.p.streams[EGRESS].skip == 100002 - 65516
    c.send(EGRESS, b"x" * 100, size=100002 - 65516)
    c.send(EGRESS, b"get big\r\n")
    c.send(INGRESS, b"STORED\r\n")
    c.send(INGRESS, b"VALUE big 0 100000\r\n" + b"x" * 1000, size=100027)
    assert not c.p.streams[INGRESS].buf
    set_, get = c.records
    assert (set_.operation, set_.incomplete, set_.request.size) == ("set", "truncated", 100022)
    assert (get.operation, get.incomplete, get.response.size) == ("get", "truncated", 100027)
    assert get.attributes["db.response.returned_rows"] == 1


def test_meta_quiet_mode_and_opaque_matching():
    c = Conn("memcached")
    c.send(EGRESS, b"mg a v q O1 k\r\nmg b v q O2 k\r\nms c 2 q\r\nhi\r\nmd d q\r\nmn\r\n")
    # a misses (EN suppressed), b hits, ms succeeds (HD suppressed), md fails (NF shown).
    c.send(INGRESS, b"VA 2 O2 kb\r\nbb\r\nNF\r\nMN\r\n")
    assert [(r.operation, r.status_code, r.response is not None,
             r.attributes.get("memcached.noreply", False)) for r in c.records] == [
        ("mg", "", False, True), ("mg", "", True, False), ("ms", "", False, True),
        ("md", "NF", True, False), ("mn", "", True, False)]
    assert [r.attributes.get("db.response.returned_rows") for r in c.records[:2]] == [0, 1]
    assert not c.p.pending


def test_quiet_requests_a_reply_cannot_tell_apart_are_not_reported_whole():
    c = Conn("memcached")
    c.send(EGRESS, b"mg a v q\r\nmg b v q\r\nmn\r\n")  # no O or k flag
    c.send(INGRESS, b"VA 1\r\nx\r\nMN\r\n")
    assert [(r.operation, r.incomplete) for r in c.records] == [
        ("mg", "ambiguous"), ("mg", "ambiguous"), ("mn", "")]


def test_binary_quiet_multiget_then_noop():
    c = Conn("memcached")
    c.send(EGRESS, _bin(0x0D, b"a", opaque=1) + _bin(0x0D, b"b", opaque=2)
           + _bin(0x0D, b"c", opaque=3) + _bin(0x0A, opaque=4))
    c.send(INGRESS, _bin(0x0D, b"b", b"\0\0\0\0", b"vb", 2, magic=0x81)
           + _bin(0x0A, opaque=4, magic=0x81))
    assert [(r.operation, r.response is not None, r.attributes["db.response.returned_rows"]
             if r.operation == "get" else None) for r in c.records] == [
        ("get", False, 0), ("get", True, 1), ("get", False, 0), ("noop", True, None)]
    assert all(r.attributes["memcached.protocol"] == "binary" for r in c.records)
    assert c.records[1].attributes["db.query.text"] == "get b"


def test_binary_status_codes():
    c = Conn("memcached")
    for i, (status, msg) in enumerate(((0x01, b"Not found"), (0x02, b"Data exists for key."),
                                       (0x06, b"Non-numeric server-side value"),
                                       (0x81, b"Unknown command"))):
        c.send(EGRESS, _bin(0x00, b"k", opaque=i))
        c.send(INGRESS, _bin(0x00, value=msg, opaque=i, magic=0x81, status=status))
    assert [(r.status, r.status_code) for r in c.records] == [
        ("ok", "NOT_FOUND"), ("ok", "EXISTS"), ("error", "NON_NUMERIC"),
        ("error", "UNKNOWN_COMMAND")]
    assert c.records[3].error == "Unknown command"


def test_binary_stats_reply_is_many_frames():
    c = Conn("memcached")
    c.send(EGRESS, _bin(0x10, opaque=9))
    frames = b"".join(_bin(0x10, b"stat%d" % i, value=b"%d" % i, opaque=9, magic=0x81)
                      for i in range(50)) + _bin(0x10, opaque=9, magic=0x81)
    c.send(INGRESS, frames[:700])
    assert not c.records
    c.send(INGRESS, frames[700:])
    (r,) = c.records
    assert (r.operation, r.status, r.response.size) == ("stats", "ok", len(frames))


def test_binary_sasl_credentials_are_never_read():
    c = Conn("memcached")
    c.send(EGRESS, _bin(0x21, b"PLAIN", value=b"\0user\0hunter2-password", opaque=1))
    c.send(INGRESS, _bin(0x21, value=b"Authenticated", opaque=1, magic=0x81))
    (r,) = c.records
    assert r.operation == "sasl_auth" and "hunter2" not in repr(r)


def test_too_long_key_reply_drops_the_earlier_replies():
    # memcached 1.6: a get whose key is over 250 bytes answers CLIENT_ERROR and drops the
    # replies still queued for the commands before it in the same read.
    c = Conn("memcached")
    c.send(EGRESS, b"incr a 1\r\ntouch b 1\r\nget " + b"x" * 300 + b"\r\nversion\r\n")
    c.send(INGRESS, b"CLIENT_ERROR bad command line format\r\nVERSION 1.6.18\r\n")
    assert _ops(c) == [("incr", "unset", "", "reply dropped by server"),
                       ("touch", "unset", "", "reply dropped by server"),
                       ("get", "error", "CLIENT_ERROR", ""), ("version", "ok", "", "")]


def test_reply_to_a_request_cut_by_the_capture_is_salvaged():
    c = Conn("memcached")
    line = b"get " + b" ".join(b"key%04d" % i for i in range(300)) + b"\r\n"
    c.send(EGRESS, line[:1024], size=len(line))  # 1 KiB prefix of a 2.4 KiB line
    c.send(INGRESS, b"END\r\n")
    c.send(EGRESS, b"get a\r\n")
    c.send(INGRESS, b"END\r\n")
    (first, second) = c.records
    assert first.operation == "get" and "truncated" in first.incomplete
    assert first.attributes["db.operation.batch.size"] >= 100
    assert (second.operation, second.status) == ("get", "ok")


def test_connection_seen_midway_resyncs_on_a_command():
    c = Conn("memcached", client_side=None)
    c.send(EGRESS, b"lue\r\nget a\r\n", lost=500)
    c.send(INGRESS, b"0 5\r\nhello\r\nEND\r\n", lost=300)
    c.send(EGRESS, b"get b\r\n")
    c.send(INGRESS, b"VALUE b 0 1\r\nb\r\nEND\r\n")
    # Records until the queue drains are in doubt; none reported whole is wrong.
    assert all(r.incomplete for r in c.records[:-1])
    assert c.records[-1].attributes["db.query.text"] == "get b"
    assert c.records[-1].response.size == 21


def test_garbage_and_caps():
    c = Conn("memcached")
    c.send(EGRESS, b"\x01\x02garbage\r\n")
    assert memcached.STATS["bad_frame"] > 0
    c.send(EGRESS, b"get a\r\n")  # a chunk starting with a command resynchronises
    c.send(INGRESS, b"END\r\n")
    assert c.records[-1].operation == "get"
    c.send(EGRESS, b"get " + b"k" * 200 * 400)  # a line without end
    assert len(c.p.streams[EGRESS].buf) <= MAX_BUFFER
    d = Conn("memcached")
    before = memcached.STATS["pending_overflow"]
    d.send(EGRESS, b"mn\r\n" * (MAX_PENDING + 10))
    assert len(d.p.pending) == MAX_PENDING
    assert memcached.STATS["pending_overflow"] - before == 10


@pytest.mark.parametrize("side", [True, False, None])
def test_either_side(side):
    c = Conn("memcached", client_side=side)
    req, resp = (EGRESS, INGRESS) if side is not False else (INGRESS, EGRESS)
    c.send(req, b"mg k v\r\n")
    c.send(resp, b"VA 1\r\nv\r\n")
    c.send(req, _bin(0x0B, opaque=3))
    c.send(resp, _bin(0x0B, value=b"1.6.18", opaque=3, magic=0x81))
    assert [(r.operation, r.status) for r in c.records] == [("mg", "ok"), ("version", "ok")]
