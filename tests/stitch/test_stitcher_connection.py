"""Context follows the connection: a read on a client connection resumes the context
that wrote on it last, parsed or not; Go's hand-off to a writeLoop goroutine follows
the wake-up.  Synthetic timelines, each rule with the refusals that guard it."""

from __future__ import annotations

from agent.probes import abi
from agent.stitch.handoff import NOTHING_SEEN
from agent.stitch.runtime import GOROUTINE_BASE, MODE_GO_GOID
from proto.span import PARENT_UNKNOWN
from tests.stitch.test_stitcher import (  # noqa: F401 (implementation: both stitchers)
    MS,
    T0,
    FakeEvent,
    World,
    _conn,
    implementation,
    parent_of,
)


def raw(w: World, pid: int, tid: int, conn: int, direction: int, t: int,
        off: int = 0) -> None:
    """A data event on a client connection that no span covers (an unparsed protocol,
    or an intermediate round trip of a call)."""
    w.st.observe(FakeEvent(pid, tid, conn, direction, off, t, abi.ROLE_CLIENT))


def round_trip(w: World, pid: int, tid: int, t_out: int, t_in: int,
               conn: int | None = None, off: int = 0) -> int:
    conn = conn or next(_conn)
    raw(w, pid, tid, conn, abi.DIR_EGRESS, t_out, off)
    raw(w, pid, tid, conn, abi.DIR_INGRESS, t_in, off)
    return conn


def test_unparsed_round_trip_before_a_call_keeps_the_context():
    w = World()
    w.server(1, 11, T0, T0 + 10 * MS, "GET /a")
    round_trip(w, 1, 11, T0 + 1 * MS, T0 + 2 * MS)  # e.g. memcached, a licence check
    w.client(1, 11, T0 + 3 * MS, T0 + 4 * MS, "redis a")
    spans = w.run()
    assert parent_of(spans, "redis a") == "GET /a"
    assert w.st.per_process[1]["linked by thread via connection"] == 1


def test_intermediate_round_trip_of_a_call_keeps_the_context():
    # Parse/Describe/Sync, read, then Bind/Execute/Sync: the span covers the second
    # round trip only; the first read belongs to no span
    w = World()
    w.server(1, 12, T0, T0 + 10 * MS, "GET /b")
    conn = round_trip(w, 1, 12, T0 + 1 * MS, T0 + 2 * MS)
    w.client(1, 12, T0 + 3 * MS, T0 + 4 * MS, "SELECT b", conn=conn)
    w.client(1, 12, T0 + 5 * MS, T0 + 6 * MS, "next call")
    spans = w.run()
    assert parent_of(spans, "SELECT b") == "GET /b"
    assert parent_of(spans, "next call") == "GET /b"


def test_a_chain_of_unparsed_round_trips_keeps_the_context():
    w = World()
    w.server(1, 13, T0, T0 + 20 * MS, "GET /c")
    for k in range(5):
        round_trip(w, 1, 13, T0 + (1 + 2 * k) * MS, T0 + (2 + 2 * k) * MS)
    w.client(1, 13, T0 + 15 * MS, T0 + 16 * MS, "last")
    spans = w.run()
    assert parent_of(spans, "last") == "GET /c"


def test_answer_read_on_another_thread_resumes_the_writers_context():
    # an I/O thread reads the answer the request's thread asked for, then writes a call
    w = World()
    w.server(1, 14, T0, T0 + 10 * MS, "GET /d")
    conn = next(_conn)
    raw(w, 1, 14, conn, abi.DIR_EGRESS, T0 + 1 * MS)
    raw(w, 1, 15, conn, abi.DIR_INGRESS, T0 + 2 * MS)
    w.client(1, 15, T0 + 3 * MS, T0 + 4 * MS, "follow-up")
    spans = w.run()
    assert parent_of(spans, "follow-up") == "GET /d"


