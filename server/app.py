"""The server process: one gRPC port for ingest, OTLP and queries, over one store.

From Python: `srv = ZerotraceServer("127.0.0.1:0", "/var/lib/zerotrace"); port =
srv.start(); ...; srv.stop()`.  As a process: `python -m server.cli server --listen
HOST:PORT --data DIR` (or `zerotrace server ...`).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from proto.zerotrace.v1 import query_pb2_grpc
from server.auth import (
    AuthConfigError,
    AuthInterceptor,
    TokenTable,
    http_tls_context,
    server_credentials,
)
from server.ingest.admission import DEFAULT_MAX_INFLIGHT_BYTES, Admission, ByteBudget
from server.ingest.otlp import OtlpTraceService
from server.ingest.service import IngestService
from server.ingest.validate import TimeWindow
from server.ingest.writer import BatchWriter
from server.query.service import QueryService
from server.storage.base import SpanStore

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:4317"  # the OTLP/gRPC port: SDKs export here unchanged
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class ZerotraceServer:
    """gRPC server + store + batch writer + retention loop."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        data_dir: str | None = None,
        store: SpanStore | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        retention_s: float = 0,
        max_bytes: int = 0,
        retention_interval_s: float = 60,
        # 32 (was 8): a worker waits on the group commit, so workers bound how many
        # batches one insert joins; 16 agents x 4 096-span batches: 92 000 against
        # 77 000 spans/s on one core (docs/benchmarks.md).
        workers: int = 32,
        metrics_listen: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        tokens: TokenTable | None = None,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        forward_otlp: str = "",
        max_future_s: float = 86_400,
        redact_otlp: bool = True,
    ) -> None:
        # TLS files are read now, so that a bad path fails before the store opens.
        self._credentials = (server_credentials(tls_cert, tls_key, tls_ca)
                             if tls_cert or tls_key else None)
        if tls_ca and self._credentials is None:
            raise AuthConfigError("--tls-ca needs --tls-cert and --tls-key (the server's own)")
        # The same certificate on the HTTP ports this object serves (/metrics); the
        # Tempo/Jaeger API (server/http) takes `http_tls` too.
        self.http_tls = (http_tls_context(tls_cert, tls_key, tls_ca)
                         if self._credentials is not None else None)
        if store is None:
            if data_dir is None:
                raise ValueError("give a data directory or a store")
            from server.storage.factory import open_store

            store = open_store("chdb", data=data_dir)
        self.store = store
        self.listen = listen
        self.writer = BatchWriter(store)
        # --forward-otlp: what is stored is also sent to an OTLP endpoint (server/forward.py)
        self.forwarder = None
        if forward_otlp:
            from server.forward import OtlpForwarder

            self.forwarder = OtlpForwarder(forward_otlp)
            self.writer = self.forwarder.wrap(self.writer)
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.retention_interval_s = retention_interval_s
        self._stop = threading.Event()
        opts = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # gRPC sets SO_REUSEPORT by default: a second server on the same port would
            # start silently and queries would alternate between the two
            ("grpc.so_reuseport", 0),
        ]
        self.tls = self._credentials is not None
        self.tokens = tokens
        self.auth = AuthInterceptor(tokens) if tokens is not None else None
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zt-rpc"),
            options=opts,
            interceptors=[self.auth] if self.auth is not None else None,
            # 64 RPCs, as with 8 workers before: what queues in memory stays bounded.
            maximum_concurrent_rpcs=max(64, workers * 2),
        )
        # A sender may hold an eighth of the workers (agents: 4 of 32, so that it takes
        # 16 flooding agents to fill the 64 RPC slots; OTLP senders are keyed by
        # address, so several SDK processes of one host share theirs: half).
        # Spans ending more than max_future_s ahead (a day: beyond any clock skew) or
        # older than the retention are refused at ingest on every wire, with reasons
        # (server/ingest/validate.py, TimeWindow).
        self.window = TimeWindow(max_future_s=max_future_s, max_age_s=retention_s)
        self.admissions = {
            "zerotrace": Admission(limit=max(1, workers // 8), window=self.window),
            # SDK spans are redacted at ingest unless told not to (server/ingest/redact.py)
            "otlp": Admission(limit=max(1, workers // 2), window=self.window,
                              redact=redact_otlp),
        }
        # Request bytes in flight, server-wide (docs/server.md, "Admission by bytes").
        self.budget = ByteBudget(max_inflight_bytes)
        self.grpc.add_generic_rpc_handlers(
            (IngestService(self.writer, self.admissions["zerotrace"], self.budget).handler(),)
        )
        self.grpc.add_generic_rpc_handlers(
            (OtlpTraceService(self.writer, self.admissions["otlp"], self.budget).handler(),))
        self.metrics_listen = metrics_listen
        self.metrics_port = 0
        self._metrics_http = None
        query_pb2_grpc.add_QueryServiceServicer_to_server(QueryService(store), self.grpc)
        # grpc.health.v1 (kubelet's `grpc` probes, load balancers): NOT_SERVING until
        # start() and again from stop(), so a draining server is taken out of rotation.
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self.port = 0

    def start(self) -> int:
        """Bind and serve in the background; returns the bound port."""
        if self._credentials is not None:
            self.port = self.grpc.add_secure_port(self.listen, self._credentials)
        else:
            self.port = self.grpc.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        self.grpc.start()
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.metrics_listen:
            from server.metrics import ServerCollector, serve_collectors

            collectors = [ServerCollector(self.admissions, self.writer, budget=self.budget)]
            if self.forwarder is not None:
                collectors.append(self.forwarder.collector())
            self._metrics_http, self.metrics_port = serve_collectors(
                self.metrics_listen, *collectors, tls=self.http_tls)
        if self.retention_s or self.max_bytes:
            threading.Thread(target=self._retention_loop, daemon=True).start()
        log.info("zerotrace server on port %d", self.port)
        return self.port

    def _retention_loop(self) -> None:
        while not self._stop.wait(self.retention_interval_s):
            try:
                n = self.store.apply_retention(self.retention_s, self.max_bytes)
                if n:
                    log.info("retention deleted %d spans", n)
            except Exception as e:  # noqa: BLE001 - keep serving; retry next round
                log.warning("retention failed: %s", e)

    def wait(self) -> None:
        self.grpc.wait_for_termination()

    def _set_health(self, status: int) -> None:
        for name in ("", "zerotrace.v1.IngestService", "zerotrace.v1.QueryService",
                     "opentelemetry.proto.collector.trace.v1.TraceService"):
            self.health.set(name, status)

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, finish in-flight writes, close the store."""
        self._stop.set()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc.stop(grace).wait(grace + 1)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self.writer.close()
        if self.forwarder is not None:  # after the writer: its last batches go too
            self.forwarder.close()
        self.store.close()
