import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteRequest(_message.Message):
    __slots__ = ("session_token", "data", "mailbox", "options")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MAILBOX_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    data: DataWrite
    mailbox: MailboxWrite
    options: TransactionOptions
    def __init__(self, session_token: _Optional[str] = ..., data: _Optional[_Union[DataWrite, _Mapping]] = ..., mailbox: _Optional[_Union[MailboxWrite, _Mapping]] = ..., options: _Optional[_Union[TransactionOptions, _Mapping]] = ...) -> None: ...

class DataWrite(_message.Message):
    __slots__ = ("table", "record", "mode", "id_field")
    class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WRITE_MODE_UNSPECIFIED: _ClassVar[DataWrite.WriteMode]
        WRITE_MODE_INSERT: _ClassVar[DataWrite.WriteMode]
        WRITE_MODE_UPDATE: _ClassVar[DataWrite.WriteMode]
        WRITE_MODE_UPSERT: _ClassVar[DataWrite.WriteMode]
        WRITE_MODE_DELETE: _ClassVar[DataWrite.WriteMode]
    WRITE_MODE_UNSPECIFIED: DataWrite.WriteMode
    WRITE_MODE_INSERT: DataWrite.WriteMode
    WRITE_MODE_UPDATE: DataWrite.WriteMode
    WRITE_MODE_UPSERT: DataWrite.WriteMode
    WRITE_MODE_DELETE: DataWrite.WriteMode
    class RecordEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...
    TABLE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_FIELD_NUMBER: _ClassVar[int]
    table: str
    record: _containers.MessageMap[str, _struct_pb2.Value]
    mode: DataWrite.WriteMode
    id_field: str
    def __init__(self, table: _Optional[str] = ..., record: _Optional[_Mapping[str, _struct_pb2.Value]] = ..., mode: _Optional[_Union[DataWrite.WriteMode, str]] = ..., id_field: _Optional[str] = ...) -> None: ...

class MailboxWrite(_message.Message):
    __slots__ = ("mailbox_id", "message", "metadata", "message_type", "priority")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MAILBOX_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    mailbox_id: str
    message: bytes
    metadata: _containers.ScalarMap[str, str]
    message_type: str
    priority: int
    def __init__(self, mailbox_id: _Optional[str] = ..., message: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., message_type: _Optional[str] = ..., priority: _Optional[int] = ...) -> None: ...

