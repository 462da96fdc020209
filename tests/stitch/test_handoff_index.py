"""HandoffIndex: a waker only for one receive satisfied by one known value (a channel
hand-off, a buffered value whose sender the slot's records name, a direct receive from
a parked sender), and nothing else; None for everything less certain, forgotten history
and lost records included."""

from __future__ import annotations

from agent.probes import abi
from agent.stitch import handoff
from agent.stitch.handoff import (
    WAKE_DEQ,
    WAKE_DIRECT,
    WAKE_ENQ,
    WAKE_MIXED,
    WAKE_SWAP,
    HandoffIndex,
)
from agent.stitch.runtime import GOROUTINE_BASE as B

H, OTHER, R = abi.WAKE_HANDOFF, abi.WAKE_OTHER, abi.WAKE_RECV
ENQ, DEQ, SWAP, DIRECT, MIXED = WAKE_ENQ, WAKE_DEQ, WAKE_SWAP, WAKE_DIRECT, WAKE_MIXED
PID, W = 7, 40  # the writer goroutine (a writeLoop)
S, S2 = 0xC000123400, 0xC000567800  # buffer slot addresses


def index(*recs: tuple[int, int, int], **kw) -> HandoffIndex:
    """(ts, kind, waker) records of goroutine W."""
    ix = HandoffIndex(**kw)
    for ts, kind, waker in recs:
        ix.add(PID, W, kind, waker, ts)
    return ix


def test_one_receive_satisfied_by_one_handoff_names_the_sender():
    ix = index((10, R, 0), (12, H, 5))
    assert ix.waker(PID, B + W, 0, 20) == (B + 5, 12)
    assert ix.waker(PID, B + W, 9, 13) == (B + 5, 12)


def test_bounds_are_exclusive_and_other_processes_or_goroutines_unknown():
    ix = index((10, R, 0), (12, H, 5))
    assert ix.waker(PID, B + W, 10, 20) is None  # the receive is not inside
    assert ix.waker(PID, B + W, 0, 12) is None  # nor the hand-off
    assert ix.waker(PID + 1, B + W, 0, 20) is None
    assert ix.waker(PID, B + W + 1, 0, 20) is None
    assert ix.waker(PID, W, 0, 20) is None  # a thread id, not a goroutine key


def test_anything_less_certain_is_none():
    cases = {
        "receive from a buffer, no wake": [(10, R, 0)],
        "hand-off with no receive seen": [(12, H, 5)],
        "two receives": [(10, R, 0), (11, R, 0), (12, H, 5)],
        "two hand-offs": [(10, R, 0), (12, H, 5), (13, R, 0), (14, H, 6)],
        "a mutex wake too": [(10, R, 0), (12, H, 5), (13, OTHER, 6)],
        "only a non-hand-off wake": [(10, R, 0), (12, OTHER, 5)],
        "woken by the scheduler": [(10, R, 0), (12, H, 0)],
        "receive after the hand-off": [(12, H, 5), (13, R, 0)],
    }
    for why, recs in cases.items():
        assert index(*recs).waker(PID, B + W, 0, 20) is None, why


def test_records_out_of_order_are_sorted():
    ix = index((12, H, 5), (10, R, 0))
    assert ix.waker(PID, B + W, 0, 20) == (B + 5, 12)


def test_per_goroutine_cap_raises_a_floor():
    recs = []
    for i in range(10):
        recs += [(100 * i + 10, R, 0), (100 * i + 12, H, i + 1)]
    ix = index(*recs, per_goroutine=4)
    assert ix.waker(PID, B + W, 900, 1000) == (B + 10, 912)  # kept
    assert ix.waker(PID, B + W, 0, 20) is None  # forgotten: not "none", unknown
    assert ix.waker(PID, B + W, 700, 800) is None  # the floor is at 712


def test_a_forgotten_goroutine_woken_again_does_not_pretend_to_a_full_history():
    ix = HandoffIndex(max_goroutines=2)
    ix.add(PID, W, OTHER, 3, 5)  # W: a wake, later forgotten
    ix.add(PID, 41, R, 0, 6)
    ix.add(PID, 42, R, 0, 7)  # evicts W (least recently woken)
    ix.add(PID, W, R, 0, 10)
    ix.add(PID, W, H, 5, 12)
    assert ix.waker(PID, B + W, 0, 20) is None  # the wake at 5 might be inside
    assert ix.waker(PID, B + W, 8, 20) == (B + 5, 12)
    ix.add(PID, 99, R, 0, 30)  # a goroutine born after: nothing of it forgotten
    ix.add(PID, 99, H, 6, 31)
    assert ix.waker(PID, B + 99, 0, 40) == (B + 6, 31)


