"""The compiled DNS parser against the Python one it replaced (tests/protocols/
equivalence.py; see test_compiled_equivalence_sql.py for the method): UDP datagrams and TCP streams,
random messages (compression pointers good, looping and out of range, names too long
for the compiled reader's buffer, every decoded answer type and rarer ones left to
dnspython, cut records) and golden flows reshuffled; identical records, STATS and
state after every chunk, and `parse` (the registry's inference uses it) identical on
every message."""

from __future__ import annotations

import random
from functools import partial

from agent.protocols.base import Chunk

from . import equivalence as eq

pytestmark = eq.needs_history(eq.PYTHON_PARSERS)


def _label_name(rnd: random.Random) -> bytes:
    r = rnd.random()
    if r < 0.03:
        return b"\x3f" + b"a" * 63  # no end: runs past the message, or into what follows
    if r < 0.06:
        return (b"\x3f" + b"L" * 63) * 20 + b"\x00"  # 1 280 bytes: the long-name path
    labels = rnd.choice([[b"www", b"example", b"test"], [b"example", b"test"], [],
                         [b"x\xff\x00y", b"t"], [b"_sip", b"_tcp", b"a"]])
    out = b"".join(bytes([len(x)]) + x for x in labels)
    if rnd.random() < 0.3:
        return out + rnd.choice([b"\xc0\x0c", b"\xc0\x00", b"\xc1\xff", b"\xc0", b"\x80"])
    return out + b"\x00"


def _rr(rnd: random.Random) -> bytes:
    rtype, rdata = rnd.choice([
        (1, bytes([10, 1, 2, rnd.randrange(256)])), (1, b"\x01\x02\x03"),
        (28, bytes(15) + b"\x04"), (28, b"\x20\x01" + bytes(14)),
        (5, b"\x03www\xc0\x0c"), (12, b"\x03ptr\x00"), (2, b"\xc0\x0c"), (5, b"\x05ab"),
        (15, b"\x00\x0a\x04mail\xc0\x0c"), (15, b"\x00\x0a"),
        (16, b"\x0bhello world\x03a\xffb"), (16, b"\x09short"),
        (33, b"\x00\x01\x00\x02\x13\xc4\x03srv\x00"), (33, b"\x00\x01"),
        (6, b"\x02ns\x00\x04host\x00" + bytes(20)), (6, b"\x01"), (99, b"\x04abcd"),
        (41, b""), (257, b"\x00\x05issueca.test"),
    ])
    rdlen = len(rdata) if rnd.random() > 0.05 else rnd.choice([0, 300, len(rdata) + 2])
    return (_label_name(rnd) + rtype.to_bytes(2, "big") + b"\x00\x01\x00\x00\x0e\x10"
            + rdlen.to_bytes(2, "big") + rdata)


def dns_message(rnd: random.Random) -> bytes:
    ident = rnd.choice([1, 2, 3, 0xBEEF, rnd.randrange(65536)])
    qr = rnd.random() < 0.5
    opcode = rnd.choice([0, 0, 0, 2, 5, 6])
    flags = (qr << 15) | (opcode << 11) | 0x0100 | (rnd.choice([0, 0, 2, 3, 5, 11]) if qr else 0)
    qd = rnd.choice([1, 1, 1, 0, 2, 5])
    an = rnd.choice([0, 1, 2, 20]) if qr else 0
    body = b"".join(_label_name(rnd) + rnd.choice([b"\x00\x01", b"\x00\x1c", b"\x00\x0f",
                                                    b"\x00\x00", b"\xff\x00"]) + b"\x00\x01"
                    for _ in range(min(qd, 2)))
    body += b"".join(_rr(rnd) for _ in range(min(an, 3)))
    msg = (ident.to_bytes(2, "big") + flags.to_bytes(2, "big") + qd.to_bytes(2, "big")
           + an.to_bytes(2, "big") + b"\x00\x00\x00\x00" + body)
    if rnd.random() < 0.05:
        msg = msg[:rnd.randint(0, len(msg))]
    return msg


def _tcp(msg: bytes, rnd: random.Random) -> bytes:
    ln = len(msg) if rnd.random() > 0.02 else rnd.choice([0, 5, len(msg) + 3])
    return ln.to_bytes(2, "big") + msg


def udp_chunks(rnd: random.Random, stream: list[tuple[int, bytes]],
               capture: int | None) -> list[Chunk]:
    out = []
    for k, (d, data) in enumerate(stream):
        kept = data if capture is None else data[:capture]
        if rnd.random() < 0.05:
            kept = kept[:rnd.randint(0, len(kept))]
        out.append(Chunk(d, kept, len(data), k * 512, 1000 + k, 7 + d, None))
    return out


def conversation(rnd: random.Random) -> list[tuple[int, bytes]]:
    out = []
    for _ in range(rnd.randint(1, 10)):
        q = dns_message(rnd)
        out.append((0, q))
        if rnd.random() < 0.8 and len(q) >= 2:
            # An answer with the same id, or any message from the other side.
            a = q[:2] + dns_message(rnd)[2:] if rnd.random() < 0.7 else dns_message(rnd)
            out.append((1, a))
    return out


def test_parse_compiled_equals_python():
    py = eq.load_baseline("dns", eq.PYTHON_PARSERS)
    from agent.protocols import dns

    rnd = random.Random(53)
    for _ in range(20 * eq.EXAMPLES):
        msg = dns_message(rnd)
        assert dns.parse(msg) == py.parse(msg), msg
        cut = msg[:rnd.randint(0, len(msg))]
        assert dns.parse(cut) == py.parse(cut), cut


def test_dns_compiled_equals_python():
    py = eq.load_baseline("dns", eq.PYTHON_PARSERS)
    from agent.protocols import dns

    golden = {t: [] for t in ("udp", "tcp")}
    for conn, transport in zip(eq.golden_messages("dns"), _golden_transports(), strict=True):
        golden[transport].append(conn)
    rnd = random.Random(5353)
    records = 0
    for k in range(4 * eq.EXAMPLES):
        transport = rnd.choice(["udp", "tcp"])
        if k % 2:
            stream = conversation(rnd)
            if transport == "tcp":
                stream = [(d, _tcp(m, rnd)) for d, m in stream]
        else:
            stream = eq.reshuffled(rnd, golden[transport])
        if rnd.random() < 0.2:
            stream = [(1 - d, b) for d, b in stream]
        capture = rnd.choice([None, 1024, 64, 16, 300])
        if transport == "udp":
            chunks = udp_chunks(rnd, stream, capture)
        else:
            noise = rnd.choice([0.0, 0.0, 0.01, 0.05, 0.2])
            chunks = list(eq.chunked(rnd, stream, capture, rnd.random() < 0.7, noise))
        side = rnd.choice([True, True, False, None])
        told = rnd.choice([transport, None])  # the registry says; else the parser guesses
        records += eq.same_run(partial(py.DnsParser, side, told),
                            partial(dns.DnsParser, side, told), py.STATS, dns.STATS,
                            chunks, rnd.choice(["closed", "", "timeout"]), extra=("tcp",))
    assert records > eq.EXAMPLES


def _golden_transports() -> list[str]:
    from .golden import captures, load_capture

    return [doc["transport"] for doc in map(load_capture, captures("dns"))
            for _ in doc["connections"]]
