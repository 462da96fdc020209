"""The span table: one schema and one set of SQL for chDB and ClickHouse.

Column names are the `zerotrace.v1.Span` field names (nested `local.addr` becomes
`local_addr`), which lets chDB ingest serialized batches with the ProtobufList format.
The sorting key is the trace id: trace-by-id reads a few granules and spans of one
trace sit together, which is also what makes the random trace ids compress.  The
table is partitioned by day so that age retention drops whole parts.
"""

from __future__ import annotations

import re

DATABASE = "zerotrace"
TABLE = "spans"

# (name, type) in `zerotrace.v1.Span` order.
COLUMNS: list[tuple[str, str]] = [
    # Raw bytes as String, not FixedString: FixedString would silently zero-pad a
    # short id, and the length CHECK below is how a malformed batch gets refused.
    ("trace_id", "String"),
    ("span_id", "String CODEC(ZSTD(1))"),
    ("parent_span_id", "String CODEC(ZSTD(1))"),
    ("kind", "LowCardinality(String)"),
    ("source", "LowCardinality(String)"),
    ("protocol", "LowCardinality(String)"),
    ("operation", "LowCardinality(String)"),
    ("status", "LowCardinality(String)"),
    ("status_code", "LowCardinality(String)"),
    ("error", "String CODEC(ZSTD(1))"),
    ("start_ns", "UInt64 CODEC(ZSTD(1))"),
    ("end_ns", "UInt64 CODEC(ZSTD(1))"),
    ("service", "LowCardinality(String)"),
    ("pid", "UInt32 CODEC(ZSTD(1))"),
    ("tid", "UInt32 CODEC(ZSTD(1))"),
    ("process", "LowCardinality(String)"),
    ("cgroup_id", "UInt64 CODEC(ZSTD(1))"),
    ("netns", "UInt64 CODEC(ZSTD(1))"),
    ("transport", "LowCardinality(String)"),
    ("local_addr", "LowCardinality(String)"),
    ("local_port", "UInt16 CODEC(ZSTD(1))"),
    ("remote_addr", "LowCardinality(String)"),
    ("remote_port", "UInt16 CODEC(ZSTD(1))"),
    ("req_seq", "Nullable(UInt64) CODEC(ZSTD(1))"),
    ("resp_seq", "Nullable(UInt64) CODEC(ZSTD(1))"),
    ("req_offset", "Nullable(UInt64) CODEC(ZSTD(1))"),
    ("resp_offset", "Nullable(UInt64) CODEC(ZSTD(1))"),
    ("req_bytes", "UInt64 CODEC(ZSTD(1))"),
    ("resp_bytes", "UInt64 CODEC(ZSTD(1))"),
    ("trace_headers", "Map(LowCardinality(String), String) CODEC(ZSTD(1))"),
    ("attributes", "Map(LowCardinality(String), String) CODEC(ZSTD(1))"),
    ("attributes_json", "Map(LowCardinality(String), String) CODEC(ZSTD(1))"),
    ("resource", "Map(LowCardinality(String), String) CODEC(ZSTD(1))"),
    ("incomplete", "LowCardinality(String)"),
    ("agent", "LowCardinality(String)"),
]
COLUMN_NAMES = [c for c, _ in COLUMNS]

_HEX = re.compile(r"^[0-9a-f]*$")


def create_database(db: str = DATABASE) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {db}"


def create_table(db: str = DATABASE, engine: str = "MergeTree") -> str:
    """DDL of the span table; `engine` may be a ReplicatedMergeTree(...) for clusters."""
    cols = ",\n  ".join(f"{n} {t}" for n, t in COLUMNS)
    return f"""CREATE TABLE IF NOT EXISTS {db}.{TABLE} (
  {cols},
  INDEX idx_req_seq req_seq TYPE bloom_filter(0.01) GRANULARITY 4,
  INDEX idx_start start_ns TYPE minmax GRANULARITY 1,
  CONSTRAINT id_sizes CHECK length(trace_id) = 16 AND length(span_id) = 8
    AND length(parent_span_id) IN (0, 8),
  CONSTRAINT sane_times CHECK end_ns >= start_ns
) ENGINE = {engine}
PARTITION BY toDate(toDateTime(intDiv(start_ns, 1000000000)))
ORDER BY trace_id
SETTINGS index_granularity = 8192"""


def check_hex(value: str, length: int) -> str:
    """`value` lower-cased if it is `length` hex digits, else ValueError."""
    v = value.strip().lower()
    if len(v) != length or not _HEX.match(v):
        raise ValueError(f"expected {length} hex digits, got {value!r}")
    return v


# Every span-returning query selects these, so one row decoder serves all.  Ids get
# new names: an alias named like its column would shadow the column in WHERE.
SPAN_SELECT = ", ".join(
    f"lower(hex({c})) AS {c}_hex" if c in ("trace_id", "span_id", "parent_span_id") else c
    for c in COLUMN_NAMES
)