def test_connection_shared_by_two_requests_is_refused():
    # two threads in two requests write on one unparsed connection (pipelined), one
    # reads: whose answer it is, unknown
    w = World()
    w.server(1, 16, T0, T0 + 10 * MS, "GET /e")
    w.server(1, 17, T0 + 0 * MS, T0 + 10 * MS, "GET /f")
    conn = next(_conn)
    raw(w, 1, 16, conn, abi.DIR_EGRESS, T0 + 1 * MS)
    raw(w, 1, 17, conn, abi.DIR_EGRESS, T0 + 1 * MS + 1000)
    raw(w, 1, 16, conn, abi.DIR_INGRESS, T0 + 2 * MS)
    w.client(1, 16, T0 + 3 * MS, T0 + 4 * MS, "call")
    spans = w.run()
    assert spans["call"].parent_span_id == ""
    assert w.st.per_process[1]["refused: connection shared by several requests"] == 1
    assert spans["call"].attributes["zerotrace.parent.unknown"] == \
        "connection shared by several requests"


def test_unparsed_write_from_a_handed_off_thread_is_refused():
    # pool thread 19 answered /old, then writes an unparsed request for someone else;
    # the call after its answer must not join /old
    w = World()
    w.server(1, 19, T0, T0 + 1 * MS, "GET /old")
    w.server(1, 18, T0 + 2 * MS, T0 + 9 * MS, "GET /new")
    round_trip(w, 1, 19, T0 + 3 * MS, T0 + 4 * MS)
    w.client(1, 19, T0 + 5 * MS, T0 + 6 * MS, "call")
    spans = w.run()
    assert spans["call"].parent_span_id == ""
    assert w.st.per_process[1]["refused: context already answered (hand-off?)"] == 1


def test_unparsed_write_with_nothing_read_before_it_is_refused():
    w = World()
    round_trip(w, 1, 20, T0 + 1 * MS, T0 + 2 * MS)
    w.client(1, 20, T0 + 3 * MS, T0 + 4 * MS, "call")
    spans = w.run()
    assert spans["call"].parent_span_id == ""
    assert w.st.per_process[1]["refused: read before it belongs to no span"] == 1


def test_event_loop_with_two_requests_stays_refused_through_a_round_trip():
    w = World()
    w.server(2, 21, T0, T0 + 10 * MS, "GET /x")
    w.server(2, 21, T0 + 1 * MS, T0 + 11 * MS, "GET /y")
    round_trip(w, 2, 21, T0 + 2 * MS, T0 + 3 * MS)
    w.client(2, 21, T0 + 4 * MS, T0 + 5 * MS, "call ?")
    spans = w.run()
    assert spans["call ?"].parent_span_id == ""


def test_read_with_no_write_before_it_is_not_an_answer():
    w = World()
    w.server(1, 22, T0, T0 + 10 * MS, "GET /g")
    raw(w, 1, 22, next(_conn), abi.DIR_INGRESS, T0 + 1 * MS)  # a push, a subscription
    w.client(1, 22, T0 + 3 * MS, T0 + 4 * MS, "call")
    spans = w.run()
    assert spans["call"].parent_span_id == ""


class Wakes:
    """The HandoffIndex query the stitcher uses, over a fixed list of wake-ups."""

    def __init__(self, wakes: list[tuple[int, int, int, int]]) -> None:
        self.wakes = wakes  # (pid, waker, wakee, ts)
        self.last_refusal = ""

    def waker(self, pid: int, wakee: int, after: int, before: int) -> tuple[int, int] | None:
        hits = [(w, ts) for p, w, e, ts in self.wakes
                if p == pid and e == wakee and after < ts < before]
        self.last_refusal = "" if len({h[0] for h in hits}) == 1 else \
            NOTHING_SEEN if not hits else "woken twice"
        return None if self.last_refusal else hits[0]


G = GOROUTINE_BASE


