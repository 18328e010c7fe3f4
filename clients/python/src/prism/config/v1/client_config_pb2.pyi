import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccessPattern(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCESS_PATTERN_UNSPECIFIED: _ClassVar[AccessPattern]
    ACCESS_PATTERN_QUEUE: _ClassVar[AccessPattern]
    ACCESS_PATTERN_PUBSUB: _ClassVar[AccessPattern]
    ACCESS_PATTERN_READER: _ClassVar[AccessPattern]
    ACCESS_PATTERN_TRANSACT: _ClassVar[AccessPattern]
    ACCESS_PATTERN_KEY_VALUE: _ClassVar[AccessPattern]
    ACCESS_PATTERN_CACHE: _ClassVar[AccessPattern]

class BackendType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_TYPE_UNSPECIFIED: _ClassVar[BackendType]
    BACKEND_TYPE_MEMORY: _ClassVar[BackendType]
    BACKEND_TYPE_SQLITE: _ClassVar[BackendType]
    BACKEND_TYPE_POSTGRES: _ClassVar[BackendType]
    BACKEND_TYPE_REDIS: _ClassVar[BackendType]
    BACKEND_TYPE_KAFKA: _ClassVar[BackendType]
    BACKEND_TYPE_NATS: _ClassVar[BackendType]

class ConsistencyLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_LEVEL_UNSPECIFIED: _ClassVar[ConsistencyLevel]
    CONSISTENCY_LEVEL_EVENTUAL: _ClassVar[ConsistencyLevel]
    CONSISTENCY_LEVEL_STRONG: _ClassVar[ConsistencyLevel]
    CONSISTENCY_LEVEL_BOUNDED_STALENESS: _ClassVar[ConsistencyLevel]

class CacheStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_STRATEGY_UNSPECIFIED: _ClassVar[CacheStrategy]
    CACHE_STRATEGY_LOOK_ASIDE: _ClassVar[CacheStrategy]
    CACHE_STRATEGY_WRITE_THROUGH: _ClassVar[CacheStrategy]
ACCESS_PATTERN_UNSPECIFIED: AccessPattern
ACCESS_PATTERN_QUEUE: AccessPattern
ACCESS_PATTERN_PUBSUB: AccessPattern
ACCESS_PATTERN_READER: AccessPattern
ACCESS_PATTERN_TRANSACT: AccessPattern
ACCESS_PATTERN_KEY_VALUE: AccessPattern
ACCESS_PATTERN_CACHE: AccessPattern
BACKEND_TYPE_UNSPECIFIED: BackendType
BACKEND_TYPE_MEMORY: BackendType
BACKEND_TYPE_SQLITE: BackendType
BACKEND_TYPE_POSTGRES: BackendType
BACKEND_TYPE_REDIS: BackendType
BACKEND_TYPE_KAFKA: BackendType
BACKEND_TYPE_NATS: BackendType
CONSISTENCY_LEVEL_UNSPECIFIED: ConsistencyLevel
CONSISTENCY_LEVEL_EVENTUAL: ConsistencyLevel
CONSISTENCY_LEVEL_STRONG: ConsistencyLevel
CONSISTENCY_LEVEL_BOUNDED_STALENESS: ConsistencyLevel
CACHE_STRATEGY_UNSPECIFIED: CacheStrategy
CACHE_STRATEGY_LOOK_ASIDE: CacheStrategy
CACHE_STRATEGY_WRITE_THROUGH: CacheStrategy

class ClientConfig(_message.Message):
    __slots__ = ("name", "version", "pattern", "backend", "consistency", "cache", "rate_limit", "namespace", "patterns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    pattern: AccessPattern
    backend: BackendConfig
    consistency: ConsistencyConfig
    cache: CacheConfig
    rate_limit: RateLimitConfig
    namespace: str
    patterns: _containers.RepeatedScalarFieldContainer[AccessPattern]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., pattern: _Optional[_Union[AccessPattern, str]] = ..., backend: _Optional[_Union[BackendConfig, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyConfig, _Mapping]] = ..., cache: _Optional[_Union[CacheConfig, _Mapping]] = ..., rate_limit: _Optional[_Union[RateLimitConfig, _Mapping]] = ..., namespace: _Optional[str] = ..., patterns: _Optional[_Iterable[_Union[AccessPattern, str]]] = ...) -> None: ...

class BackendConfig(_message.Message):
    __slots__ = ("type", "name", "options", "required_interfaces")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_INTERFACES_FIELD_NUMBER: _ClassVar[int]
    type: BackendType
    name: str
    options: _containers.ScalarMap[str, str]
    required_interfaces: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[_Union[BackendType, str]] = ..., name: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., required_interfaces: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencyConfig(_message.Message):
    __slots__ = ("level", "max_staleness")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    level: ConsistencyLevel
    max_staleness: _duration_pb2.Duration
    def __init__(self, level: _Optional[_Union[ConsistencyLevel, str]] = ..., max_staleness: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class CacheConfig(_message.Message):
    __slots__ = ("enabled", "ttl", "max_entries", "strategy", "max_bytes")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    ttl: _duration_pb2.Duration
    max_entries: int
    strategy: CacheStrategy
    max_bytes: int
    def __init__(self, enabled: _Optional[bool] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_entries: _Optional[int] = ..., strategy: _Optional[_Union[CacheStrategy, str]] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class RateLimitConfig(_message.Message):
    __slots__ = ("requests_per_second", "burst")
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    requests_per_second: int
    burst: int
    def __init__(self, requests_per_second: _Optional[int] = ..., burst: _Optional[int] = ...) -> None: ...
