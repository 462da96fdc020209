"""The compiled stitcher lets an emitted span go (issue 13: memory under load) and still
decides late joiners exactly as the Python reference, which keeps whole spans.

An emitted span stays in the stitcher ~5.5 s (max_wait + quiet) for spans that join
its trace late; the compiled stitcher keeps only what those decisions read (its span
id, a client's response sequence number and tuple, the texts of its payload tokens).
These cases put a late joiner's decision on emitted spans for each of those reads, and
check both stitchers decide alike (tests/stitch/equivalence.py) and the right way."""

from __future__ import annotations

import gc
import itertools

from agent.conn.spans import SpanContext
from agent.probes import abi
from agent.stitch import _stitcher
from agent.stitch.runtime import MODE_THREADS
from proto.span import KIND_CLIENT, KIND_SERVER, Endpoint, Span
from tests.stitch.equivalence import compare

MS = 10**6
T0 = 1_700_000_000 * 10**9
_conn = itertools.count(1000)


class Ev:
    """The fields of SocketEvent the stitcher reads."""

    def __init__(self, pid, tid, conn_id, direction, ts, role):
        self.pid, self.tid, self.conn_id, self.direction, self.offset = (
            pid, tid, conn_id, direction, 0)
        self.role, self.flags, self.type = role, 0, abi.EV_DATA
        self.ts_enter = self.ts_exit = ts


class Threads:
    def mode(self, pid: int) -> str:
        return MODE_THREADS


def server(calls, pid, tid, t_in, t_out, op, seq=None, resp_seq=None, conn=None,
           query=None):
    conn = conn or next(_conn)
    calls.append(("observe", Ev(pid, tid, conn, abi.DIR_INGRESS, t_in, abi.ROLE_SERVER)))
    calls.append(("observe", Ev(pid, tid, conn, abi.DIR_EGRESS, t_out, abi.ROLE_SERVER)))
    s = Span(kind=KIND_SERVER, pid=pid, tid=tid, process=f"p{pid}", operation=op,
             protocol="http", transport="tcp", start_ns=t_in, end_ns=t_out,
             req_seq=seq, resp_seq=resp_seq, req_offset=0, req_bytes=10, resp_offset=0,
             resp_bytes=10, local=Endpoint("10.0.0.2", 80),
             remote=Endpoint("10.0.0.1", 5000 + conn % 1000))
    if query is not None:
        s.attributes["db.query.text"] = query
    return SpanContext(s, conn, tid, t_in, tid, t_out, True)


def client(calls, pid, tid, t_out, t_in, op, seq=None, resp_seq=None, conn=None,
           local=None, remote=None):
    conn = conn or next(_conn)
    calls.append(("observe", Ev(pid, tid, conn, abi.DIR_EGRESS, t_out, abi.ROLE_CLIENT)))
    calls.append(("observe", Ev(pid, tid, conn, abi.DIR_INGRESS, t_in, abi.ROLE_CLIENT)))
    s = Span(kind=KIND_CLIENT, pid=pid, tid=tid, process=f"p{pid}", operation=op,
             protocol="http", transport="tcp", start_ns=t_out, end_ns=t_in,
             req_seq=seq, resp_seq=resp_seq, req_offset=0, req_bytes=10, resp_offset=0,
             resp_bytes=10, local=local or Endpoint("10.0.0.1", 5000 + conn % 1000),
             remote=remote or Endpoint("10.0.0.2", 80))
    return SpanContext(s, conn, tid, t_in, tid, t_out, True)


def parents(outcome: dict, ctxs: list) -> dict:
    """operation -> operation of its parent (None: a root)."""
    by_id = {c.span.span_id: c.span.operation for c in ctxs}
    return {by_id[sid]: by_id.get(pid) for sid, pid in outcome["parents"].items()}


def both(calls: list) -> dict:
    py, cy = compare(calls, classifier=Threads())
    for k in py:
        assert py[k] == cy[k], f"{k} differs: {py[k]} != {cy[k]}"
    return cy


