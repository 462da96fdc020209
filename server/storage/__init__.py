"""Span storage: the `SpanStore` interface and its backends (chDB, ClickHouse)."""

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
