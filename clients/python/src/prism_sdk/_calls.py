"""Every call as data, shared by the blocking and the asyncio clients: the
service and method, the request (with an idempotency token made here,
once per logical write), whether it may be resent, and how to read its
answer. Also the value types the APIs return."""

from __future__ import annotations

import datetime
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from prism.keyvalue.v1 import keyvalue_pb2 as kv_pb2
from prism.pubsub.v1 import pubsub_pb2
from prism.queue.v1 import queue_pb2
from prism.reader.v1 import reader_pb2
from prism.session.v1 import session_pb2
from prism.transact.v1 import transact_pb2

from .errors import InvalidInputError, PrismError
from .retry import Resend

# Items asked for per KeyValue Scan call (the gateway's default page).
SCAN_PAGE = 1000
# Heartbeats go three times per TTL, within these bounds (seconds).
HEARTBEAT_MIN = 0.1
HEARTBEAT_MAX = 60.0
# The first wait after a heartbeat's retries are spent; doubles to the max.
HEARTBEAT_RETRY = 1.0
TOKEN_HEADER = "x-session-token"


class Call(NamedTuple):
    """One call with one answer: unary, or a client stream whose messages
    are ``request`` (a list, sent again whole on a retry)."""

    service: str
    method: str
    request: Any
    resend: Resend
    parse: Callable[[Any], Any]


def cadence(ttl: float) -> float:
    """How often to heartbeat a session with ``ttl`` seconds left."""
    return min(max(ttl / 3.0, HEARTBEAT_MIN), HEARTBEAT_MAX)


def ttl_of(opened: Any) -> float:
    """Seconds until a just-opened session expires (epoch arithmetic, so
    no time zone enters)."""
    if not opened.HasField("expires_at"):
        return HEARTBEAT_MAX
    return max(opened.expires_at.ToMicroseconds() / 1e6 - time.time(), 0.0)


def heartbeat_gives_up(e: PrismError, reopen: bool) -> bool:
    """Whether a heartbeat failure ends the heartbeats: the session is lost
    and may not reopen, or the credentials no longer open one (a revoked
    key, an expired JWT)."""
    if e.is_session_lost:
        return not reopen
    return e.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def stream_lost(code: Any, message: str, after_commit: bool) -> PrismError:
    """A transaction stream that failed; after a commit was sent, its
    outcome is unknown (it may have committed)."""
    if after_commit:
        return PrismError(code, f"commit outcome unknown: {message}", "OUTCOME_UNKNOWN")
    return PrismError(code, message)


def new_id() -> str:
    return str(uuid.uuid4())


def idempotency_token() -> kv_pb2.IdempotencyToken:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return kv_pb2.IdempotencyToken(id=new_id(), generated_at=now)


def wire_duration(seconds: float, what: str) -> duration_pb2.Duration:
    if (not isinstance(seconds, (int, float)) or math.isnan(seconds)
            or seconds < 0 or seconds > 315_576_000_000):
        raise InvalidInputError(f"{what} must be a number of seconds from 0 to 10,000 years")
    d = duration_pb2.Duration()
    d.FromTimedelta(datetime.timedelta(seconds=seconds))
    return d


def seconds(d: Optional[duration_pb2.Duration]) -> float:
    return d.ToTimedelta().total_seconds() if d is not None else 0.0


def to_value(v: Any) -> struct_pb2.Value:
    """A Python value (None, bool, int, float, str, list, dict) as a
    ``google.protobuf.Value``."""
    value = struct_pb2.Value()
    if v is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(v, bool):
        value.bool_value = v
    elif isinstance(v, (int, float)):
        value.number_value = float(v)
    elif isinstance(v, str):
        value.string_value = v
    elif isinstance(v, (list, tuple)):
        value.list_value.values.extend(to_value(x) for x in v)
    elif isinstance(v, dict):
        for k, x in v.items():
            value.struct_value.fields[k].CopyFrom(to_value(x))
    else:
        raise InvalidInputError(f"cannot send a {type(v).__name__} as a value")
    return value


