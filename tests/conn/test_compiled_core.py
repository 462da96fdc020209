"""The compiled per-event core (agent/probes/_events.pyx, agent/conn/_core.pyx) against
the Python code it replaced (REV, loaded from git under other names): the same ring
records decoded to the same fields, annotated with the same offsets, roles, flags and
connection ids, and turned into the same spans (every field but the random span id),
on random protocol-shaped event streams (lost, late, reordered and wrapping sequence
numbers, mid-way connections, reused socket addresses, UDP peers, short and lying
records) and, when bench_replay has recorded it, on the demo stream."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import random
import subprocess
import sys
import types

import pytest

from agent.conn.assembler import SpanAssembler
from agent.probes import abi
from agent.probes.events import SocketEvent

REV = "c41447f"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_OLD = {  # module name here -> path at REV, and the imports rewritten to the old ones
    "zt_old_events": "agent/probes/events.py",
    "zt_old_spans": "agent/conn/spans.py",
    "zt_old_tracker": "agent/conn/tracker.py",
    "zt_old_assembler": "agent/conn/assembler.py",
}
_RENAMES = {"agent.probes.events": "zt_old_events", "agent.conn.spans": "zt_old_spans",
            "agent.conn.tracker": "zt_old_tracker"}


def _old(name: str) -> types.ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    try:
        src = subprocess.run(["git", "-C", ROOT, "show", f"{REV}:{_OLD[name]}"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"the Python code of {REV} is not in this checkout's history")
    for new, old in _RENAMES.items():
        src = src.replace(f"from {new} import", f"from {old} import")
    mod = types.ModuleType(name)
    mod.__file__ = os.path.join(ROOT, _OLD[name])
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


@pytest.fixture(scope="module")
def old():
    """The Python code of REV; None in a tree without git history (the ASan run of
    scripts/asan-tests.sh copies sources only): the compiled side then still runs
    every stream, for the sanitizer, with nothing to compare against."""
    try:
        for n in _OLD:
            _old(n)
    except pytest.skip.Exception:
        return None
    return types.SimpleNamespace(events=_old("zt_old_events"), asm=_old("zt_old_assembler"))


assert importlib.util.find_spec("agent.conn._core") is not None

_FIELDS = ("ts_enter", "ts_exit", "cgroup_id", "sock_id", "offset", "ret", "goid", "pid", "tid",
           "fd", "seq", "netns", "captured", "lport", "rport", "type", "syscall", "direction",
           "role", "family", "transport", "flags", "payload", "conn_id", "laddr", "raddr",
           "comm", "syscall_name", "has_seq", "transport_name")
_ANNOTATED = ("offset", "role", "flags", "conn_id", "tid")

HTTP_REQ = b"GET /items/%d?q=1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: t\r\n\r\n"
HTTP_RESP = b"HTTP/1.1 %d OK\r\nContent-Length: 5\r\n\r\nhello"
REDIS_REQ = b"*2\r\n$3\r\nGET\r\n$4\r\nk%03d\r\n"
REDIS_RESP = b"$2\r\nv%d\r\n"


def _dns(qid: int, answer: bool) -> bytes:
    name = b"\x03svc\x04demo\x02zt\x00"
    head = qid.to_bytes(2, "big") + (b"\x81\x80" if answer else b"\x01\x00")
    head += b"\x00\x01" + (b"\x00\x01" if answer else b"\x00\x00") + b"\x00\x00\x00\x00"
    body = name + b"\x00\x01\x00\x01"
    if answer:
        body += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x07"
    return head + body


def record(*, type=abi.EV_DATA, syscall=abi.SYS_WRITE, sock_id=1, seq=0, offset=0, ret=None,
           payload=b"", direction=0, role=0, flags=abi.F_HAS_SEQ, pid=100, tid=101, goid=0,
           transport=abi.IPPROTO_TCP, family=abi.AF_INET, laddr=b"\x0a\0\0\x01",
           raddr=b"\x0a\0\0\x02", lport=40000, rport=8080, ts=10**9, captured=None,
           comm=b"client", cut: int | None = None) -> bytes:
    ret = len(payload) if ret is None else ret
    captured = len(payload) if captured is None else captured
    rec = abi.EVENT_STRUCT.pack(
        ts, ts + 500, 77, sock_id, offset, ret, goid, pid, tid, 9, seq & 0xFFFFFFFF, 4026531840,
        captured, lport, rport, type, syscall, direction, role, family, transport, flags,
        laddr.ljust(16, b"\0"), raddr.ljust(16, b"\0"), comm) + payload
    return rec if cut is None else rec[:cut]


def random_stream(rng: random.Random, n_conns: int) -> list[bytes]:
    """Interleaved connections: each a connect or accept (or none: seen mid-way), a few
    request/response exchanges whose events may be lost, late or split, then a close;
    socket addresses get reused; some UDP (DNS) with several peers on one socket."""
    out: list[tuple[int, bytes]] = []
    t = 10**9
    for i in range(n_conns):
        sock = rng.randrange(1, 12)  # few addresses: reuse
        udp = rng.random() < 0.2
        role = rng.choice((abi.ROLE_CLIENT, abi.ROLE_SERVER))
        proto = rng.choice(("http", "redis")) if not udp else "dns"
        base_out = rng.choice((rng.randrange(1 << 32), 0xFFFFFFFF - rng.randrange(200)))
        base_in = rng.randrange(1 << 32)
        pid = rng.choice((100, 200))
        goid = rng.choice((0, 0, rng.randrange(1, 5000)))
        common = dict(sock_id=sock, pid=pid, tid=pid + 1, goid=goid, role=role,
                      lport=rng.choice((8080, 40000 + i % 1000)), rport=rng.choice((8080, 6379)))
        evs = []
        if udp:
            common.update(transport=abi.IPPROTO_UDP, flags=0, rport=53, role=abi.ROLE_CLIENT)
            for k in range(rng.randrange(1, 4)):
                peer = bytes([10, 0, 0, rng.choice((2, 3))])
                q, a = _dns(k, False), _dns(k, True)
                evs.append(record(payload=q, direction=0, raddr=peer, **common))
                evs.append(record(payload=a, direction=1, raddr=peer, **common))
        else:
            if rng.random() < 0.8:
                sc = abi.SYS_CONNECT if role == abi.ROLE_CLIENT else abi.SYS_ACCEPT4
                evs.append(record(type=abi.EV_CONN, syscall=sc, seq=base_out, offset=base_in,
                                  **common))
            so, si = base_out, base_in
            req_dir = 0 if role == abi.ROLE_CLIENT else 1
            for k in range(rng.randrange(1, 5)):
                req = (HTTP_REQ % k) if proto == "http" else (REDIS_REQ % k)
                resp = (HTTP_RESP % (200 + k)) if proto == "http" else (REDIS_RESP % k)
                for d, data in ((req_dir, req), (1 - req_dir, resp)):
                    seq = so if d == 0 else si
                    parts = [data] if rng.random() < 0.7 else [data[:7], data[7:]]
                    for part in parts:
                        r = rng.random()
                        cap = len(part) if r > 0.1 else rng.randrange(len(part) + 1)
                        if r > 0.03:  # else: this event was lost
                            evs.append(record(payload=part[:cap], captured=cap, ret=len(part),
                                              direction=d, seq=seq, **common))
                        seq += len(part)
                    if d == 0:
                        so = seq
                    else:
                        si = seq
            if rng.random() < 0.9:
                evs.append(record(type=abi.EV_CONN, syscall=rng.choice(
                    (abi.SYS_CLOSE, abi.SYS_STATE_CLOSE)), **common))
        if len(evs) > 3 and rng.random() < 0.2:  # a late event
            j = rng.randrange(1, len(evs) - 1)
            evs[j], evs[j + 1] = evs[j + 1], evs[j]
        for e in evs:
            t += rng.randrange(1, 50_000)
            out.append((t, e))
    # interleave connections a little, keeping each one's order mostly
    out.sort(key=lambda p: p[0] + rng.randrange(200_000))
    return [e for _, e in out]


def _span_fields(ctx) -> tuple:
    s = dataclasses.asdict(ctx.span)
    s.pop("span_id")
    return (s, ctx.conn_id, ctx.in_tid, ctx.in_ns, ctx.out_tid, ctx.out_ns, ctx.has_response)


def _run(records: list[bytes], off: int, event_cls, asm_cls) -> tuple[list, list, dict]:
    spans: list = []
    asm = asm_cls(spans.append, "node-a")
    annotated = []
    for r in records:
        e = event_cls(r, off)
        if e.goid:
            e.tid = (1 << 32) + e.goid
        asm.handle(e)
        annotated.append(tuple(getattr(e, f) for f in _ANNOTATED))
    asm.expire(10**30)
    asm.close()
    return annotated, [_span_fields(c) for c in spans], dict(asm.stats)


def _same(old, records: list[bytes], off: int = 0) -> int:
    if old is None:
        return len(_run(records, off, SocketEvent, SpanAssembler)[1])
    for r in records[:2000]:
        a, b = old.events.SocketEvent(r, off), SocketEvent(r, off)
        assert [getattr(a, f) for f in _FIELDS] == [getattr(b, f) for f in _FIELDS]
        assert repr(a) == repr(b)
    a_ann, a_spans, a_stats = _run(records, off, old.events.SocketEvent, old.asm.SpanAssembler)
    b_ann, b_spans, b_stats = _run(records, off, SocketEvent, SpanAssembler)
    assert a_ann == b_ann
    assert a_spans == b_spans
    assert a_stats == b_stats
    return len(b_spans)


def test_same_events_offsets_and_spans_as_python_on_random_streams(old):
    rng = random.Random(1313)
    total = 0
    for _ in range(40):
        total += _same(old, random_stream(rng, rng.randrange(5, 60)), rng.randrange(1 << 40))
    assert total > 500  # the streams make spans, not only errors


def test_records_are_read_within_their_bytes():
    ok = record(payload=b"GET / HTTP/1.1\r\n\r\n")
    # a payload length beyond the record is cut to the record, as slicing did
    e = SocketEvent(record(payload=b"abc", captured=4000))
    assert e.payload == b"abc" and e.captured == 4000
    # shorter than a zt_event: refused (the Python class read the integer prefix and
    # sliced the rest; loader.decode never hands it such a record: those are wakes)
    for n in (0, 1, abi.EVENT_SIZE - 1):
        with pytest.raises(ValueError):
            SocketEvent(ok[:n])
    assert SocketEvent(bytearray(ok)).payload == ok[abi.EVENT_SIZE:]
    e = SocketEvent(record(family=abi.AF_INET6, laddr=b"\0" * 10 + b"\xff\xff\x7f\0\0\1",
                           raddr=b"\x20\x01" + b"\0" * 13 + b"\1", comm=b"x" * 16))
    assert (e.laddr, e.raddr, e.comm) == ("127.0.0.1", "2001::1", "x" * 16)


def test_writable_fields_keep_python_ints():
    e = SocketEvent(record(payload=b"x"))
    e.tid = (1 << 32) + 123456
    e.offset, e.role, e.flags, e.conn_id = (1 << 40), abi.ROLE_SERVER, 3, 99
    assert (e.tid, e.offset, e.role, e.flags, e.conn_id) == (
        (1 << 32) + 123456, 1 << 40, abi.ROLE_SERVER, 3, 99)
    with pytest.raises(AttributeError):
        e.pid = 5  # the kernel's fields are read-only


_STREAM = "/var/cache/zerotrace/bench-demo-stream-1000.pkl"


@pytest.mark.skipif(not os.path.exists(_STREAM), reason="bench_replay has not recorded the "
                    "demo stream on this machine")
def test_same_spans_as_python_on_the_recorded_demo_stream(old):
    with open(_STREAM, "rb") as f:
        raw, off, _modes = pickle.load(f)
    assert _same(old, [r for r in raw if len(r) >= abi.EVENT_SIZE], off) > 10_000
