"""gRPC `zerotrace.v1.IngestService`: agents push batches, get acks with counts.

Every wire becomes the span table's Arrow columns at the edge: `span_columns` as
sent, protobuf `spans` read off the wire by server/ingest/spanlist.py (compiled; or
proto/convert.py `span_list_to_table` from the upb messages), OTLP by
server/ingest/otlp.py.  The table then takes one path: the one validator
(server/ingest/validate.py: invalid spans rejected with reasons, valid ones kept),
the attribute caps, the time window, and the writer, which hands it to the store's
one write method.  The ack is sent after the batch is stored (group-committed by
`BatchWriter`).  Storage failures (disk full) become an error to that caller only,
and nothing from its batch is acked.

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
import pyarrow as pa
from google.protobuf.message import DecodeError

from proto import schema as span_schema
from proto.convert import span_list_to_table
from proto.zerotrace.v1 import ingest_pb2, span_pb2
from server.auth import certificate_name
from server.ingest import spanlist
from server.ingest.admission import (
    Admission,
    ByteBudget,
    admit_or_abort,
    bytes_or_abort,
    sender_of,
)
from server.ingest.caps import cap_table
from server.ingest.validate import BadColumns, TimeWindow, read_columns, split_valid
from server.ingest.writer import BatchKey, BatchWriter

log = logging.getLogger(__name__)

MAX_SPANS_PER_BATCH = 100_000
_MAX_ERRORS = 5


@dataclass(slots=True)
class Batch:
    """A batch ready for the writer: its spans as the span table's Arrow columns
    (whatever the wire), and the spans refused before storing (invalid, with the
    first few reasons)."""

    table: pa.Table
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    key: BatchKey | None = None  # stored at most once per key

    @property
    def count(self) -> int:
        return self.table.num_rows


def checked(table: pa.Table, rejected: int = 0, errors: Sequence[str] = (),
            fields: Sequence[span_schema.Field] = span_schema.FIELDS,
            capped: bool = False) -> Batch:
    """The batch of `table`'s valid spans, capped (server/ingest/caps.py) unless
    `capped` already (OTLP is, while converted): the one validation every wire's
    table goes through (server/ingest/validate.py), with the limits of `fields`.
    `rejected`/`errors`: spans refused before the table was made (undecodable)."""
    good, bad, why = split_valid(table, fields)
    if not capped:
        good, _n = cap_table(good)
    return Batch(good, rejected + bad, (list(errors) + why)[:_MAX_ERRORS])


def batch_key(sender: str, sender_id: str, seq: int) -> BatchKey | None:
    """The idempotency key of a batch: None without a sender id (older agents).

    Scoped by the admission `sender` (the token's name when tokens are on), so that
    a client cannot have another's batches dropped by sending their sender id; hashed,
    so that the key stored is short hex whatever the client sent."""
    if not sender_id:
        return None
    digest = hashlib.blake2b(f"{sender}\0{sender_id}".encode(), digest_size=16)
    return digest.hexdigest(), seq


def store_batch(writer: BatchWriter, batch: Batch) -> tuple[int, int, list[str]]:
    """Store `batch`; (accepted, rejected, errors).  Raises the storage error."""
    accepted = writer.write(batch.table, batch.count, key=batch.key) if batch.count else 0
    return accepted, batch.rejected, batch.errors


def in_window(batch: Batch, window: TimeWindow | None) -> int:
    """Drop from `batch` the spans outside the ingest `window`, counting them as
    rejected with their reasons; returns how many were dropped."""
    if window is None or not batch.count:
        return 0
    room = max(0, _MAX_ERRORS - len(batch.errors))
    batch.table, out, errors = window.filter_table(batch.table, room)
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
        # The span declaration of the store (proto/schema.py, or a fixture's): what an
        # Arrow batch must hold and the limits its spans are checked against.
        self.fields = tuple(getattr(writer.store, "fields", span_schema.FIELDS))
        self.schema = span_schema.arrow_schema(self.fields)

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
            # the request bytes are a SpanList, decoded in one pass (upb, in C).
            request.ClearField("agent")
            request.ClearField("batch_seq")
            request.ClearField("sender_id")
            request.ClearField("sender_seq")
            data = request.SerializeToString()
            msgs, bad = decode_span_list(data, request.spans)
            del request.spans[:]
            try:
                if not bad and spanlist.available(self.fields):
                    # Read off the wire by the compiled reader (~3 us a span against
                    # 30-50 for the upb messages' fields read from Python); the upb
                    # parse above stays: it names the spans a batch must refuse.
                    table = spanlist.spans_bytes_to_table(data, self.fields)
                    if table.num_rows != len(msgs):  # both read the same bytes
                        raise ValueError(f"{table.num_rows} spans read, {len(msgs)} sent")
                else:
                    table = span_list_to_table(msgs, self.fields)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, AttributeError,
                    ValueError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"spans do not fit the span table's columns ({e}); nothing "
                              "stored")
            return checked(table, len(bad),
                           [f"span {i}: {why}" for i, why in list(bad.items())[:_MAX_ERRORS]],
                           self.fields)

        accepted, rejected, errors = store_admitted(self.writer, self.admission, sender,
                                                    context, encode)
        return ingest_pb2.PushResponse(accepted=accepted, rejected=rejected, errors=errors)

    def _columns(self, data: bytes, context: grpc.ServicerContext) -> Batch:
        try:
            table = read_columns(data, self.schema)
        except BadColumns as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        _check_size(table.num_rows, context)
        return checked(table, fields=self.fields)


def decode_span_list(data: bytes, spans: Sequence[bytes]
                     ) -> tuple[Sequence[span_pb2.Span], dict[int, str]]:
    """(the valid `Span` messages of `data`, a serialized SpanList of `spans`;
    {index: reason} of those that are not valid messages, invalid UTF-8 in a string
    field above all).

    Stored, a span with invalid UTF-8 made every query that met it fail (issue 14,
    item 2): each span must decode as protobuf does.  One parse of the whole batch in
    C (about 1 us a span), and only when that fails a parse of each span to name them.
    """
    try:
        return span_pb2.SpanList.FromString(data).spans, {}
    except DecodeError:
        pass
    bad: dict[int, str] = {}
    good = []
    for i, raw in enumerate(spans):
        try:
            good.append(span_pb2.Span.FromString(raw))
        except DecodeError as e:
            why = str(e).rpartition(": ")[2] or "undecodable"
            bad[i] = f"not a valid Span ({why}); invalid UTF-8 is refused, not stored"
    return good, bad


def _check_size(n: int, context: grpc.ServicerContext) -> None:
    if n > MAX_SPANS_PER_BATCH:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"batch of {n} spans exceeds the limit of {MAX_SPANS_PER_BATCH}; split it",
        )
