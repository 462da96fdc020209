"""Per-sender admission and counters: one agent's flood cannot take ingest from the rest.

A sender (the token identity when tokens are on, else the agent name a batch
carries, else the peer address) may have at most
`limit` batches inside the server at once.  One more is refused at once with
RESOURCE_EXHAUSTED, which agents treat as retryable (they back off and resend), so
nothing is acked that is not stored and a flood costs its sender, not the others: the
gRPC worker threads and the group commit stay shared fairly.  The counters per sender
are what the server exports as metrics.

Server-wide, `ByteBudget` caps the bytes of requests in flight (`--max-inflight-bytes`):
a request's memory in the server is several times its size (decoded, validated,
re-encoded for the insert), and counting requests let 16 pushes of 31.5 MB take the
server to 4.57 GB.  It is checked before the request is decoded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from server.auth import identity
from server.ingest.validate import TimeWindow

OTHER = "(other)"  # where senders beyond `max_senders` are counted


@dataclass
class SenderStats:
    """Totals of one sender since the server started."""

    batches: int = 0  # admitted
    accepted: int = 0  # spans stored
    rejected: int = 0  # spans refused as invalid
    throttled: int = 0  # batches refused: too many in flight
    failed: int = 0  # batches the store could not take
    out_of_window: int = 0  # spans refused: times outside the ingest window (in rejected)
    inflight: int = 0


class Admission:
    """At most `limit` batches in flight per sender; counts per sender."""

    def __init__(self, limit: int = 2, max_senders: int = 10_000,
                 window: TimeWindow | None = None, redact: bool = True) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        # Spans outside it are refused at ingest (None: no time check).
        self.window = window
        # Secrets in the spans masked at ingest (OTLP: server/ingest/redact.py).
        self.redact = redact
        self.max_senders = max_senders
        self._lock = threading.Lock()
        self._senders: dict[str, SenderStats] = {}

    def _get(self, sender: str) -> SenderStats:
        st = self._senders.get(sender)
        if st is None:
            if len(self._senders) >= self.max_senders:
                sender = OTHER  # bounded label set: a spoofing flood cannot grow it
                st = self._senders.get(sender)
            if st is None:
                st = self._senders[sender] = SenderStats()
        return st

    def enter(self, sender: str) -> bool:
        """Admit one batch of `sender`; False (and counted) when it has too many."""
        with self._lock:
            st = self._get(sender)
            if st.inflight >= self.limit:
                st.throttled += 1
                return False
            st.inflight += 1
            st.batches += 1
            return True

    def leave(self, sender: str, accepted: int = 0, rejected: int = 0,
              failed: bool = False, out_of_window: int = 0) -> None:
        """The batch admitted by `enter(sender)` is done; record its outcome."""
        with self._lock:
            st = self._get(sender)
            st.inflight = max(0, st.inflight - 1)
            st.accepted += accepted
            st.rejected += rejected
            st.failed += failed
            st.out_of_window += out_of_window

    def snapshot(self) -> dict[str, SenderStats]:
        """A copy of every sender's counters."""
        with self._lock:
            return {k: SenderStats(**vars(v)) for k, v in self._senders.items()}


def sender_of(agent: str, peer: str, certificate: str = "") -> str:
    """The key a batch is admitted under: the caller's token identity when tokens are
    on (a declared name proves nothing), else the name in its client certificate
    (mTLS), else its agent name, else the peer's host."""
    who = identity()
    if who:
        return who
    if certificate:
        return f"cert:{certificate[:128]}"
    if agent:
        return agent[:128]
    # "ipv4:10.0.0.7:51234" / "ipv6:[::1]:51234": the port changes per connection
    host = peer.rpartition(":")[0] if peer.count(":") >= 2 else peer
    return host or "unknown"


def admit_or_abort(admission: Admission, sender: str, context: grpc.ServicerContext) -> None:
    """Admit a batch of `sender`, or end the call with RESOURCE_EXHAUSTED."""
    if not admission.enter(sender):
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"sender {sender!r} already has {admission.limit} batches in flight; "
            "retry with backoff",
        )


DEFAULT_MAX_INFLIGHT_BYTES = 256 * 1024 * 1024


class ByteBudget:
    """At most `limit` request bytes in flight in the server (0: no cap); refusals
    counted per protocol (a fixed, small label set)."""

    def __init__(self, limit: int = DEFAULT_MAX_INFLIGHT_BYTES) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 (no cap) or more")
        self.limit = limit
        self.inflight = 0
        self.refused: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, n: int, protocol: str) -> bool:
        """Reserve `n` bytes; False (and counted) when that would pass the cap."""
        with self._lock:
            # A request larger than the whole cap still goes through alone: refusing it
            # would refuse it forever.
            if self.limit and self.inflight and self.inflight + n > self.limit:
                self.refused[protocol] = self.refused.get(protocol, 0) + 1
                return False
            self.inflight += n
            return True

    def give(self, n: int) -> None:
        """Release bytes reserved by `take`."""
        with self._lock:
            self.inflight = max(0, self.inflight - n)


@contextmanager
def bytes_or_abort(budget: ByteBudget | None, n: int, protocol: str,
                   context: grpc.ServicerContext) -> Iterator[None]:
    """Hold `n` bytes of `budget` for the body, or end the call with RESOURCE_EXHAUSTED."""
    if budget is None:
        yield
        return
    if not budget.take(n, protocol):
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy: {budget.inflight} bytes of requests in flight, this one of {n} "
            f"would pass the cap of {budget.limit} (--max-inflight-bytes); retry with backoff",
        )
    try:
        yield
    finally:
        budget.give(n)
