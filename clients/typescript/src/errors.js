// Refusals from the daemon, as errors carrying its stable reason code.
//
// Every error the daemon returns has a google.rpc.ErrorInfo detail (in the
// `grpc-status-details-bin` trailer) with domain `credbroker` and a `reason`: a stable code from
// the daemon's registry (src/record/reason.rs, documented in docs/operations.md). The class is
// chosen from that code, as the Python client does:
//   TokenRejectedError     the token itself (malformed, bad_signature, audience_mismatch, expired…)
//   InsufficientScopeError insufficient_scope: the token lacks a scope a grant needs
//   DeniedError            policy said no (unknown_grant, grant_not_allowed, call_unknown…)
//   UnavailableError       no answer from credbroker (reason null), or UNAVAILABLE from it
//   RefusedError           anything else (provider_denied, …)
// The message is the daemon's own text, which never holds a token or a secret; the token the
// caller sent is never part of an error.
import { status as Code } from '@grpc/grpc-js';
import { decodeStatusDetails } from './proto.js';

export const DOMAIN = 'credbroker';

/** Reason codes about the token itself (`token::Rejection` in the daemon). */
export const TOKEN_REASONS = new Set([
  'token_too_large', 'malformed', 'duplicate_key', 'jwe_not_supported', 'nested_jwt', 'alg_none',
  'alg_symmetric', 'alg_not_allowed', 'crit_not_supported', 'key_header_not_allowed',
  'typ_invalid', 'unknown_issuer', 'unknown_kid', 'key_alg_mismatch', 'bad_signature',
  'missing_claim', 'invalid_claim', 'audience_mismatch', 'issuer_not_accepted', 'expired',
  'not_yet_valid', 'issued_in_future', 'token_expired',
]);

/** Reason codes of a policy denial, and of a caller the daemon could not place. */
export const DENIAL_REASONS = new Set([
  'insufficient_scope', 'owner_required', 'unknown_grant', 'grant_not_allowed',
  'issuer_not_allowed', 'condition_not_met', 'tool_not_allowed', 'narrowing_not_allowed',
  'narrowing_exceeds_grant', 'template_value_rejected', 'call_unknown', 'unknown_peer',
  'ambiguous_peer', 'principal_mismatch',
]);

// gRPC codes that, without a credbroker reason, mean the call never got an answer from the
// daemon: its outcome is unknown and only an idempotent retry is safe.
const TRANSPORT_CODES = new Set([Code.UNAVAILABLE, Code.UNKNOWN, Code.INTERNAL, Code.CANCELLED]);

const CODE_NAMES = Object.fromEntries(Object.entries(Code).map(([k, v]) => [v, k]));

/** Base of every error this package throws (besides TypeError for bad arguments). */
export class CredbrokerError extends Error {}

export class RefusedError extends CredbrokerError {
  /**
   * @param {string} message the daemon's message (never a token or a secret)
   * @param {{reason?: string|null, code?: number, metadata?: Record<string,string>,
   *          retryAfterMs?: number|null}} [fields]
   */
  constructor(message, { reason = null, code = Code.UNKNOWN, metadata = {}, retryAfterMs = null } = {}) {
    super(message);
    this.name = new.target.name;
    /** The stable reason code, or null when the daemon never answered. */
    this.reason = reason;
    /** The gRPC status code (a number; see `codeName`). */
    this.code = code;
    this.codeName = CODE_NAMES[code] ?? String(code);
    /** The ErrorInfo metadata, e.g. `{grant: "orders-db-read"}`. */
    this.metadata = { ...metadata };
    /** How long the daemon asked to wait before retrying, if it did. */
    this.retryAfterMs = retryAfterMs;
  }

  /** The grant the refusal is about, when there is one. */
  get grant() {
    return this.metadata.grant ?? null;
  }

  /** Whether the call never got an answer from credbroker (outcome unknown). */
  get transport() {
    return this.reason === null && TRANSPORT_CODES.has(this.code);
  }
}

export class TokenRejectedError extends RefusedError {}
export class DeniedError extends RefusedError {}
export class UnavailableError extends RefusedError {}

export class InsufficientScopeError extends DeniedError {
  /** The scope the token lacks, as the daemon named it (null if it did not). */
  get scope() {
    const m = /needs scope "([^"]+)"|does not hold scope "([^"]+)"/.exec(this.message);
    return m ? (m[1] ?? m[2]) : null;
  }
}

/** The error class for a reason code and status code (see the table at the top). */
export function classify(reason, code) {
  if (reason === 'insufficient_scope') return InsufficientScopeError;
  if (TOKEN_REASONS.has(reason)) return TokenRejectedError;
  if (DENIAL_REASONS.has(reason)) return DeniedError;
  if (code === Code.UNAVAILABLE || (reason === null && TRANSPORT_CODES.has(code))) {
    return UnavailableError;
  }
  return RefusedError;
}

/**
 * The RefusedError for a failed grpc-js call. Only the code, the daemon's message and the
 * decoded details are kept: not the grpc-js error itself, so nothing else it holds can leak.
 * @param {import('@grpc/grpc-js').ServiceError} err
 * @param {string} [where] the socket, named in a transport failure's message
 */
export function fromServiceError(err, where) {
  const code = typeof err?.code === 'number' ? err.code : Code.UNKNOWN;
  const raw = err?.metadata?.get?.('grpc-status-details-bin')?.[0];
  const { errorInfo, retryDelayMs } = decodeStatusDetails(Buffer.isBuffer(raw) ? raw : undefined);
  const info = errorInfo?.domain === DOMAIN ? errorInfo : null;
  const reason = info ? info.reason : null;
  let message = String(err?.details || CODE_NAMES[code] || 'unknown error');
  if (reason === null && TRANSPORT_CODES.has(code) && where) {
    message = `cannot reach credbroker at ${where}: ${message}${hint(message)}`;
  }
  const Cls = classify(reason, code);
  return new Cls(message, { reason, code, metadata: info?.metadata ?? {}, retryAfterMs: retryDelayMs });
}

// What to do about a socket that cannot be reached (as the Rust client says it).
function hint(message) {
  if (message.includes('ENOENT')) return ' (is the daemon running? give its socket with `socket`)';
  if (message.includes('ECONNREFUSED')) return ' (nothing is listening: the daemon is not running)';
  if (message.includes('EACCES')) {
    return ' (the broker socket, mode 0660, is for members of server.broker_socket_group)';
  }
  return '';
}
