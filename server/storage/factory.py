"""Span store backends by name: `zerotrace server --store NAME` picks one from here.

Each backend registers its name, the Python package it needs (checked before it is
opened, so a missing package is one line of advice, not a traceback) and a function
opening it from the server's options.  A new backend is one module calling
`register` plus its conformance tests (tests/server/storage_conformance.py); the CLI
and `ZerotraceServer` only call `open_store`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.storage.base import SpanStore


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What a backend may be opened from: `data` (a directory, the embedded store),
    `address` (HOST:PORT of a database server)."""

    data: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    package: str  # the importable module it needs
    opener: Callable[[StoreOptions], SpanStore]
    describe: Callable[[StoreOptions], str]  # where it stores, for the start-up line
    help: str = ""


_BACKENDS: dict[str, Backend] = {}


def register(name: str, package: str, opener: Callable[[StoreOptions], SpanStore],
             describe: Callable[[StoreOptions], str], help: str = "") -> None:  # noqa: A002
    """Make backend `name` available to `open_store` (and `--store`)."""
    _BACKENDS[name] = Backend(name, package, opener, describe, help)


def names() -> list[str]:
    """The registered backend names (the choices of `--store`)."""
    return sorted(_BACKENDS)


def backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown store {name!r}; one of {', '.join(names())}") from None


def missing_package(name: str) -> str:
    """The package (pip name) backend `name` needs and this install lacks, or ""."""
    pkg = backend(name).package
    return "" if importlib.util.find_spec(pkg) is not None else pkg.replace("_", "-")


def open_store(name: str, options: StoreOptions | None = None, **kw: Any) -> SpanStore:
    """Open backend `name` with `options` (or the same as keywords)."""
    return backend(name).opener(options or StoreOptions(**kw))


def _chdb(o: StoreOptions) -> SpanStore:
    from server.storage.chdb_store import ChdbStore

    if not o.data:
        raise ValueError("the chdb store needs a data directory (--data)")
    return ChdbStore(o.data)


def _clickhouse(o: StoreOptions) -> SpanStore:
    from server.storage.clickhouse_store import ClickHouseStore

    host, _, port = (o.address or "127.0.0.1:8123").rpartition(":")
    return ClickHouseStore(host=host or "127.0.0.1", port=int(port or 8123))


register("chdb", "chdb", _chdb, lambda o: f"data={o.data}",
         "embedded ClickHouse (chDB) in --data DIR (default)")
register("clickhouse", "clickhouse_connect", _clickhouse,
         lambda o: f"clickhouse={o.address or '127.0.0.1:8123'}",
         "a ClickHouse server at --clickhouse HOST:PORT (HTTP)")
