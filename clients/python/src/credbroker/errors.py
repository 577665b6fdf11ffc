"""Refusals from the daemon, as exceptions carrying its stable reason code.

Every error the daemon returns has a ``google.rpc.ErrorInfo`` detail (in the
``grpc-status-details-bin`` trailer) with domain ``credbroker`` and a ``reason``: a stable code
from the daemon's registry (``src/record/reason.rs``, documented in docs/operations.md). The
class an error is raised as is chosen from that code:

======================  ===================================================================
``TokenRejected``       the token itself: its format, signature, issuer, audience, lifetime
                        (``malformed``, ``bad_signature``, ``audience_mismatch``,
                        ``expired``, …; every code in :data:`TOKEN_REASONS`)
``InsufficientScope``   ``insufficient_scope``: the token lacks a scope a grant needs
``Denied``              policy said no (``unknown_grant``, ``grant_not_allowed``,
                        ``owner_required``, ``tool_not_allowed``, ``call_unknown``, …;
                        :data:`DENIAL_REASONS`)
``Unavailable``         no answer from credbroker (the transport failed: no daemon, a reset;
                        ``reason`` is ``None``), or the daemon answered UNAVAILABLE
                        (``provider_unavailable``, ``issuer_keys_unavailable``): try later
``Refused``             anything else (``provider_denied``, ``invalid_call_id``, …)
======================  ===================================================================

The message is the daemon's own text, which never holds a token or a secret; the token the
caller sent is never part of an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "credbroker"

#: Reason codes about the token itself (``token::Rejection`` in the daemon).
TOKEN_REASONS = frozenset(
    {
        "token_too_large",
        "malformed",
        "duplicate_key",
        "jwe_not_supported",
        "nested_jwt",
        "alg_none",
        "alg_symmetric",
        "alg_not_allowed",
        "crit_not_supported",
        "key_header_not_allowed",
        "typ_invalid",
        "unknown_issuer",
        "unknown_kid",
        "key_alg_mismatch",
        "bad_signature",
        "missing_claim",
        "invalid_claim",
        "audience_mismatch",
        "issuer_not_accepted",
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "token_expired",
    }
)

#: Reason codes of a policy denial, and of a caller the daemon could not place.
DENIAL_REASONS = frozenset(
    {
        "insufficient_scope",
        "owner_required",
        "unknown_grant",
        "grant_not_allowed",
        "issuer_not_allowed",
        "condition_not_met",
        "tool_not_allowed",
        "narrowing_not_allowed",
        "narrowing_exceeds_grant",
        "template_value_rejected",
        "call_unknown",
        "unknown_peer",
        "ambiguous_peer",
        "principal_mismatch",
    }
)

#: gRPC codes that, without a credbroker reason, mean the call never got an answer from the
#: daemon: its outcome is unknown and only an idempotent retry is safe.
TRANSPORT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }
)


class CredbrokerError(Exception):
    """Base of every error this package raises."""


class Refused(CredbrokerError):
    """The daemon refused the call (or could not be reached, see :class:`Unavailable`).

    Attributes:
        reason: the stable reason code, or ``None`` when the daemon never answered.
        code: the gRPC status code.
        message: the daemon's message (never a token or a secret).
        metadata: the ErrorInfo metadata, e.g. ``{"grant": "orders-db-read"}``.
        retry_after: how long the daemon asked to wait before retrying, if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        metadata: Mapping[str, str] | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after

    @property
    def grant(self) -> str | None:
        """The grant the refusal is about, when there is one."""
        return self.metadata.get("grant")

    @property
    def transport(self) -> bool:
        """Whether the call never got an answer from credbroker (outcome unknown)."""
        return self.reason is None and self.code in TRANSPORT_CODES

    def __str__(self) -> str:
        # The daemon's messages start with the reason code already.
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, code={self.code.name}, message={self.message!r})"


class TokenRejected(Refused):
    """The token was rejected (format, signature, issuer, audience or lifetime)."""


class Denied(Refused):
    """Policy refused the request."""


class InsufficientScope(Denied):
    """The token lacks a scope a requested grant needs (reason ``insufficient_scope``)."""


class Unavailable(Refused):
    """No answer from credbroker, or the daemon said a backend is unavailable: retry later."""


def classify(reason: str | None, code: grpc.StatusCode) -> type[Refused]:
    """The exception class for a reason code and status code (see the module's table)."""
    if reason == "insufficient_scope":
        return InsufficientScope
    if reason in TOKEN_REASONS:
        return TokenRejected
    if reason in DENIAL_REASONS:
        return Denied
    if code == grpc.StatusCode.UNAVAILABLE or (reason is None and code in TRANSPORT_CODES):
        return Unavailable
    return Refused


def from_rpc_error(error: grpc.RpcError) -> Refused:
    """The :class:`Refused` for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``,
    which both offer ``code()``, ``details()`` and ``trailing_metadata()``)."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or code.name  # type: ignore[attr-defined]
    reason = None
    metadata: dict[str, str] = {}
    retry_after = None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        # A status detail inconsistent with the status itself did not come from credbroker.
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                reason = info.reason
                metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta()
    cls = classify(reason, code)
    return cls(message, reason=reason, code=code, metadata=metadata, retry_after=retry_after)
