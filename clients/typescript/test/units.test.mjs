// What needs no daemon: argument checks, redaction of a credential made from a message, the
// decoding of the daemon's google.rpc.Status details, and that the shipped protos are the
// repository's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { Broker, beginRequest, fromServiceError, InsufficientScopeError, RefusedError, TokenRejectedError, UnavailableError } from '../src/index.js';
import { Credential } from '../src/credential.js';
import { assertHidden } from './support.mjs';

test('the shipped protos equal the repository proto/ (drift fails here)', () => {
  const shipped = fileURLToPath(new URL('../proto/credbroker/v1/', import.meta.url));
  const repo = fileURLToPath(new URL('../../../proto/credbroker/v1/', import.meta.url));
  const names = readdirSync(repo).filter((f) => f.endsWith('.proto')).sort();
  assert.ok(names.includes('broker.proto'));
  assert.deepEqual(readdirSync(shipped).filter((f) => f.endsWith('.proto')).sort(), names);
  for (const n of names) {
    assert.equal(readFileSync(shipped + n, 'utf8'), readFileSync(repo + n, 'utf8'),
      `clients/typescript/proto/credbroker/v1/${n} differs from proto/credbroker/v1/${n}: copy it`);
  }
});

test('bad arguments are TypeErrors that never show the token', async () => {
  const t = 'tok-should-not-show';
  const cases = [
    ['', { tool: 'q', grants: ['g'] }, /a token is required/],
    [42, { tool: 'q', grants: ['g'] }, /a token is required/],
    [t, { grants: ['g'] }, /tool must be/],
    [t, { tool: 'q', grants: 'g' }, /not a string/],
    [t, { tool: 'q', grants: [] }, /at least one grant/],
    [t, { tool: 'q', grants: ['g'], narrow: { h: { r: ['x'] } } }, /not requested: h/],
    [t, { tool: 'q', grants: ['g'], narrow: { g: { r: 'x' } } }, /narrow\.g\.r must be an array/],
    [t, { tool: 'q', grants: ['g'], ttlSeconds: -1 }, /ttlSeconds/],
  ];
  const b = new Broker({ socket: '/nonexistent.sock', logger: null });
  for (const [token, opts, re] of cases) {
    await assert.rejects(b.begin(token, opts), (e) => e instanceof TypeError && re.test(e.message) && !e.message.includes(t));
  }
  assert.deepEqual(beginRequest(t, { tool: 'q', grants: ['g'], narrow: { g: { repositories: ['notes'] } }, callId: 'c' }).grants,
    [{ name: 'g', narrow: { repositories: { values: ['notes'] } } }]);
});

test('a credential hides its secret values however it is printed', () => {
  const c = new Credential({
    leaseId: 'l1', grant: 'g', provider: 'p', kind: 'github', expiresAt: { seconds: '1900000000', nanos: 0 },
    public: { GITHUB_REPOSITORIES: 'acme/notes' }, secret: { GITHUB_TOKEN: 'ghs_abcdef0123456789' },
  });
  assertHidden(assert, 'credential', c, ['ghs_abcdef0123456789']);
  assertHidden(assert, 'secret', c.secret, ['ghs_abcdef0123456789']);
  assert.equal(c.secret.GITHUB_TOKEN, 'ghs_abcdef0123456789');
  assert.deepEqual(Object.keys(c.secret), ['GITHUB_TOKEN']);
  assert.equal(c.public.GITHUB_REPOSITORIES, 'acme/notes');
  assert.equal(c.expiresAt.toISOString(), '2030-03-17T17:46:40.000Z');
  assert.throws(() => { c.secret.GITHUB_TOKEN = 'x'; }, TypeError);
});

// A status as the daemon sends it (tonic-types): google.rpc.Status with ErrorInfo + RetryInfo.
function statusBytes(code, message, reason, domain = 'credbroker') {
  const root = new protobuf.Root();
  const dir = fileURLToPath(new URL('../proto/', import.meta.url));
  root.resolvePath = (_o, t) => (t.startsWith('google/protobuf/') ? t : dir + t);
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
  const Info = root.lookupType('google.rpc.ErrorInfo');
  const Retry = root.lookupType('google.rpc.RetryInfo');
  const Status = root.lookupType('google.rpc.Status');
  return Buffer.from(Status.encode(Status.create({
    code, message,
    details: [
      { type_url: 'type.googleapis.com/google.rpc.ErrorInfo', value: Info.encode(Info.create({ reason, domain, metadata: { grant: 'g' } })).finish() },
      { type_url: 'type.googleapis.com/google.rpc.RetryInfo', value: Retry.encode(Retry.create({ retryDelay: { seconds: 2, nanos: 500000000 } })).finish() },
    ],
  })).finish());
}

function serviceError(code, details, bytes) {
  const metadata = new grpc.Metadata();
  if (bytes) metadata.set('grpc-status-details-bin', bytes);
  return Object.assign(new Error(details), { code, details, metadata });
}

test('refusals are classified by the ErrorInfo reason of domain credbroker', () => {
  const scope = fromServiceError(serviceError(7, 'insufficient_scope: grant "g" needs scope "s.read", which the token does not hold',
    statusBytes(7, 'x', 'insufficient_scope')));
  assert.ok(scope instanceof InsufficientScopeError);
  assert.equal(scope.scope, 's.read');
  assert.equal(scope.grant, 'g');
  assert.equal(scope.retryAfterMs, 2500);
  assert.ok(fromServiceError(serviceError(16, 'm', statusBytes(16, 'm', 'bad_signature'))) instanceof TokenRejectedError);
  // Another domain's reason is not credbroker's: no reason, classified by code.
  const foreign = fromServiceError(serviceError(14, 'm', statusBytes(14, 'm', 'insufficient_scope', 'example.com')), '/s');
  assert.ok(foreign instanceof UnavailableError && foreign.reason === null && foreign.transport);
  // Garbage details are ignored, not thrown.
  const junk = fromServiceError(serviceError(9, 'm', Buffer.from([0xff, 0xff, 0xff])));
  assert.ok(junk instanceof RefusedError && junk.reason === null && junk.codeName === 'FAILED_PRECONDITION');
});
