"""The storage interface every backend implements (Jaeger's tracestore pattern).

Backends store batches of spans and answer the queries the server needs; one
conformance suite (tests/server/storage_conformance.py) runs against each.  A batch
reaches a backend one way only: `write`, an Arrow table of the span table's columns
(proto/schema.py), which ingest makes of every wire (agents' Arrow and protobuf,
OTLP) and checks before (server/ingest/validate.py).  A write returns only once the
spans are durable and visible to reads, so the ingest service acks after it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proto.span import Span

if TYPE_CHECKING:
    import pyarrow as pa


class StorageError(RuntimeError):
    """A backend failure (disk full, server unreachable, bad SQL)."""


@dataclass(slots=True)
class TraceQuery:
    service: str = ""
    operation: str = ""
    since_ns: int = 0
    until_ns: int = 0
    min_duration_ns: int = 0
    max_duration_ns: int = 0
    status: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    limit: int = 20


@dataclass(slots=True)
class TraceSummary:
    trace_id: str
    root_service: str
    root_operation: str
    start_ns: int
    duration_ns: int
    span_count: int
    error_count: int
    services: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ServiceStats:
    service: str
    requests: int
    rate_per_s: float
    error_rate: float
    p50_ns: int
    p99_ns: int


@dataclass(slots=True)
class DependencyLink:
    parent: str
    child: str
    call_count: int
    error_count: int


class SpanStore(abc.ABC):
    """Write spans, read traces, search, aggregate; enforce retention."""

    @abc.abstractmethod
    def write(self, table: pa.Table) -> int:
        """Store `table` (Arrow, the columns of the store's span declaration in its
        order: `proto.schema.arrow_schema(fields)`) durably; return how many spans
        were stored.  Raises StorageError when nothing or not all of it was."""

    def write_spans(self, spans: Sequence[Span]) -> int:
        """Encode `spans` as the Arrow columns and `write` them (tests, tools; not a
        second write path: backends implement `write` only)."""
        from proto import schema as span_schema
        from proto.columns import spans_to_table

        fields = getattr(self, "fields", None)
        if fields is not None and tuple(fields) == span_schema.FIELDS:
            fields = None  # the declaration's own: the compiled encoder
        return self.write(spans_to_table(list(spans), fields=fields))

    @abc.abstractmethod
    def get_trace(self, trace_id: str) -> list[Span]:
        """All spans stored under `trace_id` (32 hex digits), by start time."""

    @abc.abstractmethod
    def find_by_req_seq(self, seqs: Sequence[int], kind: str) -> list[Span]:
        """Spans of `kind` whose req_seq is in `seqs` (cross-node join candidates)."""

    @abc.abstractmethod
    def find_by_header(self, name: str, values: Sequence[str]) -> list[Span]:
        """Spans whose trace header `name` has one of `values`."""

    @abc.abstractmethod
    def search_traces(self, q: TraceQuery) -> list[TraceSummary]:
        """Traces with at least one span matching `q`, newest first."""

    @abc.abstractmethod
    def services(self, since_ns: int, until_ns: int) -> list[ServiceStats]:
        """Per-service request rate, error rate and latency quantiles (server spans)."""

    @abc.abstractmethod
    def dependencies(self, since_ns: int, until_ns: int) -> list[DependencyLink]:
        """Service -> service call counts from parent/child and seq-linked spans."""

    @abc.abstractmethod
    def spans_for_service(
        self, service: str, since_ns: int, until_ns: int, max_traces: int
    ) -> list[Span]:
        """All spans of up to `max_traces` recent traces that touch `service`."""

    @abc.abstractmethod
    def apply_retention(self, max_age_s: float = 0, max_bytes: int = 0) -> int:
        """Delete spans older than `max_age_s`, then oldest until under `max_bytes`.

        Zero disables a limit.  Returns the number of spans deleted (approximate when
        whole partitions are dropped).
        """

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """{"spans": rows stored, "bytes": bytes on disk}."""

    def flush(self) -> None:
        """Merge/compact so that `stats()` reflects the final size (benchmarks)."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend."""
