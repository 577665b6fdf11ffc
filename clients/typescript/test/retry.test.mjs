// BeginTask's retries against the real daemon, through a relay that fails the transport: a
// daemon that is not listening yet is waited for; an answer lost after the daemon began the
// task is retried with the same idempotency key, answered `begin_replayed` (the daemon ended
// that task), and begun afresh, so no credential is left that the caller does not know about.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Broker } from '../src/index.js';
import { Relay } from './relay.mjs';
import { env, needDaemon, GRANT, report } from './support.mjs';

const dir = () => mkdtempSync(join(tmpdir(), 'cb-relay-'));
const outstanding = () =>
  readdirSync(join(env.CB_PROVIDER_STATE, 'issued')).filter((f) => f.endsWith('.json'))
    .map((f) => f.slice(0, -5));

async function eventually(check, what, withinMs = 10_000) {
  const deadline = Date.now() + withinMs;
  while (!check()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a daemon not listening yet is waited for', needDaemon, async () => {
  const relay = new Relay(env.CREDBROKER_SOCKET, join(dir(), 'late.sock'), { listenAfterMs: 600 });
  try {
    const b = new Broker({ socket: relay.path, logger: null });
    const task = await b.begin(env.CB_TOKEN, { tool: 'query', grants: [GRANT] });
    report({ task: task.id, via: 'late' });
    await task.end();
    assert.ok(relay.connections >= 1);
    b.close();
  } finally {
    relay.close();
  }
});

test('a lost answer is replayed and leaves no credential behind', needDaemon, async () => {
  const before = new Set(outstanding());
  const relay = new Relay(env.CREDBROKER_SOCKET, join(dir(), 'lossy.sock'), { loseFirstAnswer: true });
  await relay.started;
  const notes = [];
  try {
    const b = new Broker({ socket: relay.path, logger: { warn: (m) => notes.push(m) } });
    const task = await b.begin(env.CB_TOKEN, { tool: 'query', grants: [GRANT] });
    report({ task: task.id, via: 'replayed' });
    const lease = task.credentials[0].leaseId;
    assert.equal(relay.answersLost, 1);
    assert.ok(relay.connections >= 2, `${relay.connections} connections`);
    assert.equal(notes.length, 1, 'one note: the earlier attempt was ended');
    assert.match(notes[0], /beginning afresh/);
    // Only the task the client knows about holds a live credential.
    await eventually(() => {
      const now = outstanding().filter((l) => !before.has(l));
      return now.length === 1 && now[0] === lease;
    }, "the replayed task's lease revoked");
    await task.end();
    b.close();
  } finally {
    relay.close();
  }
});
