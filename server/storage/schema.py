"""The span table: one schema and one set of SQL for chDB and ClickHouse.

Column names are the `zerotrace.v1.Span` field names (nested `local.addr` becomes
`local_addr`), which lets chDB ingest serialized batches with the ProtobufList format.
The sorting key is the trace id: trace-by-id reads a few granules and spans of one
trace sit together, which is also what makes the random trace ids compress.  The
table is partitioned by day so that age retention drops whole parts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

from proto import links as span_links
from proto import schema as span_schema

DATABASE = "zerotrace"
TABLE = "spans"
INDEX_TABLE = "search_index"
INDEX_VIEW = "search_index_mv"
JOIN_TABLE = "link_keys"
JOIN_VIEW = "link_keys_mv"
# The first layout of the join-key table (key type, key, kind, prefix: issue 16, third
# session); dropped at open once `JOIN_TABLE` holds its keys (SqlStore._create).
OLD_JOIN_TABLE = "join_keys"
OLD_JOIN_VIEW = "join_keys_mv"

# (name, type with codec) in `zerotrace.v1.Span` order: from the one declaration of
# the span's fields (proto/schema.py, where each codec's reason is written).
COLUMNS: list[tuple[str, str]] = span_schema.clickhouse_columns()
COLUMN_NAMES = [c for c, _ in COLUMNS]

_HEX = re.compile(r"^[0-9a-f]*$")


def create_database(db: str = DATABASE) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {db}"


# Reads of the span table are by trace id: one trace (trace by id), or the candidate
# traces of a search, each in its own granule.  ClickHouse reads and decompresses whole
# granules (and the compressed blocks holding them), so what a read costs grows with
# the granule, Map columns most: 1 024-row granules and 16-64 KiB compressed blocks
# (defaults 8 192 rows, 64 KiB-1 MiB) made a search's check of 40 traces 2-3x cheaper
# at 1 M spans for +1 % bytes; 256-row granules and 4-16 KiB blocks another 25-40 %
# (chDB CPU of that check, 1.5 M spans, median of 5: 47 -> 29, 50 -> 30 ms; 16-64 KiB
# blocks with 256 rows gained only ~10 %) for +4 bytes a span (42.9 -> 47.0 on the
# span table) (issue 16).  Applies to tables created with it: older data directories
# keep their settings and are read as they are.
# Not compact parts (min_bytes_for_wide_part / min_rows_for_wide_part huge), though a
# 35-column trace read cost 30 % less chDB CPU with them (helper "query"): with
# 256-row granules each column's granule is a compressed block of its own, and the
# bench's spans took 56.5 bytes on disk against 45.5 (+24 %, OPTIMIZE FINAL), merges
# cost more (one merge level 10.8 against 10.0 us a row; ingest settled 26.9-30.3
# against 22.9-28.3 us a span, load 3.6-7).  `COMPACT_PARTS` is what the merge
# benchmark (bench/bench_server.py, variant "compact-parts") compares.
COMPACT_PARTS = "min_bytes_for_wide_part = 1000000000000, min_rows_for_wide_part = 1000000000000"
SPAN_TABLE_SETTINGS = ("index_granularity = 256, min_compress_block_size = 4096, "
                       "max_compress_block_size = 16384")


def create_table(db: str = DATABASE, engine: str = "MergeTree",
                 fields: Sequence[span_schema.Field] = span_schema.FIELDS) -> str:
    """DDL of the span table; `engine` may be a ReplicatedMergeTree(...) for clusters,
    `fields` another declaration of the span (tests' fixture schemas)."""
    cols = ",\n  ".join(f"{n} {t}" for n, t in span_schema.clickhouse_columns(fields))
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
SETTINGS {SPAN_TABLE_SETTINGS}"""


def add_columns(db: str, have: Collection[str],
                fields: Sequence[span_schema.Field] = span_schema.FIELDS) -> list[str]:
    """`ALTER TABLE ... ADD COLUMN` of each declared column a span table created by an
    earlier version lacks (`have`: its column names), each after its predecessor in
    the declaration.  `create_table` is IF NOT EXISTS, so without these a new field
    would never reach an existing data directory; rows stored before read the type's
    default ("", 0, NULL, {}), as spans of an older sender would carry."""
    out = []
    prev = ""
    for f in fields:
        if f.name not in have:
            where = f" AFTER {prev}" if prev else " FIRST"
            out.append(f"ALTER TABLE {db}.{TABLE} ADD COLUMN IF NOT EXISTS "
                       f"{f.name} {f.clickhouse}{where}")
        prev = f.name
    return out


def migrate(select: Callable[..., list[dict[str, Any]]], command: Callable[[str], None],
            db: str, fields: Sequence[span_schema.Field] = span_schema.FIELDS) -> list[str]:
    """Add to the span table of `db` the declared columns it lacks (`add_columns`),
    through a store's `_select`/`_command`; returns the statements run."""
    have = {r["name"] for r in select(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        {"db": db, "t": TABLE})}
    todo = add_columns(db, have, fields) if have else []
    for sql in todo:
        command(sql)
    return todo


def create_index_table(db: str = DATABASE, engine: str = "MergeTree") -> str:
    """DDL of the search index: one row per (trace, service) and insert block.

    Searches filter on service, time, operation, duration, status and tags, and
    return trace ids; the span table is sorted by trace id, so there every search
    would read its filter columns in full.  This table holds only what searches
    filter on, sorted by (service, start second), and coarsely: first start in whole
    seconds, last start in milliseconds (the order of results), durations in whole
    milliseconds (rounded outwards), operations and statuses as the distinct values
    of the row's spans, and tags as the sorted distinct 64-bit hashes of their
    key/value pairs (`tag_hash`; a collision only adds a candidate).  A row matching
    a search therefore means "this trace may match"; the span table then checks the
    exact condition on those few traces (a primary-key lookup).  At one row per
    service of a trace it costs ~2 bytes per span of a 10-span trace.
    """
    return f"""CREATE TABLE IF NOT EXISTS {db}.{INDEX_TABLE} (
  service LowCardinality(String),
  ts_min UInt32 CODEC(Delta, ZSTD(1)),
  ts_max_ms UInt64 CODEC(Delta, ZSTD(1)),
  trace_id FixedString(16) CODEC(ZSTD(1)),
  dur_min_ms UInt32 CODEC(ZSTD(1)),
  dur_max_ms UInt32 CODEC(ZSTD(1)),
  operations Array(LowCardinality(String)) CODEC(ZSTD(1)),
  statuses Array(LowCardinality(String)) CODEC(ZSTD(1)),
  tags Array(UInt64) CODEC(ZSTD(1)),
  -- rows are in ts_min order within a service and ts_max_ms is close to it, so a
  -- minmax on ts_max_ms skips the granules a "since" filter excludes, service or not
  INDEX idx_ts_max ts_max_ms TYPE minmax GRANULARITY 1
) ENGINE = {engine}
PARTITION BY toDate(toDateTime(ts_min))
ORDER BY (service, ts_min)
SETTINGS index_granularity = 8192"""


def tag_hash(key: str, value: str) -> str:
    """SQL for the search index's hash of one tag (same function both sides)."""
    return f"cityHash64({key}, {value})"


def _kv(col: str) -> str:
    return f"arrayMap((k, v) -> {tag_hash('k', 'v')}, mapKeys({col}), mapValues({col}))"


def create_index_view(db: str = DATABASE) -> str:
    """The materialized view that fills the search index from each span insert.

    ClickHouse runs it on every block inserted into the span table (same insert,
    same transaction of the part write), grouping the block by trace and service.
    A trace whose spans arrive in several batches gets several rows: harmless.
    """
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{INDEX_VIEW}
TO {db}.{INDEX_TABLE} AS SELECT
  service,
  toUInt32(intDiv(min(start_ns), 1000000000)) AS ts_min,
  intDiv(max(start_ns) + 999999, 1000000) AS ts_max_ms,
  toFixedString(trace_id, 16) AS trace_id,
  toUInt32(intDiv(min(end_ns - start_ns), 1000000)) AS dur_min_ms,
  toUInt32(least(intDiv(max(end_ns - start_ns) + 999999, 1000000), 4294967295)) AS dur_max_ms,
  groupUniqArray(operation) AS operations,
  groupUniqArray(status) AS statuses,
  arraySort(groupUniqArrayArray(arrayConcat({_kv("attributes")}, {_kv("attributes_json")},
                                            {_kv("resource")}))) AS tags
FROM {db}.{TABLE}
GROUP BY trace_id, service"""


# -- join keys (issue 16) ------------------------------------------------------------
# The cross-node join (server/join/joiner.py) looks spans up by correlation key: a
# request's sequence number or a trace header's value.  The span table is sorted by
# trace id, so such a lookup read the key column of many granules (a bloom filter on
# req_seq still left ~40 granules of every column per lookup, and header values had
# no index at all): ~70-110 ms a lookup at 1 M spans, several per trace fetched.  This
# table holds one row per key of each client or server span, sorted by key, with the
# first 4 bytes of the span's trace id: a lookup is a primary-key read here, then a
# primary-key range read of the few traces named (trace ids sharing those 4 bytes).
# A row says "a trace starting with these bytes may hold a span with this key"; the
# joiner checks every candidate exactly on the spans, so a hash collision or a row
# left over after retention only costs a read.
# One UInt64 names (key type, key, kind) (`link_key_seq`): a lookup is one primary-key set
# over two columns, and returns the counterpart kind's rows only.  The first layout
# (key type, key, kind, prefix; 1 024-row granules) cost a trace by id's two lookups
# 6-12 ms of chDB CPU each, a header key's set built by a subquery most of it; this one
# 2.5-3 ms (helper "query", figs-query.md, fourth session).
# Carrying this over to another schema declaration: the table, the view, the
# backfill in SqlStore._create, the row count in ChdbStore._count_locked and the
# retention delete in SqlStore._delete_before belong together.

_U64 = (1 << 64) - 1


def link_key_seq(req_seq: int, kind: str) -> int:
    """The join-key table's `k` of a span of `kind` with `req_seq`, as its view
    computes it (`create_join_view`): the number shifted left one bit, the low bit 1
    for a server span (UInt64 arithmetic: wraps)."""
    return ((int(req_seq) << 1) | (kind == "server")) & _U64


def link_key_header_sql(name: str, value: str, kind: str) -> str:
    """SQL of `k` for a trace header, as the view computes it at insert (`name`,
    `value`: SQL of String type; `kind`: SQL of UInt8, 1 for a server span)."""
    return f"bitOr(bitShiftLeft(cityHash64({name}, {value}), 1), {kind})"


def create_join_table(db: str = DATABASE, engine: str = "MergeTree") -> str:
    """DDL of the join-key table: `k` (key type, key and kind in one UInt64) -> trace
    id prefix.

    Sequence numbers: k = req_seq << 1 | is_server (`link_key_seq`); headers in
    `links.JOIN_HEADERS` (the only ones a join looks up): k = cityHash64(name, value)
    << 1 | is_server.  The two kinds of key share the one space: a number equal to
    a hash only adds a candidate, which the joiner's exact check drops.  Partitioned
    by day like the span table so that retention deletes whole days; 256-row
    granules and 4-16 KiB compressed blocks because a lookup reads one granule per
    key (a 170-key lookup with 64 KiB-1 MiB blocks 78 -> 44 ms).  New tables only: an
    older data directory keeps its join-key table's settings.
    """
    return f"""CREATE TABLE IF NOT EXISTS {db}.{JOIN_TABLE} (
  day Date,
  k UInt64 CODEC(Delta, ZSTD(1)),
  trace_prefix UInt32 CODEC(ZSTD(1))
) ENGINE = {engine}
PARTITION BY day
ORDER BY k
SETTINGS index_granularity = 256, min_compress_block_size = 4096,
  max_compress_block_size = 16384"""


def trace_prefix(trace_id_hex: str) -> int:
    """The join-key table's `trace_prefix` of a trace id (its first 4 bytes, big-endian)."""
    return int(trace_id_hex[:8], 16)


def create_join_view(db: str = DATABASE) -> str:
    """The materialized view that fills the join-key table from each span insert."""
    headers = ", ".join(f"'{h}'" for h in span_links.JOIN_HEADERS)
    server = "toUInt8(kind = 'server')"
    hdr = link_key_header_sql("toString(n)", "v", server)
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{JOIN_VIEW}
TO {db}.{JOIN_TABLE} AS SELECT
  toDate(toDateTime(intDiv(start_ns, 1000000000))) AS day,
  k,
  reinterpretAsUInt32(reverse(substring(trace_id, 1, 4))) AS trace_prefix
FROM (SELECT start_ns, trace_id, kind, req_seq,
             mapFilter((n, v) -> n IN ({headers}) AND v != '', trace_headers) AS h
      FROM {db}.{TABLE})
ARRAY JOIN arrayConcat(
  if(isNull(req_seq), [], [bitOr(bitShiftLeft(assumeNotNull(req_seq), 1), {server})]),
  arrayMap((n, v) -> {hdr}, mapKeys(h), mapValues(h))) AS k
WHERE kind IN ('client', 'server')"""


def check_hex(value: str, length: int) -> str:
    """`value` lower-cased if it is `length` hex digits, else ValueError."""
    v = value.strip().lower()
    if len(v) != length or not _HEX.match(v):
        raise ValueError(f"expected {length} hex digits, got {value!r}")
    return v


# Every span-returning query selects these, so one row decoder serves all.  Ids get
# new names: an alias named like its column would shadow the column in WHERE.
def span_select(fields: Sequence[span_schema.Field] = span_schema.FIELDS) -> str:
    """The select list of span-returning queries (what `row_decoder` reads)."""
    return ", ".join(
        f"lower(hex({f.name})) AS {f.name}_hex" if f.role == span_schema.ID else f.name
        for f in fields
    )


SPAN_SELECT = span_select()