class TransactionOptions(_message.Message):
    __slots__ = ("isolation", "timeout_ms", "idempotent", "idempotency_key")
    class IsolationLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ISOLATION_LEVEL_UNSPECIFIED: _ClassVar[TransactionOptions.IsolationLevel]
        ISOLATION_LEVEL_READ_COMMITTED: _ClassVar[TransactionOptions.IsolationLevel]
        ISOLATION_LEVEL_REPEATABLE_READ: _ClassVar[TransactionOptions.IsolationLevel]
        ISOLATION_LEVEL_SERIALIZABLE: _ClassVar[TransactionOptions.IsolationLevel]
    ISOLATION_LEVEL_UNSPECIFIED: TransactionOptions.IsolationLevel
    ISOLATION_LEVEL_READ_COMMITTED: TransactionOptions.IsolationLevel
    ISOLATION_LEVEL_REPEATABLE_READ: TransactionOptions.IsolationLevel
    ISOLATION_LEVEL_SERIALIZABLE: TransactionOptions.IsolationLevel
    ISOLATION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    isolation: TransactionOptions.IsolationLevel
    timeout_ms: int
    idempotent: bool
    idempotency_key: str
    def __init__(self, isolation: _Optional[_Union[TransactionOptions.IsolationLevel, str]] = ..., timeout_ms: _Optional[int] = ..., idempotent: _Optional[bool] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("transaction_id", "committed", "data_result", "mailbox_result", "timestamp")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DATA_RESULT_FIELD_NUMBER: _ClassVar[int]
    MAILBOX_RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    committed: bool
    data_result: DataWriteResult
    mailbox_result: MailboxWriteResult
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, transaction_id: _Optional[str] = ..., committed: _Optional[bool] = ..., data_result: _Optional[_Union[DataWriteResult, _Mapping]] = ..., mailbox_result: _Optional[_Union[MailboxWriteResult, _Mapping]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DataWriteResult(_message.Message):
    __slots__ = ("rows_affected", "generated_values")
    class GeneratedValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...
    ROWS_AFFECTED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_VALUES_FIELD_NUMBER: _ClassVar[int]
    rows_affected: int
    generated_values: _containers.MessageMap[str, _struct_pb2.Value]
    def __init__(self, rows_affected: _Optional[int] = ..., generated_values: _Optional[_Mapping[str, _struct_pb2.Value]] = ...) -> None: ...

class MailboxWriteResult(_message.Message):
    __slots__ = ("message_id", "sequence")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    sequence: int
    def __init__(self, message_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class TransactRequest(_message.Message):
    __slots__ = ("begin", "write", "commit", "rollback")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    begin: BeginTransaction
    write: WriteRequest
    commit: CommitTransaction
    rollback: RollbackTransaction
    def __init__(self, begin: _Optional[_Union[BeginTransaction, _Mapping]] = ..., write: _Optional[_Union[WriteRequest, _Mapping]] = ..., commit: _Optional[_Union[CommitTransaction, _Mapping]] = ..., rollback: _Optional[_Union[RollbackTransaction, _Mapping]] = ...) -> None: ...

class BeginTransaction(_message.Message):
    __slots__ = ("session_token", "options")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    options: TransactionOptions
    def __init__(self, session_token: _Optional[str] = ..., options: _Optional[_Union[TransactionOptions, _Mapping]] = ...) -> None: ...

class CommitTransaction(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RollbackTransaction(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TransactResponse(_message.Message):
    __slots__ = ("started", "write_result", "committed", "rolled_back", "error")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    WRITE_RESULT_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    started: TransactionStarted
    write_result: WriteResponse
    committed: TransactionCommitted
    rolled_back: TransactionRolledBack
    error: TransactionError
    def __init__(self, started: _Optional[_Union[TransactionStarted, _Mapping]] = ..., write_result: _Optional[_Union[WriteResponse, _Mapping]] = ..., committed: _Optional[_Union[TransactionCommitted, _Mapping]] = ..., rolled_back: _Optional[_Union[TransactionRolledBack, _Mapping]] = ..., error: _Optional[_Union[TransactionError, _Mapping]] = ...) -> None: ...

class TransactionStarted(_message.Message):
    __slots__ = ("transaction_id", "started_at")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    started_at: _timestamp_pb2.Timestamp
    def __init__(self, transaction_id: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TransactionCommitted(_message.Message):
    __slots__ = ("success", "write_count")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    WRITE_COUNT_FIELD_NUMBER: _ClassVar[int]
    success: bool
    write_count: int
    def __init__(self, success: _Optional[bool] = ..., write_count: _Optional[int] = ...) -> None: ...

class TransactionRolledBack(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TransactionError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ReadMailboxRequest(_message.Message):
    __slots__ = ("session_token", "mailbox_id", "since_sequence", "limit", "unprocessed_only")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAILBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    UNPROCESSED_ONLY_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    mailbox_id: str
    since_sequence: int
    limit: int
    unprocessed_only: bool
    def __init__(self, session_token: _Optional[str] = ..., mailbox_id: _Optional[str] = ..., since_sequence: _Optional[int] = ..., limit: _Optional[int] = ..., unprocessed_only: _Optional[bool] = ...) -> None: ...

class MailboxMessage(_message.Message):
    __slots__ = ("message_id", "mailbox_id", "sequence", "message", "metadata", "message_type", "created_at", "processed", "processed_at")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MAILBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_AT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    mailbox_id: str
    sequence: int
    message: bytes
    metadata: _containers.ScalarMap[str, str]
    message_type: str
    created_at: _timestamp_pb2.Timestamp
    processed: bool
    processed_at: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., mailbox_id: _Optional[str] = ..., sequence: _Optional[int] = ..., message: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., message_type: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., processed: _Optional[bool] = ..., processed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProcessMailboxRequest(_message.Message):
    __slots__ = ("session_token", "message_ids")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_token: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessMailboxResponse(_message.Message):
    __slots__ = ("processed_count", "failed_ids")
    PROCESSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_IDS_FIELD_NUMBER: _ClassVar[int]
    processed_count: int
    failed_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, processed_count: _Optional[int] = ..., failed_ids: _Optional[_Iterable[str]] = ...) -> None: ...
