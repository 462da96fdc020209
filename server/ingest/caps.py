"""Attribute caps at ingest: at most 128 attributes a span, 4 KiB a value (issue 14).

Without caps, two 20 MiB attribute values made a trace unreadable (over the 32 MiB
message limit) and one OTLP request with large resource attributes grew the server
by 1.4 GB.  A span over a cap is kept, not refused: values longer than
MAX_VALUE_BYTES are cut (at a character boundary, "…" appended), attributes beyond
MAX_ATTRIBUTES (counted over `attributes` and `attributes_json`, the others dropped in
key order) and keys longer than MAX_KEY_BYTES are dropped, and the span is flagged with
the attribute `zerotrace.truncated` ("values=N dropped=M"), so a reader knows it is
not whole.  The resource map gets the same caps.

Cheap on the common span: protobuf spans are opened only when their encoded size
could hide a breach (`could_exceed`); Arrow batches are checked with vectorised
kernels and only breaching rows are rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping, MutableSequence

import pyarrow as pa
import pyarrow.compute as pc

from proto.zerotrace.v1 import span_pb2

MAX_ATTRIBUTES = 128
MAX_VALUE_BYTES = 4096
MAX_KEY_BYTES = 256
FLAG = "zerotrace.truncated"
_ELLIPSIS = "…"
# The smallest a span with more than MAX_ATTRIBUTES attributes can encode to: ~6 bytes
# an entry (tag 2, length 1, key field 3 for a 1-byte key, empty value omitted).
_MIN_BREACH_BYTES = (MAX_ATTRIBUTES + 1) * 5


def could_exceed(raw_len: int) -> bool:
    """Whether a protobuf span of `raw_len` bytes can breach a cap at all."""
    return raw_len > _MIN_BREACH_BYTES


def cut(value: str, limit: int = MAX_VALUE_BYTES) -> str:
    """`value` cut to at most `limit` UTF-8 bytes (with "…"), at a character boundary."""
    raw = value.encode()
    if len(raw) <= limit:
        return value
    return raw[: limit - len(_ELLIPSIS.encode())].decode("utf-8", "ignore") + _ELLIPSIS


def _cap_map(m: MutableMapping[str, str], json_values: bool = False) -> tuple[int, int]:
    """Cut long values and drop long keys of `m` in place; (values cut, keys dropped)."""
    cuts = drops = 0
    for k in list(m.keys()):
        if len(k.encode()) > MAX_KEY_BYTES:
            del m[k]
            drops += 1
            continue
        v = m[k]
        if len(v) * 4 > MAX_VALUE_BYTES and len(v.encode()) > MAX_VALUE_BYTES:
            # A JSON value cut is no longer JSON: it becomes a JSON string of the cut text.
            m[k] = json.dumps(cut(v, MAX_VALUE_BYTES - 64)) if json_values else cut(v)
            cuts += 1
    return cuts, drops


def cap_maps(attributes: MutableMapping[str, str], attributes_json: MutableMapping[str, str],
             resource: MutableMapping[str, str] | None) -> tuple[int, int]:
    """Apply the caps to a span's maps in place; (values cut, attributes dropped).
    Sets no flag (see `flag`)."""
    cuts, drops = _cap_map(attributes)
    c, d = _cap_map(attributes_json, json_values=True)
    cuts, drops = cuts + c, drops + d
    n = len(attributes) + len(attributes_json)
    if n > MAX_ATTRIBUTES:
        keys = sorted([(k, 0) for k in attributes] + [(k, 1) for k in attributes_json])
        for k, which in keys[MAX_ATTRIBUTES:]:
            del (attributes_json if which else attributes)[k]
        drops += n - MAX_ATTRIBUTES
    if resource is not None:
        c, d = _cap_map(resource)
        cuts, drops = cuts + c, drops + d
        if len(resource) > MAX_ATTRIBUTES:
            for k in sorted(resource)[MAX_ATTRIBUTES:]:
                del resource[k]
                drops += 1
    return cuts, drops


def flag(cuts: int, drops: int) -> str:
    return f"values={cuts} dropped={drops}"


def cap_span(m: span_pb2.Span) -> bool:
    """Cap a protobuf span in place; True when it changed (and is flagged)."""
    if (len(m.attributes) + len(m.attributes_json) <= MAX_ATTRIBUTES
            and len(m.resource) <= MAX_ATTRIBUTES and m.ByteSize() <= MAX_VALUE_BYTES):
        return False
    cuts, drops = cap_maps(m.attributes, m.attributes_json, m.resource)
    if not cuts and not drops:
        return False
    m.attributes[FLAG] = flag(cuts, drops)
    return True


def cap_raw_spans(spans: MutableSequence[bytes]) -> int:
    """Cap the serialized spans of a repeated bytes field in place; spans changed."""
    changed = 0
    for i, raw in enumerate(spans):
        if not could_exceed(len(raw)):
            continue
        m = span_pb2.Span.FromString(raw)
        if cap_span(m):
            spans[i] = m.SerializeToString()
            changed += 1
    return changed


_MAPS = ("attributes", "attributes_json", "resource")


def _as_list(col: pa.ChunkedArray) -> pa.ListArray:
    """A map column as list<struct<key, value>> (Arrow's list kernels take no maps);
    offsets index the unsliced children, as `keys`/`items` are."""
    m = col.combine_chunks()
    return pa.ListArray.from_arrays(
        m.offsets, pa.StructArray.from_arrays([m.keys, m.items], names=["k", "v"]))


def _breaching_rows(table: pa.Table) -> pa.Array | None:
    """Mask of rows over a cap, or None when there are none (vectorised)."""
    lists = {name: _as_list(table[name]) for name in _MAPS}
    bad = pc.greater(pc.add(pc.list_value_length(lists["attributes"]),
                            pc.list_value_length(lists["attributes_json"])), MAX_ATTRIBUTES)
    bad = pc.or_(bad, pc.greater(pc.list_value_length(lists["resource"]), MAX_ATTRIBUTES))
    for lst in lists.values():
        flat = pc.list_flatten(lst)
        if not len(flat):
            continue
        long_item = pc.or_(pc.greater(pc.binary_length(flat.field(1)), MAX_VALUE_BYTES),
                           pc.greater(pc.binary_length(flat.field(0)), MAX_KEY_BYTES))
        if pc.any(long_item).as_py():
            rows = pc.filter(pc.list_parent_indices(lst), long_item)
            idx = pa.array(range(len(lst)), pa.int64())
            bad = pc.or_(bad, pc.is_in(idx, value_set=rows.cast(pa.int64())))
    if not pc.any(bad).as_py():
        return None
    return bad


def cap_table(table: pa.Table) -> tuple[pa.Table, int]:
    """The batch with its over-cap rows capped and flagged; (table, rows changed)."""
    if table.num_rows == 0:
        return table, 0
    bad = _breaching_rows(table)
    if bad is None:
        return table, 0
    fixed = table.filter(bad)
    rows = fixed.to_pylist()
    for r in rows:
        attrs, js, res = (dict(r[n]) for n in _MAPS)
        cuts, drops = cap_maps(attrs, js, res)
        attrs[FLAG] = flag(cuts, drops)
        r["attributes"], r["attributes_json"], r["resource"] = (
            list(attrs.items()), list(js.items()), list(res.items()))
    fixed = pa.Table.from_pylist(rows, schema=table.schema)
    return pa.concat_tables([table.filter(pc.invert(bad)), fixed]), len(rows)
