"""The conformance suite on the embedded chDB store (one database per test)."""

from __future__ import annotations

import uuid

import pytest
from storage_conformance import StorageConformance


@pytest.fixture
def store(chdb_root):
    s = chdb_root.for_database(f"t_{uuid.uuid4().hex[:12]}")
    yield s
    s.drop()
    s.close()


class TestChdbConformance(StorageConformance):
    def test_data_survives_reopen(self, chdb_root, tmp_path):
        # Persistence: what was written is there when the data directory is reopened.
        # chDB holds one data directory per process, so the reopen runs in a child.
        import subprocess
        import sys
        import textwrap

        code = textwrap.dedent(
            """
            import sys
            from server.storage.chdb_store import ChdbStore
            from factory import server_span
            s = ChdbStore(sys.argv[1])
            if sys.argv[2] == "write":
                sp = server_span(start_ns=1, end_ns=2)
                s.write_spans([sp]); print(sp.trace_id)
            else:
                print(len(s.get_trace(sys.argv[3])))
            s.close()
            """
        )
        import os

        env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
        d = str(tmp_path / "data")
        tid = subprocess.run(
            [sys.executable, "-c", code, d, "write"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()[-1]
        out = subprocess.run(
            [sys.executable, "-c", code, d, "read", tid],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()[-1]
        assert out == "1"

    def test_a_failed_insert_does_not_block_the_session(self, store):
        # ClickHouse refusing a payload mid-stream left the streaming insert open,
        # and every later query of the (one per process) session failed.
        import time

        import pyarrow as pa
        from factory import server_span

        from proto.columns import spans_to_table, table_to_ipc
        from server.storage.base import StorageError

        # A null behind a non-nullable column's dictionary: ClickHouse refuses it in
        # append() or in finish(), as it happens; the first kind wedged the session.
        n = 20_000  # big enough for ClickHouse to read blocks during append()
        table = spans_to_table([server_span(start_ns=1, end_ns=2)] * n)
        i = table.schema.get_field_index("service")
        table = table.set_column(i, table.schema.field(i), pa.DictionaryArray.from_arrays(
            pa.array([0] * n, pa.int32()), pa.array([None], pa.string())))
        for junk in [b"\xff" * 64] + [table_to_ipc(table, compress=False)] * 6:
            with pytest.raises(StorageError):
                store._insert("ArrowStream", junk, "")
        s = server_span(start_ns=time.time_ns(), end_ns=time.time_ns() + 1)
        assert store.write_spans([s]) == 1
        assert [x.span_id for x in store.get_trace(s.trace_id)] == [s.span_id]

    def test_retention_clears_the_search_index(self, store):
        from factory import server_span

        H = 3_600_000_000_000
        import time

        now = time.time_ns()
        old = [
            server_span(start_ns=now - 48 * H + i, end_ns=now - 48 * H + i + 1) for i in range(5)
        ]
        new = [server_span(start_ns=now + i, end_ns=now + i + 1) for i in range(3)]
        store.write_spans(old + new)

        def index_rows():
            return int(store._select(f"SELECT count() AS n FROM {store.index}")[0]["n"])

        assert index_rows() == 8
        assert store.apply_retention(max_age_s=24 * 3600) == 5
        assert index_rows() == 3

    def test_search_index_built_for_older_data(self, store):
        # A database from before the search index: opening it indexes what is stored.
        from factory import server_span

        from server.storage.base import TraceQuery

        sp = server_span(service="legacy", start_ns=5_000, end_ns=6_000)
        store.write_spans([sp])
        store._command(f"DROP VIEW {store.db}.search_index_mv")
        store._command(f"DROP TABLE {store.index}")
        reopened = store.for_database(store.db)
        (t,) = reopened.search_traces(TraceQuery(service="legacy"))
        assert t.trace_id == sp.trace_id

    def test_replicated_engine_needs_a_path_naming_the_table(self, store):
        # The search index would share the span table's replication path otherwise.
        from server.storage.base import StorageError

        with pytest.raises(StorageError, match="replication path"):
            store._create("ReplicatedMergeTree('/clickhouse/tables/{shard}/zt', '{replica}')")


def test_queries_run_apart_from_writes_with_their_own_limits(chdb_root):
    """A query in progress holds a read session, not the write lock: an insert and the
    write path's reads complete meanwhile; a query beyond the pool's limits is refused
    with a retryable error instead of holding an RPC worker (issue 14 item 4)."""
    import threading
    import time

    from factory import server_span

    from server.storage.chdb_store import ChdbStore, QueryLimits, QueryPoolBusy

    s = ChdbStore(chdb_root.data_dir, f"q_{uuid.uuid4().hex[:12]}",
                  query_limits=QueryLimits(sessions=1, waiting=0))
    try:
        started, done = threading.Event(), []

        def slow_query() -> None:
            started.set()
            # ~3 s in ClickHouse (sleepEachRow), the GIL released meanwhile
            done.append(s._select("SELECT sum(sleepEachRow(0.5)) AS z FROM numbers(6)"))

        t = threading.Thread(target=slow_query)
        t.start()
        started.wait()
        time.sleep(0.5)
        t0 = time.monotonic()
        assert s.write_spans([server_span(start_ns=1, end_ns=2) for _ in range(50)]) == 50
        assert s.stored_batches([("ab", 1)]) == {}
        write_s = time.monotonic() - t0
        with pytest.raises(QueryPoolBusy, match="query pool busy"):
            s.services(0, 0)
        assert not done, "the query ended before the write: nothing was shown"
        t.join(30)
        assert done and write_s < 2.5, f"write took {write_s:.2f} s during a query"
        assert s._count("1") == 50  # the pool is free again
    finally:
        s.drop()
        s.close()
