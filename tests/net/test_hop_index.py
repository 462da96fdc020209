"""agent/net/hops.py on hand-made hop records: hop order, the lost/retransmission
arithmetic, and the response match refusing to guess."""

from __future__ import annotations

import socket

from agent.net.hops import HopIndex, spans_for_client
from agent.probes.tc import HOP, Hook, HopRecord
from proto.span import Endpoint, Span

CLIENT_NS, GW_NS, SERVER_NS = 101, 102, 103
HOOKS = {(CLIENT_NS, 2): Hook("client", CLIENT_NS, 2, "c0", False),
         (GW_NS, 3): Hook("gw", GW_NS, 3, "tun0", True),
         (SERVER_NS, 2): Hook("server", SERVER_NS, 2, "tun1", True)}


def rec(ts: int, ns: int, ifindex: int, direction: int, seq: int, writer: tuple,
        dport: int, flags: int = 0x18, window: int = 500) -> HopRecord:
    wns, wl, wr = writer
    return HopRecord(ts, ns, 0, seq, ifindex, wns, "10.0.0.1", "10.0.0.2", 100, 1, dport,
                     wl, wr, 40, direction, flags, window)


def client_span(req_seq: int, resp_seq: int) -> Span:
    return Span(kind="client", netns=CLIENT_NS, local=Endpoint("10.0.0.1", 40000),
                remote=Endpoint("10.0.9.9", 80), req_seq=req_seq, resp_seq=resp_seq,
                trace_id="t" * 32)


def test_decode_round_trip():
    raw = HOP.pack(5, 7, 3, 99, 4, 8, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 70,
                   1000, 80, 1000, 80, 4, 1, 0x18, 0, 1, 4)
    r = HopRecord.decode(raw)
    assert (r.ts, r.netns, r.seq, r.ifindex, r.saddr, r.dport, r.direction, r.window,
            r.role) == (5, 7, 99, 4, "10.0.0.1", 80, 1, 0, 1)
    assert r.packet == "10.0.0.1:1000>10.0.0.2:80"
    v6 = HOP.pack(5, 7, 3, 99, 4, 8, socket.inet_pton(socket.AF_INET6, "fd00:ab::1"),
                  socket.inet_pton(socket.AF_INET6, "fd00:ab::2"), 90, 1000, 80, 1000, 80,
                  4, 1, 0x18, 0, 0, 6)
    r6 = HopRecord.decode(v6)
    assert (r6.family, r6.saddr, r6.daddr) == (6, "fd00:ab::1", "fd00:ab::2")
    assert r6.packet == "[fd00:ab::1]:1000>[fd00:ab::2]:80"


def test_lost_copy_is_charged_to_the_hop_that_lost_it():
    writer = (CLIENT_NS, 40000, 80)
    idx = HopIndex()
    idx.add([
        rec(1_000, CLIENT_NS, 2, 0, 7, writer, 80),
        rec(2_000, GW_NS, 3, 0, 7, writer, 80),           # first copy, lost after
        rec(200_000, CLIENT_NS, 2, 0, 7, writer, 80),     # retransmission
        rec(201_000, GW_NS, 3, 0, 7, writer, 80),
        rec(206_000, SERVER_NS, 2, 1, 7, writer, 80),     # 5 us after the copy that made it
    ])
    spans = spans_for_client(idx, client_span(7, None), HOOKS, 0)
    assert [s.attributes["zerotrace.net.interface"] for s in spans] == ["tun0", "tun1"]
    first, link = spans
    assert first.attributes["zerotrace.net.lost"] == 0
    assert first.attributes["zerotrace.net.retransmissions"] == 1
    assert link.attributes["zerotrace.net.lost"] == 1
    assert link.attributes["zerotrace.net.hop_latency_ns"] == 5_000
    assert (link.start_ns, link.end_ns) == (2_000, 206_000)  # the wait is in the span


def test_response_is_refused_when_two_messages_could_be_it():
    idx = HopIndex()
    for server_port in (8080, 8081):  # two servers' writes with the same seq
        w = (SERVER_NS, server_port, 40000)
        idx.add([rec(10, SERVER_NS, 2, 0, 55, w, 40000),
                 rec(20, CLIENT_NS, 2, 1, 55, w, 40000)])
    assert spans_for_client(idx, client_span(1, 55), HOOKS, 0) == []