def test_records_lost_in_the_kernel_refuse_what_came_before():
    ix = HandoffIndex()
    ix.add(PID, W, R, 0, 10)
    ix.add(PID, W, H, 5, 12)
    ix.add(PID, 50, R, 0, 15, lost=1)  # the counter moved: something before 15 is gone
    assert ix.waker(PID, B + W, 0, 20) is None
    ix.add(PID, W, R, 0, 30, lost=1)
    ix.add(PID, W, H, 6, 32, lost=1)
    assert ix.waker(PID, B + W, 20, 40) == (B + 6, 32)


def test_old_goroutines_and_processes_are_pruned():
    ix = HandoffIndex(max_age_ns=100)
    ix.add(PID, W, R, 0, 10)
    ix.add(PID, W, H, 5, 12)
    ix.add(PID, 60, R, 0, 500)
    ix.add(8, 1, R, 0, 10)
    ix.prune()
    assert len(ix) == 1  # W of PID and the quiet pid 8 gone, goroutine 60 kept
    assert ix.waker(PID, B + W, 0, 20) is None


def test_wake_events_feed_in_batches():
    class Wake:
        def __init__(self, ts, kind, waker):
            self.pid, self.goid, self.ts, self.kind, self.waker, self.lost = (
                PID, W, ts, kind, waker, 0)
            self.thread_goid = 0

    ix = HandoffIndex()
    ix.add_all([Wake(10, R, 0), Wake(12, H, 5)])
    assert ix.waker(PID, B + W, 0, 20) == (B + 5, 12)
    assert ix.stats["answered"] == 1 and ix.stats["records"] == 2


def feed(*recs: tuple, ix: HandoffIndex | None = None) -> HandoffIndex:
    """(ts, goid, kind, waker[, lost[, other]]) records of PID, in ring order."""
    ix = ix or HandoffIndex()
    for ts, goid, kind, waker, *rest in recs:
        ix.add(PID, goid, kind, waker, ts, *rest)
    return ix


# G1 = 5 (a handler) sends the request into the buffer of the connection's channel
# before the writeLoop W ever waited on it; W's select then takes it from the buffer.
BUFFERED = [(8, 5, ENQ, S), (10, W, R, 0), (11, W, DEQ, S)]


def test_a_value_taken_from_a_buffer_names_the_goroutine_that_put_it_there():
    ix = feed(*BUFFERED)
    # the sender's context counts at its ENQ, not at the DEQ
    assert ix.waker(PID, B + W, 0, 20) == (B + 5, 8)
    assert ix.stats["answered by buffer"] == 1
    assert ix.waker(PID, B + W, 10, 20) is None  # the receive is not inside
    assert ix.waker(PID, B + 5, 0, 20) is None  # the sender received nothing


def test_a_slot_used_again_names_its_latest_sender():
    ix = feed((2, 3, ENQ, S), (3, 9, R, 0), (4, 9, DEQ, S), *BUFFERED)
    assert ix.waker(PID, B + 9, 0, 5) == (B + 3, 2)
    assert ix.waker(PID, B + W, 0, 20) == (B + 5, 8)


def test_a_full_buffer_swap_names_both_senders():
    # W takes the head value (G5's) while G6, parked on the full buffer, has its value
    # moved into that slot (runtime.recv); G9 later takes G6's value
    ix = feed((8, 5, ENQ, S), (10, W, R, 0), (11, W, SWAP, S, 0, 6),
              (15, 9, R, 0), (16, 9, DEQ, S))
    assert ix.waker(PID, B + W, 0, 12) == (B + 5, 8)
    assert ix.waker(PID, B + 9, 12, 20) == (B + 6, 11)


def test_records_lost_between_the_enq_and_the_deq_refuse():
    # the loss shows first on a record of another goroutine at 9: W's window (9, 20)
    # begins after it, but the ENQ at 8 came before it
    recs = [(8, 5, ENQ, S, 0), (9, 6, R, 0, 1), (10, W, R, 0, 1), (11, W, DEQ, S, 1)]
    assert feed(*recs).waker(PID, B + W, 9, 20) is None
    recs[0] = (8, 5, ENQ, S, 1)  # the same with no loss in between
    assert feed(*recs).waker(PID, B + W, 9, 20) == (B + 5, 8)


def test_a_receiver_may_take_the_value_its_own_swap_moved_in():
    ix = feed((8, 5, ENQ, S), (10, W, R, 0), (11, W, SWAP, S, 0, 6),
              (15, W, R, 0), (16, W, DEQ, S))
    assert ix.waker(PID, B + W, 0, 12) == (B + 5, 8)
    assert ix.waker(PID, B + W, 12, 20) == (B + 6, 11)


