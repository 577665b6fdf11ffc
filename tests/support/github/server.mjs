// A local stand-in for GitHub's REST API, for the endpoints a GitHub App uses to mint and revoke
// installation tokens. It is strict where GitHub is strict, so credbroker's tests fail when
// credbroker sends something GitHub would refuse:
//   - App JWTs are verified (RS256 with the App's public key; iss = the App id; iat/exp present,
//     exp in the future and at most 10 minutes after iat), with GitHub's 401 messages.
//   - Request bodies are validated against the request schema in GitHub's own OpenAPI
//     description (npm @octokit/openapi, api.github.com.json) with ajv; responses are built
//     from that description's examples and validated against its response schemas before they
//     are sent.
//   - Asking for a repository the installation cannot see, or a permission it was not granted,
//     is 422 as on GitHub; an unknown installation is 404; a revoked or expired token is 401.
//   - POST /repos/{owner}/{repo}/issues with an installation token (what an MCP server does with
//     the credential): 404 for a repository outside the token's selection, 403 without
//     issues:write, as GitHub answers; the log entry names the token's fingerprint, never it.
//
// usage: node server.mjs CONFIG.json
//   CONFIG = { "app_id": 4242, "private_key_out": "/path/app.pem",
//              "installations": [{ "id": 77, "account": "acme",
//                                  "repositories": ["notes", "docs"],
//                                  "permissions": { "issues": "write", "contents": "read" },
//                                  "overgrant": { "contents": "write" } }] }   // optional
// The App's key pair is generated here (as GitHub generates it) and the private key written to
// private_key_out (PKCS#1 PEM, mode 0600), as an operator downloads it from GitHub.
//
// Test-control endpoints under /_fake/ (never authenticated):
//   GET  /_fake/log              every request received: method, path, body, jwt verdict
//   POST /_fake/ratelimit        {"path": "/app/installations/77/access_tokens", "times": 1,
//                                 "status": 429, "retry_after": 1, "kind": "secondary"}
//   POST /_fake/expire           {"token_prefix": "ghs_…"} or {} for all: tokens expire now
//   GET  /_fake/tokens           issued tokens (fingerprints, state), never the tokens
// Prints "READY <port>" on stdout once listening.
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { createHash, generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import Ajv from 'ajv';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const api = JSON.parse(
  readFileSync(new URL('./node_modules/@octokit/openapi/generated/api.github.com.json', import.meta.url)),
);

// ---------------------------------------------------------------- schemas
// OpenAPI 3.0 schemas are JSON Schema plus a few keywords ajv does not know (nullable,
// example…): non-strict mode ignores those. Every component schema is registered so $refs
// resolve against GitHub's description as written.
// OpenAPI 3.0's `nullable: true` becomes JSON Schema's "or null"; string formats (uri,
// date-time…) are annotations here, as GitHub's own examples do not all satisfy them.
function openapiToJsonSchema(node) {
  if (Array.isArray(node)) return node.map(openapiToJsonSchema);
  if (node === null || typeof node !== 'object') return node;
  const out = {};
  for (const [k, v] of Object.entries(node)) out[k] = openapiToJsonSchema(v);
  if (out.nullable === true) {
    delete out.nullable;
    if (typeof out.type === 'string') {
      out.type = [out.type, 'null'];
      if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null];
    } else {
      return { anyOf: [out, { type: 'null' }] };
    }
  } else {
    delete out.nullable;
  }
  return out;
}
const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false, logger: false });
ajv.addSchema({ $id: 'gh', components: { schemas: openapiToJsonSchema(api.components.schemas) } });
const compile = (schema) =>
  ajv.compile(openapiToJsonSchema(JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', '"gh#/components/'))));
const op = (path, method) => api.paths[path][method];
const TOKEN_OP = op('/app/installations/{installation_id}/access_tokens', 'post');
const validateTokenRequest = compile(TOKEN_OP.requestBody.content['application/json'].schema);
const validateTokenResponse = compile(TOKEN_OP.responses['201'].content['application/json'].schema);
const validateInstallation = compile(
  op('/repos/{owner}/{repo}/installation', 'get').responses['200'].content['application/json'].schema,
);
const validateApp = compile(op('/app', 'get').responses['200'].content['application/json'].schema);
const ISSUE_OP = op('/repos/{owner}/{repo}/issues', 'post');
const validateIssueRequest = compile(ISSUE_OP.requestBody.content['application/json'].schema);
const validateIssueResponse = compile(ISSUE_OP.responses['201'].content['application/json'].schema);
const examples = api.components.examples;
const KNOWN_PERMISSIONS = api.components.schemas['app-permissions'].properties;

// ---------------------------------------------------------------- the App
const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
writeFileSync(cfg.private_key_out, privateKey.export({ type: 'pkcs1', format: 'pem' }), { mode: 0o600 });
const appKey = publicKey;

const log = [];
const tokens = new Map(); // token -> { installation, expires, revoked, permissions, repositories }
const rateLimits = []; // { path, times, status, retry_after, kind }
let issues = 0;
let quota = { limit: 5000, remaining: 5000, reset: Math.floor(Date.now() / 1000) + 3600 };

const now = () => Math.floor(Date.now() / 1000);
const iso = (secs) => new Date(secs * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
const fingerprint = (t) => createHash('sha256').update(t).digest('hex').slice(0, 16);
const DOCS = 'https://docs.github.com/rest';

function send(res, status, body, headers = {}) {
  quota.remaining = Math.max(0, quota.remaining - 1);
  const h = {
    'content-type': 'application/json; charset=utf-8',
    'x-github-api-version-selected': '2022-11-28',
    'x-ratelimit-limit': String(quota.limit),
    'x-ratelimit-remaining': String(quota.remaining),
    'x-ratelimit-reset': String(quota.reset),
    'x-ratelimit-used': String(quota.limit - quota.remaining),
    'x-ratelimit-resource': 'core',
    ...headers,
  };
  res.writeHead(status, h);
  res.end(body === undefined ? '' : JSON.stringify(body));
}

const error = (res, status, message, headers) =>
  send(res, status, { message, documentation_url: DOCS, status: String(status) }, headers);

// GitHub's checks on an App JWT, with its messages.
function checkJwt(req) {
  const auth = req.headers.authorization || '';
  const m = /^Bearer (.+)$/.exec(auth);
  if (!m) return 'A JSON web token could not be decoded';
  const parts = m[1].split('.');
  if (parts.length !== 3) return 'A JSON web token could not be decoded';
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    return 'A JSON web token could not be decoded';
  }
  if (header.alg !== 'RS256') return 'A JSON web token could not be decoded';
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  if (!verify('RSA-SHA256', signed, appKey, Buffer.from(parts[2], 'base64url'))) {
    return 'A JSON web token could not be decoded';
  }
  if (String(claims.iss) !== String(cfg.app_id)) return "'Issuer' claim ('iss') must be an Integer";
  if (!Number.isInteger(claims.iat) || claims.iat > now() + 60) {
    return "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
  }
  if (!Number.isInteger(claims.exp)) return "'Expiration time' claim ('exp') must be a numeric value";
  if (claims.exp <= now()) return "'Expiration time' claim ('exp') is too far in the past";
  if (claims.exp - claims.iat > 600 || claims.exp > now() + 600 + 60) {
    return "'Expiration time' claim ('exp') is too far in the future";
  }
  return null;
}

function repositoryObject(account, name, id) {
  const base = examples['installation-token'].value.repositories[0];
  return {
    ...base,
    id,
    node_id: Buffer.from(`010:Repository${id}`).toString('base64'),
    name,
    full_name: `${account}/${name}`,
    owner: { ...base.owner, login: account },
  };
}

function installationObject(inst) {
  const base = examples['installation'].value;
  return {
    ...base,
    id: inst.id,
    account: { ...base.account, login: inst.account },
    repository_selection: 'selected',
    permissions: inst.permissions,
  };
}

const LEVEL = { read: 1, write: 2, admin: 3 };

function issueToken(inst, body, res) {
  const asked = body.repositories ?? inst.repositories;
  const missing = asked.filter((r) => !inst.repositories.includes(r));
  if (missing.length > 0) {
    return error(res, 422, 'There is at least one repository that does not exist or is not accessible to the parent installation.');
  }
  const permissions = body.permissions ?? inst.permissions;
  for (const [name, level] of Object.entries(permissions)) {
    if (!(name in KNOWN_PERMISSIONS) || !((LEVEL[level] ?? 99) <= (LEVEL[inst.permissions[name]] ?? 0))) {
      return error(res, 422, 'The permissions requested are not granted to this installation.');
    }
  }
  const token = `ghs_${randomBytes(18).toString('hex')}`;
  const expires = now() + 3600;
  // GitHub adds metadata:read to every installation token.
  // `overgrant` (test configuration) makes this installation misbehave by granting more.
  const granted = { ...permissions, metadata: 'read', ...(inst.overgrant ?? {}) };
  tokens.set(token, { installation: inst.id, expires, revoked: false, permissions: granted, repositories: asked });
  const response = {
    token,
    expires_at: iso(expires),
    permissions: granted,
    repository_selection: 'selected',
    repositories: asked.map((name) => repositoryObject(inst.account, name, 1000 + inst.repositories.indexOf(name))),
  };
  if (!validateTokenResponse(response)) {
    return error(res, 500, `fake: response does not match GitHub's schema: ${ajv.errorsText(validateTokenResponse.errors)}`);
  }
  send(res, 201, response);
}

function limited(path, res) {
  const rule = rateLimits.find((r) => path.startsWith(r.path) && r.times > 0);
  if (!rule) return false;
  rule.times -= 1;
  if (rule.kind === 'primary') {
    quota.remaining = 1; // send() takes it to 0
    quota.reset = now() + (rule.retry_after ?? 1);
    error(res, rule.status ?? 403, `API rate limit exceeded for installation ID ${cfg.app_id}.`);
  } else {
    error(
      res,
      rule.status ?? 429,
      'You have exceeded a secondary rate limit. Please wait a few minutes before you try again.',
      rule.retry_after === undefined ? {} : { 'retry-after': String(rule.retry_after) },
    );
  }
  return true;
}

async function body(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname;
  const text = await body(req);
  if (path.startsWith('/_fake/')) return control(req, res, path, text);
  const entry = { method: req.method, path, body: text ? safeJson(text) : null, jwt: null, at_ms: Date.now() };
  log.push(entry);
  if (req.headers['user-agent'] === undefined) {
    // GitHub refuses requests without a User-Agent.
    return error(res, 403, 'Request forbidden by administrative rules. Please make sure your request has a User-Agent header.');
  }
  if (limited(path, res)) return;

  // DELETE /installation/token: authenticated by the installation token itself.
  if (req.method === 'DELETE' && path === '/installation/token') {
    const m = /^(?:token|Bearer) (.+)$/.exec(req.headers.authorization || '');
    const t = m && tokens.get(m[1]);
    if (!t || t.revoked || t.expires <= now()) return error(res, 401, 'Bad credentials');
    t.revoked = true;
    entry.revoked = fingerprint(m[1]);
    return send(res, 204);
  }

  // GET /installation/repositories: what an installation token can reach (the token's own
  // check of whether GitHub still honours it).
  if (req.method === 'GET' && path === '/installation/repositories') {
    const m = /^(?:token|Bearer) (.+)$/.exec(req.headers.authorization || '');
    const t = m && tokens.get(m[1]);
    if (!t || t.revoked || t.expires <= now()) return error(res, 401, 'Bad credentials');
    const inst = cfg.installations.find((i) => i.id === t.installation);
    const repositories = t.repositories.map((name) =>
      repositoryObject(inst.account, name, 1000 + inst.repositories.indexOf(name)));
    return send(res, 200, { total_count: repositories.length, repositories });
  }

  // POST /repos/{owner}/{repo}/issues: authenticated by an installation token.
  let im;
  if (req.method === 'POST' && (im = /^\/repos\/([^/]+)\/([^/]+)\/issues$/.exec(path))) {
    const m = /^(?:token|Bearer) (.+)$/.exec(req.headers.authorization || '');
    const t = m && tokens.get(m[1]);
    if (!t || t.revoked || t.expires <= now()) return error(res, 401, 'Bad credentials');
    entry.token = fingerprint(m[1]);
    const inst = cfg.installations.find((i) => i.id === t.installation);
    if (inst.account !== im[1] || !t.repositories.includes(im[2])) return error(res, 404, 'Not Found');
    if (!((LEVEL[t.permissions.issues] ?? 0) >= LEVEL.write)) {
      return error(res, 403, 'Resource not accessible by integration');
    }
    const parsed = text ? safeJson(text) : undefined;
    if (parsed === undefined || !validateIssueRequest(parsed)) {
      return error(res, 422, 'Validation Failed');
    }
    issues += 1;
    const base = examples['issue'].value;
    const repoUrl = `https://api.github.com/repos/${im[1]}/${im[2]}`;
    const issue = {
      ...base,
      id: 5000 + issues,
      number: issues,
      title: String(parsed.title),
      body: parsed.body ?? null,
      url: `${repoUrl}/issues/${issues}`,
      repository_url: repoUrl,
      html_url: `https://github.com/${im[1]}/${im[2]}/issues/${issues}`,
      labels: [],
      assignee: null,
      assignees: [],
      milestone: null,
      created_at: iso(now()),
      updated_at: iso(now()),
    };
    if (!validateIssueResponse(issue)) return error(res, 500, `fake: ${ajv.errorsText(validateIssueResponse.errors)}`);
    entry.issue = issue.number;
    return send(res, 201, issue);
  }

  const jwtError = checkJwt(req);
  entry.jwt = jwtError ?? 'ok';
  if (jwtError) return error(res, 401, jwtError);

  let m;
  if (req.method === 'GET' && path === '/app') {
    const app = { ...examples['integration'].value, id: cfg.app_id, slug: 'credbroker-test', name: 'credbroker-test' };
    if (!validateApp(app)) return error(res, 500, `fake: ${ajv.errorsText(validateApp.errors)}`);
    return send(res, 200, app);
  }
  if (req.method === 'GET' && (m = /^\/(?:repos\/([^/]+)\/([^/]+)|orgs\/([^/]+)|users\/([^/]+))\/installation$/.exec(path))) {
    const account = m[1] ?? m[3] ?? m[4];
    const inst = cfg.installations.find((i) => i.account === account && (!m[2] || i.repositories.includes(m[2])));
    if (!inst) return error(res, 404, 'Not Found');
    const obj = installationObject(inst);
    if (!validateInstallation(obj)) return error(res, 500, `fake: ${ajv.errorsText(validateInstallation.errors)}`);
    return send(res, 200, obj);
  }
  if (req.method === 'GET' && (m = /^\/app\/installations\/(\d+)$/.exec(path))) {
    const inst = cfg.installations.find((i) => i.id === Number(m[1]));
    if (!inst) return error(res, 404, 'Not Found');
    return send(res, 200, installationObject(inst));
  }
  if (req.method === 'POST' && (m = /^\/app\/installations\/(\d+)\/access_tokens$/.exec(path))) {
    const inst = cfg.installations.find((i) => i.id === Number(m[1]));
    if (!inst) return error(res, 404, 'Not Found');
    const parsed = text ? safeJson(text) : {};
    if (parsed === undefined || typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      return error(res, 400, 'Problems parsing JSON');
    }
    if (!validateTokenRequest(parsed)) {
      entry.invalid = ajv.errorsText(validateTokenRequest.errors);
      return error(res, 422, `Invalid request.\n\n${entry.invalid}`);
    }
    return issueToken(inst, parsed, res);
  }
  error(res, 404, 'Not Found');
});

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function control(req, res, path, text) {
  const reply = (status, value) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(value));
  };
  if (path === '/_fake/log') return reply(200, log);
  if (path === '/_fake/tokens') {
    return reply(200, [...tokens].map(([t, v]) => ({ fingerprint: fingerprint(t), ...v })));
  }
  if (path === '/_fake/ratelimit' && req.method === 'POST') {
    rateLimits.push(JSON.parse(text));
    return reply(200, {});
  }
  if (path === '/_fake/expire' && req.method === 'POST') {
    const { token_prefix } = JSON.parse(text || '{}');
    for (const [t, v] of tokens) if (!token_prefix || t.startsWith(token_prefix)) v.expires = now() - 1;
    return reply(200, {});
  }
  reply(404, {});
}

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`READY ${server.address().port}\n`);
});
