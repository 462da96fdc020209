"""The compiled Arrow encoder (agent/export/_columns.pyx) writes the Python encoder's
table: same schema, same values, the same IPC bytes (compressed and not).

On the recorded demo stream (when bench_replay has recorded it on this machine), on
generated spans (unicode, empty and huge text, NaN, big ints, lists, nested values)
and on spans with values of the wrong type, where `spans_to_table` must do what the
Python encoder does: convert them the same way or raise the same error.
"""

from __future__ import annotations

import math
import os
import pickle

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import columns
from proto.columns import (
    SCHEMA,
    reference_spans_to_table,
    spans_to_table,
    table_to_ipc,
)
from proto.span import Endpoint, Span

SETTINGS = settings(max_examples=int(os.environ.get("ZT_FUZZ_EXAMPLES", "200")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compiled(spans: list[Span], agent: str) -> pa.Table:
    enc = columns._encoder()
    assert enc, "the compiled encoder is not built (agent/export/_columns.pyx)"
    return pa.Table.from_arrays(enc.arrays(spans, agent), schema=SCHEMA)


def assert_same(spans: list[Span], agent: str = "") -> None:
    """The compiled path takes these spans and writes the reference's table."""
    ref = reference_spans_to_table(spans, agent)
    new = _compiled(spans, agent)  # raises if it would leave them to the reference
    new.validate(full=True)
    assert new.schema.equals(ref.schema, check_metadata=True)
    for name in ref.column_names:
        assert new[name].equals(ref[name]), name
    assert new.equals(ref)
    assert table_to_ipc(new, compress=False) == table_to_ipc(ref, compress=False)
    assert table_to_ipc(new) == table_to_ipc(ref) == _threaded_ipc(ref)
    assert spans_to_table(spans, agent).equals(ref)


def _threaded_ipc(table: pa.Table) -> bytes:
    """The IPC stream as Arrow's thread pool writes it (table_to_ipc uses one thread:
    the bytes must not differ)."""
    import pyarrow.ipc as ipc

    sink = pa.BufferOutputStream()
    opts = ipc.IpcWriteOptions(compression="lz4", use_threads=True)
    with ipc.new_stream(sink, table.schema, options=opts) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _recorded_spans() -> list[Span]:
    from bench.bench_replay import CACHE, replay

    path = CACHE.format(n=1000)
    if not os.path.exists(path):
        pytest.skip(f"no recorded demo stream at {path} (bench_replay records it)")
    with open(path, "rb") as f:
        raw, off, modes = pickle.load(f)
    traces: list = []
    replay(raw, off, modes, keep=traces)
    return [s for t in traces for s in t.spans]


@pytest.mark.timeout(300)
def test_recorded_demo_stream_encodes_the_same():
    from agent.enrich import EnrichConfig, Enricher
    from agent.protocols import redact

    spans = _recorded_spans()
    assert len(spans) > 10_000
    with Enricher(EnrichConfig()) as en:
        for s in spans:
            en.enrich(s)
    spans = redact.spans(spans)
    for i in range(0, len(spans), 4096):
        assert_same(spans[i:i + 4096], "node-1")
    assert_same(spans[:100])  # no agent name: the spans' own (empty) names


# -- generated spans -------------------------------------------------------------------

_text = st.text(max_size=40)  # any code point but lone surrogates (pa.array refuses them)
_u64 = st.integers(0, 2**64 - 1)
_u32 = st.integers(0, 2**32 - 1)
_u16 = st.integers(0, 2**16 - 1)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8)
_attr_value = st.one_of(_text, st.integers(-(2**70), 2**70), st.booleans(),
                        st.floats(allow_nan=True, allow_infinity=True), st.none(),
                        st.lists(_text, max_size=4), _json)


def _hex(n: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n, max_size=n).map(bytes.hex) | st.binary(
        min_size=n, max_size=n).map(lambda b: b.hex().upper())


@st.composite
def spans(draw) -> Span:
    return Span(
        trace_id=draw(_hex(16)), span_id=draw(_hex(8)),
        parent_span_id=draw(st.just("") | _hex(8)),
        kind=draw(st.sampled_from(["server", "client", "internal", ""])),
        source=draw(st.sampled_from(["S", "N", "A"])),
        protocol=draw(st.sampled_from(["http", "dns", "", "redis"]) | _text),
        operation=draw(_text), status=draw(_text), status_code=draw(_text),
        error=draw(_text), start_ns=draw(_u64), end_ns=draw(_u64),
        service=draw(_text), pid=draw(_u32), tid=draw(_u32), process=draw(_text),
        cgroup_id=draw(_u64), netns=draw(_u64), transport=draw(_text),
        local=Endpoint(draw(_text), draw(_u16)), remote=Endpoint(draw(_text), draw(_u16)),
        req_seq=draw(st.none() | _u64), resp_seq=draw(st.none() | _u64),
        req_offset=draw(st.none() | _u64), resp_offset=draw(st.none() | _u64),
        req_bytes=draw(_u64), resp_bytes=draw(_u64),
        trace_headers=draw(st.dictionaries(_text, _text, max_size=3)),
        attributes=draw(st.dictionaries(_text, _attr_value, max_size=8)),
        resource=draw(st.dictionaries(_text, _text, max_size=4)),
        incomplete=draw(_text), agent=draw(st.just("") | _text),
    )


@SETTINGS
@given(st.lists(spans(), min_size=1, max_size=30), st.just("") | _text)
def test_generated_spans_encode_the_same(batch, agent):
    assert_same(batch, agent)


def test_empty_huge_and_extreme_values():
    big = "x" * 1_000_000
    s = Span(trace_id="ab" * 16, span_id="cd" * 8, operation=big, error="é" * 70_000,
             start_ns=2**64 - 1, end_ns=0, pid=2**32 - 1, req_seq=2**64 - 1,
             local=Endpoint("::1", 65535), remote=Endpoint("", 0),
             attributes={"": "", "n": -(2**63), "m": 2**63 - 1, "big": 2**200,
                         "neg": -(2**100), "nan": math.nan, "inf": -math.inf, "t": True,
                         "f": False, "none": None, "l": [], "q": ['a"b', "\\", "ü", "\x7f"],
                         "huge": big, "nested": {"a": [1, 2.5, None]}},
             resource={"k" * 1000: "v" * 100_000}, trace_headers={"traceparent": ""})
    assert_same([s], "a")
    assert_same([Span(trace_id="", span_id="")])
    assert_same([])
    assert_same([s] * 300 + [Span()] * 300, "")


# -- values of the wrong type: the Python encoder decides ----------------------------


class _Str(str):
    pass


_BAD = [
    ("pid", -1), ("pid", 2**32), ("start_ns", 2**64), ("start_ns", 1.5), ("tid", True),
    ("start_ns", None), ("req_seq", -5), ("req_seq", 2.0), ("kind", None), ("kind", 3),
    ("service", _Str("svc")), ("error", None), ("error", b"bytes"),
    ("trace_id", "zz" * 16), ("trace_id", "ab cd"), ("trace_id", "abc"),
    ("span_id", b"\x01" * 8), ("trace_id", _Str("ab" * 16)), ("operation", "\ud800"),
    ("attributes", {1: "x"}), ("attributes", {"k": _Str("v")}),
    ("resource", {"k": 1}), ("trace_headers", {"k": None}), ("resource", None),
    ("agent", None), ("local", Endpoint("a", -1)), ("remote", Endpoint(None, 1)),
]


@pytest.mark.parametrize(("field", "value"), _BAD, ids=[f"{f}={v!r}"[:40] for f, v in _BAD])
@pytest.mark.parametrize("agent", ["", "node"])
def test_wrong_types_go_the_python_way(field, value, agent):
    good = Span(trace_id="ab" * 16, span_id="cd" * 8, attributes={"a": 1, "b": "x"})
    bad = Span(trace_id="ab" * 16, span_id="cd" * 8)
    setattr(bad, field, value)
    batch = [good, bad, good]
    try:
        ref = reference_spans_to_table(batch, agent)
    except Exception as e:  # noqa: BLE001 - the same error is expected below
        with pytest.raises(type(e)):
            spans_to_table(batch, agent)
        return
    assert spans_to_table(batch, agent).equals(ref)


def test_other_span_classes_and_patched_attributes():
    class Sub(Span):
        __slots__ = ()

    batch = [Sub(trace_id="ab" * 16, span_id="cd" * 8, service="s"),
             Span(trace_id="ab" * 16, span_id="cd" * 8, service="t")]
    assert_same(batch, "n")


def test_threads_encoding_at_once_get_their_own_tables():
    """The encoder's buffers hold one batch: threads whose batches call back into
    Python (JSON of typed values) while others encode must each get their table."""
    import threading

    batches = [[Span(trace_id=f"{t:02x}" * 16, span_id=f"{i:016x}", service=f"s{t}",
                     attributes={"l": [1.5, {"t": t}], "n": i, "x": "y" * t})
                for i in range(2000)] for t in range(4)]
    want = [reference_spans_to_table(b, "n") for b in batches]
    got: dict[int, list[pa.Table]] = {}

    def run(t: int) -> None:
        got[t] = [spans_to_table(batches[t], "n") for _ in range(5)]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for t in range(4):
        assert all(g.equals(want[t]) for g in got[t])
    enc = columns._encoder()
    assert enc and all(getattr(columns._ENCODERS, "enc", None) is enc for _ in range(2))
