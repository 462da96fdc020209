"""Span storage: the `SpanStore` interface (one write method, `write(table)`) and its
backends (chDB, ClickHouse), opened by name from the registry in `factory`."""

from server.storage.base import (
    DependencyLink,
    ServiceStats,
    SpanStore,
    StorageError,
    TraceQuery,
    TraceSummary,
)

__all__ = [
    "DependencyLink",
    "ServiceStats",
    "SpanStore",
    "StorageError",
    "TraceQuery",
    "TraceSummary",
]
