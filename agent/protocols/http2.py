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
from ._infer import H2_PREFACE, H2_PREFACE_TEST, H2_SETTINGS
from .spec import InferenceRule, ProtocolSpec

__all__ = ["CONTINUATION", "DATA", "END_HEADERS", "END_STREAM", "GOAWAY", "GRPC_CODES",
           "HEADERS", "MAX_BLOCK", "MAX_FRAME", "MAX_STREAMS", "PADDED", "PING", "PREFACE",
           "PRIORITY", "PRIORITY_FLAG", "PUSH_PROMISE", "RST_STREAM", "SETTINGS", "STATS",
           "UNKNOWN", "WINDOW_UPDATE", "H2_PREFACE", "DirStream", "HpackDecoder", "Http2Parser",
           "huffman_decode"]


# The client's connection preface, or (the server side's first read) a SETTINGS frame on
# stream 0: _infer.pyx.  gRPC is HTTP/2: the same parser, told apart by content-type.
PROTOCOL = ProtocolSpec(("http2", "grpc"), Http2Parser, STATS,
                        (InferenceRule(10, "tcp", H2_PREFACE_TEST),
                         InferenceRule(80, "tcp", H2_SETTINGS)))
