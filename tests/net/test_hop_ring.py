"""The compiled ring reader (agent/net/_hops.HopRing) on the kernel's own ring: the TC
classifier of bpf/tc.c run on prepared packets (BPF_PROG_TEST_RUN) writes real hop
records, more than the ring holds in one lap, so records that wrap round the end of
the data pages are read too; every one is indexed, none twice, none lost."""

from __future__ import annotations

import ctypes
import time

import pytest

from agent.net.hops import HopIndex
from agent.probes.tc import TcConfig, TcTracer
from bench import bench_tc as bt


def test_ring_laps_are_drained_into_the_index_whole():
    with TcTracer(TcConfig(interfaces="^$", host=False)) as tc:  # attached nowhere
        starts = tc._bpf[b"starts"]
        fd = tc._fns[(False, 0)]  # Ethernet, egress
        seqs = [1000 + 7919 * i for i in range(8)]
        for seq in seqs:  # message starts as a write mark leaves them
            leaf = starts.Leaf()
            leaf.ts, leaf.netns, leaf.tgid, leaf.lport, leaf.rport = (
                time.monotonic_ns(), 4242, 1, 40000, 8080)
            leaf.seq = seq
            starts[ctypes.c_uint32(bt.start_slot(seq))] = leaf
        pkts = [bt.packet(6, seq) for seq in seqs]
        miss = bt.packet(6, 5)  # no message start: no record
        idx = HopIndex(max_messages=64, max_records=1 << 16)
        lap = (1 << 20) // 96 + 1  # records of 96 ring bytes (header + 88) in one lap
        sent = drained = 0
        while sent < 3 * lap:
            for p in pkts:  # 8 x 400 records, well within one lap between drains
                bt.test_run(fd, p, 400)
                sent += 400
            bt.test_run(fd, miss, 400)
            assert tc.wait(0)
            drained += tc.drain_into(idx)
        assert drained == sent and tc._ring.pending() == 0 and tc.lost() == 0
        assert tc._ring.short == 0
        for seq in seqs:
            (s,) = idx.path((4242, 40000, 8080, seq))  # one hook: ifindex 1, egress
            assert s.hook[2] == 0 and s.dport == 8080 and s.flags == 0x18
            assert len(s.times) == sent // len(seqs)
            assert s.times == sorted(s.times) and s.times[0] > 0
            assert s.packet == "10.0.0.1:40000>10.0.0.2:8080"
        assert len(idx) == len(seqs)
        # and as bytes, for tools and tests: the same records, decoded
        bt.test_run(fd, pkts[0], 3)
        recs = tc.poll(0)
        assert [(r.seq, r.sport, r.writer_netns) for r in recs] == [(seqs[0], 40000, 4242)] * 3
        ring = tc._ring
    # closed with the tracer: unmapped once, never read again
    ring.close()
    assert ring.pending() == 0
    with pytest.raises(ValueError):
        ring.drain_into(idx)
