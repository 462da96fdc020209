"""Client-side timing shared by the client scripts: each operation between two
time.time_ns() readings, reported as one JSON line on stdout at exit."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

OPS: list[dict] = []


@contextmanager
def op(name: str, **extra):
    t0 = time.time_ns()
    rec = {"op": name, **extra}
    try:
        yield rec
    finally:
        rec["t0"], rec["t1"] = t0, time.time_ns()
        OPS.append(rec)
        time.sleep(0.01)  # keeps each operation's window apart from the next one's


def report(**extra) -> None:
    print(json.dumps({"pid": os.getpid(), "ops": OPS, **extra}), flush=True)