def from_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "list_value":
        return [from_value(x) for x in value.list_value.values]
    if kind == "struct_value":
        return {k: from_value(x) for k, x in value.struct_value.fields.items()}
    return getattr(value, kind)


# ---- Session -------------------------------------------------------------


def create_request(
    *,
    api_key: Optional[str],
    jwt: Optional[str],
    client_cert: Optional[bytes],
    config: Optional[str],
    inline_config: Any,
    client_id: str,
    metadata: Optional[Mapping[str, str]],
    version: str,
) -> session_pb2.CreateSessionRequest:
    request = session_pb2.CreateSessionRequest(
        client_id=client_id,
        client_version=f"prism-sdk-python/{version}",
        metadata=dict(metadata or {}),
    )
    given = [x is not None for x in (api_key, jwt, client_cert)]
    if sum(given) != 1:
        raise InvalidInputError("a session needs exactly one of api_key, jwt or mtls")
    if api_key is not None:
        request.api_key = api_key
    elif jwt is not None:
        request.jwt_token = jwt
    else:
        request.mtls.client_cert = client_cert
    if (config is None) == (inline_config is None):
        raise InvalidInputError("a session needs exactly one of config or inline_config")
    if config is not None:
        request.config_name = config
    else:
        request.inline_config.CopyFrom(inline_config)
    return request


