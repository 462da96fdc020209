"""Secrets masked in OTLP spans at ingest, with the agent's own rules (issue 14).

The agent redacts the spans it makes before export (agent/protocols/redact.py, its
per-span loop compiled in agent/export/_redact.pyx); spans from OpenTelemetry SDKs
were stored as sent, `url.query` api keys, SQL literals, JWTs and command-line
passwords included.  This applies the same rules, imported, not copied, to the
Arrow table an OTLP request becomes (server/ingest/otlp.py), before validation and
storage: attribute and resource values (by key: `url.query`, `url.full`,
`db.query.text`/`db.statement`, `process.command_line`; any value: bearer tokens,
JWTs, API key shapes, URL credentials), the operation (its URL query) and the error
text, as `redact.reference_spans` treats a `Span`'s fields
(tests/server/test_otlp_redaction.py checks both agree).

Vectorised where it can be: only values the rules can change are handed to them (at
least 12 characters, or of a by-key attribute), dictionary columns once per distinct
value, and the redact module's caches serve values that repeat.  On by default;
`zerotrace server --no-otlp-redaction` stores SDK spans as sent.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from agent.protocols import redact as rules

# Shorter values are left alone by `rules.text` unless their key is scrubbed by key.
_SHORT = 12
_KEYED = pa.array(sorted(rules._KEYED))  # noqa: SLF001 - the rules' own by-key set


def _attribute(key: str, value: str) -> str:
    return rules.attributes({key: value})[key]


def operation(op: str) -> str:
    """A span name as `redact.reference_spans` redacts `Span.operation`."""
    if "?" in op or len(op) >= _SHORT:
        head, sep, q = op.partition("?")
        if sep:
            op = head + "?" + rules.url_query(q)
        op = rules.text(op)
    return op


def error(text: str) -> str:
    """An error text as `redact.reference_spans` redacts `Span.error`."""
    return rules.text(text) if text else text


def _strings(arr: pa.Array, fn: Callable[[str], str]) -> pa.Array | None:
    """`arr` (string) with `fn` applied to each value that may change, or None when
    none did."""
    cand = pc.indices_nonzero(pc.or_(pc.greater_equal(pc.utf8_length(arr), _SHORT),
                                     pc.match_substring(arr, "?"))).to_pylist()
    if not cand:
        return None
    values = arr.to_pylist()
    changed = False
    for i in cand:
        new = fn(values[i])
        if new != values[i]:
            values[i] = new
            changed = True
    return pa.array(values, arr.type) if changed else None


def _column(col: pa.ChunkedArray, fn: Callable[[str], str]) -> pa.ChunkedArray | None:
    """A string or dictionary column with `fn` applied, or None when unchanged; a
    dictionary column's values are redacted once per distinct value."""
    out = []
    changed = False
    for chunk in col.chunks:
        if pa.types.is_dictionary(chunk.type):
            d = _strings(chunk.dictionary, fn)
            new = chunk if d is None else pa.DictionaryArray.from_arrays(chunk.indices, d)
        else:
            new = _strings(chunk, fn)
            new = chunk if new is None else new
        changed |= new is not chunk
        out.append(new)
    return pa.chunked_array(out, col.type) if changed else None


def _map(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """A map<string, string> column with each value the rules change replaced, or
    None when none changed."""
    out = []
    changed = False
    for m in col.chunks:
        if m.offset:  # offsets index the children of an unsliced array
            m = pa.concat_arrays([m])
        keys, items = m.keys, m.items
        if not len(items):
            out.append(m)
            continue
        may = pc.or_(pc.greater_equal(pc.utf8_length(items), _SHORT),
                     pc.is_in(keys, value_set=_KEYED))
        cand = pc.indices_nonzero(may).to_pylist()
        new_items = None
        if cand:
            ks = pc.take(keys, pa.array(cand, pa.int64())).to_pylist()
            vs = pc.take(items, pa.array(cand, pa.int64())).to_pylist()
            seen: dict[tuple[str, str], str] = {}  # a batch repeats its resources
            for i, k, v in zip(cand, ks, vs, strict=True):
                r = seen.get((k, v))
                if r is None:
                    r = seen[(k, v)] = _attribute(k, v)
                if r != v:
                    if new_items is None:
                        new_items = items.to_pylist()
                    new_items[i] = r
        if new_items is None:
            out.append(m)
        else:
            out.append(pa.MapArray.from_arrays(m.offsets, keys, pa.array(new_items, items.type)))
            changed = True
    return pa.chunked_array(out, col.type) if changed else None


def redact_table(table: pa.Table) -> pa.Table:
    """`table` (span table columns) with secrets masked; the same table when nothing
    needed masking, or when the rules are switched off (`redact.REDACT`)."""
    if not table.num_rows or not rules.REDACT:
        return table
    for name, fix in (("attributes", _map), ("resource", _map),
                      ("operation", lambda c: _column(c, operation)),
                      ("error", lambda c: _column(c, error))):
        new = fix(table[name])
        if new is not None:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, table.schema.field(i), new)
    return table
