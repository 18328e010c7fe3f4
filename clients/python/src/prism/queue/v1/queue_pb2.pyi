import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_POSITION_UNSPECIFIED: _ClassVar[StartPosition]
    START_POSITION_EARLIEST: _ClassVar[StartPosition]
    START_POSITION_LATEST: _ClassVar[StartPosition]
    START_POSITION_COMMITTED: _ClassVar[StartPosition]
START_POSITION_UNSPECIFIED: StartPosition
START_POSITION_EARLIEST: StartPosition
START_POSITION_LATEST: StartPosition
START_POSITION_COMMITTED: StartPosition

class PublishRequest(_message.Message):
    __slots__ = ("session_token", "topic", "payload", "headers", "partition_key", "partition")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    topic: str
    payload: bytes
    headers: _containers.ScalarMap[str, str]
    partition_key: str
    partition: int
    def __init__(self, session_token: _Optional[str] = ..., topic: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., partition_key: _Optional[str] = ..., partition: _Optional[int] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("message_id", "offset", "partition", "timestamp")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    offset: int
    partition: int
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, message_id: _Optional[str] = ..., offset: _Optional[int] = ..., partition: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PublishStreamRequest(_message.Message):
    __slots__ = ("start", "payload")
    START_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    start: PublishRequest
    payload: bytes
    def __init__(self, start: _Optional[_Union[PublishRequest, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("session_token", "topic", "messages")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[BatchMessage]
    def __init__(self, session_token: _Optional[str] = ..., topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[BatchMessage, _Mapping]]] = ...) -> None: ...

class BatchMessage(_message.Message):
    __slots__ = ("payload", "headers", "partition_key")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_KEY_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    headers: _containers.ScalarMap[str, str]
    partition_key: str
    def __init__(self, payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., partition_key: _Optional[str] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("results", "success_count", "failure_count")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PublishResponse]
    success_count: int
    failure_count: int
    def __init__(self, results: _Optional[_Iterable[_Union[PublishResponse, _Mapping]]] = ..., success_count: _Optional[int] = ..., failure_count: _Optional[int] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("session_token", "topic", "consumer_group", "offset", "timestamp", "position", "max_messages", "timeout")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    topic: str
    consumer_group: str
    offset: int
    timestamp: _timestamp_pb2.Timestamp
    position: StartPosition
    max_messages: int
    timeout: _duration_pb2.Duration
    def __init__(self, session_token: _Optional[str] = ..., topic: _Optional[str] = ..., consumer_group: _Optional[str] = ..., offset: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., position: _Optional[_Union[StartPosition, str]] = ..., max_messages: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("message_id", "topic", "partition", "offset", "payload", "headers", "timestamp", "producer_id", "attempt")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    topic: str
    partition: int
    offset: int
    payload: bytes
    headers: _containers.ScalarMap[str, str]
    timestamp: _timestamp_pb2.Timestamp
    producer_id: str
    attempt: int
    def __init__(self, message_id: _Optional[str] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class AcknowledgeRequest(_message.Message):
    __slots__ = ("session_token", "message_ids")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_token: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AcknowledgeResponse(_message.Message):
    __slots__ = ("acknowledged_count", "failed_ids")
    ACKNOWLEDGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_IDS_FIELD_NUMBER: _ClassVar[int]
    acknowledged_count: int
    failed_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, acknowledged_count: _Optional[int] = ..., failed_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("session_token", "topic", "consumer_group", "offsets")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    topic: str
    consumer_group: str
    offsets: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    def __init__(self, session_token: _Optional[str] = ..., topic: _Optional[str] = ..., consumer_group: _Optional[str] = ..., offsets: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ...) -> None: ...

class PartitionOffset(_message.Message):
    __slots__ = ("partition", "offset")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    partition: int
    offset: int
    def __init__(self, partition: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("success", "committed")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    success: bool
    committed: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    def __init__(self, success: _Optional[bool] = ..., committed: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ...) -> None: ...

class SeekRequest(_message.Message):
    __slots__ = ("session_token", "topic", "consumer_group", "positions")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_GROUP_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    topic: str
    consumer_group: str
    positions: _containers.RepeatedCompositeFieldContainer[PartitionOffset]
    def __init__(self, session_token: _Optional[str] = ..., topic: _Optional[str] = ..., consumer_group: _Optional[str] = ..., positions: _Optional[_Iterable[_Union[PartitionOffset, _Mapping]]] = ...) -> None: ...

class SeekResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...

class GetTopicInfoRequest(_message.Message):
    __slots__ = ("session_token", "topic")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    topic: str
    def __init__(self, session_token: _Optional[str] = ..., topic: _Optional[str] = ...) -> None: ...

class GetTopicInfoResponse(_message.Message):
    __slots__ = ("topic", "partition_count", "message_count", "partitions")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COUNT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    topic: str
    partition_count: int
    message_count: int
    partitions: _containers.RepeatedCompositeFieldContainer[PartitionInfo]
    def __init__(self, topic: _Optional[str] = ..., partition_count: _Optional[int] = ..., message_count: _Optional[int] = ..., partitions: _Optional[_Iterable[_Union[PartitionInfo, _Mapping]]] = ...) -> None: ...

class PartitionInfo(_message.Message):
    __slots__ = ("partition", "earliest_offset", "latest_offset", "message_count")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    EARLIEST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    LATEST_OFFSET_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    partition: int
    earliest_offset: int
    latest_offset: int
    message_count: int
    def __init__(self, partition: _Optional[int] = ..., earliest_offset: _Optional[int] = ..., latest_offset: _Optional[int] = ..., message_count: _Optional[int] = ...) -> None: ...
