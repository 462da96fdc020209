"""Per-connection state: role, stream offsets, life.

The kernel reports the TCP sequence number of each syscall's first byte, and on
connect/accept the base sequence number of each direction.  Offsets within a
direction's stream are `seq - base` (extended past 2^32), which stays right when
events are lost, unlike counting bytes.  A connection first seen mid-way takes its
first seen seq as base and is flagged MIDSTREAM: its offsets are relative.

Compiled (issue 13): Conn and ConnTracker live in agent/conn/_core.pyx; this module
keeps the import path."""

from __future__ import annotations

from agent.conn._core import Conn, ConnTracker

__all__ = ["Conn", "ConnTracker"]
