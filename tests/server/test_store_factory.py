"""`zerotrace server --store NAME`: backends come from a registry (server/storage/factory.py).

The built-in chdb and clickhouse backends are registered there; a backend registered
at run time is a choice of `--store` and what `open_store` opens, with no edit of the
CLI or the server; a real `zerotrace server --store chdb` process starts on its data
directory, and an unreachable `--store clickhouse` ends in one line, not a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from server.storage import factory
from server.storage.base import SpanStore

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_backends_are_registered():
    assert {"chdb", "clickhouse"} <= set(factory.names())
    assert factory.missing_package("chdb") == ""
    with pytest.raises(ValueError, match="unknown store 'nope'"):
        factory.open_store("nope")
    with pytest.raises(ValueError, match="data directory"):
        factory.open_store("chdb", data="")


def test_a_registered_backend_is_a_store_choice(chdb_root):
    from server.cli import register

    opened: list[factory.StoreOptions] = []
    db = f"fac_{uuid.uuid4().hex[:12]}"

    def opener(o: factory.StoreOptions) -> SpanStore:
        opened.append(o)
        return chdb_root.for_database(db)

    factory.register("fixture", "json", opener, lambda o: f"fixture={o.data}")
    try:
        import argparse

        p = argparse.ArgumentParser()
        register(p.add_subparsers(dest="command"))
        args = p.parse_args(["server", "--store", "fixture", "--data", "/x"])
        assert args.store == "fixture"
        store = factory.open_store(args.store, factory.StoreOptions(data=args.data))
        try:
            assert opened == [factory.StoreOptions(data="/x")]
            assert store.stats()["spans"] == 0
        finally:
            store.drop()
    finally:
        factory._BACKENDS.pop("fixture", None)  # noqa: SLF001 - leave the registry as found


def _server(*extra: str, data: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "server", "--listen", "127.0.0.1:0",
         "--data", data, "--http", "", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def test_server_process_with_store_chdb(tmp_path):
    proc = _server("--store", "chdb", data=str(tmp_path / "data"))
    try:
        line = proc.stdout.readline()
        assert "listening on" in line and f"data={tmp_path / 'data'}" in line, line
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert (tmp_path / "data").is_dir()


def test_unreachable_clickhouse_is_one_line(tmp_path):
    proc = _server("--store", "clickhouse", "--clickhouse", "127.0.0.1:1",
                   data=str(tmp_path / "data"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    # (the client library logs its connection attempts before)
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("zerotrace: cannot open the clickhouse store")
