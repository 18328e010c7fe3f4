import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdempotencyToken(_message.Message):
    __slots__ = ("id", "generated_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetRequest(_message.Message):
    __slots__ = ("session_token", "key", "value", "ttl", "idempotency_token")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    value: bytes
    ttl: _duration_pb2.Duration
    idempotency_token: IdempotencyToken
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class SetResponse(_message.Message):
    __slots__ = ("version", "replayed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    version: int
    replayed: bool
    def __init__(self, version: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("session_token", "key")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("found", "value", "version", "ttl")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    version: int
    ttl: _duration_pb2.Duration
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("session_token", "key", "idempotency_token")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    idempotency_token: IdempotencyToken
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "replayed")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    replayed: bool
    def __init__(self, deleted: _Optional[bool] = ..., replayed: _Optional[bool] = ...) -> None: ...

class ExistsRequest(_message.Message):
    __slots__ = ("session_token", "key")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ExistsResponse(_message.Message):
    __slots__ = ("exists",)
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    def __init__(self, exists: _Optional[bool] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("session_token", "prefix", "limit", "cursor")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    prefix: str
    limit: int
    cursor: str
    def __init__(self, session_token: _Optional[str] = ..., prefix: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ScanResponse(_message.Message):
    __slots__ = ("key", "value", "version", "cursor")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    version: int
    cursor: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ScanKeysRequest(_message.Message):
    __slots__ = ("session_token", "prefix", "limit", "cursor")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    prefix: str
    limit: int
    cursor: str
    def __init__(self, session_token: _Optional[str] = ..., prefix: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class KeyResponse(_message.Message):
    __slots__ = ("key", "cursor")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    key: str
    cursor: str
    def __init__(self, key: _Optional[str] = ..., cursor: _Optional[str] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("session_token", "prefix")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    prefix: str
    def __init__(self, session_token: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ExpireRequest(_message.Message):
    __slots__ = ("session_token", "key", "ttl")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    ttl: _duration_pb2.Duration
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExpireResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetTTLRequest(_message.Message):
    __slots__ = ("session_token", "key")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class GetTTLResponse(_message.Message):
    __slots__ = ("has_ttl", "ttl")
    HAS_TTL_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    has_ttl: bool
    ttl: _duration_pb2.Duration
    def __init__(self, has_ttl: _Optional[bool] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PersistRequest(_message.Message):
    __slots__ = ("session_token", "key")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class PersistResponse(_message.Message):
    __slots__ = ("had_ttl",)
    HAD_TTL_FIELD_NUMBER: _ClassVar[int]
    had_ttl: bool
    def __init__(self, had_ttl: _Optional[bool] = ...) -> None: ...

class BatchGetRequest(_message.Message):
    __slots__ = ("session_token", "keys")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_token: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("key", "found", "value", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    found: bool
    value: bytes
    version: int
    def __init__(self, key: _Optional[str] = ..., found: _Optional[bool] = ..., value: _Optional[bytes] = ..., version: _Optional[int] = ...) -> None: ...

class BatchGetResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("key", "value", "ttl")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    ttl: _duration_pb2.Duration
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class BatchSetRequest(_message.Message):
    __slots__ = ("session_token", "entries", "idempotency_token")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    idempotency_token: IdempotencyToken
    def __init__(self, session_token: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class BatchSetResponse(_message.Message):
    __slots__ = ("versions", "replayed")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedScalarFieldContainer[int]
    replayed: bool
    def __init__(self, versions: _Optional[_Iterable[int]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class BatchDeleteRequest(_message.Message):
    __slots__ = ("session_token", "keys", "idempotency_token")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    idempotency_token: IdempotencyToken
    def __init__(self, session_token: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class BatchDeleteResponse(_message.Message):
    __slots__ = ("deleted", "replayed")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    replayed: bool
    def __init__(self, deleted: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class CompareAndSwapRequest(_message.Message):
    __slots__ = ("session_token", "key", "expected_version", "value", "ttl", "idempotency_token")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    key: str
    expected_version: int
    value: bytes
    ttl: _duration_pb2.Duration
    idempotency_token: IdempotencyToken
    def __init__(self, session_token: _Optional[str] = ..., key: _Optional[str] = ..., expected_version: _Optional[int] = ..., value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class CompareAndSwapResponse(_message.Message):
    __slots__ = ("version", "replayed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    version: int
    replayed: bool
    def __init__(self, version: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("key", "put", "delete", "precondition")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    PRECONDITION_FIELD_NUMBER: _ClassVar[int]
    key: str
    put: Put
    delete: Remove
    precondition: Precondition
    def __init__(self, key: _Optional[str] = ..., put: _Optional[_Union[Put, _Mapping]] = ..., delete: _Optional[_Union[Remove, _Mapping]] = ..., precondition: _Optional[_Union[Precondition, _Mapping]] = ...) -> None: ...

class Put(_message.Message):
    __slots__ = ("value", "ttl")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    ttl: _duration_pb2.Duration
    def __init__(self, value: _Optional[bytes] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Remove(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Precondition(_message.Message):
    __slots__ = ("version", "exists")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    exists: bool
    def __init__(self, version: _Optional[int] = ..., exists: _Optional[bool] = ...) -> None: ...

class TransactionRequest(_message.Message):
    __slots__ = ("session_token", "operations", "idempotency_token")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    idempotency_token: IdempotencyToken
    def __init__(self, session_token: _Optional[str] = ..., operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., idempotency_token: _Optional[_Union[IdempotencyToken, _Mapping]] = ...) -> None: ...

class OperationResult(_message.Message):
    __slots__ = ("version", "deleted")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    version: int
    deleted: bool
    def __init__(self, version: _Optional[int] = ..., deleted: _Optional[bool] = ...) -> None: ...

class TransactionResponse(_message.Message):
    __slots__ = ("results", "replayed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[OperationResult]
    replayed: bool
    def __init__(self, results: _Optional[_Iterable[_Union[OperationResult, _Mapping]]] = ..., replayed: _Optional[bool] = ...) -> None: ...
