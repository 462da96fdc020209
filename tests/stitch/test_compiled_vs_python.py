"""The compiled stitcher (agent/stitch/_stitcher.pyx) decides exactly as the Python one
(agent/stitch/stitcher.py, the reference): same parents, same refusal reasons and
attributes, same traces, same counters, on the recorded demo stream and on random
timelines built to hit the rules (shared connections, unparsed hops, interleaved
requests on a thread, propagated ids, payload tokens, Go hand-offs, UDP, out-of-order
events, late spans, lost spans)."""

from __future__ import annotations

import os
import pickle
from random import Random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.conn.spans import SpanContext
from agent.probes import abi
from agent.stitch.runtime import GOROUTINE_BASE, MODE_GO, MODE_GO_GOID, MODE_THREADS
from proto.span import KIND_CLIENT, KIND_SERVER, Endpoint, Span
from tests.stitch.equivalence import compare
from tests.stitch.shed_stamps import closed, shed_answer, shed_read, stamp_events

MS = 10**6
T0 = 1_700_000_000 * 10**9
G = GOROUTINE_BASE
MODES = {1: MODE_THREADS, 2: MODE_THREADS, 3: MODE_GO_GOID, 4: MODE_GO}
# operations whose 8+ character ids are payload tokens (evidence.py), some shared
OPS = ["GET /users/user0001a", "GET /users/user0002b", "GET /orders/order0001a",
       "SET session0001a", "GET /health", "SELECT orders", "GET /users/user0001a/cart"]


class Fixed:
    """A classifier with fixed runtime modes (no /proc)."""

    def mode(self, pid: int) -> str:
        return MODES.get(pid, MODE_THREADS)


class Event:
    """The fields of SocketEvent the stitcher reads."""

    def __init__(self, pid, tid, conn_id, direction, offset, ts, role, flags=0,
                 type=abi.EV_DATA):
        self.pid, self.tid, self.conn_id, self.direction, self.offset = (
            pid, tid, conn_id, direction, offset)
        self.role, self.flags, self.type = role, flags, type
        self.ts_enter = self.ts_exit = ts
        self.stamp = -1


class Wakes:
    """HandoffIndex's query over a fixed list of (pid, waker, wakee, ts) wake-ups."""

    def __init__(self, wakes: list[tuple[int, int, int, int]]) -> None:
        self.wakes = wakes
        self.last_refusal = ""

    def waker(self, pid, wakee, after, before):
        hits = [(w, ts) for p, w, e, ts in self.wakes
                if p == pid and e == wakee and after < ts < before]
        n = len({h[0] for h in hits})
        self.last_refusal = "" if n == 1 else "nothing received" if not hits else "woken twice"
        return None if self.last_refusal else hits[0]


