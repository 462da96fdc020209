"""OTLP/HTTP trace receiver: `POST /v1/traces`, binary protobuf or JSON, gzip or not.

What the OpenTelemetry protocol asks of an OTLP/HTTP server, on the HTTP API's port:

- bodies `application/x-protobuf` (an `ExportTraceServiceRequest`) or
  `application/json` (its protobuf JSON mapping, trace and span ids in hex, enums as
  integers or names, unknown fields ignored); `Content-Encoding: gzip` accepted;
- 200 with an `ExportTraceServiceResponse` in the request's encoding, its
  `partial_success` set when some spans were refused; 400 (not decodable), 401/403
  (tokens), 413 (too large), 415 (other content type or encoding), 429 or 503 with
  `Retry-After` (busy, storage failing: the retryable ones) with a `google.rpc.Status`
  body.

The spans then take exactly the gRPC receiver's path (server/ingest/otlp.py,
`OtlpTraceService.export`): the same byte budget, per-sender admission, conversion
keeping every OTLP field, attribute caps, validation and storage.  Only the
transport differs, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from server.ingest.admission import bytes_or_abort

if TYPE_CHECKING:
    from server.ingest.otlp import OtlpTraceService

PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# The gRPC port's message limit (server/app.py MAX_MESSAGE_BYTES), for the body as
# sent and as decompressed: a small gzip body must not inflate without bound.
MAX_BODY_BYTES = 32 * 1024 * 1024
RETRY_AFTER_S = 1

# The HTTP status of each way the shared receiver ends a call (OTLP/HTTP: 429, 502,
# 503 and 504 are the ones a client retries).
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId",
                        "trace_id", "span_id", "parent_span_id"})


class OtlpHttpError(Exception):
    """Ends the request with `status` and a `google.rpc.Status` body."""

    def __init__(self, status: int, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Call:
    """The part of `grpc.ServicerContext` the shared receiver uses, for one HTTP
    request: `abort` raises `OtlpHttpError` with the matching HTTP status."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None  # the HTTP port has no client certificates

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise OtlpHttpError(_HTTP_STATUS.get(code, 500), code, details)


def media_type(header: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return header.partition(";")[0].strip().lower()


def _hex_to_base64(obj: Any) -> Any:
    """OTLP/JSON ids are hex; protobuf's JSON mapping reads bytes as base64."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in _ID_FIELDS and isinstance(v, str):
                try:
                    raw = bytes.fromhex(v)
                except ValueError:
                    raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                                        f"{k} {v[:40]!r} is not hex") from None
                out[k] = base64.b64encode(raw).decode()
            else:
                out[k] = _hex_to_base64(v)
        return out
    if isinstance(obj, list):
        return [_hex_to_base64(x) for x in obj]
    return obj


def decode_request(body: bytes, content_type: str) -> trace_service_pb2.ExportTraceServiceRequest:
    """The export request in `body`; raises OtlpHttpError 400 naming what is wrong."""
    req = trace_service_pb2.ExportTraceServiceRequest()
    try:
        if content_type == PROTOBUF:
            req.ParseFromString(body)
        else:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("the body is not a JSON object")
            json_format.ParseDict(_hex_to_base64(doc), req, ignore_unknown_fields=True)
    except (DecodeError, ValueError, json_format.ParseError, UnicodeDecodeError) as e:
        what = "protobuf" if content_type == PROTOBUF else "JSON"
        raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"not a valid OTLP ExportTraceServiceRequest in {what} "
                            f"({str(e)[:200]}); nothing stored") from None
    return req


def gunzip(body: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """`body` decompressed, at most `limit` bytes (413 beyond, 400 if not gzip)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
        if len(out) <= limit and not d.eof:
            out += d.flush()
    except zlib.error as e:
        raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"Content-Encoding gzip, but the body is not gzip ({e})") from None
    if len(out) > limit:
        raise OtlpHttpError(413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"decompressed body over the limit of {limit} bytes; "
                            "send smaller batches")
    return out