def test_response_needs_the_client_port_in_the_client_netns():
    idx = HopIndex()
    w = (SERVER_NS, 8080, 40001)
    idx.add([rec(10, SERVER_NS, 2, 0, 55, w, 40001), rec(20, CLIENT_NS, 2, 1, 55, w, 40001)])
    assert spans_for_client(idx, client_span(1, 55), HOOKS, 0) == []  # port 40000's span
    w = (SERVER_NS, 8080, 40000)
    idx.add([rec(30, SERVER_NS, 2, 0, 56, w, 40000), rec(45, CLIENT_NS, 2, 1, 56, w, 40000,
                                                          flags=0x1C, window=0)])
    (s,) = spans_for_client(idx, client_span(1, 56), HOOKS, 0)
    assert s.attributes["zerotrace.net.leg"] == "response"
    assert s.attributes["zerotrace.net.rst"] and s.attributes["zerotrace.net.zero_window"]


def test_index_is_bounded():
    idx = HopIndex(max_messages=3)
    for seq in range(10):
        idx.add([rec(seq, CLIENT_NS, 2, 0, seq, (CLIENT_NS, 1, 2), 2)])
    assert idx.path((CLIENT_NS, 1, 2, 0)) == []
    assert len(idx.path((CLIENT_NS, 1, 2, 9))) == 1
    assert len(idx) == 3
    # the by-seq table forgets with them: a response is found only among the kept
    assert idx.response_key(0, CLIENT_NS, 2) is None
    assert idx.response_key(9, CLIENT_NS, 2) == (CLIENT_NS, 1, 2, 9)


def test_raw_records_index_like_decoded_ones():
    # the agent's path (ring bytes, agent/net/live.py) and the decoded one agree on
    # every sighting: hooks, times, flags, zero window, port and the packet text
    writer = (CLIENT_NS, 40000, 80)
    recs = [rec(10, CLIENT_NS, 2, 0, 77, writer, 80),
            rec(15, GW_NS, 3, 0, 77, writer, 80, window=0),
            rec(18, GW_NS, 3, 0, 77, writer, 80, flags=0x14),  # a copy, RST|ACK
            rec(30, SERVER_NS, 2, 1, 77, writer, 80)]
    raw = [HOP.pack(r.ts, r.netns, 0, r.seq, r.ifindex, r.writer_netns,
                    socket.inet_aton(r.saddr), socket.inet_aton(r.daddr), r.length, r.sport,
                    r.dport, r.writer_lport, r.writer_rport, r.payload, r.direction,
                    r.tcp_flags, r.window, 0, 4) for r in recs]
    a, b = HopIndex(), HopIndex()
    a.add(recs)
    assert b.add_raw([*raw, b"short"]) == 4  # a truncated record is skipped
    key = (*writer, 77)

    def view(idx):
        return [(s.hook, s.times, s.flags, s.zero_window, s.dport, s.packet)
                for s in idx.path(key)]

    assert view(a) == view(b)
    assert [s.times for s in b.path(key)] == [[10], [15, 18], [30]]
    assert b.path(key)[1].zero_window and b.path(key)[1].flags & 0x04


def raw_of(r: HopRecord) -> bytes:
    fam = socket.AF_INET6 if r.family == 6 else socket.AF_INET
    return HOP.pack(r.ts, r.netns, r.start_ts, r.seq, r.ifindex, r.writer_netns,
                    socket.inet_pton(fam, r.saddr), socket.inet_pton(fam, r.daddr),
                    r.length, r.sport, r.dport, r.writer_lport, r.writer_rport, r.payload,
                    r.direction, r.tcp_flags, r.window, r.role, r.family)


def test_every_field_is_read_where_tc_c_writes_it():
    # values that differ in every byte, so a wrong offset or width shows
    r = HopRecord(0x0102030405060708, 0xA1A2A3A4, 0, 0xB1B2B3B4, 0xC1C2C3C4, 0xD1D2D3D4,
                  "fd00:ab::1", "fd00:cd::2", 90, 0xE1E2, 0xF1F2, 0x9192, 0x8182, 4, 1,
                  0x5A, 0, 1, 6)
    idx = HopIndex()
    assert idx.add_raw([raw_of(r)]) == 1
    (s,) = idx.path((0xD1D2D3D4, 0x9192, 0x8182, 0xB1B2B3B4))
    assert (s.hook, s.times, s.flags, s.zero_window, s.dport) == (
        (0xA1A2A3A4, 0xC1C2C3C4, 1), [0x0102030405060708], 0x5A, True, 0xF1F2)
    assert s.packet == f"[fd00:ab::1]:{0xE1E2}>[fd00:cd::2]:{0xF1F2}"
    assert idx.path((0xD1D2D3D4, 0x9192, 0x8182, 0xB1B2B3B5)) == []
    assert idx.path((0xD1D2D3D4, 0x8182, 0x9192, 0xB1B2B3B4)) == []  # ports swapped
    assert idx.path((None, 1, 2, 3)) == [] and idx.path((-1, 1, 2, 3)) == []


