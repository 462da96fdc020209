"""The server's own Prometheus metrics: what each sender pushed, what was refused and
why, and what the store did with it.  Read from the live counters at scrape time.
With the server's --tls-cert, /metrics is served over HTTPS only (issue 14)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import fields
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer

from server.auth import serve_tls
from server.ingest.admission import Admission, ByteBudget, SenderStats
from server.ingest.writer import BatchWriter

# Label values of `sender` per protocol: a cluster of thousands of nodes (or OTLP
# senders keyed by address) must not make thousands of series per metric.
MAX_SENDERS = 200


def _bounded(stats: dict[str, SenderStats], limit: int) -> list[tuple[str, SenderStats]]:
    """The first `limit` senders seen keep their own series (stable: a sender never moves
    between its series and "other", so every counter stays monotonic); the rest are
    summed under sender="other"."""
    items = list(stats.items())
    if len(items) <= limit:
        return items
    rest = SenderStats()
    for _k, st in items[limit:]:
        for f in fields(SenderStats):
            setattr(rest, f.name, getattr(rest, f.name) + getattr(st, f.name))
    return items[:limit] + [("other", rest)]


class ServerCollector:
    """Per-sender ingest counters (agents, and OTLP senders by address) and store writes."""

    def __init__(self, admissions: dict[str, Admission], writer: BatchWriter,
                 max_senders: int = MAX_SENDERS, budget: ByteBudget | None = None) -> None:
        self.admissions = admissions  # protocol ("zerotrace", "otlp") -> its admission
        self.writer = writer
        self.max_senders = max_senders
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        labels = ["protocol", "sender"]
        fams = {
            "accepted": CounterMetricFamily(
                "zerotrace_server_spans_accepted", "Spans stored, by sender.", labels=labels),
            "batches": CounterMetricFamily(
                "zerotrace_server_batches", "Batches admitted, by sender.", labels=labels),
            "throttled": CounterMetricFamily(
                "zerotrace_server_batches_throttled",
                "Batches refused with RESOURCE_EXHAUSTED: the sender had too many in flight.",
                labels=labels),
            "failed": CounterMetricFamily(
                "zerotrace_server_batches_failed",
                "Batches the store could not write (the sender was told to retry).",
                labels=labels),
        }
        # reason="invalid" (bad ids, times out of order, undecodable...) or
        # "time_window" (outside the ingest window: server/ingest/validate.py)
        rejected = CounterMetricFamily(
            "zerotrace_server_spans_rejected", "Spans refused, by sender and reason.",
            labels=[*labels, "reason"])
        inflight = GaugeMetricFamily("zerotrace_server_batches_inflight",
                                     "Batches being stored now, by sender.", labels=labels)
        for proto, adm in self.admissions.items():
            for sender, st in _bounded(adm.snapshot(), self.max_senders):
                for key, fam in fams.items():
                    fam.add_metric([proto, sender], getattr(st, key))
                inflight.add_metric([proto, sender], st.inflight)
                rejected.add_metric([proto, sender, "invalid"], st.rejected - st.out_of_window)
                rejected.add_metric([proto, sender, "time_window"], st.out_of_window)
        yield from fams.values()
        yield rejected
        yield inflight
        inserts = CounterMetricFamily("zerotrace_server_store_inserts",
                                      "Inserts into the store (group commits).")
        inserts.add_metric([], self.writer.inserts)
        yield inserts
        # Per protocol only (two values): the cap is server-wide, not per sender.
        over = CounterMetricFamily(
            "zerotrace_server_requests_over_inflight_bytes",
            "Requests refused with RESOURCE_EXHAUSTED before decoding: the server's "
            "request bytes in flight would pass --max-inflight-bytes.",
            labels=["protocol"])
        refused = dict(self.budget.refused) if self.budget is not None else {}
        for proto in self.admissions:
            over.add_metric([proto], refused.get(proto, 0))
        yield over
        # The query pool's refusals (server/storage/chdb_store.py): queries turned away
        # with UNAVAILABLE because every query session was busy and the wait queue full,
        # or the wait too long.  Stores without a query pool have no such counter.
        pool = getattr(getattr(self.writer, "store", None), "queries_refused", None)
        if isinstance(pool, int):
            q = CounterMetricFamily(
                "zerotrace_server_queries_refused",
                "Queries refused with UNAVAILABLE: the query pool was full (sessions busy, "
                "wait queue full or the wait too long).")
            q.add_metric([], pool)
            yield q


def serve_metrics(listen: str, admissions: dict[str, Admission],
                  writer: BatchWriter,
                  budget: ByteBudget | None = None,
                  tls: ssl.SSLContext | None = None) -> tuple[WSGIServer, int]:
    """Serve /metrics on `listen` ("HOST:PORT"); (the HTTP server, its port)."""
    return serve_collectors(listen, ServerCollector(admissions, writer, budget=budget),
                            tls=tls)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # a scrape every 15 s is not news


def serve_collectors(listen: str, *collectors: Any,
                     tls: ssl.SSLContext | None = None) -> tuple[WSGIServer, int]:
    """/metrics on `listen` from `collectors`: (the HTTP server, its port).  With
    `tls` (the server's --tls-cert), HTTPS only, set up before the port serves."""
    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if tls is None:
        server, _thread = start_http_server(int(port), addr=host, registry=registry)
        return server, server.server_port

    class _Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, int(port), make_wsgi_app(registry), _Server,
                         handler_class=_QuietHandler)
    serve_tls(server, tls)
    threading.Thread(target=server.serve_forever, name="zt-metrics", daemon=True).start()
    return server, server.server_port
