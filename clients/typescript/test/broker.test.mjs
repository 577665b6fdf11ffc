// The client against the real daemon: begin, use, end; end when the callback throws; each
// refusal's class and reason code; nothing secret when printed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  Broker, Credential, DeniedError, InsufficientScopeError, RefusedError, Task,
  TokenRejectedError, UnavailableError,
} from '../src/index.js';
import { env, needDaemon, GRANT, report, assertHidden } from './support.mjs';

const broker = () => new Broker({ socket: env.CREDBROKER_SOCKET, logger: null });
const tokens = () => [env.CB_TOKEN, env.CB_TOKEN_NOSCOPE, env.CB_TOKEN_WRONG_AUD].filter(Boolean);

test('withTask begins a task, hands over the credential, and ends it', needDaemon, async () => {
  const b = broker();
  let seen;
  const out = await b.withTask(env.CB_TOKEN, { tool: 'query', grants: [GRANT], ttlSeconds: 120 }, async (task) => {
    seen = task;
    assert.ok(task instanceof Task);
    assert.equal(task.state, 'active');
    assert.equal(task.tool, 'query');
    assert.ok(task.expiresAt instanceof Date && task.expiresAt > new Date());
    const cred = task.credential(GRANT);
    assert.ok(cred instanceof Credential);
    assert.equal(cred.grant, GRANT);
    assert.equal(cred.provider, 'pg');
    assert.equal(cred.kind, 'test');
    assert.ok(cred.leaseId.length > 0);
    assert.ok(cred.expiresAt instanceof Date);
    // The test provider's secret: present and usable by key.
    assert.match(cred.secret.password, /^tp_[0-9a-f]+$/, 'the password is readable by key');
    assert.deepEqual(Object.keys(cred.secret), ['password']);
    assert.deepEqual(task.credentials.map((c) => c.grant), [GRANT]);
    assert.throws(() => task.credential('s3-read'), /holds no credential for grant "s3-read"/);
    report({ task: task.id, via: 'withTask' });
    return 'rows';
  });
  assert.equal(out, 'rows');
  assert.ok(seen.ended);
  assert.equal(seen.state, 'ended');
  b.close();
});

test('begin, renew and end by hand; end is idempotent', needDaemon, async () => {
  const b = broker();
  const task = await b.begin(env.CB_TOKEN, { tool: 'query', grants: [GRANT], ttlSeconds: 60 });
  report({ task: task.id, via: 'begin' });
  const before = task.expiresAt;
  await task.renew({ ttlSeconds: 300 });
  assert.equal(task.state, 'active');
  assert.ok(task.expiresAt >= before, 'renew does not shorten the task');
  await task.end();
  assert.equal(task.state, 'ended');
  await task.end(); // again: nothing to do
  // The daemon knows it ended: renewing an ended task is refused with a reason code.
  await assert.rejects(task.renew(), (e) => e instanceof RefusedError && typeof e.reason === 'string');
  b.close();
});

test('the task ends when the callback throws, and the error is rethrown', needDaemon, async () => {
  const b = broker();
  let seen;
  const boom = new Error('the tool failed');
  await assert.rejects(
    b.withTask(env.CB_TOKEN, { tool: 'query', grants: [GRANT] }, async (task) => {
      seen = task;
      report({ task: task.id, via: 'throw' });
      throw boom;
    }),
    (e) => e === boom,
  );
  assert.ok(seen.ended, 'ended after the throw');
  assert.equal(seen.state, 'ended');
  b.close();
});

test('nothing secret in toString, inspect or JSON of a credential, a task or an error', needDaemon, async () => {
  const b = broker();
  await b.withTask(env.CB_TOKEN, { tool: 'query', grants: [GRANT] }, async (task) => {
    const cred = task.credential(GRANT);
    const secrets = [cred.secret.password, ...tokens()];
    assertHidden(assert, 'credential', cred, secrets);
    assertHidden(assert, 'secret values', cred.secret, secrets);
    assertHidden(assert, 'task', task, secrets);
    assertHidden(assert, 'credentials', task.credentials, secrets);
    // What is shown instead: the names, the grant, the lease.
    assert.match(JSON.stringify(cred), /"password":"\[redacted\]"/);
    assert.match(String(cred), new RegExp(`lease=${cred.leaseId}`));
    assert.match(JSON.stringify(task), new RegExp(task.id));
  });
  const err = await b.begin(env.CB_TOKEN_NOSCOPE, { tool: 'query', grants: [GRANT] }).catch((e) => e);
  assert.ok(err instanceof RefusedError);
  assertHidden(assert, 'error', err, tokens());
  assertHidden(assert, 'error stack', err.stack, tokens());
  b.close();
});

