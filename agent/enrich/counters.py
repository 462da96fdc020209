"""Why enrichment fell short, counted per reason, and each problem logged once."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

# Reasons, stable names: they become Prometheus label values.
UNKNOWN_RUNTIME_PATH = "unknown_runtime_path"
PID_GONE = "pid_gone"
POD_NOT_FOUND = "pod_not_found"
API_ERROR = "api_error"
API_FORBIDDEN = "api_forbidden"
API_GARBAGE = "api_garbage"
WATCH_EXPIRED = "watch_expired_relist"
REPLICASET_LOOKUP_FAILED = "replicaset_lookup_failed"


class Counters:
    """Thread-safe reason -> count, plus a log-once switch per problem key.

    A problem is logged when it starts and again after it recovered and came back,
    never once per span: an API outage would otherwise flood the log.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._logged: set[str] = set()
        self._log = logger
        # counts kept elsewhere (the probes' payload-capture counters), read at snapshot
        self._sources: list[Callable[[], dict[str, int]]] = []

    def inc(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[reason] += n

    def add_source(self, fn: Callable[[], dict[str, int]]) -> None:
        """fn() -> {reason: count}, merged into every snapshot."""
        self._sources.append(fn)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._counts)
        for fn in self._sources:
            out.update(fn())
        return out

    def warn_once(self, key: str, msg: str, *args: object) -> None:
        if key in self._logged:
            return
        self._logged.add(key)
        self._log.warning(msg, *args)

    def recovered(self, prefix: str, msg: str, *args: object) -> None:
        """Problems whose key starts with prefix are over: log that once, and let
        them be logged again should they come back."""
        over = {k for k in self._logged if k.startswith(prefix)}
        if over:
            self._logged -= over
            self._log.info(msg, *args)
