import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(_message.Message):
    __slots__ = ("id", "state", "workload", "tool", "principal", "peer", "created_at", "expires_at", "ended_at", "end_reason", "leases")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    workload: str
    tool: str
    principal: Principal
    peer: Peer
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    end_reason: str
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., workload: _Optional[str] = ..., tool: _Optional[str] = ..., principal: _Optional[_Union[Principal, _Mapping]] = ..., peer: _Optional[_Union[Peer, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_reason: _Optional[str] = ..., leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ...) -> None: ...

class Principal(_message.Message):
    __slots__ = ("issuer", "subject", "client_id", "owner", "owner_source", "actors", "token_fingerprint", "jti", "scopes", "token_expires_at")
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    OWNER_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTORS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    JTI_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    issuer: str
    subject: str
    client_id: str
    owner: str
    owner_source: str
    actors: _containers.RepeatedScalarFieldContainer[str]
    token_fingerprint: str
    jti: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    token_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, issuer: _Optional[str] = ..., subject: _Optional[str] = ..., client_id: _Optional[str] = ..., owner: _Optional[str] = ..., owner_source: _Optional[str] = ..., actors: _Optional[_Iterable[str]] = ..., token_fingerprint: _Optional[str] = ..., jti: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., token_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("uid", "gid", "pid", "exe", "unit")
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    uid: int
    gid: int
    pid: int
    exe: str
    unit: str
    def __init__(self, uid: _Optional[int] = ..., gid: _Optional[int] = ..., pid: _Optional[int] = ..., exe: _Optional[str] = ..., unit: _Optional[str] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("id", "grant", "provider", "kind", "state", "issued_at", "expires_at", "revoked_at", "reference", "revoke_attempts", "last_error")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REVOKE_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    grant: str
    provider: str
    kind: str
    state: str
    issued_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    reference: str
    revoke_attempts: int
    last_error: str
    def __init__(self, id: _Optional[str] = ..., grant: _Optional[str] = ..., provider: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[str] = ..., revoke_attempts: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...