def timeline(rng: Random) -> tuple[list[tuple], Wakes]:
    """Random spans and data events of up to four processes, as the pipeline would
    hand them to the stitcher: events in time order (a few swapped), each span added
    once the stream passes its end (some late, some never), ticks in between."""
    events: list[tuple[int, Event]] = []
    spans: list[SpanContext] = []
    wakes: list[tuple[int, int, int, int]] = []
    conn_ids = iter(range(1, 10_000))
    shared = [next(conn_ids) for _ in range(3)]
    seqs = [1000, 2000, 3000]

    def tid_of(pid: int) -> int:
        t = rng.choice([10, 11, 12])
        return G + t if pid == 3 and rng.random() < 0.9 else t

    def chain(pid: int, tid: int, t: int) -> None:
        """A request served on one thread: its read, unparsed round trips on client
        connections, a call (a span), the answer; or two requests read back to back
        (an event loop) before the call."""
        conn = next(conn_ids)
        events.append((t, Event(pid, tid, conn, abi.DIR_INGRESS, 0, t, abi.ROLE_SERVER)))
        op = rng.choice(OPS)
        ends = [(conn, t, op)]
        if rng.random() < 0.4:
            c2 = next(conn_ids)
            ev = Event(pid, tid, c2, abi.DIR_INGRESS, 0, t + MS // 4, abi.ROLE_SERVER)
            events.append((t + MS // 4, ev))
            ends.append((c2, t + MS // 4, rng.choice(OPS)))
        at = t + MS // 2
        for _ in range(rng.randint(0, 2)):
            c = next(conn_ids)
            events.append((at, Event(pid, tid, c, abi.DIR_EGRESS, 0, at, abi.ROLE_CLIENT)))
            events.append((at + MS // 4, Event(pid, tid, c, abi.DIR_INGRESS, 0, at + MS // 4,
                                               abi.ROLE_CLIENT)))
            at += MS // 2
        cc = next(conn_ids)
        child_op = rng.choice([op + "/cart", rng.choice(OPS)])
        events.append((at, Event(pid, tid, cc, abi.DIR_EGRESS, 0, at, abi.ROLE_CLIENT)))
        events.append((at + MS, Event(pid, tid, cc, abi.DIR_INGRESS, 0, at + MS,
                                      abi.ROLE_CLIENT)))
        add_span(False, pid, tid, tid, cc, at, at + MS, child_op, 0, 0, 10, None, None)
        end = at + 2 * MS
        for c, t_in, o in ends:
            events.append((end, Event(pid, tid, c, abi.DIR_EGRESS, 0, end, abi.ROLE_SERVER)))
            add_span(True, pid, tid, tid, c, t_in, end, o, 0, 0, 10, None, None)
            end += MS // 4

    def add_span(server, pid, tid, other_tid, conn, t, t_end, op, req_off, resp_off, size,
                 seq, resp_seq, headers=None, udp=False, has_resp=True):
        if server:
            local, remote = Endpoint("10.0.0.2", 80), Endpoint("10.0.0.1", 5000 + conn % 3)
            ctx = (conn, tid, t, other_tid, t_end, has_resp)
        else:
            local, remote = Endpoint("10.0.0.1", 5000 + conn % 3), Endpoint("10.0.0.2", 80)
            ctx = (conn, other_tid, t_end, tid, t, has_resp)
        attrs = {"url.path": op.split(" ")[-1]} if rng.random() < 0.5 else {}
        s = Span(kind=KIND_SERVER if server else KIND_CLIENT, pid=pid, tid=tid,
                 process=f"p{pid}", operation=op, protocol="http",
                 transport="udp" if udp else "tcp", start_ns=t, end_ns=t_end,
                 req_seq=seq, resp_seq=resp_seq, req_offset=req_off, req_bytes=size,
                 resp_offset=resp_off, resp_bytes=size, local=local, remote=remote,
                 trace_headers=headers or {}, attributes=attrs)
        if rng.random() < 0.93:  # the rest: spans lost (events only)
            spans.append(SpanContext(s, *ctx))

    for _ in range(rng.randint(1, 30)):
        what = rng.choice(["server", "server", "client", "client", "client", "raw",
                           "chain", "shed"])
        pid = rng.choice([1, 1, 2, 3, 4])
        tid = tid_of(pid)
        t = T0 + rng.randint(0, 400) * MS // 4
        dur = rng.randint(1, 80) * MS // 2
        conn = rng.choice(shared) if rng.random() < 0.35 else next(conn_ids)
        if what == "chain":
            chain(pid, tid, t)
            continue
        if what == "shed":  # a server exchange left out by sampling: counted, no event
            for k in range(rng.choice([1, 1, 2])):  # a read that found nothing, then one
                events.append((t + k, shed_read(pid, tid, conn)))
            end = rng.choice(["answer", "answer", "close", "none"])
            if end == "answer":
                answerer = tid_of(pid) if rng.random() < 0.2 else tid
                events.append((t + dur, shed_answer(pid, answerer, conn)))
            elif end == "close":
                events.append((t + dur, closed(conn)))
            continue
        if what == "raw":  # a message that makes no span (unknown protocol, a push)
            role = rng.choice([abi.ROLE_CLIENT, abi.ROLE_SERVER])
            d = rng.choice([abi.DIR_INGRESS, abi.DIR_EGRESS])
            events.append((t, Event(pid, tid, conn, d, rng.choice([0, 10, 50]), t, role)))
            continue
        server = what == "server"
        other_tid = tid_of(pid) if rng.random() < 0.2 else tid
        req_off = rng.choice([None, 0, 0, 10, 50])
        resp_off = rng.choice([None, 0, 0, 10, 50])
        size = rng.choice([1, 10, 40])
        op = rng.choice(OPS)
        headers = {}
        r = rng.random()
        if r < 0.15:
            headers["x-request-id"] = rng.choice(["req-00000001", "req-00000002"])
        elif r < 0.25:
            headers["traceparent"] = "00-" + rng.choice("ab") * 32 + "-" + "1" * 16 + "-01"
        seq = rng.choice(seqs + [None, next(conn_ids) * 7919])
        resp_seq = None if seq is None or rng.random() < 0.2 else seq + rng.choice([1, 1, 2])
        udp = rng.random() < 0.1
        has_resp = rng.random() < 0.9
        if server:
            role = abi.ROLE_SERVER
            events.append((t, Event(pid, tid, conn, abi.DIR_INGRESS, req_off or 0, t, role)))
            if has_resp:
                events.append((t + dur, Event(pid, other_tid, conn, abi.DIR_EGRESS,
                                              resp_off or 0, t + dur, role)))
        else:
            role = abi.ROLE_CLIENT
            events.append((t, Event(pid, tid, conn, abi.DIR_EGRESS, req_off or 0, t, role)))
            if has_resp:
                events.append((t + dur, Event(pid, other_tid, conn, abi.DIR_INGRESS,
                                              resp_off or 0, t + dur, role)))
            if pid == 3 and rng.random() < 0.7:  # a goroutine handed it the request
                wakes.append((3, tid_of(3), tid, t - rng.randint(0, 20) * MS // 4))
        add_span(server, pid, tid, other_tid, conn, t, t + dur, op, req_off, resp_off, size,
                 seq, resp_seq, headers, udp, has_resp)
    events.sort(key=lambda x: x[0])
    for _ in range(rng.randint(0, 3)):  # events of one thread slightly out of order
        if len(events) > 1:
            i = rng.randrange(len(events) - 1)
            events[i], events[i + 1] = events[i + 1], events[i]
    # the probes' shed stamps, in the order records are submitted (most timelines: on)
    events = stamp_events(events, stamped=rng.random() < 0.8)
    # spans reach the stitcher after their end, some late (a slow connection)
    adds = sorted(((c.span.end_ns + rng.choice([0, 0, 5 * MS, 300 * MS]), c) for c in spans),
                  key=lambda x: x[0])
    calls: list[tuple] = []
    ai = 0
    next_tick = T0
    for ts, e in events:
        while ai < len(adds) and adds[ai][0] <= ts:
            calls.append(("add", adds[ai][1]))
            ai += 1
        if ts >= next_tick:
            calls.append(("tick", ts))
            next_tick = ts + rng.choice([10, 50, 100, 2000]) * MS
        calls.append(("observe", e))
    for _, c in adds[ai:]:
        calls.append(("add", c))
    end = events[-1][0] if events else T0
    calls += [("tick", end + 200 * MS), ("tick", end + 1200 * MS), ("close",)]
    return calls, Wakes(wakes)


def assert_same(calls: list[tuple], wakes: Wakes, **kw) -> dict:
    py, cy = compare(calls, handoffs=wakes, classifier=Fixed(), **kw)
    for k in py:
        assert py[k] == cy[k], f"{k} differs"
    return py


@settings(max_examples=int(os.environ.get("ZT_STITCH_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.sampled_from([60_000, 40, 10]))
def test_compiled_stitcher_decides_as_the_python_one_on_random_timelines(rng, horizon_ms):
    """Short horizons: histories pruned while decisions still wait on them."""
    calls, wakes = timeline(rng)
    assert_same(calls, wakes, horizon_ns=horizon_ms * MS)


def test_random_timelines_reach_the_rules():
    """The generator is not vacuous: over fixed seeds, both stitchers link by thread,
    connection, token, header, hand-off and sequence number, and refuse, alike."""
    total: dict[str, int] = {}
    for seed in range(150):
        out = assert_same(*timeline(Random(seed)))
        for k, v in out["stats"].items():
            total[k] = total.get(k, 0) + v
        for p in out["report"]:
            for k, v in p["counts"].items():
                total[k] = total.get(k, 0) + v
    for key in ("linked_thread", "linked_thread via connection", "linked_thread+token",
                "linked_header", "linked_goroutine hand-off", "linked_remote", "refused",
                "remote_ambiguous", "refused: reads of several requests interleave",
                "refused: M:N runtime: thread is not the request",
                "refused: a request read left out by sampling"):
        assert total.get(key, 0) > 0, f"{key} never happened: {total}"


STREAM = "/var/cache/zerotrace/bench-demo-stream-1000.pkl"


@pytest.mark.skipif(not os.path.exists(STREAM),
                    reason="no recorded demo stream (python -m bench.bench_replay records it)")
def test_compiled_stitcher_decides_as_the_python_one_on_the_recorded_demo_stream():
    from agent.pipeline import Pipeline
    from agent.probes.events import SocketEvent

    with open(STREAM, "rb") as f:
        raw, off, modes = pickle.load(f)
    p = Pipeline()
    p.classifier._by_pid.update(modes)
    p._pids.update(modes)
    calls: list[tuple] = []

    class Recorder:
        def observe(self, e) -> None:
            calls.append(("observe", e))

        def add(self, ctx) -> None:
            calls.append(("add", ctx))

    p.stitcher = Recorder()
    for i in range(0, len(raw), 500):
        evs = [SocketEvent(r, off) for r in raw[i:i + 500]]
        p.process(evs)
        if evs:
            calls.append(("tick", evs[-1].ts_exit + 10**8))
    p.assembler.close()
    calls.append(("close",))
    py, cy = compare(calls, handoffs=p.handoffs, classifier=p.classifier)
    assert py["stats"]["linked_remote"] > 1000 and py["stats"]["refused"] > 0, py["stats"]
    for k in py:
        assert py[k] == cy[k], f"{k} differs"
