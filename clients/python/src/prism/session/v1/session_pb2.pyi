import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from prism.config.v1 import client_config_pb2 as _client_config_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATUS_UNSPECIFIED: _ClassVar[SessionStatus]
    SESSION_STATUS_ACTIVE: _ClassVar[SessionStatus]
    SESSION_STATUS_EXPIRING: _ClassVar[SessionStatus]
    SESSION_STATUS_READ_ONLY: _ClassVar[SessionStatus]
    SESSION_STATUS_TERMINATING: _ClassVar[SessionStatus]
SESSION_STATUS_UNSPECIFIED: SessionStatus
SESSION_STATUS_ACTIVE: SessionStatus
SESSION_STATUS_EXPIRING: SessionStatus
SESSION_STATUS_READ_ONLY: SessionStatus
SESSION_STATUS_TERMINATING: SessionStatus

class CreateSessionRequest(_message.Message):
    __slots__ = ("api_key", "jwt_token", "mtls", "config_name", "inline_config", "client_id", "client_version", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    JWT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MTLS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_NAME_FIELD_NUMBER: _ClassVar[int]
    INLINE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    jwt_token: str
    mtls: MutualTLSAuth
    config_name: str
    inline_config: _client_config_pb2.ClientConfig
    client_id: str
    client_version: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, api_key: _Optional[str] = ..., jwt_token: _Optional[str] = ..., mtls: _Optional[_Union[MutualTLSAuth, _Mapping]] = ..., config_name: _Optional[str] = ..., inline_config: _Optional[_Union[_client_config_pb2.ClientConfig, _Mapping]] = ..., client_id: _Optional[str] = ..., client_version: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MutualTLSAuth(_message.Message):
    __slots__ = ("client_cert",)
    CLIENT_CERT_FIELD_NUMBER: _ClassVar[int]
    client_cert: bytes
    def __init__(self, client_cert: _Optional[bytes] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_token", "session_id", "created_at", "expires_at", "config", "supported_features")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    session_id: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    config: _client_config_pb2.ClientConfig
    supported_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_token: _Optional[str] = ..., session_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., config: _Optional[_Union[_client_config_pb2.ClientConfig, _Mapping]] = ..., supported_features: _Optional[_Iterable[str]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_token", "force")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    force: bool
    def __init__(self, session_token: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("success", "message", "pending_operations")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PENDING_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    pending_operations: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., pending_operations: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_token",)
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    def __init__(self, session_token: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("server_time", "ttl", "status")
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    server_time: _timestamp_pb2.Timestamp
    ttl: _duration_pb2.Duration
    status: SessionStatus
    def __init__(self, server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., status: _Optional[_Union[SessionStatus, str]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_token",)
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    def __init__(self, session_token: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session_id", "status", "created_at", "expires_at", "last_activity", "config", "metrics")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    status: SessionStatus
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    last_activity: _timestamp_pb2.Timestamp
    config: _client_config_pb2.ClientConfig
    metrics: SessionMetrics
    def __init__(self, session_id: _Optional[str] = ..., status: _Optional[_Union[SessionStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., config: _Optional[_Union[_client_config_pb2.ClientConfig, _Mapping]] = ..., metrics: _Optional[_Union[SessionMetrics, _Mapping]] = ...) -> None: ...

class SessionMetrics(_message.Message):
    __slots__ = ("requests_processed", "bytes_sent", "bytes_received", "active_streams")
    REQUESTS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    requests_processed: int
    bytes_sent: int
    bytes_received: int
    active_streams: int
    def __init__(self, requests_processed: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., active_streams: _Optional[int] = ...) -> None: ...

class RefreshSessionRequest(_message.Message):
    __slots__ = ("session_token", "extension")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    extension: _duration_pb2.Duration
    def __init__(self, session_token: _Optional[str] = ..., extension: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RefreshSessionResponse(_message.Message):
    __slots__ = ("new_expires_at",)
    NEW_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    new_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, new_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
