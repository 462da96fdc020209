"""Stream offsets from sequence numbers: base from connect/accept, wrap past 2^32,
late events, connections seen midway, reused socket addresses."""

from __future__ import annotations

from agent.conn.tracker import ConnTracker
from agent.probes import abi


class Ev:
    def __init__(self, type, syscall=0, sock_id=1, direction=0, seq=0, offset=0, ret=0,
                 role=0, flags=abi.F_HAS_SEQ, pid=1, transport=abi.IPPROTO_TCP):
        self.transport = transport
        self.type, self.syscall, self.sock_id, self.direction = type, syscall, sock_id, direction
        self.seq, self.offset, self.ret, self.role, self.flags, self.pid = (
            seq, offset, ret, role, flags, pid)
        self.conn_id = 0


def connect(t, sock=1, out_base=1000, in_base=5000, role=abi.ROLE_CLIENT):
    e = Ev(abi.EV_CONN, abi.SYS_CONNECT, sock, seq=out_base, offset=in_base, role=role)
    t.update(e)
    return e


def data(t, sock, d, seq, ret=10, flags=abi.F_HAS_SEQ):
    e = Ev(abi.EV_DATA, abi.SYS_WRITE, sock, direction=d, seq=seq, ret=ret, flags=flags,
           transport=abi.IPPROTO_TCP if flags & abi.F_HAS_SEQ else abi.IPPROTO_UDP)
    t.update(e)
    return e


def test_offsets_from_base_seqs_of_connect():
    t = ConnTracker()
    connect(t)
    assert data(t, 1, abi.DIR_EGRESS, 1000).offset == 0
    assert data(t, 1, abi.DIR_EGRESS, 1010).offset == 10
    r = data(t, 1, abi.DIR_INGRESS, 5000 + 7)
    assert r.offset == 7 and r.role == abi.ROLE_CLIENT and not r.flags & abi.F_MIDSTREAM


def test_offsets_survive_a_lost_event_and_a_seq_wrap():
    t = ConnTracker()
    connect(t, out_base=0xFFFFFFF0)
    assert data(t, 1, abi.DIR_EGRESS, 0xFFFFFFF0).offset == 0
    # the event for bytes 10..20 was lost; the next starts past the 2^32 wrap
    assert data(t, 1, abi.DIR_EGRESS, 0x00000004).offset == 20
    # a late event of the lost range still lands where it belongs
    assert data(t, 1, abi.DIR_EGRESS, 0xFFFFFFFA).offset == 10


def test_connection_seen_midway_is_flagged_and_relative():
    t = ConnTracker()
    e = data(t, 9, abi.DIR_INGRESS, 123456)
    assert e.offset == 0 and e.flags & abi.F_MIDSTREAM and e.role == abi.ROLE_UNKNOWN
    assert data(t, 9, abi.DIR_INGRESS, 123466).offset == 10


def test_reused_socket_address_gets_a_new_connection_id():
    t = ConnTracker()
    a = connect(t, sock=3)
    t.closed(3)
    b = connect(t, sock=3, out_base=77)
    assert a.conn_id != b.conn_id
    assert data(t, 3, abi.DIR_EGRESS, 77).conn_id == b.conn_id


def test_udp_offsets_count_bytes_and_are_never_midstream():
    t = ConnTracker()
    first = data(t, 4, abi.DIR_EGRESS, 0, ret=30, flags=0)
    assert first.offset == 0 and not first.flags & abi.F_MIDSTREAM
    assert data(t, 4, abi.DIR_EGRESS, 0, ret=30, flags=0).offset == 30


def test_bounded_number_of_connections():
    t = ConnTracker(max_conns=10)
    for s in range(25):
        data(t, 100 + s, abi.DIR_EGRESS, 1)
    assert len(t.conns) == 10 and t.stats["evicted"] == 15
