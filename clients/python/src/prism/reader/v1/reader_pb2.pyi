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

class ReadRequest(_message.Message):
    __slots__ = ("session_token", "collection", "page_size", "cursor", "fields", "filter", "sort")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    collection: str
    page_size: int
    cursor: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    filter: Filter
    sort: _containers.RepeatedCompositeFieldContainer[Sort]
    def __init__(self, session_token: _Optional[str] = ..., collection: _Optional[str] = ..., page_size: _Optional[int] = ..., cursor: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., sort: _Optional[_Iterable[_Union[Sort, _Mapping]]] = ...) -> None: ...

class Page(_message.Message):
    __slots__ = ("rows", "next_cursor", "has_more", "metadata")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    next_cursor: str
    has_more: bool
    metadata: PageMetadata
    def __init__(self, rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., next_cursor: _Optional[str] = ..., has_more: _Optional[bool] = ..., metadata: _Optional[_Union[PageMetadata, _Mapping]] = ...) -> None: ...

class PageMetadata(_message.Message):
    __slots__ = ("row_count", "page_number", "generated_at")
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    page_number: int
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, row_count: _Optional[int] = ..., page_number: _Optional[int] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("fields", "metadata")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.MessageMap[str, _struct_pb2.Value]
    metadata: RowMetadata
    def __init__(self, fields: _Optional[_Mapping[str, _struct_pb2.Value]] = ..., metadata: _Optional[_Union[RowMetadata, _Mapping]] = ...) -> None: ...

class RowMetadata(_message.Message):
    __slots__ = ("created_at", "updated_at", "version")
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    version: str
    def __init__(self, created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("session_token", "collection", "filter", "sort", "limit", "offset", "fields")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SORT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    collection: str
    filter: Filter
    sort: _containers.RepeatedCompositeFieldContainer[Sort]
    limit: int
    offset: int
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_token: _Optional[str] = ..., collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., sort: _Optional[_Iterable[_Union[Sort, _Mapping]]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("field", "composite")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    field: FieldFilter
    composite: CompositeFilter
    def __init__(self, field: _Optional[_Union[FieldFilter, _Mapping]] = ..., composite: _Optional[_Union[CompositeFilter, _Mapping]] = ...) -> None: ...

class FieldFilter(_message.Message):
    __slots__ = ("field", "op", "value")
    class Operator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OPERATOR_UNSPECIFIED: _ClassVar[FieldFilter.Operator]
        OPERATOR_EQUALS: _ClassVar[FieldFilter.Operator]
        OPERATOR_NOT_EQUALS: _ClassVar[FieldFilter.Operator]
        OPERATOR_GREATER_THAN: _ClassVar[FieldFilter.Operator]
        OPERATOR_GREATER_THAN_OR_EQUALS: _ClassVar[FieldFilter.Operator]
        OPERATOR_LESS_THAN: _ClassVar[FieldFilter.Operator]
        OPERATOR_LESS_THAN_OR_EQUALS: _ClassVar[FieldFilter.Operator]
        OPERATOR_IN: _ClassVar[FieldFilter.Operator]
        OPERATOR_NOT_IN: _ClassVar[FieldFilter.Operator]
        OPERATOR_CONTAINS: _ClassVar[FieldFilter.Operator]
        OPERATOR_STARTS_WITH: _ClassVar[FieldFilter.Operator]
        OPERATOR_ENDS_WITH: _ClassVar[FieldFilter.Operator]
    OPERATOR_UNSPECIFIED: FieldFilter.Operator
    OPERATOR_EQUALS: FieldFilter.Operator
    OPERATOR_NOT_EQUALS: FieldFilter.Operator
    OPERATOR_GREATER_THAN: FieldFilter.Operator
    OPERATOR_GREATER_THAN_OR_EQUALS: FieldFilter.Operator
    OPERATOR_LESS_THAN: FieldFilter.Operator
    OPERATOR_LESS_THAN_OR_EQUALS: FieldFilter.Operator
    OPERATOR_IN: FieldFilter.Operator
    OPERATOR_NOT_IN: FieldFilter.Operator
    OPERATOR_CONTAINS: FieldFilter.Operator
    OPERATOR_STARTS_WITH: FieldFilter.Operator
    OPERATOR_ENDS_WITH: FieldFilter.Operator
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    op: FieldFilter.Operator
    value: _struct_pb2.Value
    def __init__(self, field: _Optional[str] = ..., op: _Optional[_Union[FieldFilter.Operator, str]] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class CompositeFilter(_message.Message):
    __slots__ = ("op", "filters")
    class LogicalOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LOGICAL_OPERATOR_UNSPECIFIED: _ClassVar[CompositeFilter.LogicalOperator]
        LOGICAL_OPERATOR_AND: _ClassVar[CompositeFilter.LogicalOperator]
        LOGICAL_OPERATOR_OR: _ClassVar[CompositeFilter.LogicalOperator]
        LOGICAL_OPERATOR_NOT: _ClassVar[CompositeFilter.LogicalOperator]
    LOGICAL_OPERATOR_UNSPECIFIED: CompositeFilter.LogicalOperator
    LOGICAL_OPERATOR_AND: CompositeFilter.LogicalOperator
    LOGICAL_OPERATOR_OR: CompositeFilter.LogicalOperator
    LOGICAL_OPERATOR_NOT: CompositeFilter.LogicalOperator
    OP_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    op: CompositeFilter.LogicalOperator
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, op: _Optional[_Union[CompositeFilter.LogicalOperator, str]] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Sort(_message.Message):
    __slots__ = ("field", "direction")
    class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DIRECTION_UNSPECIFIED: _ClassVar[Sort.Direction]
        DIRECTION_ASC: _ClassVar[Sort.Direction]
        DIRECTION_DESC: _ClassVar[Sort.Direction]
    DIRECTION_UNSPECIFIED: Sort.Direction
    DIRECTION_ASC: Sort.Direction
    DIRECTION_DESC: Sort.Direction
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    direction: Sort.Direction
    def __init__(self, field: _Optional[str] = ..., direction: _Optional[_Union[Sort.Direction, str]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("session_token", "collection", "filter")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    collection: str
    filter: Filter
    def __init__(self, session_token: _Optional[str] = ..., collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("session_token", "collection", "id", "fields")
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    collection: str
    id: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_token: _Optional[str] = ..., collection: _Optional[str] = ..., id: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("row", "found")
    ROW_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    row: Row
    found: bool
    def __init__(self, row: _Optional[_Union[Row, _Mapping]] = ..., found: _Optional[bool] = ...) -> None: ...
