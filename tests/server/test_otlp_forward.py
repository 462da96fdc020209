"""--forward-otlp and resends: a batch an agent pushes again after a lost ack (same
idempotency key) is stored once and forwarded once (server/forward.py); batches
without a key are forwarded as often as they are stored."""

from __future__ import annotations

import json
import uuid

import pyarrow as pa

from proto.columns import spans_to_table
from proto.span import Span, new_span_id, new_trace_id
from server.forward import OtlpForwarder
from server.ingest.service import batch_key
from server.ingest.writer import BatchWriter
from tests.server.cli_capture import run_cli

T0 = 1_700_000_000_000_000_000


def _batch(tid: str, n: int) -> pa.Table:
    return spans_to_table([Span(trace_id=tid, span_id=new_span_id(), kind="server",
                               source="S", operation=f"op{i}", service="fw",
                               start_ns=T0 + i, end_ns=T0 + i + 10) for i in range(n)])


def test_a_resent_batch_is_forwarded_once(chdb_root, zt_server, capsys):
    store = chdb_root.for_database(f"fw_{uuid.uuid4().hex[:12]}")
    fwd = OtlpForwarder(zt_server.addr)  # the target: a real zerotrace OTLP receiver
    writer = fwd.wrap(BatchWriter(store))
    try:
        keyed, plain = new_trace_id(), new_trace_id()
        key = batch_key("agent-1", "sender-uuid", 7)
        data = _batch(keyed, 5)
        assert writer.write(data, 5, key=key) == 5
        assert writer.write(data, 5, key=key) == 5  # the resend: acked, stored once
        other = _batch(plain, 3)
        writer.write(other, 3)
        writer.write(other, 3)  # no key: nothing says it is a copy
        assert fwd.flush(60)
    finally:
        writer.close()
        fwd.close()
        store.drop()
    assert writer.resends == 1
    assert fwd.forwarded == 5 + 3 + 3

    def count(tid: str) -> int:
        rc, out, err = run_cli(capsys, "trace", tid, "--server", zt_server.addr, "-o", "json")
        assert rc == 0, err
        return len(json.loads(out)["spans"])

    assert count(keyed) == 5
