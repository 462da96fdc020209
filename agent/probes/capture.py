"""The kernel side of the payload-capture switch: which cgroups' records carry payload.

bpf/maps.h holds the switch: `capture_mode` (ALL: no look-up; DENY: no payload for the
cgroups listed in `capture_cgroups`; ALLOW: payload only for them) and `capture_stats`
(records sent without payload and the bytes their syscalls moved).  A record of a cgroup
switched off keeps its header (lengths, seqs, times, addresses) and carries no payload
byte; it is flagged abi.F_NOCAPTURE.  The policy (which pods, from their namespace and
annotations) lives in agent/enrich/capture.py; this module only writes what it decides.
"""

from __future__ import annotations

import ctypes as ct
import threading
from collections.abc import Iterable
from typing import Any

MODE_ALL, MODE_DENY, MODE_ALLOW = 0, 1, 2
MODE_NAMES = {MODE_ALL: "all", MODE_DENY: "deny", MODE_ALLOW: "allow"}
LEVELS = 8  # bpf/maps.h ZT_CAPTURE_LEVELS: ancestor depths 1..7


class CaptureMap:
    """Writes the switch into a loaded SocketTracer's maps (bpf/maps.h).

    `set(mode, cgroup_ids)` replaces the listed set with the fewest map updates (only
    the ids that came or went)."""

    def __init__(self, tracer: Any) -> None:
        # the loader keeps bcc's BPF object private; these three maps are ours
        bpf = tracer._bpf
        self._mode = bpf[b"capture_mode"]
        self._cgroups = bpf[b"capture_cgroups"]
        self._stats = bpf[b"capture_stats"]
        self._listed: set[int] = set()
        self._current = MODE_ALL
        self._levels = 0
        self._lock = threading.Lock()

    @property
    def mode(self) -> int:
        return self._current

    @property
    def levels(self) -> int:
        """The ancestor depths checked, as the probes' bit mask."""
        return self._levels

    def listed(self) -> frozenset[int]:
        """The cgroup ids in the map now."""
        return frozenset(self._listed)

    def set(self, mode: int, cgroup_ids: Iterable[int], levels: Iterable[int] = ()) -> None:
        """Mode and the cgroups it names (DENY: switched off; ALLOW: switched on); a
        task is in a named cgroup when its own is named or its ancestor at one of the
        depths `levels` (1-7: the depth of the pods' own cgroups, whose containers are
        then covered before they are seen).
        The updates are ordered so that a cgroup that stays off is never captured in
        between: under DENY ids come before they go, under ALLOW they go first."""
        if mode not in MODE_NAMES:
            raise ValueError(f"capture mode {mode!r}")
        want = {int(c) for c in cgroup_ids if c}
        mask = 0
        for lv in levels:
            if 0 < lv < LEVELS:
                mask |= 1 << lv
        with self._lock:
            table, one = self._cgroups, ct.c_uint8(1)
            add, drop = want - self._listed, self._listed - want

            def do_add() -> None:
                for cg in add:
                    table[ct.c_uint64(cg)] = one

            def do_drop() -> None:
                for cg in drop:
                    try:
                        del table[ct.c_uint64(cg)]
                    except KeyError:
                        pass

            def do_mode() -> None:
                if (mode, mask) != (self._current, self._levels):
                    self._mode[ct.c_int(0)] = self._mode.Leaf(mode, mask)
                    self._current, self._levels = mode, mask

            if mode == MODE_ALLOW and mode == self._current:
                do_drop()
                do_add()
                do_mode()
            else:  # DENY, or the mode changes (from ALL, once, at start)
                do_add()
                do_mode()
                do_drop()
            self._listed = want

    def counters(self) -> dict[str, int]:
        """What the probes withheld: records sent without payload, and the bytes those
        syscalls moved (summed over CPUs)."""
        t = self._stats
        return {"payload_off_records": sum(t[ct.c_int(0)]),
                "payload_off_bytes": sum(t[ct.c_int(1)])}


def bind(enricher: Any, tracer: Any) -> CaptureMap | None:
    """Give the enricher's payload-capture switch (agent/enrich/capture.py) the probes'
    maps, when it may ever switch something off: pods are watched (an annotation can
    turn any pod off) or the policy names a namespace or a default of off.  None when
    there is nothing to switch (the probes then never look a cgroup up)."""
    switch = getattr(enricher, "capture", None)
    if switch is None or not switch.may_switch():
        return None
    sink = CaptureMap(tracer)
    switch.bind(sink)
    return sink
