// @credbroker/client: the credbroker daemon's workload API over its unix socket.
//
//   const broker = new Broker();  // socket: /run/credbroker/broker.sock
//   const rows = await broker.withTask(token, { tool: 'query', grants: ['orders-db-read'] },
//     async (task) => query(task.credential('orders-db-read').secret.password));
//
// The task ends, and its credentials are revoked, when the callback resolves or throws (the
// error is rethrown). Refusals throw RefusedError subclasses carrying the daemon's reason code.
import { randomUUID } from 'node:crypto';
import grpc from '@grpc/grpc-js';
import { brokerService } from './proto.js';
import { RefusedError, fromServiceError } from './errors.js';
import { Task } from './credential.js';

export * from './errors.js';
export { Credential, Task } from './credential.js';

export const DEFAULT_SOCKET = '/run/credbroker/broker.sock';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The BeginTask request without its idempotency key (set per attempt). Throws TypeError. */
export function beginRequest(token, { tool, grants, ttlSeconds, narrow, callId } = {}) {
  // The token is never part of a message: a wrong type or emptiness is all that is said.
  if (typeof token !== 'string' || token.length === 0) {
    throw new TypeError('a token is required: the bearer token the MCP server received');
  }
  if (typeof tool !== 'string' || tool.length === 0) throw new TypeError('tool must be a non-empty string');
  if (typeof grants === 'string') {
    // A bare string would otherwise be read as a list of one-letter grants.
    throw new TypeError('grants must be an array of grant names, not a string');
  }
  if (!Array.isArray(grants) || grants.length === 0) throw new TypeError('at least one grant is needed');
  if (!grants.every((g) => typeof g === 'string' && g.length > 0)) {
    throw new TypeError('grants must be non-empty strings');
  }
  const narrowing = narrow ?? {};
  const unknown = Object.keys(narrowing).filter((g) => !grants.includes(g));
  if (unknown.length > 0) {
    throw new TypeError(`narrow names grants that are not requested: ${unknown.sort().join(', ')}`);
  }
  if (ttlSeconds !== undefined && !(Number.isInteger(ttlSeconds) && ttlSeconds > 0 && ttlSeconds < 2 ** 32)) {
    throw new TypeError('ttlSeconds must be a positive integer');
  }
  if (callId !== undefined && callId !== null && typeof callId !== 'string') {
    throw new TypeError('callId must be a string');
  }
  return {
    token,
    tool,
    grants: grants.map((name) => ({ name, narrow: narrowOf(name, narrowing[name]) })),
    ttlSeconds,
    callId: callId || undefined,
  };
}

function narrowOf(grant, params) {
  const out = {};
  for (const [param, values] of Object.entries(params ?? {})) {
    if (!Array.isArray(values) || !values.every((v) => typeof v === 'string')) {
      throw new TypeError(`narrow.${grant}.${param} must be an array of strings`);
    }
    out[param] = { values };
  }
  return out;
}

export class Broker {
  #socket;
  #retryForMs;
  #logger;
  #stub = null;

  /**
   * @param {{ socket?: string, retryForMs?: number, logger?: { warn(message: string): void } | null }} [options]
   *   `retryForMs`: how long a call that got no answer (a reset, a restarting daemon) is
   *   retried; `logger`: where the few notes this client makes go (never a secret or a token;
   *   `null` for none).
   */
  constructor({ socket = DEFAULT_SOCKET, retryForMs = 10_000, logger = defaultLogger } = {}) {
    this.#socket = socket;
    this.#retryForMs = retryForMs;
    this.#logger = logger;
  }

  get socket() {
    return this.#socket;
  }

  /** Closes the connection (a later call opens a new one). */
  close() {
    this.#stub?.close();
    this.#stub = null;
  }

  /**
   * Begins a task (BeginTask): validates the token, issues one credential per grant.
   * @returns {Promise<Task>}
   */
  async begin(token, options) {
    const request = beginRequest(token, options);
    const calls = {
      renew: (id, tok, ttlSeconds) => this.#renew(id, tok, ttlSeconds),
      end: (id) => this.#end(id),
    };
    const resp = await this.#beginTask(request);
    return new Task(calls, token, resp.task ?? {}, resp.credentials ?? []);
  }

  /**
   * Begins a task, runs `fn(task)`, and ends the task when `fn` resolves or throws (the
   * error is rethrown; a failure to end after it is logged, not thrown over it).
   */
  async withTask(token, options, fn) {
    if (typeof fn !== 'function') throw new TypeError('withTask needs a callback');
    const task = await this.begin(token, options);
    let result;
    try {
      result = await fn(task);
    } catch (e) {
      await task.end().catch((err) =>
        this.#logger?.warn(`could not end task ${task.id} after its callback threw: ${err.message}`));
      throw e;
    }
    await task.end();
    return result;
  }

  // === calls ===

  #client() {
    this.#stub ??= new (brokerService())(`unix:${this.#socket}`, grpc.credentials.createInsecure());
    return this.#stub;
  }

  #call(method, request) {
    return new Promise((resolve, reject) => {
      this.#client()[method](request, (err, resp) =>
        err ? reject(fromServiceError(err, this.#socket)) : resolve(resp));
    });
  }

  // BeginTask, safe to retry (as the Rust client's `begin_task`): every attempt carries an
  // idempotency key; an answer lost to the transport is retried with the same key for up to
  // `retryForMs`; when the daemon says the key already began a task (`begin_replayed`: it ended
  // that task, whose answer was lost) the request is made once more with a new key. So a reset
  // never leaves a live credential the caller does not know about.
  async #beginTask(request) {
    for (let fresh = 0; fresh < 2; fresh++) {
      const attempt = { ...request, idempotencyKey: randomUUID() };
      try {
        return await this.#retrying(() => this.#call('BeginTask', attempt));
      } catch (e) {
        if (!(e instanceof RefusedError) || e.reason !== 'begin_replayed') throw e;
        this.#logger?.warn(`an earlier attempt's task was ended; beginning afresh (${e.message})`);
      }
    }
    throw new RefusedError('BeginTask was replayed twice; giving up', {
      reason: 'begin_replayed',
      code: grpc.status.ABORTED,
    });
  }

  #end(taskId) {
    return this.#retrying(() => this.#call('EndTask', { taskId })).then((r) => r.task);
  }

  #renew(taskId, token, ttlSeconds) {
    if (ttlSeconds !== undefined && !(Number.isInteger(ttlSeconds) && ttlSeconds > 0)) {
      return Promise.reject(new TypeError('ttlSeconds must be a positive integer'));
    }
    // RenewTask only extends, to a limit: sending it twice is harmless, so it is retried too.
    return this.#retrying(() => this.#call('RenewTask', { taskId, token, ttlSeconds })).then((r) => r.task);
  }

  /** Runs `once` until it succeeds, fails with an answer, or transport failures outlast the window. */
  async #retrying(once) {
    const deadline = Date.now() + this.#retryForMs;
    let delay = 50;
    for (;;) {
      try {
        return await once();
      } catch (e) {
        if (!(e instanceof RefusedError) || !e.transport || Date.now() + delay >= deadline) throw e;
        // A fresh channel per attempt, as the Rust client dials anew: grpc-js would otherwise
        // wait out its own reconnect backoff (1 s and growing) before trying the socket again.
        this.close();
        await sleep(delay);
        delay = Math.min(delay * 2, 1000);
      }
    }
  }
}

const defaultLogger = { warn: (message) => console.warn(`credbroker: ${message}`) };
