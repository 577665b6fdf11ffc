// Credentials and tasks as handed to the caller. Secret values live in a private field and in an
// object whose printing, JSON form and string form name the keys only: a credential, a task or
// its secrets can be logged, inspected or serialised without leaking a value. Only reading a
// key (`credential.secret.GITHUB_TOKEN`) gives the value.
import { inspect } from 'node:util';

const REDACTED = '[redacted]';

/** A Date from a google.protobuf.Timestamp (seconds as a string or number), or null. */
export function toDate(ts) {
  if (!ts || ts.seconds === undefined || ts.seconds === null) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6));
}

/** The secret values of one credential: readable by key, redacted when printed. */
function secretValues(values) {
  const out = {};
  for (const [k, v] of Object.entries(values ?? {})) out[k] = String(v);
  const names = () => Object.fromEntries(Object.keys(out).map((k) => [k, REDACTED]));
  // Non-enumerable, so they are not mistaken for secret names by Object.keys and for…in.
  Object.defineProperties(out, {
    toJSON: { value: names },
    toString: { value: () => `[secret values: ${Object.keys(out).join(', ')}]` },
    [inspect.custom]: { value: (_depth, options, show) => show(names(), options) },
  });
  return Object.freeze(out);
}

export class Credential {
  #secret;

  /** @param {any} pb a credbroker.v1.Credential as grpc-js decodes it */
  constructor(pb) {
    this.grant = pb.grant;
    this.provider = pb.provider;
    this.kind = pb.kind;
    this.leaseId = pb.leaseId;
    this.expiresAt = toDate(pb.expiresAt);
    this.public = Object.freeze({ ...(pb.public ?? {}) });
    this.#secret = secretValues(pb.secret);
    Object.freeze(this);
  }

  /** The values that must not be logged, by name (e.g. `GITHUB_TOKEN`, `password`). */
  get secret() {
    return this.#secret;
  }

  toJSON() {
    return {
      grant: this.grant,
      provider: this.provider,
      kind: this.kind,
      leaseId: this.leaseId,
      expiresAt: this.expiresAt,
      public: this.public,
      secret: this.#secret.toJSON(),
    };
  }

  toString() {
    return `Credential(grant=${this.grant}, kind=${this.kind}, lease=${this.leaseId})`;
  }

  [inspect.custom](_depth, options, show) {
    return `Credential ${show(this.toJSON(), options)}`;
  }
}

export class Task {
  #token;
  #owner;
  #ended = false;

  /**
   * @param {{ renew: Function, end: Function }} owner the Broker's calls for this task
   * @param {string} token the token it was begun with (kept for renew, never shown)
   * @param {any} pb a credbroker.v1.Task
   * @param {any[]} credentials credbroker.v1.Credential messages
   */
  constructor(owner, token, pb, credentials) {
    this.#owner = owner;
    this.#token = token;
    this.id = pb.id;
    this.tool = pb.tool;
    this.credentials = Object.freeze(credentials.map((c) => new Credential(c)));
    this.#update(pb);
  }

  #update(pb) {
    if (!pb) return;
    this.state = pb.state;
    this.expiresAt = toDate(pb.expiresAt);
    this.endReason = pb.endReason || null;
  }

  /** The credential issued for `grant`; throws if the task holds none for it. */
  credential(grant) {
    const c = this.credentials.find((x) => x.grant === grant);
    if (!c) throw new Error(`task ${this.id} holds no credential for grant ${JSON.stringify(grant)}`);
    return c;
  }

  /** Whether `end()` has completed. */
  get ended() {
    return this.#ended;
  }

  /**
   * Extends the task and its renewable leases (RenewTask). `token` defaults to the one the
   * task was begun with; pass a refreshed token (same issuer, client, subject) when that expires.
   */
  async renew({ ttlSeconds, token } = {}) {
    this.#update(await this.#owner.renew(this.id, token ?? this.#token, ttlSeconds));
    return this;
  }

  /** Ends the task and revokes its credentials (EndTask). Idempotent. */
  async end() {
    if (this.#ended) return this;
    this.#update(await this.#owner.end(this.id));
    this.#ended = true;
    return this;
  }

  toJSON() {
    return {
      id: this.id,
      tool: this.tool,
      state: this.state,
      expiresAt: this.expiresAt,
      credentials: this.credentials.map((c) => c.toJSON()),
    };
  }

  toString() {
    return `Task(${this.id}, ${this.state}, grants=${this.credentials.map((c) => c.grant).join(',')})`;
  }

  [inspect.custom](_depth, options, show) {
    return `Task ${show(this.toJSON(), options)}`;
  }
}