def encode(msg: Message, content_type: str) -> bytes:
    """`msg` in the encoding the request came in (protobuf unless JSON)."""
    if content_type == JSON:
        return json_format.MessageToJson(msg, indent=None).encode()
    return msg.SerializeToString()


def error_body(err: OtlpHttpError, content_type: str) -> bytes:
    return encode(status_pb2.Status(code=err.code.value[0], message=err.message), content_type)


class OtlpHttpReceiver:
    """`POST /v1/traces` over the gRPC receiver's store path (`service`)."""

    def __init__(self, service: OtlpTraceService, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes

    @classmethod
    def for_server(cls, srv: Any) -> OtlpHttpReceiver:
        """The receiver of a `ZerotraceServer`: its writer, OTLP admission, byte budget."""
        from server.ingest.otlp import OtlpTraceService

        return cls(OtlpTraceService(srv.writer, srv.admissions["otlp"], srv.budget))

    def check_headers(self, headers: dict[str, str]) -> str:
        """The request's media type, or OtlpHttpError 415/411/413 before the body is read."""
        ctype = media_type(headers.get("content-type", ""))
        if ctype not in (PROTOBUF, JSON):
            raise OtlpHttpError(415, grpc.StatusCode.INVALID_ARGUMENT,
                                f"Content-Type {ctype or '(none)'!r} not supported: send "
                                f"{PROTOBUF} or {JSON}")
        enc = headers.get("content-encoding", "").strip().lower()
        if enc not in ("", "identity", "gzip"):
            raise OtlpHttpError(415, grpc.StatusCode.INVALID_ARGUMENT,
                                f"Content-Encoding {enc!r} not supported: gzip or none")
        return ctype

    def export(self, headers: dict[str, str], read_body: Callable[[int], bytes],
               sender: str) -> tuple[bytes, str]:
        """Store the spans of one request; (response body, its content type).

        `read_body(limit)` returns the body (raising OtlpHttpError 413 past `limit`);
        `sender` is who the spans are admitted as (the token's name, else the host)."""
        ctype = self.check_headers(headers)
        body = read_body(self.max_body_bytes)
        if headers.get("content-encoding", "").strip().lower() == "gzip":
            body = gunzip(body, self.max_body_bytes)
        call = _Call(sender)
        with bytes_or_abort(self.service.budget, len(body), "otlp", call):  # type: ignore[arg-type]
            request = decode_request(body, ctype)
            del body
            resp = self.service.export(request, call, sender)  # type: ignore[arg-type]
        return encode(resp, ctype), ctype


def read_chunked(rfile: Any, limit: int) -> bytes:
    """A `Transfer-Encoding: chunked` body from `rfile`, at most `limit` bytes."""
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                                "malformed chunked body") from None
        if size == 0:
            while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers: none are used
            return b"".join(parts)
        total += size
        if total > limit:
            raise OtlpHttpError(413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"body over the limit of {limit} bytes; send smaller batches")
        chunk = rfile.read(size)
        if len(chunk) < size:
            raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT, "body cut short")
        parts.append(chunk)
        rfile.readline(1024)  # the CRLF after the chunk


def read_sized(rfile: Any, length: str | None, limit: int) -> bytes:
    """A body of `Content-Length: length` from `rfile` (411 without one, 413 past `limit`)."""
    if length is None:
        raise OtlpHttpError(411, grpc.StatusCode.INVALID_ARGUMENT,
                            "Content-Length (or chunked transfer encoding) required")
    try:
        n = int(length)
        if n < 0:
            raise ValueError
    except ValueError:
        raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT,
                            f"bad Content-Length {length[:40]!r}") from None
    if n > limit:
        raise OtlpHttpError(413, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"body of {n} bytes over the limit of {limit}; send smaller batches")
    data = rfile.read(n)
    if len(data) < n:
        raise OtlpHttpError(400, grpc.StatusCode.INVALID_ARGUMENT, "body cut short")
    return data