# ---- KeyValue ------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A stored value: bytes, version (for compare_and_swap), and seconds
    left before expiry (None: does not expire, or not reported)."""

    value: bytes
    version: int
    ttl: Optional[float] = None


def kv_get(key: str) -> Call:
    def parse(r: kv_pb2.GetResponse) -> Optional[Value]:
        if not r.found:
            return None
        return Value(r.value, r.version, seconds(r.ttl) if r.HasField("ttl") else None)

    return Call("kv", "Get", kv_pb2.GetRequest(key=key), Resend.SAFE, parse)


def kv_set(key: str, value: bytes, ttl: Optional[float]) -> Call:
    request = kv_pb2.SetRequest(key=key, value=value, idempotency_token=idempotency_token())
    if ttl is not None:
        request.ttl.CopyFrom(wire_duration(ttl, "ttl"))
    return Call("kv", "Set", request, Resend.SAFE, lambda r: r.version)


def kv_delete(key: str) -> Call:
    request = kv_pb2.DeleteRequest(key=key, idempotency_token=idempotency_token())
    return Call("kv", "Delete", request, Resend.SAFE, lambda r: r.deleted)


def kv_exists(key: str) -> Call:
    return Call("kv", "Exists", kv_pb2.ExistsRequest(key=key), Resend.SAFE, lambda r: r.exists)


def kv_count(prefix: str) -> Call:
    return Call("kv", "Count", kv_pb2.CountRequest(prefix=prefix), Resend.SAFE, lambda r: r.count)


def kv_expire(key: str, ttl: float) -> Call:
    request = kv_pb2.ExpireRequest(key=key, ttl=wire_duration(ttl, "ttl"))
    return Call("kv", "Expire", request, Resend.SAFE, lambda r: None)


def kv_ttl(key: str) -> Call:
    parse = lambda r: seconds(r.ttl) if r.has_ttl else None  # noqa: E731
    return Call("kv", "GetTTL", kv_pb2.GetTTLRequest(key=key), Resend.SAFE, parse)


def kv_persist(key: str) -> Call:
    return Call("kv", "Persist", kv_pb2.PersistRequest(key=key), Resend.SAFE, lambda r: r.had_ttl)


def kv_batch_get(keys: Sequence[str]) -> Call:
    def parse(r: kv_pb2.BatchGetResponse) -> List[Optional[Value]]:
        return [Value(i.value, i.version) if i.found else None for i in r.items]

    return Call("kv", "BatchGet", kv_pb2.BatchGetRequest(keys=list(keys)), Resend.SAFE, parse)


def kv_batch_set(entries: Mapping[str, bytes]) -> Call:
    request = kv_pb2.BatchSetRequest(
        entries=[kv_pb2.Entry(key=k, value=v) for k, v in entries.items()],
        idempotency_token=idempotency_token(),
    )
    return Call("kv", "BatchSet", request, Resend.SAFE, lambda r: list(r.versions))


def kv_batch_delete(keys: Sequence[str]) -> Call:
    request = kv_pb2.BatchDeleteRequest(keys=list(keys), idempotency_token=idempotency_token())
    return Call("kv", "BatchDelete", request, Resend.SAFE, lambda r: r.deleted)


def kv_compare_and_swap(key: str, expected_version: int, value: bytes) -> Call:
    request = kv_pb2.CompareAndSwapRequest(
        key=key,
        expected_version=expected_version,
        value=value,
        idempotency_token=idempotency_token(),
    )
    return Call("kv", "CompareAndSwap", request, Resend.SAFE, lambda r: r.version)


@dataclass
class KvTransaction:
    """KeyValue operations that apply together or not at all."""

    operations: List[kv_pb2.Operation] = field(default_factory=list)

    def put(self, key: str, value: bytes, *, ttl: Optional[float] = None,
            if_version: Optional[int] = None, if_exists: Optional[bool] = None) -> "KvTransaction":
        """Sets ``key`` (optionally only at ``if_version`` / if it exists)."""
        op = kv_pb2.Operation(key=key, put=kv_pb2.Put(value=value))
        if ttl is not None:
            op.put.ttl.CopyFrom(wire_duration(ttl, "ttl"))
        self.operations.append(_condition(op, if_version, if_exists))
        return self

    def delete(self, key: str, *, if_version: Optional[int] = None,
               if_exists: Optional[bool] = None) -> "KvTransaction":
        """Deletes ``key`` (optionally only at ``if_version`` / if it exists)."""
        op = kv_pb2.Operation(key=key, delete=kv_pb2.Remove())
        self.operations.append(_condition(op, if_version, if_exists))
        return self

    def call(self) -> Call:
        request = kv_pb2.TransactionRequest(
            operations=self.operations, idempotency_token=idempotency_token()
        )
        parse = lambda r: [(x.version, x.deleted) for x in r.results]  # noqa: E731
        return Call("kv", "Transaction", request, Resend.SAFE, parse)


def _condition(op: kv_pb2.Operation, version: Optional[int], exists: Optional[bool]) -> kv_pb2.Operation:
    if version is not None and exists is not None:
        raise InvalidInputError("an operation takes if_version or if_exists, not both")
    if version is not None:
        op.precondition.version = version
    elif exists is not None:
        op.precondition.exists = exists
    return op


@dataclass
class ScanPosition:
    """Where a KeyValue scan is: the cursor after the last item, and how
    many items the current call gave (a full page means there may be more)."""

    resumable = True  # (not a field: every such stream can resume)

    prefix: str
    keys_only: bool
    cursor: str = ""
    in_page: int = 0
    finished: bool = False

    @property
    def method(self) -> str:
        return "ScanKeys" if self.keys_only else "Scan"

    def request(self) -> Any:
        self.in_page = 0
        kind = kv_pb2.ScanKeysRequest if self.keys_only else kv_pb2.ScanRequest
        return kind(prefix=self.prefix, limit=SCAN_PAGE, cursor=self.cursor)

    def seen(self, item: Any) -> None:
        self.cursor = item.cursor
        self.in_page += 1

    def page_was_full(self) -> bool:
        return self.in_page >= SCAN_PAGE

    def item(self, item: Any) -> Any:
        return item.key if self.keys_only else (item.key, Value(item.value, item.version))


# ---- Queue ---------------------------------------------------------------


# Payloads larger than this are published over PublishStream, in pieces of
# this size (a namespace with a claim check keeps them in its object store;
# one without takes what a single request may hold).
PIECE_BYTES = 1024 * 1024


def deadline(call: "Call", timeout: float) -> Optional[float]:
    """A call's deadline: ``timeout``, but none for a client stream (a large
    payload takes the time it takes; the channel's keepalive notices a dead
    gateway), as in the Rust SDK."""
    return None if isinstance(call.request, list) else timeout


def sent(request: Any) -> Any:
    """What an attempt sends: the request, or a fresh iterator over a client
    stream's messages."""
    return iter(request) if isinstance(request, list) else request


