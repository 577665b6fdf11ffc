"""What a task hands the workload: credentials, and who they were issued for.

No value of a credential's ``secret`` map ever appears in a ``repr`` or ``str`` of anything
here, so printing a credential, a task or a list of them into a log is safe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from credbroker._proto.credbroker.v1 import broker_pb2, types_pb2


class SecretMap(Mapping[str, str]):
    """A read-only mapping of a credential's secret values whose ``repr`` names only the keys.

    Read a value by key (``cred.secret["password"]``); it is never shown by printing the map.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"SecretMap(keys={sorted(self._values)!r}, values=<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> object:
        # Pickling would write the values somewhere (a cache, a queue): refuse it.
        raise TypeError("a credential's secret values cannot be pickled")


def _time(ts: Timestamp, present: bool = True) -> datetime | None:
    if not present or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.ToDatetime(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Credential:
    """One credential of a task, for one grant.

    ``public`` holds the values that may be shown (a username, a Vault lease id); ``secret``
    the ones that must not be (a password, a token), readable by key only.
    """

    grant: str
    provider: str
    kind: str
    lease_id: str
    expires_at: datetime | None
    public: Mapping[str, str]
    secret: SecretMap = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Credential(grant={self.grant!r}, provider={self.provider!r}, kind={self.kind!r}, "
            f"lease_id={self.lease_id!r}, expires_at={self.expires_at!r}, "
            f"public={dict(self.public)!r}, secret={self.secret!r})"
        )

    __str__ = __repr__

    @classmethod
    def _from_proto(cls, c: broker_pb2.Credential) -> Credential:
        return cls(
            grant=c.grant,
            provider=c.provider,
            kind=c.kind,
            lease_id=c.lease_id,
            expires_at=_time(c.expires_at, c.HasField("expires_at")),
            public=dict(c.public),
            secret=SecretMap(c.secret),
        )


@dataclass(frozen=True)
class Principal:
    """Who a task's credentials are for, as the daemon derived it from the token."""

    issuer: str
    subject: str
    client_id: str
    #: Empty when the task is unattributed.
    owner: str
    scopes: tuple[str, ...]
    #: SHA-256 of the token, hex: never the token.
    token_fingerprint: str

    @classmethod
    def _from_proto(cls, p: types_pb2.Principal) -> Principal:
        return cls(
            issuer=p.issuer,
            subject=p.subject,
            client_id=p.client_id,
            owner=p.owner,
            scopes=tuple(p.scopes),
            token_fingerprint=p.token_fingerprint,
        )


@dataclass(frozen=True)
class TaskState:
    """A task as the daemon last reported it."""

    id: str
    state: str
    tool: str
    expires_at: datetime | None
    end_reason: str
    principal: Principal

    @classmethod
    def _from_proto(cls, t: types_pb2.Task) -> TaskState:
        return cls(
            id=t.id,
            state=t.state,
            tool=t.tool,
            expires_at=_time(t.expires_at, t.HasField("expires_at")),
            end_reason=t.end_reason,
            principal=Principal._from_proto(t.principal),
        )


def begin_request(
    token: str,
    *,
    tool: str,
    grants: list[str] | tuple[str, ...],
    ttl: int | float | None,
    narrow: Mapping[str, Mapping[str, list[str]]] | None,
    call_id: str | None,
) -> broker_pb2.BeginTaskRequest:
    """The BeginTask request (without its idempotency key, set per attempt).

    ``narrow`` maps a grant name to its narrowing, e.g.
    ``{"repo-write": {"repositories": ["acme/api"]}}``.
    """
    if isinstance(grants, str):
        # A bare string would be read as a list of one-letter grants.
        raise TypeError("grants must be a list of grant names, not a string")
    if not grants:
        raise ValueError("at least one grant is needed")
    narrow = narrow or {}
    unknown = set(narrow) - set(grants)
    if unknown:
        raise ValueError(f"narrow names grants that are not requested: {sorted(unknown)}")
    req = broker_pb2.BeginTaskRequest(token=token, tool=tool)
    for name in grants:
        g = req.grants.add(name=name)
        for param, values in narrow.get(name, {}).items():
            g.narrow[param].values.extend(values)
    if ttl is not None:
        req.ttl_seconds = max(1, int(ttl))
    if call_id:
        req.call_id = call_id
    return req