def test_server_span_joins_a_client_span_emitted_before_it_by_both_sequence_numbers():
    calls: list = []
    c = client(calls, 1, 11, T0, T0 + 5 * MS, "GET /a", seq=100, resp_seq=200)
    calls += [("add", c), ("tick", T0 + 2000 * MS)]  # the client's trace goes out
    s = server(calls, 2, 21, T0 + 1 * MS, T0 + 4 * MS, "GET /a (server)", seq=100,
               resp_seq=200)
    calls += [("add", s), ("tick", T0 + 3000 * MS), ("close",)]
    out = both(calls)
    assert parents(out, [c, s]) == {"GET /a": None, "GET /a (server)": "GET /a"}
    assert out["stats"]["linked_remote"] == 1 and out["stats"]["traces"] == 2
    # the late joiner's trace is the client's, its root the emitted client span
    assert out["traces"][s.span.span_id] == (s.span.span_id,)
    assert (c.span.span_id, 1) in out["root"]


def test_server_span_picks_the_emitted_client_whose_tuple_mirrors_its_own():
    calls: list = []
    # two clients sent a request with the same sequence number (two hosts); only the
    # first one's tuple mirrors the server's; no response sequence number is known
    c1 = client(calls, 1, 11, T0, T0 + 5 * MS, "c1", seq=300,
                local=Endpoint("10.0.0.1", 4001), remote=Endpoint("10.0.0.2", 80))
    c2 = client(calls, 3, 31, T0, T0 + 5 * MS, "c2", seq=300,
                local=Endpoint("10.0.0.9", 4001), remote=Endpoint("10.0.0.2", 80))
    calls += [("add", c1), ("add", c2), ("tick", T0 + 2000 * MS)]
    s = server(calls, 2, 21, T0 + 1 * MS, T0 + 4 * MS, "s", seq=300)
    s.span.local, s.span.remote = Endpoint("10.0.0.2", 80), Endpoint("10.0.0.1", 4001)
    calls += [("add", s), ("close",)]
    out = both(calls)
    assert parents(out, [c1, c2, s])["s"] == "c1"


def test_client_span_picks_its_emitted_parent_by_a_payload_token():
    calls: list = []
    # an event loop (one thread) reads two requests, writes a call, answers both; the
    # call's answer comes 3 s later, after both requests' traces went out
    s1 = server(calls, 1, 11, T0, T0 + 20 * MS, "GET /users/user0001a")
    s2 = server(calls, 1, 11, T0 + 1 * MS, T0 + 21 * MS, "GET /orders/order0002b",
                query="SELECT * FROM orders WHERE id = 'order0002b'")
    calls.sort(key=lambda c: c[1].ts_exit)  # the thread's moments in time order
    calls += [("add", s1), ("add", s2), ("tick", T0 + 1000 * MS)]
    c = client(calls, 1, 11, T0 + 2 * MS, T0 + 3000 * MS, "GET /cart/order0002b")
    calls += [("tick", T0 + 2000 * MS), ("add", c), ("tick", T0 + 4000 * MS), ("close",)]
    out = both(calls)
    assert out["stats"]["traces"] >= 2
    assert parents(out, [s1, s2, c])["GET /cart/order0002b"] == "GET /orders/order0002b"


def test_emitted_spans_are_let_go():
    traces: list = []
    st = _stitcher.Stitcher(traces.append, classifier=Threads())
    calls: list = []
    ctxs = [client(calls, 1, 11, T0 + i * MS, T0 + i * MS + MS // 2, f"op{i}", seq=i + 1,
                   resp_seq=i + 2) for i in range(50)]
    for c in calls:
        st.observe(c[1])
    ids = set()
    for c in ctxs:
        ids.add(c.span.span_id)
        st.add(c)
    del ctxs, calls, c
    st.tick(T0 + 2000 * MS)
    assert sum(len(t.spans) for t in traces) == 50 and len(st.emitted) == 50
    held = st.held()
    assert held["emitted"] == 50 and held["client_by_seq"] == 50
    assert all(it.span is None and it.ctx is None for it in st.emitted)
    traces.clear()
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is Span and o.span_id in ids]
    assert alive == [], f"{len(alive)} emitted spans still held"


