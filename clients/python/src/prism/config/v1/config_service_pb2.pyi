from prism.config.v1 import client_config_pb2 as _client_config_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetConfigRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: _client_config_pb2.ClientConfig
    def __init__(self, config: _Optional[_Union[_client_config_pb2.ClientConfig, _Mapping]] = ...) -> None: ...

class ListConfigsRequest(_message.Message):
    __slots__ = ("namespace", "pattern")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pattern: _client_config_pb2.AccessPattern
    def __init__(self, namespace: _Optional[str] = ..., pattern: _Optional[_Union[_client_config_pb2.AccessPattern, str]] = ...) -> None: ...

class ListConfigsResponse(_message.Message):
    __slots__ = ("configs",)
    CONFIGS_FIELD_NUMBER: _ClassVar[int]
    configs: _containers.RepeatedCompositeFieldContainer[_client_config_pb2.ClientConfig]
    def __init__(self, configs: _Optional[_Iterable[_Union[_client_config_pb2.ClientConfig, _Mapping]]] = ...) -> None: ...
