"""Hop sampling (bpf/tc.c zt_sampled, TcTracer.adapt): 1 in 2**k messages are marked,
chosen by a hash of the message's seq, so a message has every hop of its path or none,
and the agent lowers the rate to keep hop records under a budget.

The kernel part runs the real NAT path of test_hops.py with 1 in 4 messages sampled:
the messages the hash picks (computed here from each span's req_seq / resp_seq) have
their whole path, the others no N span at all, and no span gets another's hops."""

from __future__ import annotations

import ctypes

import pytest

from agent.probes.tc import MAX_SAMPLE_SHIFT, TcConfig, TcTracer
from tests.net.test_hops import DELAY_MS, expected_hops, hop_name, run

SHIFT = 2


def sampled(seq: int, shift: int) -> bool:
    """bpf/tc.c zt_sampled, in Python."""
    if shift == 0:
        return True
    return ((seq * 0x85EBCA77) & 0xFFFFFFFF) >> (32 - shift) == 0


@pytest.fixture(scope="module")
def quarter() -> dict:
    return run(DELAY_MS, 0.0, requests=48, seed=1, sample_shift=SHIFT)


def test_sampled_messages_have_their_whole_path_and_the_others_none(quarter):
    req, resp = expected_hops(quarter["prefix"])
    assert len(quarter["spans"]) >= 0.9 * quarter["requests"], "client S spans missing"
    kept = {"request": 0, "response": 0}
    dropped = {"request": 0, "response": 0}
    for c, ns in quarter["spans"].values():
        got = [hop_name(n) for n in ns]
        for leg, seq, path in (("request", c.req_seq, req), ("response", c.resp_seq, resp)):
            mine = [h for h in got if h.startswith(f"{leg}:")]
            if seq is None:  # the span does not know its seq: no hops can be asked for
                assert mine == []
                continue
            if sampled(seq, SHIFT):
                kept[leg] += 1
                assert mine == path, f"{leg} seq {seq} sampled: {mine}"
            else:
                dropped[leg] += 1
                assert mine == [], f"{leg} seq {seq} not sampled, yet hops: {mine}"
        for n in ns:
            assert n.parent_span_id == c.span_id and n.trace_id == c.trace_id
    known = sum(kept.values()) + sum(dropped.values())
    assert known >= 0.8 * 2 * len(quarter["spans"]), (kept, dropped)
    # 1 in 4 of 48: both kinds happen (all 48 one way: (3/4)^48 or (1/4)^48)
    for leg in kept:
        assert kept[leg] > 0 and dropped[leg] > 0, (kept, dropped)
    assert quarter["net"]["ring_full"] == 0


def test_adapt_keeps_records_under_the_budget():
    with TcTracer(TcConfig(interfaces="^$", host=False, max_records_per_s=1000)) as tc:
        table = tc._bpf[b"tc_sample"]

        def in_kernel() -> int:
            return table[ctypes.c_int(0)].value

        def packet_filter() -> int:  # packets skip the slot table unsampled at this
            return table[ctypes.c_int(1)].value

        assert tc.adapt(now=100.0) == 0  # the first call only starts the clock
        tc.drained += 900  # 900 records/s at 1 in 1: within budget
        assert tc.adapt(now=101.0) == 0 and in_kernel() == 0
        tc.drained += 6000  # 6 000/s: 1 in 8 brings it to 750/s, raised at once
        assert tc.adapt(now=102.0) == 3 and in_kernel() == 3
        # the packets' filter waits: messages marked at 1 in 1 are still on their way
        assert packet_filter() == 0
        tc.drained += 100  # at 1 in 8: 800/s of every message; 1 in 4 would be 200/s,
        assert tc.adapt(now=103.0) == 2  # under half the budget: one step down
        assert packet_filter() == 2  # a lower shift at once
        tc.drained += 180  # 720/s of every message; 1 in 2 would be 360/s <= 500:
        assert tc.adapt(now=104.0) == 1  # one more step
        tc.drained += 400  # 800/s of every message; 1 in 1 would be 800/s > 500: stays
        assert tc.adapt(now=105.0) == 1 and in_kernel() == 1
        tc.drained += 10 ** 9  # far over: capped
        assert tc.adapt(now=106.0) == MAX_SAMPLE_SHIFT
    # a fixed sampling is never adapted
    with TcTracer(TcConfig(interfaces="^$", host=False, sample_shift=4,
                           max_records_per_s=1000)) as tc:
        assert tc._bpf[b"tc_sample"][ctypes.c_int(0)].value == 4
        assert tc._bpf[b"tc_sample"][ctypes.c_int(1)].value == 4  # nothing marked before
        tc.adapt(now=1.0)
        tc.drained += 10 ** 6
        assert tc.adapt(now=2.0) == 4