def _event_loop(calls: list, b_answered_first: bool) -> tuple:
    """One thread reads request A and request B, then writes a call C whose answer
    comes 3 s later, after A's and B's traces went out (A's item emitted first)."""
    if b_answered_first:  # B read and answered, then A read: C is A's call
        b = server(calls, 1, 11, T0, T0 + 1 * MS, "B")
        a = server(calls, 1, 11, T0 + 2 * MS, T0 + 20 * MS, "A")
    else:  # A and B both open when C is written: whose, unknown
        a = server(calls, 1, 11, T0, T0 + 20 * MS, "A")
        b = server(calls, 1, 11, T0 + 1 * MS, T0 + 21 * MS, "B")
        # a write of no span between the two reads (a log line): the reads before C's
        # write are B's alone, so only the open requests can tell A is in flight too
        calls.append(("observe", Ev(1, 11, next(_conn), abi.DIR_EGRESS, T0 + MS // 2,
                                    abi.ROLE_CLIENT)))
    calls.sort(key=lambda c: c[1].ts_exit)
    calls += [("add", a), ("add", b), ("tick", T0 + 1000 * MS)]
    c = client(calls, 1, 11, T0 + 3 * MS, T0 + 3000 * MS, "C")
    calls += [("tick", T0 + 2000 * MS), ("add", c), ("tick", T0 + 4000 * MS), ("close",)]
    return a, b, c


def test_late_joiner_whose_parent_was_dropped_from_memory_is_refused():
    # max_emitted=1: A's item is dropped at the first prune, B's kept; C's parent is A
    calls: list = []
    a, b, c = _event_loop(calls, b_answered_first=True)
    full = both(calls)
    assert parents(full, [a, b, c])["C"] == "A"
    assert full["stats"].get("emitted_dropped_early", 0) == 0
    py, cy = compare(calls, classifier=Threads(), max_emitted=1)
    assert py == cy
    assert parents(cy, [a, b, c])["C"] is None, "linked without its parent's history"
    assert "refused: history dropped to bound memory" in cy["report"][0]["counts"]
    assert cy["stats"]["emitted_dropped_early"] >= 1


def test_dropped_request_counts_as_open_when_the_call_is_written():
    # A and B both open at C's write: the thread history alone cannot say whose C is.
    # With A's item dropped, B looks like the only open request: it must not be taken.
    calls: list = []
    a, b, c = _event_loop(calls, b_answered_first=False)
    assert parents(both(calls), [a, b, c])["C"] is None  # several requests in flight
    py, cy = compare(calls, classifier=Threads(), max_emitted=1)
    assert py == cy
    assert parents(cy, [a, b, c])["C"] is None, "linked to B with A's span dropped"
    assert cy["stats"]["emitted_dropped_early"] >= 1


def test_history_older_than_the_horizon_counts_as_unknown():
    # An event loop's request P (read at 0 s) calls D at once, then the thread reads
    # and answers request B; D's answer comes at 60.7 s, P writes call C at 60.8 s and
    # answers at 60.9 s.  With the whole history, B's read between P's request and C
    # makes C's parent unknown.  C is decided after the thread's history before 2 s was
    # pruned (horizon 60 s): B's read is gone and must still count as unknown.
    calls: list = []
    pid, tid = 1, 11
    s = 1000 * MS
    p = server(calls, pid, tid, T0, T0 + 60 * s + 900 * MS, "P")
    d = client(calls, pid, tid, T0 + 500 * MS, T0 + 60 * s + 700 * MS, "D")
    b = server(calls, pid, tid, T0 + 1 * s, T0 + 1 * s + 1 * MS, "B")
    c = client(calls, pid, tid, T0 + 60 * s + 800 * MS, T0 + 62 * s + 500 * MS, "C")
    calls.sort(key=lambda c: c[1].ts_exit)
    calls = [x for x in calls if x[1].ts_exit <= T0 + 61 * s]
    calls += [("add", b), ("add", d), ("add", p), ("tick", T0 + 60 * s + 950 * MS),
              ("tick", T0 + 62 * s),  # the thread's history before 2 s is pruned
              ("observe", Ev(pid, tid, c.conn_id, abi.DIR_INGRESS, T0 + 62 * s + 500 * MS,
                             abi.ROLE_CLIENT)),
              ("add", c), ("tick", T0 + 62 * s + 600 * MS), ("close",)]
    out = both(calls)
    got = parents(out, [p, b, c, d])
    assert got["D"] == "P"
    assert got["C"] is None, "linked across a pruned read of another request"
    # the same with the whole history kept: refused for the read B's request
    out = compare(calls, classifier=Threads(), horizon_ns=600 * s)[1]
    assert parents(out, [p, b, c, d])["C"] is None
