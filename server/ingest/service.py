"""gRPC `zerotrace.v1.IngestService`: agents push batches, get acks with counts.

The ack is sent after the batch is stored (group-committed by `BatchWriter`).  A
batch the store refuses is split: invalid spans are rejected with reasons, valid
ones stored.  Storage failures (disk full) become an error to that caller only, and
nothing from its batch is acked.

A batch with an idempotency key (`sender_id`, `sender_seq`) is stored at most once:
a copy (a retry whose first attempt's ack was lost) is acked with the stored counts
(`BatchWriter`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from proto.zerotrace.v1 import ingest_pb2, span_pb2
from server.auth import certificate_name
from server.ingest.admission import (
    Admission,
    ByteBudget,
    admit_or_abort,
    bytes_or_abort,
    sender_of,
)
from server.ingest.caps import cap_raw_spans, cap_table
from server.ingest.columns import BadColumns, read_columns, split_valid
from server.ingest.validate import TimeWindow, span_problem
from server.ingest.writer import BatchKey, BatchWriter, Payload

log = logging.getLogger(__name__)

MAX_SPANS_PER_BATCH = 100_000
_MAX_ERRORS = 5


@dataclass(slots=True)
class Batch:
    """A batch ready for the writer: its payload, span count, and the spans refused
    before storing (invalid, with the first few reasons)."""

    payload: Payload
    count: int
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    key: BatchKey | None = None  # stored at most once per key


def batch_key(sender: str, sender_id: str, seq: int) -> BatchKey | None:
    """The idempotency key of a batch: None without a sender id (older agents).

    Scoped by the admission `sender` (the token's name when tokens are on), so that
    a client cannot have another's batches dropped by sending their sender id; hashed,
    so that the key stored is short hex whatever the client sent."""
    if not sender_id:
        return None
    digest = hashlib.blake2b(f"{sender}\0{sender_id}".encode(), digest_size=16)
    return digest.hexdigest(), seq


def store_span_list(writer: BatchWriter, data: bytes, n: int,
                    key: BatchKey | None = None) -> tuple[int, int, list[str]]:
    """Store `data`, a serialized SpanList of `n` spans; (accepted, rejected, errors).

    Raises the storage error when the spans are valid but cannot be written.
    """
    if n == 0:
        return 0, 0, []
    try:
        return writer.write(data, n, key=key), 0, []
    except Exception as first:
        spans_msg = span_pb2.SpanList.FromString(data)
        problems = [(i, span_problem(s)) for i, s in enumerate(spans_msg.spans)]
        bad = [(i, p) for i, p in problems if p]
        if not bad:
            raise first
        good = span_pb2.SpanList()
        good.spans.extend(s for (i, p), s in zip(problems, spans_msg.spans, strict=True) if not p)
        accepted = 0
        if good.spans:
            accepted = writer.write(good.SerializeToString(), len(good.spans), key=key)
        errors = [f"span {i}: {p}" for i, p in bad[:_MAX_ERRORS]]
        return accepted, len(bad), errors


def store_batch(writer: BatchWriter, batch: Batch) -> tuple[int, int, list[str]]:
    """Store `batch`; (accepted, rejected, errors).  Raises the storage error."""
    if isinstance(batch.payload, bytes):
        accepted, rejected, errors = store_span_list(writer, batch.payload, batch.count,
                                                     batch.key)
        return (accepted, rejected + batch.rejected,
                (batch.errors + errors)[:_MAX_ERRORS])
    accepted = writer.write(batch.payload, batch.count, key=batch.key) if batch.count else 0
    return accepted, batch.rejected, batch.errors


def in_window(batch: Batch, window: TimeWindow | None) -> int:
    """Drop from `batch` the spans outside the ingest `window`, counting them as
    rejected with their reasons; returns how many were dropped."""
    if window is None or not batch.count:
        return 0
    room = max(0, _MAX_ERRORS - len(batch.errors))
    if isinstance(batch.payload, bytes):
        data, kept, out, errors = window.filter_span_list(batch.payload, room)
        if out:
            batch.payload, batch.count = data, kept
    else:
        batch.payload, out, errors = window.filter_table(batch.payload, room)
        batch.count = batch.payload.num_rows
    if out:
        batch.rejected += out
        batch.errors = (batch.errors + errors)[:_MAX_ERRORS]
    return out


def store_admitted(writer: BatchWriter, admission: Admission, sender: str,
                   context: grpc.ServicerContext,
                   encode: Callable[[], Batch]) -> tuple[int, int, list[str]]:
    """Admit a batch of `sender`, encode it (`encode` may abort the call), drop the
    spans outside the admission's time window and store the rest; (accepted,
    rejected, errors).  Ends the call with RESOURCE_EXHAUSTED when the sender has its
    share in flight, UNAVAILABLE when the store fails (nothing acked).  Counted per
    sender either way (`Admission`, the server's metrics)."""
    admit_or_abort(admission, sender, context)
    accepted = rejected = late = 0
    failed = False
    try:
        batch = encode()
        late = in_window(batch, admission.window)
        try:
            accepted, rejected, errors = store_batch(writer, batch)
        except Exception as e:  # noqa: BLE001 - storage failure, tell the caller
            # The sender retries the whole batch: its invalid spans count then, once.
            failed, rejected, late = True, 0, 0
            log.warning("ingest from %r failed: %s", sender, e)
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"storage write failed, batch not stored (retry later): {str(e)[:300]}",
            )
    finally:
        admission.leave(sender, accepted, rejected, failed, out_of_window=late)
    return accepted, rejected, errors