def go_world(wakes: list[tuple[int, int, int, int]]) -> World:
    w = World(modes={7: MODE_GO_GOID})
    w.st.handoffs = Wakes(wakes)
    return w


def test_go_write_loop_takes_the_context_of_the_goroutine_that_woke_it():
    w = go_world([(7, G + 10, G + 99, T0 + 1 * MS)])
    w.server(7, G + 10, T0, T0 + 10 * MS, "GET /h")
    w.client(7, G + 99, T0 + 2 * MS, T0 + 3 * MS, "GET /down", in_tid=G + 98)
    spans = w.run()
    assert parent_of(spans, "GET /down") == "GET /h"
    assert w.st.per_process[7]["linked by goroutine hand-off"] == 1


def test_go_write_loop_with_no_new_wake_is_not_linked():
    # the second request was picked up from the channel's buffer: no wake-up for it
    w = go_world([(7, G + 10, G + 99, T0 + 1 * MS)])
    w.server(7, G + 10, T0, T0 + 10 * MS, "GET /h")
    w.server(7, G + 11, T0 + 3 * MS, T0 + 10 * MS, "GET /i")
    w.client(7, G + 99, T0 + 2 * MS, T0 + 3 * MS, "GET /down1", in_tid=G + 98)
    w.client(7, G + 99, T0 + 4 * MS, T0 + 5 * MS, "GET /down2", in_tid=G + 98)
    spans = w.run()
    assert parent_of(spans, "GET /down1") == "GET /h"
    assert spans["GET /down2"].parent_span_id == ""


def test_go_write_loop_woken_by_two_goroutines_is_not_linked():
    w = go_world([(7, G + 10, G + 99, T0 + 1 * MS), (7, G + 11, G + 99, T0 + 1 * MS + 500)])
    w.server(7, G + 10, T0, T0 + 10 * MS, "GET /h")
    w.server(7, G + 11, T0, T0 + 10 * MS, "GET /i")
    w.client(7, G + 99, T0 + 2 * MS, T0 + 3 * MS, "GET /down", in_tid=G + 98)
    spans = w.run()
    assert spans["GET /down"].parent_span_id == ""
    # refused, and said on the span: not a silent root
    assert spans["GET /down"].attributes[PARENT_UNKNOWN] == "hand-off: woken twice"


def test_go_write_loop_that_received_nothing_calls_on_its_own():
    # no wake since its last write: the goroutine's own call, a root (no refusal)
    w = go_world([])
    w.client(7, G + 99, T0 + 2 * MS, T0 + 3 * MS, "GET /down", in_tid=G + 98)
    spans = w.run()
    assert spans["GET /down"].parent_span_id == ""
    assert PARENT_UNKNOWN not in spans["GET /down"].attributes


def test_go_wake_by_a_goroutine_that_already_answered_is_refused():
    w = go_world([(7, G + 10, G + 99, T0 + 2 * MS)])
    w.server(7, G + 10, T0, T0 + 1 * MS, "GET /h")
    w.client(7, G + 99, T0 + 3 * MS, T0 + 4 * MS, "GET /down", in_tid=G + 98)
    spans = w.run()
    assert spans["GET /down"].parent_span_id == ""
    assert spans["GET /down"].attributes["zerotrace.parent.unknown"].startswith("hand-off:")


def test_a_client_threads_next_call_is_a_root_not_a_refusal():
    # a load generator: call, read its answer, call again; the second call is the start
    # of a request of its own, not a span whose parent was lost
    w = World()
    conn = next(_conn)
    w.client(1, 30, T0 + 1 * MS, T0 + 2 * MS, "GET /1", conn=conn)
    w.client(1, 30, T0 + 3 * MS, T0 + 4 * MS, "GET /2", conn=next(_conn))
    spans = w.run()
    assert spans["GET /2"].parent_span_id == ""
    assert "zerotrace.parent.unknown" not in spans["GET /2"].attributes
    assert w.st.per_process[1]["root client (no read before it)"] == 2
