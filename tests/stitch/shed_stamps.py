"""The probes' shed counters (bpf/data.c zt_shed_turn) over a synthetic timeline.

Under sampling the probes emit nothing for a shed server exchange: they count, per
thread, the turns to its request read and to its answer, and the requests read on the
thread that are still unanswered (until the answer, on any thread, or the connection's
close), and stamp those counters on every kept record of the thread at its entry
(abi.F_SHED_STAMP).  `stamp_events` does the same over a time-ordered list."""

from __future__ import annotations

from agent.probes import abi


def shed_read(pid: int, tid: int, conn: int) -> tuple:
    """A turn to a shed exchange's request read (counted, never an event)."""
    return ("turn", pid, tid, conn, abi.DIR_INGRESS)


def shed_answer(pid: int, tid: int, conn: int) -> tuple:
    """A turn to a shed exchange's answer, on whatever thread writes it."""
    return ("turn", pid, tid, conn, abi.DIR_EGRESS)


def closed(conn: int) -> tuple:
    """The connection's close: a shed request never answered is no longer open."""
    return ("close", conn)


def stamp_events(timeline: list, stamped: bool = True) -> list:
    """The events of `timeline` (in the order the probes would submit them, each item an
    event or a turn/close tuple, or a (ts, either) pair), turns and closes applied to
    the counters and dropped, every data event stamped with its thread's counters (when
    `stamped`: else left unstamped, as before sampling ever began)."""
    counters: dict[tuple[int, int], list] = {}  # [reads, answers, open, last_read]
    reader: dict[int, tuple[int, int]] = {}  # conn -> thread with its open shed request
    out = []
    for item in timeline:
        pair = type(item) is tuple and len(item) == 2 and type(item[1]) is not int
        e = item[1] if pair else item
        if type(e) is tuple:
            if e[0] == "close":
                k = reader.pop(e[1], None)
                if k is not None:
                    counters[k][2] -= 1
                continue
            _, pid, tid, conn, d = e
            c = counters.setdefault((pid, tid), [0, 0, 0, False])
            if d == abi.DIR_INGRESS:
                c[0] += 1
                c[3] = True
                if conn not in reader:
                    reader[conn] = (pid, tid)
                    c[2] += 1
            else:
                c[1] += 1
                c[3] = False
                k = reader.pop(conn, None)
                if k is not None:
                    counters[k][2] -= 1
            continue
        if stamped and getattr(e, "type", abi.EV_DATA) == abi.EV_DATA:
            e.flags |= abi.F_SHED_STAMP
            e.stamp = abi.stamp(*counters.get((e.pid, e.tid), (0, 0, 0, False)))
        out.append(item)
    return out
