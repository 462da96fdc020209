"""A batch is stored at most once, however often its sender resends it (issue 14 item 3).

An agent resends a batch whose ack it did not get (DEADLINE_EXCEEDED, a dropped
connection, a server restart); before batches carried (sender, seq), a batch that had
been stored but whose ack was lost was stored again.  Each case below runs a real
server on loopback and counts the rows of the span table.
"""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest
from factory import now_ns, server_span

from agent.export import BatchExporter, GrpcSpanExporter
from agent.export.base import ExportResult
from proto.convert import span_to_pb
from proto.zerotrace.v1 import ingest_pb2, ingest_pb2_grpc


def _spans(n: int, agent: str = "node-a") -> list:
    t = now_ns()
    return [server_span(start_ns=t + i, end_ns=t + i + 1000, service="api",
                        operation="GET /x", agent=agent) for i in range(n)]


def _stored(srv) -> int:
    return srv.store._count("1")


def _push(addr: str, req: ingest_pb2.PushRequest, timeout: float = 30) -> ingest_pb2.PushResponse:
    with grpc.insecure_channel(addr) as ch:
        return ingest_pb2_grpc.IngestServiceStub(ch).Push(req, timeout=timeout)


def _request(n: int, sender: str, seq: int) -> ingest_pb2.PushRequest:
    req = ingest_pb2.PushRequest(sender_id=sender, sender_seq=seq)
    req.agent.agent = "node-a"
    for s in _spans(n):
        span_to_pb(s, req.spans.add())
    return req


@pytest.mark.parametrize("wire", ["arrow", "protobuf"])
def test_a_resent_batch_is_stored_once_and_acked_again(zt_server, wire):
    exp = GrpcSpanExporter(zt_server.addr, agent="node-a", wire=wire)
    batch = _spans(300)
    try:
        # The batcher retries with the same batch object: same (sender, seq).
        assert exp.export(batch) is ExportResult.SUCCESS
        assert exp.export(batch) is ExportResult.SUCCESS
        assert exp.take_lost() == {}  # acked with its counts, not 0/0
        assert _stored(zt_server) == 300
        # A new batch of the same spans is a new batch (a new seq).
        assert exp.export(list(batch)) is ExportResult.SUCCESS
        assert _stored(zt_server) == 600
    finally:
        exp.shutdown()


def test_a_push_whose_deadline_expired_is_not_stored_again(zt_server):
    # The group commit waits 1.5 s for company: every attempt's deadline (0.3 s)
    # expires before its insert, yet each insert still happens.  Before: stored once
    # per attempt (4x).
    zt_server.writer.max_delay_s = 1.5
    exp = GrpcSpanExporter(zt_server.addr, agent="node-a", timeout_s=0.3)
    b = BatchExporter(exp, max_attempts=4, backoff_initial_s=0.3, schedule_delay_s=0.05)
    b.submit(_spans(200))
    b.force_flush(30)
    b.shutdown(5)
    assert b.metrics()["zerotrace_export_retries_total"] >= 1
    time.sleep(2.0)  # the last attempt's insert
    assert _stored(zt_server) == 200


def test_copies_in_one_group_commit_are_stored_once(zt_server):
    zt_server.writer.max_delay_s = 0.5  # the copies meet in one group
    req = _request(100, uuid.uuid4().hex, 7)
    other = _request(50, uuid.uuid4().hex, 7)  # another sender, same seq: stored
    acks: list = []
    threads = [threading.Thread(target=lambda r=r: acks.append(_push(zt_server.addr, r)))
               for r in (req, req, req, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.accepted for a in acks) == [50, 100, 100, 100]
    assert _stored(zt_server) == 150


def test_a_batch_stored_before_a_restart_is_not_stored_again(chdb_root):
    from server.app import ZerotraceServer

    store = chdb_root.for_database(f"idem_{uuid.uuid4().hex[:12]}")
    req = _request(80, uuid.uuid4().hex, 1)
    try:
        for _ in range(2):  # a server, stopped (its ack lost), then a new one
            srv = ZerotraceServer("127.0.0.1:0", store=store)
            port = srv.start()
            try:
                assert _push(f"127.0.0.1:{port}", req).accepted == 80
            finally:
                srv.stop(grace=0.5)
        assert store._count("1") == 80
    finally:
        store.drop()


def test_batches_without_a_sender_id_are_not_deduplicated(zt_server):
    # Older agents send no sender id: their batches are stored as before.
    req = _request(10, "", 0)
    assert _push(zt_server.addr, req).accepted == 10
    assert _push(zt_server.addr, req).accepted == 10
    assert _stored(zt_server) == 20


def test_a_crash_between_the_insert_and_its_key_stores_nothing_twice(chdb_root):
    """The spans' insert and the key's record are two statements: a server killed
    between them (simulated: the key's record fails, then a new writer with no
    memory, as after a restart) used to store the resent batch again.  The key is now
    marked before the insert, and a resend finding it so is written span by span
    minus what is already stored."""
    from proto.columns import spans_to_table
    from server.ingest.writer import BatchWriter

    store = chdb_root.for_database(f"crash_{uuid.uuid4().hex[:12]}")
    table = spans_to_table(_spans(120), "node-a")
    key = (uuid.uuid4().hex, 5)
    real = store.record_batches

    def crash_after_insert(rows):
        if any(n for _, n in rows):  # the record after the insert: "killed"
            raise RuntimeError("killed")
        return real(rows)

    try:
        store.record_batches = crash_after_insert
        w1 = BatchWriter(store)
        w1.write(table, 120, key=key)  # stored, its key not recorded as done
        w1.close()
        store.record_batches = real
        assert store._count("1") == 120
        w2 = BatchWriter(store)  # the restarted server
        assert w2.write(table, 120, key=key) == 120  # acked with the count
        w2.close()
        assert store._count("1") == 120
        # A plain batch that never met a failure is unaffected.
        w3 = BatchWriter(store)
        assert w3.write(spans_to_table(_spans(30), "node-a"), 30, key=(key[0], 6)) == 30
        w3.close()
        assert store._count("1") == 150
    finally:
        store.record_batches = real
        store.drop()
