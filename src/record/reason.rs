//! Every reason code an audit record can carry, in one registry.
//!
//! A [`Reason`] can only be made here, and [`AuditRecord::reason`](super::AuditRecord::reason)
//! takes nothing else, so a producer cannot write a code that `audit query --reason` does not
//! know: adding a code means adding a constant and listing it in [`ALL`]. Codes are part of the
//! API (gRPC error details, SIEM rules): they never change meaning.

use credbroker_provider_api::ErrorKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason(&'static str);

impl Reason {
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

/// For task rows, whose `end_reason` is interned text.
impl From<Reason> for std::sync::Arc<str> {
    fn from(r: Reason) -> Self {
        r.0.into()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

// Tokens (token::Rejection).
pub const TOKEN_TOO_LARGE: Reason = Reason("token_too_large");
pub const MALFORMED: Reason = Reason("malformed");
pub const DUPLICATE_KEY: Reason = Reason("duplicate_key");
pub const JWE_NOT_SUPPORTED: Reason = Reason("jwe_not_supported");
pub const NESTED_JWT: Reason = Reason("nested_jwt");
pub const ALG_NONE: Reason = Reason("alg_none");
pub const ALG_SYMMETRIC: Reason = Reason("alg_symmetric");
pub const ALG_NOT_ALLOWED: Reason = Reason("alg_not_allowed");
pub const CRIT_NOT_SUPPORTED: Reason = Reason("crit_not_supported");
pub const KEY_HEADER_NOT_ALLOWED: Reason = Reason("key_header_not_allowed");
pub const TYP_INVALID: Reason = Reason("typ_invalid");
pub const UNKNOWN_ISSUER: Reason = Reason("unknown_issuer");
pub const UNKNOWN_KID: Reason = Reason("unknown_kid");
pub const KEY_ALG_MISMATCH: Reason = Reason("key_alg_mismatch");
pub const BAD_SIGNATURE: Reason = Reason("bad_signature");
pub const MISSING_CLAIM: Reason = Reason("missing_claim");
pub const INVALID_CLAIM: Reason = Reason("invalid_claim");
pub const AUDIENCE_MISMATCH: Reason = Reason("audience_mismatch");
pub const ISSUER_NOT_ACCEPTED: Reason = Reason("issuer_not_accepted");
pub const INSUFFICIENT_SCOPE: Reason = Reason("insufficient_scope");
/// The token expired (a rejection, a policy denial, or the end of a task).
pub const EXPIRED: Reason = Reason("expired");
pub const NOT_YET_VALID: Reason = Reason("not_yet_valid");
pub const ISSUED_IN_FUTURE: Reason = Reason("issued_in_future");
pub const ISSUER_KEYS_UNAVAILABLE: Reason = Reason("issuer_keys_unavailable");
/// RFC 7662: the AS says the token is not active (revoked, or unknown to it). Also how a task
/// ends when `recheck_active` finds its token revoked.
pub const TOKEN_INACTIVE: Reason = Reason("token_inactive");
pub const INTROSPECTION_UNAVAILABLE: Reason = Reason("introspection_unavailable");

// The calling process (workload matching).
pub const UNKNOWN_PEER: Reason = Reason("unknown_peer");
pub const AMBIGUOUS_PEER: Reason = Reason("ambiguous_peer");
pub const PRINCIPAL_MISMATCH: Reason = Reason("principal_mismatch");

// Policy (policy::Denial).
pub const OWNER_REQUIRED: Reason = Reason("owner_required");
pub const UNKNOWN_GRANT: Reason = Reason("unknown_grant");
pub const GRANT_NOT_ALLOWED: Reason = Reason("grant_not_allowed");
pub const ISSUER_NOT_ALLOWED: Reason = Reason("issuer_not_allowed");
pub const CONDITION_NOT_MET: Reason = Reason("condition_not_met");
pub const TOOL_NOT_ALLOWED: Reason = Reason("tool_not_allowed");
pub const NARROWING_NOT_ALLOWED: Reason = Reason("narrowing_not_allowed");
pub const NARROWING_EXCEEDS_GRANT: Reason = Reason("narrowing_exceeds_grant");
pub const TEMPLATE_VALUE_REJECTED: Reason = Reason("template_value_rejected");

// Providers (providers_api::ErrorKind, see `provider`).
pub const PROVIDER_UNAVAILABLE: Reason = Reason("provider_unavailable");
pub const PROVIDER_RATE_LIMITED: Reason = Reason("provider_rate_limited");
pub const PROVIDER_UNAUTHORIZED: Reason = Reason("provider_unauthorized");
pub const PROVIDER_DENIED: Reason = Reason("provider_denied");
pub const PROVIDER_INVALID_REQUEST: Reason = Reason("provider_invalid_request");
pub const PROVIDER_NOT_FOUND: Reason = Reason("provider_not_found");
pub const PROVIDER_OUTCOME_UNKNOWN: Reason = Reason("provider_outcome_unknown");
pub const PROVIDER_UNSUPPORTED: Reason = Reason("provider_unsupported");
pub const PROVIDER_CONFIG: Reason = Reason("provider_config");

// How a task ended (also the task row's end_reason).
pub const ENDED_BY_WORKLOAD: Reason = Reason("ended_by_workload");
pub const TOKEN_EXPIRED: Reason = Reason("token_expired");
pub const REVOKED_BY_OPERATOR: Reason = Reason("revoked_by_operator");
pub const ISSUE_FAILED: Reason = Reason("issue_failed");
pub const INTERRUPTED: Reason = Reason("interrupted");
/// A BeginTask retried with the same idempotency key after its answer was lost.
pub const BEGIN_REPLAYED: Reason = Reason("begin_replayed");

// What happened to a lease.
pub const REVOKED: Reason = Reason("revoked");
pub const NOTHING_ISSUED: Reason = Reason("nothing_issued");
pub const REVOKED_WITH_SCOPE: Reason = Reason("revoked_with_scope");
pub const EXPIRES_WITH_SCOPE: Reason = Reason("expires_with_scope");
pub const SCOPE_ABANDONED: Reason = Reason("scope_abandoned");
pub const REVOCATION_ABANDONED: Reason = Reason("revocation_abandoned");
pub const PROVIDER_CANNOT_REVOKE: Reason = Reason("provider_cannot_revoke");
pub const SEAL_FAILED: Reason = Reason("seal_failed");
/// The provider a lease was issued by is no longer configured.
pub const PROVIDER_MISSING: Reason = Reason("provider_missing");
/// A lease needs the revocation handle it was issued with, and the journal has none.
pub const HANDLE_MISSING: Reason = Reason("handle_missing");

// The audit trail itself.
pub const REFUSAL_AUDIT_LIMIT: Reason = Reason("refusal_audit_limit");

// MCP calls at the gateway (token rejections use the token codes above).
pub const NO_TOKEN: Reason = Reason("no_token");
pub const TOKEN_IN_QUERY: Reason = Reason("token_in_query");
pub const UNSUPPORTED_MEDIA_TYPE: Reason = Reason("unsupported_media_type");
pub const REQUEST_TOO_LARGE: Reason = Reason("request_too_large");
pub const MALFORMED_JSON: Reason = Reason("malformed_json");
pub const INVALID_JSONRPC: Reason = Reason("invalid_jsonrpc");
pub const HEADER_MISMATCH: Reason = Reason("header_mismatch");
pub const RATE_LIMITED: Reason = Reason("rate_limited");
pub const SESSION_UNKNOWN: Reason = Reason("session_unknown");
pub const UPSTREAM_UNAVAILABLE: Reason = Reason("upstream_unavailable");
pub const UPSTREAM_TIMEOUT: Reason = Reason("upstream_timeout");
/// A BeginTask named an MCP call the gateway did not record as allowed for this token.
pub const CALL_UNKNOWN: Reason = Reason("call_unknown");

// Blocks and abuse detection.
/// The token (its jti) is blocked: revoked here until it expires.
pub const TOKEN_BLOCKED: Reason = Reason("token_blocked");
/// Every token of this client is blocked for a while.
pub const CLIENT_BLOCKED: Reason = Reason("client_blocked");
/// Every token attributed to this owner is blocked for a while.
pub const OWNER_BLOCKED: Reason = Reason("owner_blocked");
/// Every token of this subject is blocked (a signal from the identity provider, or an operator).
pub const SUBJECT_BLOCKED: Reason = Reason("subject_blocked");
/// A detector fired on this request and its response is `deny`.
pub const ABUSE_DETECTED: Reason = Reason("abuse_detected");
/// The client registry: a client it does not hold (with `require_registered_client`), one past
/// its registration's expiry, suspended, retired. The last two also end its live tasks.
pub const CLIENT_UNREGISTERED: Reason = Reason("client_unregistered");
pub const CLIENT_EXPIRED: Reason = Reason("client_expired");
pub const CLIENT_SUSPENDED: Reason = Reason("client_suspended");
pub const CLIENT_RETIRED: Reason = Reason("client_retired");
/// A task ended because a block covers it.
pub const REVOKED_BY_BLOCK: Reason = Reason("revoked_by_block");

/// Every reason code, for validating what a user asks to filter on.
pub const ALL: [Reason; 86] = [
    TOKEN_TOO_LARGE,
    MALFORMED,
    DUPLICATE_KEY,
    JWE_NOT_SUPPORTED,
    NESTED_JWT,
    ALG_NONE,
    ALG_SYMMETRIC,
    ALG_NOT_ALLOWED,
    CRIT_NOT_SUPPORTED,
    KEY_HEADER_NOT_ALLOWED,
    TYP_INVALID,
    UNKNOWN_ISSUER,
    UNKNOWN_KID,
    KEY_ALG_MISMATCH,
    BAD_SIGNATURE,
    MISSING_CLAIM,
    INVALID_CLAIM,
    AUDIENCE_MISMATCH,
    ISSUER_NOT_ACCEPTED,
    INSUFFICIENT_SCOPE,
    EXPIRED,
    NOT_YET_VALID,
    ISSUED_IN_FUTURE,
    ISSUER_KEYS_UNAVAILABLE,
    UNKNOWN_PEER,
    AMBIGUOUS_PEER,
    PRINCIPAL_MISMATCH,
    OWNER_REQUIRED,
    UNKNOWN_GRANT,
    GRANT_NOT_ALLOWED,
    ISSUER_NOT_ALLOWED,
    CONDITION_NOT_MET,
    TOOL_NOT_ALLOWED,
    NARROWING_NOT_ALLOWED,
    NARROWING_EXCEEDS_GRANT,
    TEMPLATE_VALUE_REJECTED,
    PROVIDER_UNAVAILABLE,
    PROVIDER_RATE_LIMITED,
    PROVIDER_UNAUTHORIZED,
    PROVIDER_DENIED,
    PROVIDER_INVALID_REQUEST,
    PROVIDER_NOT_FOUND,
    PROVIDER_OUTCOME_UNKNOWN,
    PROVIDER_UNSUPPORTED,
    PROVIDER_CONFIG,
    ENDED_BY_WORKLOAD,
    TOKEN_EXPIRED,
    REVOKED_BY_OPERATOR,
    ISSUE_FAILED,
    INTERRUPTED,
    BEGIN_REPLAYED,
    REVOKED,
    NOTHING_ISSUED,
    REVOKED_WITH_SCOPE,
    EXPIRES_WITH_SCOPE,
    SCOPE_ABANDONED,
    REVOCATION_ABANDONED,
    PROVIDER_CANNOT_REVOKE,
    SEAL_FAILED,
    PROVIDER_MISSING,
    HANDLE_MISSING,
    REFUSAL_AUDIT_LIMIT,
    NO_TOKEN,
    TOKEN_IN_QUERY,
    UNSUPPORTED_MEDIA_TYPE,
    REQUEST_TOO_LARGE,
    MALFORMED_JSON,
    INVALID_JSONRPC,
    HEADER_MISMATCH,
    RATE_LIMITED,
    SESSION_UNKNOWN,
    UPSTREAM_UNAVAILABLE,
    UPSTREAM_TIMEOUT,
    CALL_UNKNOWN,
    TOKEN_BLOCKED,
    CLIENT_BLOCKED,
    OWNER_BLOCKED,
    SUBJECT_BLOCKED,
    ABUSE_DETECTED,
    REVOKED_BY_BLOCK,
    CLIENT_UNREGISTERED,
    CLIENT_EXPIRED,
    CLIENT_SUSPENDED,
    CLIENT_RETIRED,
    TOKEN_INACTIVE,
    INTROSPECTION_UNAVAILABLE,
];

/// The code for a provider error; the match makes a new `ErrorKind` a compile error here.
pub const fn provider(kind: ErrorKind) -> Reason {
    match kind {
        ErrorKind::Unavailable => PROVIDER_UNAVAILABLE,
        ErrorKind::RateLimited => PROVIDER_RATE_LIMITED,
        ErrorKind::Unauthorized => PROVIDER_UNAUTHORIZED,
        ErrorKind::Denied => PROVIDER_DENIED,
        ErrorKind::Invalid => PROVIDER_INVALID_REQUEST,
        ErrorKind::NotFound => PROVIDER_NOT_FOUND,
        ErrorKind::OutcomeUnknown => PROVIDER_OUTCOME_UNKNOWN,
        ErrorKind::Unsupported => PROVIDER_UNSUPPORTED,
        ErrorKind::Config => PROVIDER_CONFIG,
    }
}

/// The registered code with this name.
pub fn find(code: &str) -> Option<Reason> {
    ALL.iter().copied().find(|r| r.0 == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_every_declared_code_once() {
        let module = include_str!("reason.rs");
        let declared: Vec<&str> = module
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": Reason = Reason("))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(declared.len(), ALL.len(), "{declared:?}");
        let mut seen = std::collections::BTreeSet::new();
        for code in declared {
            assert!(find(code).is_some(), "{code} is missing from reason::ALL");
            assert!(seen.insert(code), "{code} is declared twice");
        }
    }

    #[test]
    fn the_operations_manual_lists_every_code() {
        let manual = include_str!("../../docs/operations.md");
        // In the table, not merely somewhere in the manual.
        let table: String = manual
            .lines()
            .skip_while(|l| !l.starts_with("**Reason codes.**"))
            .take_while(|l| !l.is_empty() || !l.starts_with("**"))
            .filter(|l| l.starts_with('|'))
            .collect();
        assert!(
            !table.is_empty(),
            "docs/operations.md has no reason code table"
        );
        let manual = table;
        for r in ALL {
            assert!(
                manual.contains(&format!("`{r}`")),
                "docs/operations.md does not list {r}"
            );
        }
    }

    #[test]
    fn provider_codes_are_the_providers_own() {
        for kind in ErrorKind::ALL {
            assert_eq!(provider(kind).as_str(), kind.code());
        }
    }
}
