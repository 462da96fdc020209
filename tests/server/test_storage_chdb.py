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
