"""From socket events to spans: per-connection chunks, protocol inference, parsing.

Each connection (a socket; for unconnected UDP, a socket and peer) gets a protocol
parser once its first bytes say which protocol it speaks.  Parsers turn chunks into
request/response records; records become spans (agent/conn/spans.py).  Connections
whose bytes match no protocol are counted and ignored, not guessed at.

Compiled (issue 13): Session and SpanAssembler live in agent/conn/_core.pyx with the
limits below; this module keeps the import path."""

from __future__ import annotations

from agent.conn._core import (
    IDLE_NS,
    INFER_MAX_BYTES,
    INFER_MAX_CHUNKS,
    MAX_SESSIONS,
    Session,
    SpanAssembler,
)

__all__ = ["IDLE_NS", "INFER_MAX_BYTES", "INFER_MAX_CHUNKS", "MAX_SESSIONS", "Session",
           "SpanAssembler"]