def in_pieces(start: Any, piece: Callable[[bytes], Any], payload: bytes, first: Any) -> List[Any]:
    """A PublishStream's messages: ``first`` (a PublishRequest whose payload
    is the first piece) as ``start``, then the rest a piece at a time."""
    first.payload = payload[:PIECE_BYTES]
    return [start(first)] + [piece(payload[i:i + PIECE_BYTES])
                             for i in range(PIECE_BYTES, len(payload), PIECE_BYTES)]


def queue_publish(topic: str, payload: bytes, headers: Optional[Mapping[str, str]],
                  partition_key: Optional[str]) -> Call:
    request = queue_pb2.PublishRequest(topic=topic, payload=payload, headers=dict(headers or {}))
    if partition_key is not None:
        request.partition_key = partition_key
    if len(payload) > PIECE_BYTES:
        pieces = in_pieces(lambda s: queue_pb2.PublishStreamRequest(start=s),
                           lambda p: queue_pb2.PublishStreamRequest(payload=p), payload, request)
        return Call("queue", "PublishStream", pieces, Resend.ONLY_IF_NOT_APPLIED, lambda r: r)
    return Call("queue", "Publish", request, Resend.ONLY_IF_NOT_APPLIED, lambda r: r)


def queue_publish_batch(topic: str, payloads: Iterable[bytes]) -> Call:
    request = queue_pb2.PublishBatchRequest(
        topic=topic, messages=[queue_pb2.BatchMessage(payload=p) for p in payloads]
    )
    return Call("queue", "PublishBatch", request, Resend.ONLY_IF_NOT_APPLIED, lambda r: r)


def queue_acknowledge(message_ids: Iterable[str]) -> Call:
    request = queue_pb2.AcknowledgeRequest(message_ids=list(message_ids))
    return Call("queue", "Acknowledge", request, Resend.SAFE, lambda r: list(r.failed_ids))


def queue_commit(topic: str, group: str, offsets: Mapping[int, int]) -> Call:
    request = queue_pb2.CommitRequest(
        topic=topic,
        consumer_group=group,
        offsets=[queue_pb2.PartitionOffset(partition=p, offset=o) for p, o in offsets.items()],
    )
    return Call("queue", "Commit", request, Resend.SAFE, lambda r: r.success)


# ---- Payloads in pieces ----------------------------------------------------

CHUNK_HEADER = "prism-chunk"
CHUNK_TOTAL_HEADER = "prism-chunk-total-size"


