// Hand-written declarations for src/index.js (checked by `tsc --noEmit` in the tests).

export declare const DEFAULT_SOCKET: "/run/credbroker/broker.sock";
export declare const DOMAIN: "credbroker";
export declare const TOKEN_REASONS: ReadonlySet<string>;
export declare const DENIAL_REASONS: ReadonlySet<string>;

/** Narrowing by grant name, then parameter: `{"github-issues": {repositories: ["notes"]}}`. */
export type Narrow = Record<string, Record<string, string[]>>;

export interface BeginOptions {
  /** The MCP tool about to run (recorded, and matched against a grant's `tools`). */
  tool: string;
  /** The grants wanted, by name: at least one, each at most once. */
  grants: string[];
  /** Wanted lifetime; capped by each grant's max TTL and the token's expiry. */
  ttlSeconds?: number;
  narrow?: Narrow;
  /** The `Credbroker-Call` header `credbroker gateway` added to the MCP request. */
  callId?: string;
}

export interface BrokerOptions {
  /** Default `/run/credbroker/broker.sock`. */
  socket?: string;
  /** How long a call that got no answer is retried (default 10 000 ms). */
  retryForMs?: number;
  /** Where the client's few notes go (never a secret); `null` for none. Default: console.warn. */
  logger?: { warn(message: string): void } | null;
}

/** Secret values by name; printing, JSON and String() show the names only. */
export type SecretValues = Readonly<Record<string, string>>;

export declare class Credential {
  readonly grant: string;
  readonly provider: string;
  /** Provider kind, e.g. "vault", "aws", "github". */
  readonly kind: string;
  readonly leaseId: string;
  readonly expiresAt: Date | null;
  readonly public: Readonly<Record<string, string>>;
  /** The values that must not be logged. */
  get secret(): SecretValues;
  toJSON(): object;
  toString(): string;
  private constructor();
}

export declare class Task {
  readonly id: string;
  readonly tool: string;
  /** issuing | active | ending | ended */
  readonly state: string;
  readonly expiresAt: Date | null;
  readonly endReason: string | null;
  readonly credentials: readonly Credential[];
  /** Whether `end()` has completed. */
  get ended(): boolean;
  /** The credential for `grant`; throws if the task holds none. */
  credential(grant: string): Credential;
  renew(options?: { ttlSeconds?: number; token?: string }): Promise<this>;
  /** Ends the task and revokes its credentials. Idempotent. */
  end(): Promise<this>;
  toJSON(): object;
  toString(): string;
  private constructor();
}

export declare class Broker {
  constructor(options?: BrokerOptions);
  readonly socket: string;
  begin(token: string, options: BeginOptions): Promise<Task>;
  /** Ends the task when `fn` resolves or throws (rethrown). */
  withTask<T>(token: string, options: BeginOptions, fn: (task: Task) => T | Promise<T>): Promise<T>;
  close(): void;
}

export declare function beginRequest(token: string, options: BeginOptions): object;

export declare class CredbrokerError extends Error {}

export declare class RefusedError extends CredbrokerError {
  constructor(
    message: string,
    fields?: { reason?: string | null; code?: number; metadata?: Record<string, string>; retryAfterMs?: number | null },
  );
  /** The stable reason code (e.g. "insufficient_scope"), or null when credbroker never answered. */
  readonly reason: string | null;
  /** The gRPC status code. */
  readonly code: number;
  /** Its name, e.g. "PERMISSION_DENIED". */
  readonly codeName: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly retryAfterMs: number | null;
  /** The grant the refusal is about, when there is one. */
  get grant(): string | null;
  /** Whether the call never got an answer from credbroker (outcome unknown). */
  get transport(): boolean;
}
export declare class TokenRejectedError extends RefusedError {}
export declare class DeniedError extends RefusedError {}
export declare class UnavailableError extends RefusedError {}
export declare class InsufficientScopeError extends DeniedError {
  /** The scope the token lacks, as the daemon named it. */
  get scope(): string | null;
}

export declare function classify(reason: string | null, code: number): typeof RefusedError;
