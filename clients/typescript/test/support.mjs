// What the tests against the real daemon are given by tests/integration/clients_typescript.rs:
//   CREDBROKER_SOCKET      the daemon's broker socket
//   CB_TOKEN               agent-1's token for the postgres workload with mcp.tool:postgres.read
//   CB_TOKEN_NOSCOPE       a token for the same workload without that scope
//   CB_TOKEN_WRONG_AUD     a valid token for another workload's resource
//   CB_PROVIDER_STATE      the test provider's state directory (its fault flags live there)
//   CB_REPORT              a file each test appends what it began to, for the Rust side
// Without them (a plain `npm test`), the tests that need the daemon are skipped.
import { appendFileSync } from 'node:fs';
import { inspect } from 'node:util';

export const env = process.env;
export const daemon = Boolean(env.CREDBROKER_SOCKET && env.CB_TOKEN);
export const needDaemon = daemon ? {} : { skip: 'no daemon (run by tests/integration/clients_typescript.rs)' };
export const GRANT = 'orders-db-read';

/** Records a begun task id (or a refusal) for the Rust side to check against the daemon. */
export function report(entry) {
  if (env.CB_REPORT) appendFileSync(env.CB_REPORT, `${JSON.stringify(entry)}\n`);
}

/** Every way a value is commonly printed. */
export function printed(value) {
  return [String(value), inspect(value, { depth: 10 }), JSON.stringify(value), `${value}`,
    inspect({ nested: [value] }, { depth: 10, showHidden: true })];
}

/** Asserts no printed form holds any of `secrets`, without ever printing them. */
export function assertHidden(assert, what, value, secrets) {
  for (const form of printed(value)) {
    for (const s of secrets) {
      assert.ok(s.length > 0 && !form.includes(s), `${what}: a secret value appears when printed`);
    }
  }
}
