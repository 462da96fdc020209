"""Ingest: the agents' gRPC service, the OTLP receiver, and group-committed writes."""