class Joiner:
    """Joins a claim-checked payload delivered in pieces: consecutive
    messages with one id, ``prism-chunk: <index>/<count>`` and
    ``prism-chunk-total-size`` in their headers (metadata), the other
    headers on the first. ``add`` returns the whole message at its last
    piece and None before; a stream's position moves only past whole
    messages, so a resumed Queue or mailbox stream starts an interrupted
    message again. Pieces that do not join up are an error, never a short
    payload. One per opened stream."""

    def __init__(self) -> None:
        self.run: Optional[List[Any]] = None  # [first, next index, total, parts]

    def add(self, item: Any) -> Any:
        if isinstance(item, queue_pb2.Message):
            name = "headers"
        elif isinstance(item, (pubsub_pb2.Event, transact_pb2.MailboxMessage)):
            name = "metadata"
        else:
            return item  # Reader pages and rows, KeyValue scans: never in pieces
        fields = item.DESCRIPTOR.fields_by_name
        headers = getattr(item, name)
        at = headers.get(CHUNK_HEADER)
        if at is None:
            self.run = None
            return item
        try:
            index, count = (int(x) for x in at.split("/", 1))
            total = int(headers.get(CHUNK_TOTAL_HEADER, "-1"))
        except ValueError:
            raise InvalidInputError(f"a piece's {CHUNK_HEADER} header {at!r} cannot be read") from None
        del headers[CHUNK_HEADER]
        if CHUNK_TOTAL_HEADER in headers:
            del headers[CHUNK_TOTAL_HEADER]
        payload = "payload" if "payload" in fields else "message"
        ident = item.message_id if "message_id" in fields else item.event_id
        if index == 0:
            self.run = [item, 1, total, [getattr(item, payload)]]
        elif self.run is not None and self._id(self.run[0]) == ident and self.run[1] == index:
            self.run[3].append(getattr(item, payload))
            self.run[1] += 1
        else:
            self.run = None
            raise InvalidInputError(f"piece {index} of message {ident!r} came without the pieces before it")
        if index + 1 < count:
            return None
        first, _, total, parts = self.run
        self.run = None
        setattr(first, payload, b"".join(parts))
        if total >= 0 and len(getattr(first, payload)) != total:
            raise InvalidInputError(
                f"message {ident!r} joined to {len(getattr(first, payload))} bytes, not the {total} announced")
        return first

    @staticmethod
    def _id(m: Any) -> str:
        return m.message_id if "message_id" in m.DESCRIPTOR.fields_by_name else m.event_id


@dataclass
class QueuePosition:
    """Where a Queue subscription resumes after a failure: a group where it
    committed (unacknowledged messages come again)."""

    topic: str
    group: str
    start: Optional[int]  # a queue_pb2.StartPosition value
    offset: Optional[int]
    max_messages: Optional[int]
    received: int = 0

    @property
    def resumable(self) -> bool:
        # A private subscription has no position the gateway keeps (one
        # offset cannot say where each partition was): its stream ends with
        # the error instead.
        return bool(self.group) or self.received == 0

    def request(self) -> queue_pb2.SubscribeRequest:
        r = queue_pb2.SubscribeRequest(topic=self.topic, consumer_group=self.group)
        if self.received and self.group:
            r.position = queue_pb2.START_POSITION_COMMITTED
        elif self.offset is not None:
            r.offset = self.offset
        elif self.start is not None:
            r.position = self.start
        if self.max_messages is not None:
            r.max_messages = max(self.max_messages - self.received, 1)
        return r

    def seen(self, message: queue_pb2.Message) -> None:
        self.received += 1

    @property
    def finished(self) -> bool:
        return self.max_messages is not None and self.received >= self.max_messages


# ---- PubSub --------------------------------------------------------------


def pubsub_publish(topic: str, payload: bytes, metadata: Optional[Mapping[str, str]],
                   correlation_id: Optional[str], reply_to: Optional[str]) -> Call:
    request = pubsub_pb2.PublishRequest(topic=topic, payload=payload, metadata=dict(metadata or {}))
    if correlation_id is not None:
        request.correlation_id = correlation_id
    if reply_to is not None:
        request.reply_to = reply_to
    if len(payload) > PIECE_BYTES:
        pieces = in_pieces(lambda s: pubsub_pb2.PublishStreamRequest(start=s),
                           lambda p: pubsub_pb2.PublishStreamRequest(payload=p), payload, request)
        return Call("pubsub", "PublishStream", pieces, Resend.ONLY_IF_NOT_APPLIED, lambda r: r)
    return Call("pubsub", "Publish", request, Resend.ONLY_IF_NOT_APPLIED, lambda r: r)


