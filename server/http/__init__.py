"""HTTP query APIs of the server: Tempo's and Jaeger's, for Grafana's built-in data
sources, and the flame graphs (`HttpApi(store, "127.0.0.1:3200").start()`)."""

from server.http.app import DEFAULT_HTTP, DEFAULT_OTLP_HTTP, HttpApi

__all__ = ["DEFAULT_HTTP", "DEFAULT_OTLP_HTTP", "HttpApi"]
