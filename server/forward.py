"""Forward what the server stores to an OTLP/gRPC endpoint (`--forward-otlp`).

Every batch the writer has stored (acked to its sender: durable here first) is
queued, then converted on the forwarder's own thread -- never on the ingest path --
to OTLP (server/http/otlp_map.py, the model Tempo serves) and sent with
`TraceService/Export` in requests of at most `max_batch_spans` spans.

- Retry: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED and
  UNKNOWN/INTERNAL (a collector restarting) are retried with exponential backoff
  and jitter (0.2 s doubling to 5 s) for up to `max_retry_s`; the queue waits meanwhile.
- Drops, counted by reason, never silent: `queue_full` (more than `max_queued_spans`
  waiting: the endpoint is slower than ingest or down for long), `rejected` (a
  non-retryable status, or spans the receiver refused by partial success),
  `retries_exhausted`, `unconvertible`, `shutdown` (still queued at stop).
- Metrics (`--metrics`): zerotrace_server_forward_spans_total,
  zerotrace_server_forward_dropped_spans_total{reason},
  zerotrace_server_forward_retries_total, zerotrace_server_forward_queued_spans.

A batch an agent resends after a lost ack (same idempotency key) is stored once and
forwarded once: the keys of the last FORWARD_KEYS forwarded batches are remembered.
Past that window, or across a server restart, delivery is at least once (the
collector may see the same span ids twice).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from concurrent.futures import Future
from typing import Any

import grpc

log = logging.getLogger(__name__)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
}
DROP_REASONS = ("queue_full", "rejected", "retries_exhausted", "unconvertible", "shutdown")
# Idempotency keys of batches already offered (~100 bytes each): minutes of resends
# at a thousand batches a second.
FORWARD_KEYS = 65_536


def _spans_of(table: Any) -> list:
    """Spans of a stored batch (the span table's Arrow columns, as every wire is)."""
    from proto.columns import spans_from_table

    return spans_from_table(table)


class OtlpForwarder:
    """A queue of stored batches and the thread that exports them to `endpoint`
    (HOST:PORT, plaintext; https://HOST:PORT for TLS with the system roots)."""

    def __init__(self, endpoint: str, max_queued_spans: int = 200_000,
                 max_batch_spans: int = 2048, timeout_s: float = 10.0,
                 max_retry_s: float = 60.0) -> None:
        self.endpoint = endpoint
        self.max_queued_spans = max_queued_spans
        self.max_batch_spans = max_batch_spans
        self.timeout_s = timeout_s
        self.max_retry_s = max_retry_s
        self._q: collections.deque[tuple[Any, int]] = collections.deque()
        self._queued = 0
        self._cv = threading.Condition()
        self._stop = False
        self.forwarded = 0
        self.retries = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        if endpoint.startswith("https://"):
            self._channel = grpc.secure_channel(endpoint[8:], grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)
        self._thread = threading.Thread(target=self._run, name="zt-forward", daemon=True)
        self._thread.start()

    # -- intake (the writer's completion callback: must be quick) ---------------

    def offer(self, payload: Any, count: int) -> None:
        with self._cv:
            if self._stop:
                self.dropped["shutdown"] += count
                return
            if self._queued + count > self.max_queued_spans:
                self.dropped["queue_full"] += count
                return
            self._q.append((payload, count))
            self._queued += count
            self._cv.notify()

    def wrap(self, writer: Any) -> Any:
        """`writer` (server/ingest/writer.BatchWriter) whose stored batches come here."""
        return _ForwardingWriter(writer, self)

    # -- the export thread -------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stop:
                    self._cv.wait()
                if not self._q:
                    return
                payload, count = self._q[0]
            try:
                spans = _spans_of(payload)
            except Exception as e:  # noqa: BLE001 - a payload we cannot read is counted
                log.warning("forward: cannot convert a stored batch: %s", e)
                spans = None
            if spans is None:
                self._count_drop("unconvertible", count)
            else:
                for i in range(0, len(spans), self.max_batch_spans):
                    self._send(spans[i : i + self.max_batch_spans])
            with self._cv:
                self._q.popleft()
                self._queued -= count
                self._cv.notify_all()

    def _count_drop(self, reason: str, n: int) -> None:
        with self._cv:
            self.dropped[reason] += n

    def _send(self, spans: list) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        from server.http.otlp_map import to_traces_data

        req = trace_service_pb2.ExportTraceServiceRequest(
            resource_spans=to_traces_data(spans).resource_spans)
        deadline = time.monotonic() + self.max_retry_s
        delay = 0.2
        while True:
            try:
                resp = self._stub.Export(req, timeout=self.timeout_s)
            except grpc.RpcError as e:
                code = e.code()
                if code not in RETRYABLE:
                    log.warning("forward: %s refused %d spans: %s %s", self.endpoint,
                                len(spans), code.name, e.details())
                    self._count_drop("rejected", len(spans))
                    return
                with self._cv:
                    stopping = self._stop
                if time.monotonic() + delay > deadline or stopping:
                    log.warning("forward: gave up on %d spans after retries (%s)",
                                len(spans), code.name)
                    self._count_drop("shutdown" if stopping else "retries_exhausted",
                                     len(spans))
                    return
                with self._cv:
                    self.retries += 1
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)
                continue
            rejected = min(len(spans), max(0, resp.partial_success.rejected_spans))
            with self._cv:
                self.forwarded += len(spans) - rejected
                self.dropped["rejected"] += rejected
            return

    # -- control -----------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the queue is empty (True) or `timeout_s` passed."""
        end = time.monotonic() + timeout_s
        with self._cv:
            while self._q:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued for up to `timeout_s`, then count the rest as dropped."""
        self.flush(timeout_s)
        with self._cv:
            self._stop = True
            left = sum(c for _p, c in self._q)
            self.dropped["shutdown"] += left
            self._q.clear()
            self._queued = 0
            self._cv.notify_all()
        self._thread.join(timeout_s)
        self._channel.close()

    def metrics(self) -> dict[str, Any]:
        with self._cv:
            return {"forwarded": self.forwarded, "retries": self.retries,
                    "queued": self._queued, "dropped": dict(self.dropped)}

    def collector(self) -> Any:
        """A Prometheus collector of the counters above."""
        return _ForwardCollector(self)


class _ForwardingWriter:
    """A BatchWriter whose successfully stored batches are offered to the forwarder."""

    def __init__(self, writer: Any, forwarder: OtlpForwarder,
                 max_keys: int = FORWARD_KEYS) -> None:
        self._writer = writer
        self._forwarder = forwarder
        self._keys: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self.resends = 0  # stored batches not forwarded again: their key was

    def _first_time(self, key: Any) -> bool:
        """Whether a stored batch of `key` is to be forwarded (its key not seen yet)."""
        if key is None:
            return True
        with self._lock:
            if key in self._keys:
                self.resends += 1
                return False
            self._keys[key] = None
            if len(self._keys) > self._max_keys:
                self._keys.popitem(last=False)
            return True

    def __getattr__(self, name: str) -> Any:  # stats, close, ...: the writer's own
        return getattr(self._writer, name)

    def submit(self, data: Any, count: int, key: Any = None) -> Future[int]:
        from server.ingest.writer import as_table

        data = as_table(data)
        fut = self._writer.submit(data, count, key)

        def stored(f: Future[int]) -> None:
            if (not f.cancelled() and f.exception() is None and f.result()
                    and self._first_time(key)):
                self._forwarder.offer(data, int(f.result()))

        fut.add_done_callback(stored)
        return fut

    def write(self, data: Any, count: int, timeout: float | None = 60.0,
              key: Any = None) -> int:
        return self.submit(data, count, key).result(timeout)


class _ForwardCollector:
    def __init__(self, fwd: OtlpForwarder) -> None:
        self.fwd = fwd

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.fwd.metrics()
        c = CounterMetricFamily("zerotrace_server_forward_spans",
                                "Spans forwarded to the OTLP endpoint and accepted by it.")
        c.add_metric([], m["forwarded"])
        yield c
        d = CounterMetricFamily("zerotrace_server_forward_dropped_spans",
                                "Stored spans not forwarded, by reason.", labels=["reason"])
        for reason, n in m["dropped"].items():
            d.add_metric([reason], n)
        yield d
        r = CounterMetricFamily("zerotrace_server_forward_retries",
                                "Export attempts retried after a retryable status.")
        r.add_metric([], m["retries"])
        yield r
        g = GaugeMetricFamily("zerotrace_server_forward_queued_spans",
                              "Stored spans waiting to be forwarded.")
        g.add_metric([], m["queued"])
        yield g


def serve_metrics_with(listen: str, *collectors: Any) -> tuple[Any, int]:
    """/metrics on `listen` from these collectors: (the HTTP server, its port)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    for c in collectors:
        registry.register(c)
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    return server, server.server_port
