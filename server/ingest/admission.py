"""Per-sender admission and counters: one agent's flood cannot take ingest from the rest.

A sender (the token identity when tokens are on, else the agent name a batch
carries, else the peer address) may have at most
`limit` batches inside the server at once.  One more is refused at once with
RESOURCE_EXHAUSTED, which agents treat as retryable (they back off and resend), so
nothing is acked that is not stored and a flood costs its sender, not the others: the
gRPC worker threads and the group commit stay shared fairly.  The counters per sender
are what the server exports as metrics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

from server.auth import identity

OTHER = "(other)"  # where senders beyond `max_senders` are counted


@dataclass
class SenderStats:
    """Totals of one sender since the server started."""

    batches: int = 0  # admitted
    accepted: int = 0  # spans stored
    rejected: int = 0  # spans refused as invalid
    throttled: int = 0  # batches refused: too many in flight
    failed: int = 0  # batches the store could not take
    inflight: int = 0


class Admission:
    """At most `limit` batches in flight per sender; counts per sender."""

    def __init__(self, limit: int = 2, max_senders: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
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
              failed: bool = False) -> None:
        """The batch admitted by `enter(sender)` is done; record its outcome."""
        with self._lock:
            st = self._get(sender)
            st.inflight = max(0, st.inflight - 1)
            st.accepted += accepted
            st.rejected += rejected
            st.failed += failed

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
