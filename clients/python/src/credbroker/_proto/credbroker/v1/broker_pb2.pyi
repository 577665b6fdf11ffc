import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from credbroker._proto.credbroker.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginTaskRequest(_message.Message):
    __slots__ = ("token", "tool", "grants", "ttl_seconds", "idempotency_key", "call_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    tool: str
    grants: _containers.RepeatedCompositeFieldContainer[GrantRequest]
    ttl_seconds: int
    idempotency_key: str
    call_id: str
    def __init__(self, token: _Optional[str] = ..., tool: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[GrantRequest, _Mapping]]] = ..., ttl_seconds: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("name", "narrow")
    class NarrowEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: StringList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NARROW_FIELD_NUMBER: _ClassVar[int]
    name: str
    narrow: _containers.MessageMap[str, StringList]
    def __init__(self, name: _Optional[str] = ..., narrow: _Optional[_Mapping[str, StringList]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BeginTaskResponse(_message.Message):
    __slots__ = ("task", "credentials")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    task: _types_pb2.Task
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, task: _Optional[_Union[_types_pb2.Task, _Mapping]] = ..., credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("lease_id", "grant", "provider", "kind", "expires_at", "public", "secret")
    class PublicEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SecretEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    grant: str
    provider: str
    kind: str
    expires_at: _timestamp_pb2.Timestamp
    public: _containers.ScalarMap[str, str]
    secret: _containers.ScalarMap[str, str]
    def __init__(self, lease_id: _Optional[str] = ..., grant: _Optional[str] = ..., provider: _Optional[str] = ..., kind: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., public: _Optional[_Mapping[str, str]] = ..., secret: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RenewTaskRequest(_message.Message):
    __slots__ = ("task_id", "token", "ttl_seconds")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    token: str
    ttl_seconds: int
    def __init__(self, task_id: _Optional[str] = ..., token: _Optional[str] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class RenewTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _types_pb2.Task
    def __init__(self, task: _Optional[_Union[_types_pb2.Task, _Mapping]] = ...) -> None: ...

class EndTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class EndTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _types_pb2.Task
    def __init__(self, task: _Optional[_Union[_types_pb2.Task, _Mapping]] = ...) -> None: ...
