"""Cross-node join of trace fragments by correlation keys (query time)."""

from server.join.joiner import JoinResult, join_trace

__all__ = ["JoinResult", "join_trace"]