class IngestService:
    """`Push` decodes requests as `PushEnvelope` (spans left as bytes): see `handler()`."""

    def __init__(self, writer: BatchWriter, admission: Admission | None = None,
                 budget: ByteBudget | None = None) -> None:
        self.writer = writer
        self.admission = admission or Admission()
        self.budget = budget

    def handler(self) -> grpc.GenericRpcHandler:
        """The gRPC handler for `zerotrace.v1.IngestService` (same wire as generated)."""
        return grpc.method_handlers_generic_handler(
            "zerotrace.v1.IngestService",
            {
                "Push": grpc.unary_unary_rpc_method_handler(
                    self.Push,
                    # Raw bytes: the byte cap is checked before the request is decoded.
                    request_deserializer=None,
                    response_serializer=ingest_pb2.PushResponse.SerializeToString,
                )
            },
        )

    def Push(  # noqa: N802 - gRPC method name
        self, data: bytes, context: grpc.ServicerContext
    ) -> ingest_pb2.PushResponse:
        with bytes_or_abort(self.budget, len(data), "zerotrace", context):
            try:
                request = ingest_pb2.PushEnvelope.FromString(data)
            except DecodeError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"not a valid PushRequest ({e}); nothing stored")
            del data  # the envelope holds what is needed
            return self._push(request, context)

    def _push(self, request: ingest_pb2.PushEnvelope,
              context: grpc.ServicerContext) -> ingest_pb2.PushResponse:
        if request.span_columns and request.spans:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "a batch carries spans or span_columns, not both")
        sender = sender_of(request.agent.agent, context.peer(), certificate_name(context))
        key = batch_key(sender, request.sender_id, request.sender_seq)

        def encode() -> Batch:
            batch = encode_spans()
            batch.key = key
            return batch

        def encode_spans() -> Batch:
            if request.span_columns:
                return self._columns(request.span_columns, context)
            n = len(request.spans)
            _check_size(n, context)
            # Spans are field 1 of PushRequest as of SpanList: without the other fields
            # the request bytes are a SpanList, no per-span work needed.  (The exporter
            # stamps its agent name on spans; the server does not open them.)
            request.ClearField("agent")
            request.ClearField("batch_seq")
            request.ClearField("sender_id")
            request.ClearField("sender_seq")
            data = request.SerializeToString()
            bad = undecodable_spans(data, request.spans)
            if bad:
                # Refused with a reason, the rest stored: see undecodable_spans.
                good = [b for i, b in enumerate(request.spans) if i not in bad]
                del request.spans[:]
                request.spans.extend(good)
            # Attribute caps (server/ingest/caps.py): only large spans are opened.
            if cap_raw_spans(request.spans) or bad:
                data = request.SerializeToString()
            return Batch(data, len(request.spans), len(bad),
                         [f"span {i}: {why}" for i, why in list(bad.items())[:_MAX_ERRORS]])

        accepted, rejected, errors = store_admitted(self.writer, self.admission, sender,
                                                    context, encode)
        return ingest_pb2.PushResponse(accepted=accepted, rejected=rejected, errors=errors)

    @staticmethod
    def _columns(data: bytes, context: grpc.ServicerContext) -> Batch:
        try:
            table = read_columns(data)
        except BadColumns as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        _check_size(table.num_rows, context)
        good, rejected, errors = split_valid(table)
        good, _capped = cap_table(good)
        return Batch(good, good.num_rows, rejected, errors)


def undecodable_spans(data: bytes, spans: Sequence[bytes]) -> dict[int, str]:
    """{index: reason} of the spans of `data` (a serialized SpanList of `spans`) that
    are not valid `Span` messages, invalid UTF-8 in a string field above all.

    The store reads protobuf spans with ClickHouse's reader, which keeps invalid UTF-8
    as it is; stored, such a span made every query that met it fail (issue 14, item
    2).  So each span must decode as protobuf does: one parse of the whole batch in C
    (about 1 us a span), and only when that fails a parse of each span to name them.
    """
    try:
        span_pb2.SpanList.FromString(data)
        return {}
    except DecodeError:
        pass
    bad: dict[int, str] = {}
    for i, raw in enumerate(spans):
        try:
            span_pb2.Span.FromString(raw)
        except DecodeError as e:
            why = str(e).rpartition(": ")[2] or "undecodable"
            bad[i] = f"not a valid Span ({why}); invalid UTF-8 is refused, not stored"
    return bad


def _check_size(n: int, context: grpc.ServicerContext) -> None:
    if n > MAX_SPANS_PER_BATCH:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch of {n} spans exceeds the limit of {MAX_SPANS_PER_BATCH}; split it",
        )
