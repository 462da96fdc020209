"""Protocol layer: per-connection parsers turning socket chunks into request/response
records (HTTP/1.1, HTTP/2 + gRPC, DNS, Redis, PostgreSQL, MySQL).

Entry points: `registry.infer`, `registry.new_parser`, `registry.STATS`; types in `base`.
Design notes: docs/protocols.md.
"""
