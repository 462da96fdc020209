"""HandoffIndex: a waker only for one receive satisfied by one channel hand-off, and
nothing else; None for everything less certain, forgotten history included."""

from __future__ import annotations

from agent.probes import abi
from agent.stitch.handoff import HandoffIndex
from agent.stitch.runtime import GOROUTINE_BASE as B

H, OTHER, R = abi.WAKE_HANDOFF, abi.WAKE_OTHER, abi.WAKE_RECV
PID, W = 7, 40  # the writer goroutine (a writeLoop)


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

    ix = HandoffIndex()
    ix.add_all([Wake(10, R, 0), Wake(12, H, 5)])
    assert ix.waker(PID, B + W, 0, 20) == (B + 5, 12)
    assert ix.stats["answered"] == 1 and ix.stats["records"] == 2