test('insufficient_scope: InsufficientScopeError naming the scope and grant', needDaemon, async () => {
  const b = broker();
  const e = await b.begin(env.CB_TOKEN_NOSCOPE, { tool: 'query', grants: [GRANT] }).catch((x) => x);
  assert.ok(e instanceof InsufficientScopeError, String(e));
  assert.ok(e instanceof DeniedError && e instanceof RefusedError);
  assert.equal(e.reason, 'insufficient_scope');
  assert.equal(e.codeName, 'PERMISSION_DENIED');
  assert.equal(e.code, 7);
  assert.equal(e.grant, GRANT);
  assert.equal(e.scope, 'mcp.tool:postgres.read');
  assert.equal(e.transport, false);
  report({ refused: e.reason });
  b.close();
});

test('token rejections: audience_mismatch and malformed', needDaemon, async () => {
  const b = broker();
  const wrong = await b.begin(env.CB_TOKEN_WRONG_AUD, { tool: 'query', grants: [GRANT] }).catch((x) => x);
  assert.ok(wrong instanceof TokenRejectedError, String(wrong));
  assert.equal(wrong.reason, 'audience_mismatch');
  assert.equal(wrong.codeName, 'UNAUTHENTICATED');
  report({ refused: wrong.reason });
  const garbage = 'garbage-token-3f9a';
  const bad = await b.begin(garbage, { tool: 'query', grants: [GRANT] }).catch((x) => x);
  assert.ok(bad instanceof TokenRejectedError, String(bad));
  assert.equal(bad.reason, 'malformed');
  assert.ok(!bad.message.includes(garbage) && !bad.stack.includes(garbage), 'the token is not in the error');
  report({ refused: bad.reason });
  b.close();
});

test('a policy denial: unknown_grant', needDaemon, async () => {
  const b = broker();
  const e = await b.begin(env.CB_TOKEN, { tool: 'query', grants: ['no-such-grant'] }).catch((x) => x);
  assert.ok(e instanceof DeniedError && !(e instanceof InsufficientScopeError), String(e));
  assert.equal(e.reason, 'unknown_grant');
  report({ refused: e.reason });
  b.close();
});

test('unavailable: a provider outage, with its reason and retry delay', needDaemon, async () => {
  const flag = join(env.CB_PROVIDER_STATE, 'fail-issue');
  writeFileSync(flag, '1');
  try {
    const b = broker();
    const e = await b.begin(env.CB_TOKEN, { tool: 'query', grants: [GRANT] }).catch((x) => x);
    assert.ok(e instanceof UnavailableError, String(e));
    assert.equal(e.reason, 'provider_unavailable');
    assert.equal(e.codeName, 'UNAVAILABLE');
    assert.equal(e.transport, false, 'the daemon answered: not a transport failure');
    assert.ok(e.retryAfterMs > 0, 'RetryInfo decoded');
    report({ refused: e.reason });
    b.close();
  } finally {
    rmSync(flag, { force: true });
  }
});

test('unavailable: no daemon at the socket, retried for retryForMs then given up', async () => {
  const b = new Broker({ socket: '/nonexistent/credbroker/broker.sock', retryForMs: 600, logger: null });
  const started = Date.now();
  const e = await b.begin('some-token-value', { tool: 'query', grants: [GRANT] }).catch((x) => x);
  const took = Date.now() - started;
  assert.ok(e instanceof UnavailableError, String(e));
  assert.equal(e.reason, null);
  assert.equal(e.transport, true);
  assert.match(e.message, /cannot reach credbroker at \/nonexistent\/credbroker\/broker\.sock/);
  assert.match(e.message, /is the daemon running/);
  assert.ok(!e.message.includes('some-token-value'));
  assert.ok(took >= 300 && took < 5000, `retried for about the window (${took} ms)`);
  b.close();
});
