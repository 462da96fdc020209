"""HTTP/2 and gRPC: frames, multiplexed streams, HPACK, trailers.

The parser is compiled (`_http2.pyx`, Cython, built by `pip install`); this module is
the name the rest of the agent imports it by.

HPACK is decoded by the compiled module's own decoder (RFC 7541), not the `hpack`
package: grpcio sends a fresh grpc-timeout literal with every call, so most blocks
change the dynamic table and were decoded in pure Python, about half of the parser's
time.  Only the fields a span needs become Python strings.  A reference to a table
entry the decoder never saw (connection picked up midway, or a header block lost to a
gap, after which the direction's table starts afresh) yields a placeholder and the
record says "midstream"; a gRPC exchange (content-type application/grpc) is reported as
protocol "grpc" with service, method and grpc-status from the trailers.
"""

from __future__ import annotations

from ._http2 import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    GRPC_CODES,
    HEADERS,
    MAX_BLOCK,
    MAX_FRAME,
    MAX_STREAMS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    STATS,
    UNKNOWN,
    WINDOW_UPDATE,
    DirStream,
    HpackDecoder,
    Http2Parser,
    huffman_decode,
)
from .spec import InferenceRule, Ports, ProtocolSpec

__all__ = ["CONTINUATION", "DATA", "END_HEADERS", "END_STREAM", "GOAWAY", "GRPC_CODES",
           "HEADERS", "MAX_BLOCK", "MAX_FRAME", "MAX_STREAMS", "PADDED", "PING", "PREFACE",
           "PRIORITY", "PRIORITY_FLAG", "PUSH_PROMISE", "RST_STREAM", "SETTINGS", "STATS",
           "UNKNOWN", "WINDOW_UPDATE", "DirStream", "HpackDecoder", "Http2Parser",
           "huffman_decode"]


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _preface(data: bytes, _ports: Ports) -> str | None:
    return "http2" if data.startswith(H2_PREFACE) else None


def _settings_frame(data: bytes, _ports: Ports) -> str | None:
    """A server-side first read of HTTP/2 (SETTINGS frame on stream 0)."""
    if len(data) < 9:
        return None
    ln = int.from_bytes(data[0:3], "big")
    if (data[3] == 4 and ln % 6 == 0 and ln <= 60 and data[5:9] == b"\x00\x00\x00\x00"
            and data[4] in (0, 1)):
        return "http2"
    return None


# gRPC is HTTP/2: the same parser, told apart by content-type
PROTOCOL = ProtocolSpec(("http2", "grpc"), lambda client_side, _t: Http2Parser(client_side),
                        STATS, (InferenceRule(10, "tcp", _preface),
                                InferenceRule(80, "tcp", _settings_frame)))