@dataclass
class PubSubPosition:
    """What a PubSub subscription still wants when it resubscribes."""

    resumable = True  # (not a field: every such stream can resume)

    pattern: str
    queue_group: Optional[str]
    max_messages: Optional[int]
    received: int = 0

    def request(self) -> pubsub_pb2.SubscribeRequest:
        r = pubsub_pb2.SubscribeRequest(topic_pattern=self.pattern)
        if self.queue_group is not None:
            r.queue_group = self.queue_group
        r.options.auto_acknowledge = True
        if self.max_messages is not None:
            r.options.max_messages = max(self.max_messages - self.received, 1)
        return r

    def seen(self, _event: Any) -> None:
        self.received += 1

    @property
    def finished(self) -> bool:
        return self.max_messages is not None and self.received >= self.max_messages


# ---- Reader --------------------------------------------------------------

_OPS = {
    "=": reader_pb2.FieldFilter.OPERATOR_EQUALS,
    "!=": reader_pb2.FieldFilter.OPERATOR_NOT_EQUALS,
    ">": reader_pb2.FieldFilter.OPERATOR_GREATER_THAN,
    ">=": reader_pb2.FieldFilter.OPERATOR_GREATER_THAN_OR_EQUALS,
    "<": reader_pb2.FieldFilter.OPERATOR_LESS_THAN,
    "<=": reader_pb2.FieldFilter.OPERATOR_LESS_THAN_OR_EQUALS,
    "in": reader_pb2.FieldFilter.OPERATOR_IN,
    "not in": reader_pb2.FieldFilter.OPERATOR_NOT_IN,
    "starts with": reader_pb2.FieldFilter.OPERATOR_STARTS_WITH,
}


def where(field_name: str, op: str, value: Any) -> reader_pb2.Filter:
    """A filter: ``where("customer", "=", "alice")``; ``op`` is one of
    ``= != > >= < <= in``, ``not in``, ``starts with``."""
    if op not in _OPS:
        raise InvalidInputError(f"unknown operator {op!r}; use one of {sorted(_OPS)}")
    return reader_pb2.Filter(
        field=reader_pb2.FieldFilter(field=field_name, op=_OPS[op], value=to_value(value))
    )


def all_of(*filters: reader_pb2.Filter) -> reader_pb2.Filter:
    """Every filter holds."""
    return reader_pb2.Filter(composite=reader_pb2.CompositeFilter(
        op=reader_pb2.CompositeFilter.LOGICAL_OPERATOR_AND, filters=list(filters)))


def any_of(*filters: reader_pb2.Filter) -> reader_pb2.Filter:
    """At least one filter holds."""
    return reader_pb2.Filter(composite=reader_pb2.CompositeFilter(
        op=reader_pb2.CompositeFilter.LOGICAL_OPERATOR_OR, filters=list(filters)))


def row_dict(row: reader_pb2.Row) -> Dict[str, Any]:
    return {k: from_value(v) for k, v in row.fields.items()}


def read_request(collection: str, page_size: int, fields: Sequence[str],
                 filter: Optional[reader_pb2.Filter], sort: Sequence[str]) -> reader_pb2.ReadRequest:
    """``sort``: field names, ``-name`` for descending."""
    r = reader_pb2.ReadRequest(collection=collection, page_size=page_size, fields=list(fields))
    if filter is not None:
        r.filter.CopyFrom(filter)
    for s in sort:
        desc = s.startswith("-")
        r.sort.append(reader_pb2.Sort(
            field=s.lstrip("-"),
            direction=reader_pb2.Sort.DIRECTION_DESC if desc else reader_pb2.Sort.DIRECTION_ASC))
    return r


@dataclass
class ReadPosition:
    """A read's cursor after the last page received."""

    resumable = True  # (not a field: every such stream can resume)

    read: reader_pb2.ReadRequest
    last: bool = False

    def request(self) -> reader_pb2.ReadRequest:
        return self.read

    def seen(self, page: reader_pb2.Page) -> None:
        if page.HasField("next_cursor"):
            self.read.cursor = page.next_cursor
        self.last = not page.has_more

    @property
    def finished(self) -> bool:
        return self.last


