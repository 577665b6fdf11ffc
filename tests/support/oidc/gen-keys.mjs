// Generates a private JWKS plus matching PKCS#8 PEM files for the test
// authorization server (server.mjs). TEST FIXTURES ONLY - never use these keys
// for anything real.
//
// usage: node gen-keys.mjs DIR [--suffix N]
//
// Writes into DIR (created if missing):
//   keys.json       {"keys":[...]} private JWKs, kids rs256-N, es256-N, eddsa-N
//   rs256-N.pem     RSA 2048 private key (PKCS#8), alg RS256
//   es256-N.pem     EC P-256 private key (PKCS#8), alg ES256
//   eddsa-N.pem     Ed25519 private key (PKCS#8), alg EdDSA
// N defaults to 1.
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function usage(msg) {
  if (msg) process.stderr.write(`gen-keys: ${msg}\n`);
  process.stderr.write('usage: node gen-keys.mjs DIR [--suffix N]\n');
  process.exit(2);
}

const args = process.argv.slice(2);
let dir;
let suffix = '1';
for (let i = 0; i < args.length; i += 1) {
  if (args[i] === '--suffix') {
    suffix = args[i + 1];
    i += 1;
    if (!suffix || !/^[A-Za-z0-9._-]+$/.test(suffix)) usage('--suffix needs a simple value');
  } else if (args[i].startsWith('--suffix=')) {
    suffix = args[i].slice('--suffix='.length);
    if (!/^[A-Za-z0-9._-]+$/.test(suffix)) usage('--suffix needs a simple value');
  } else if (dir === undefined) {
    dir = args[i];
  } else {
    usage(`unexpected argument ${args[i]}`);
  }
}
if (!dir) usage('missing DIR');

const specs = [
  { prefix: 'rs256', alg: 'RS256', type: 'rsa', opts: { modulusLength: 2048, publicExponent: 0x10001 } },
  { prefix: 'es256', alg: 'ES256', type: 'ec', opts: { namedCurve: 'P-256' } },
  { prefix: 'eddsa', alg: 'EdDSA', type: 'ed25519', opts: {} },
];

mkdirSync(dir, { recursive: true });
const keys = [];
for (const { prefix, alg, type, opts } of specs) {
  const kid = `${prefix}-${suffix}`;
  const { privateKey } = generateKeyPairSync(type, opts);
  const jwk = privateKey.export({ format: 'jwk' });
  keys.push({ ...jwk, kid, alg, use: 'sig' });
  writeFileSync(join(dir, `${kid}.pem`), privateKey.export({ format: 'pem', type: 'pkcs8' }));
}
writeFileSync(join(dir, 'keys.json'), `${JSON.stringify({ keys }, null, 2)}\n`);
process.stdout.write(`wrote ${keys.map((k) => k.kid).join(', ')} to ${dir}\n`);