def test_a_direct_receive_from_a_parked_sender_names_it():
    ix = feed((10, W, R, 0), (11, W, DIRECT, 6))
    assert ix.waker(PID, B + W, 0, 20) == (B + 6, 11)
    assert ix.stats["answered direct"] == 1


def test_every_buffered_or_direct_value_less_certain_is_none():
    cases = {
        "slot never seen (records began after the ENQ)": [(10, W, R, 0), (11, W, DEQ, S)],
        "slot's last record is a DEQ (an ENQ went unrecorded)":
            [(8, 5, ENQ, S), (9, 6, DEQ, S), (10, W, R, 0), (11, W, DEQ, S)],
        "sender unknown (goid 0)": [(8, 0, ENQ, S), (10, W, R, 0), (11, W, DEQ, S)],
        "ENQ and DEQ at the same instant": [(11, 5, ENQ, S), (10, W, R, 0), (11, W, DEQ, S)],
        "a buffered value and a hand-off": [*BUFFERED, (12, W, R, 0), (13, W, H, 6)],
        "a buffered value and a hand-off, one receive": [*BUFFERED, (13, W, H, 6)],
        "a buffered value and another wake": [*BUFFERED, (13, W, OTHER, 6)],
        "a buffered value and a direct one": [*BUFFERED, (13, W, DIRECT, 6)],
        "two receives": [(8, 5, ENQ, S), (9, W, R, 0), (10, W, R, 0), (11, W, DEQ, S)],
        "no receive seen": [(8, 5, ENQ, S), (11, W, DEQ, S)],
        "two buffered values": [(8, 5, ENQ, S), (8, 6, ENQ, S2), (10, W, R, 0),
                                (11, W, DEQ, S), (12, W, DEQ, S2)],
        "a select of sends and receives copied": [(8, 5, ENQ, S), (10, W, R, 0),
                                                  (11, W, MIXED, S, 0, 0xC0DE)],
        "slot touched by such a select since the ENQ":
            [(8, 5, ENQ, S), (9, 6, MIXED, 0xC0DE, 0, S), (10, W, R, 0), (11, W, DEQ, S)],
        "one runtime.recv recorded twice (its entry re-run after the stack grew)":
            [(8, 5, ENQ, S), (10, W, R, 0), (11, W, SWAP, S, 0, 6), (11, W, SWAP, S, 0, 6)],
        "a SWAP whose slot is unknown": [(10, W, R, 0), (11, W, SWAP, S, 0, 6)],
        "direct receive from an unknown sender": [(10, W, R, 0), (11, W, DIRECT, 0)],
        "direct receive before the receive started": [(10, W, DIRECT, 6), (11, W, R, 0)],
    }
    for why, recs in cases.items():
        assert feed(*recs).waker(PID, B + W, 0, 20) is None, why


def test_a_sender_in_another_process_is_not_a_sender():
    ix = feed((10, W, R, 0), (11, W, DEQ, S))
    ix.add(PID + 1, 5, ENQ, S, 8)
    ix.add(PID + 1, 9, R, 0, 12)
    ix.add(PID + 1, 9, DEQ, S, 13)
    assert ix.waker(PID, B + W, 0, 20) is None
    assert ix.waker(PID + 1, B + 9, 0, 20) == (B + 5, 8)


def test_forgotten_slots_answer_none(monkeypatch):
    monkeypatch.setattr(handoff, "MAX_SLOTS", 2)
    ix = feed((8, 5, ENQ, S), (9, 6, ENQ, 0xA0), (9, 6, ENQ, 0xB0),  # S evicted
              (10, W, R, 0), (11, W, DEQ, S))
    assert ix.waker(PID, B + W, 0, 20) is None
    ix = HandoffIndex(max_age_ns=100)
    feed((8, 5, ENQ, S), (500, 6, R, 0), ix=ix)
    ix.prune()  # S's ENQ is older than max_age: forgotten
    feed((510, W, R, 0), (511, W, DEQ, S), ix=ix)
    assert ix.waker(PID, B + W, 400, 600) is None


def test_buffer_records_feed_in_batches_with_the_sender_of_a_swap():
    class Wake:
        def __init__(self, ts, goid, kind, waker, other=0):
            self.pid, self.goid, self.ts, self.kind, self.waker, self.lost = (
                PID, goid, ts, kind, waker, 0)
            self.thread_goid = other

    ix = HandoffIndex()
    ix.add_all([Wake(8, 5, ENQ, S), Wake(10, W, R, 0), Wake(11, W, SWAP, S, 6),
                Wake(15, 9, R, 0), Wake(16, 9, DEQ, S)])
    assert ix.waker(PID, B + W, 0, 12) == (B + 5, 8)
    assert ix.waker(PID, B + 9, 12, 20) == (B + 6, 11)