def reader_count(collection: str, filter: Optional[reader_pb2.Filter]) -> Call:
    request = reader_pb2.CountRequest(collection=collection)
    if filter is not None:
        request.filter.CopyFrom(filter)
    return Call("reader", "Count", request, Resend.SAFE, lambda r: r.count)


def reader_get(collection: str, id: str) -> Call:
    parse = lambda r: row_dict(r.row) if r.found else None  # noqa: E731
    return Call("reader", "Get", reader_pb2.GetRequest(collection=collection, id=id), Resend.SAFE, parse)


# ---- Transact ------------------------------------------------------------

_MODES = {
    "insert": transact_pb2.DataWrite.WRITE_MODE_INSERT,
    "update": transact_pb2.DataWrite.WRITE_MODE_UPDATE,
    "upsert": transact_pb2.DataWrite.WRITE_MODE_UPSERT,
    "delete": transact_pb2.DataWrite.WRITE_MODE_DELETE,
}


def change(table: str, record: Mapping[str, Any], *, mode: str = "insert",
           mailbox: Optional[str] = None, message: Optional[bytes] = None,
           message_type: Optional[str] = None,
           message_metadata: Optional[Mapping[str, str]] = None) -> transact_pb2.WriteRequest:
    """A row change and, with ``mailbox`` and ``message``, the outbox
    message committed with it."""
    if mode not in _MODES:
        raise InvalidInputError(f"mode must be one of {sorted(_MODES)}")
    w = transact_pb2.WriteRequest(data=transact_pb2.DataWrite(table=table, mode=_MODES[mode]))
    for k, v in record.items():
        w.data.record[k].CopyFrom(to_value(v))
    if (mailbox is None) != (message is None):
        raise InvalidInputError("a message needs both mailbox and message")
    if mailbox is not None:
        w.mailbox.mailbox_id = mailbox
        w.mailbox.message = message
        w.mailbox.metadata.update(message_metadata or {})
        if message_type is not None:
            w.mailbox.message_type = message_type
    return w


def transact_write(write: transact_pb2.WriteRequest) -> Call:
    request = transact_pb2.WriteRequest()
    request.CopyFrom(write)
    # Made once per logical write: a retry returns the first outcome.
    request.options.idempotent = True
    request.options.idempotency_key = new_id()
    return Call("transact", "Write", request, Resend.SAFE, lambda r: r)


@dataclass
class MailboxPosition:
    """A mailbox read's position: the last sequence received."""

    resumable = True  # (not a field)
    mailbox: str
    after: Optional[int]
    unprocessed_only: bool
    finished: bool = False

    def request(self) -> transact_pb2.ReadMailboxRequest:
        r = transact_pb2.ReadMailboxRequest(mailbox_id=self.mailbox, unprocessed_only=self.unprocessed_only)
        if self.after is not None:
            r.since_sequence = self.after
        return r

    def seen(self, m: transact_pb2.MailboxMessage) -> None:
        self.after = m.sequence


def transact_process(message_ids: Iterable[str]) -> Call:
    request = transact_pb2.ProcessMailboxRequest(message_ids=list(message_ids))
    return Call("transact", "ProcessMailbox", request, Resend.SAFE, lambda r: list(r.failed_ids))


def in_band_error(e: transact_pb2.TransactionError) -> PrismError:
    """A TransactionError (``code``: the gRPC code's name; ``message``:
    "text (REASON)") as the error it stands for."""
    code = getattr(grpc.StatusCode, e.code, grpc.StatusCode.UNKNOWN)
    text, reason = e.message, None
    if e.message.endswith(")") and " (" in e.message:
        text, _, reason = e.message[:-1].rpartition(" (")
    return PrismError(code, text, reason, "prism.transact.v1")