def test_record_bound_drops_whole_messages_never_part_of_a_path():
    # 3 records of room: when the ring comes round to a message's first record, the
    # message goes whole; a later message keeps its own records
    idx = HopIndex(max_messages=10, max_records=3)
    a, b = (CLIENT_NS, 1, 2), (CLIENT_NS, 3, 4)
    idx.add([rec(1, CLIENT_NS, 2, 0, 5, a, 2), rec(2, GW_NS, 3, 0, 5, a, 2)])
    assert len(idx.path((*a, 5))) == 2
    idx.add([rec(3, CLIENT_NS, 2, 0, 6, b, 4)])
    assert len(idx.path((*a, 5))) == 2  # 3 records: all still there
    idx.add([rec(4, GW_NS, 3, 0, 6, b, 4)])  # takes a's first record's place
    assert idx.path((*a, 5)) == [] and (*a, 5) not in idx
    assert [s.times for s in idx.path((*b, 6))] == [[3], [4]]
    assert len(idx) == 1 and idx.evicted == 1


class _Reference:
    """The index's rules in plain Python (the implementation before the compiled one):
    messages in arrival order, the oldest dropped past max_messages."""

    def __init__(self, max_messages: int) -> None:
        from collections import OrderedDict
        self.max, self.msgs = max_messages, OrderedDict()

    def add(self, r: HopRecord) -> None:
        key = (r.writer_netns, r.writer_lport, r.writer_rport, r.seq)
        if key not in self.msgs:
            self.msgs[key] = {}
            if len(self.msgs) > self.max:
                self.msgs.popitem(last=False)
        hk = (r.netns, r.ifindex, r.direction)
        s = self.msgs[key].setdefault(hk, [hk, [], 0, False, r.dport])
        s[1].append(r.ts)
        s[2] |= r.tcp_flags
        s[3] |= r.window == 0

    def path(self, key) -> list:
        out = [[hk, sorted(t), f, z, d] for hk, t, f, z, d in self.msgs.get(key, {}).values()]
        return sorted(out, key=lambda s: s[1][0])

    def response_key(self, seq: int, netns: int, port: int):
        found = [k for k, hooks in self.msgs.items() if k[3] == seq and any(
            hk[0] == netns and s[4] == port for hk, s in hooks.items())]
        return found[0] if len(found) == 1 else None


def test_compiled_index_agrees_with_the_reference_on_random_records():
    # a small key space so that keys repeat, buckets collide and messages are evicted
    import random

    rnd = random.Random(18)
    idx, ref = HopIndex(max_messages=50, max_records=100_000), _Reference(50)
    keys = set()
    for i in range(5000):
        w = (rnd.choice((CLIENT_NS, SERVER_NS)), rnd.randrange(3), rnd.randrange(3))
        seq = rnd.randrange(40)
        r = rec(rnd.randrange(10**6), rnd.choice((CLIENT_NS, GW_NS)), rnd.randrange(1, 3),
                rnd.randrange(2), seq, w, rnd.randrange(3), flags=rnd.randrange(256),
                window=rnd.randrange(2))
        idx.add([r])
        ref.add(r)
        keys.add((*w, seq))
        if i % 500 == 499:
            assert len(idx) == len(ref.msgs) == 50
            for k in keys:
                got = [[s.hook, s.times, s.flags, s.zero_window, s.dport] for s in idx.path(k)]
                assert got == ref.path(k), k
            for seq in range(40):
                for ns in (CLIENT_NS, GW_NS):
                    for port in range(3):
                        assert idx.response_key(seq, ns, port) == ref.response_key(
                            seq, ns, port)


def test_response_found_past_32_hooks():
    # the C check of response_key keeps 32 hooks in hand; a longer path is checked on
    # Sightings instead, with the same answer
    w = (SERVER_NS, 8080, 40000)
    idx = HopIndex()
    idx.add([rec(10 + i, GW_NS, 100 + i, 0, 57, w, 9) for i in range(40)]
            + [rec(100, CLIENT_NS, 2, 1, 57, w, 40000)])
    assert idx.response_key(57, CLIENT_NS, 40000) == (*w, 57)
    assert idx.response_key(57, CLIENT_NS, 40001) is None
    assert idx.response_key(57, GW_NS, 9) == (*w, 57)  # within the first 32 hooks
