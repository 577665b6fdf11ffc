// Minimal OAuth 2.1 authorization server for the integration tests, built on
// oidc-provider. Issues RFC 9068 JWT access tokens (typ "at+jwt") via the
// client_credentials grant with RFC 8707 resource indicators.
//
// usage: node server.mjs CONFIG.json     (see README.md for the config format)
//
// Opt-in ("authorization_code" in the config): the authorization-code flow with PKCE S256,
// RFC 9207 iss and resource indicators, a headless login (the configured test user is logged
// in and consents by itself: GET /interaction/<uid> finishes the prompt and redirects, so a
// client that follows redirects with cookies lands on its redirect_uri with a code), public
// pre-registered clients, RFC 7591 dynamic registration (POST /reg) and Client ID Metadata
// Documents (client_id = an https URL the server fetches).
//
// Client authentication: clients are registered with client_secret_basic, but
// oidc-provider 9 treats client_secret_basic and client_secret_post as
// interchangeable, so BOTH HTTP Basic (-u id:secret) and the form fields
// client_id=...&client_secret=... work. Example token request:
//   curl -u agent-1:s3cret-agent-1 http://127.0.0.1:PORT/token \
//     -d grant_type=client_credentials \
//     --data-urlencode resource=https://mcp.example.test/postgres \
//     --data-urlencode 'scope=mcp.tool:postgres.read'
// The token's scope is requested ∩ client.scope ∩ resource.scope (silently
// filtered, never an error); sub = client_id; extra_claims are merged in
// (they cannot override the registered claims iss/sub/aud/exp/...).
//
// Test-control endpoints (loopback only, like the whole server):
//   POST /test/jwks-mode   body "ok" | "fail"  (fail => /jwks answers 503)
//   POST /test/shutdown    exits the process with status 0
//   GET  /test/log         what happened: tokens issued, registrations, logins, ...
//
// Prints exactly "READY <issuer>" on stdout once listening; errors go to stderr.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { randomBytes } from 'node:crypto';

function fail(msg) {
  process.stderr.write(`oidc test server: ${msg}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------- config
const configPath = process.argv[2];
if (!configPath) fail('usage: node server.mjs CONFIG.json');

let cfg;
try {
  cfg = JSON.parse(readFileSync(configPath, 'utf8'));
} catch (err) {
  fail(`cannot read config ${configPath}: ${err.message}`);
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const scopeList = (s) => (typeof s === 'string' ? s.split(' ').filter(Boolean) : []);

if (!isObject(cfg)) fail('config must be a JSON object');
if (typeof cfg.issuer !== 'string') fail('config.issuer must be a string');
let issuerUrl;
try {
  issuerUrl = new URL(cfg.issuer);
} catch {
  fail(`config.issuer is not a URL: ${cfg.issuer}`);
}
if (issuerUrl.protocol !== 'http:') fail('config.issuer must be an http:// URL');
if (issuerUrl.search || issuerUrl.hash || issuerUrl.pathname !== '/') {
  fail('config.issuer must be http://HOST:PORT without path, query or fragment');
}
const port = Number(issuerUrl.port || 80);

if (!isObject(cfg.keys) || !Array.isArray(cfg.keys.keys) || cfg.keys.keys.length === 0) {
  fail('config.keys must be a JWKS {"keys":[...]} with at least one private key');
}
for (const jwk of cfg.keys.keys) {
  if (!isObject(jwk) || typeof jwk.kid !== 'string' || typeof jwk.alg !== 'string') {
    fail('every key in config.keys must have a kid and an alg');
  }
  if (jwk.d === undefined) fail(`key ${jwk.kid} is not a private key (no "d")`);
}

if (!Array.isArray(cfg.clients) || cfg.clients.length === 0) fail('config.clients must be a non-empty array');
const clientScopes = new Map();
const clientExtra = new Map();
// RFC 8693 token exchange: the users a client may obtain delegated tokens for.
const clientMayActFor = new Map();
// Public clients (no client_secret): authorization code only, with these redirect_uris.
const publicClients = new Set();
for (const c of cfg.clients) {
  if (!isObject(c) || typeof c.client_id !== 'string') fail('every client needs a string client_id');
  if (c.client_secret === undefined) {
    if (!Array.isArray(c.redirect_uris) || !c.redirect_uris.length || !c.redirect_uris.every((u) => URL.canParse(u))) {
      fail(`client ${c.client_id}: a public client (no client_secret) needs redirect_uris`);
    }
    if (c.may_act_for?.length) fail(`client ${c.client_id}: a public client cannot use token exchange`);
    publicClients.add(c.client_id);
  } else if (typeof c.client_secret !== 'string') {
    fail(`client ${c.client_id}: client_secret must be a string`);
  }
  if (clientScopes.has(c.client_id)) fail(`duplicate client ${c.client_id}`);
  if (c.scope !== undefined && typeof c.scope !== 'string') fail(`client ${c.client_id}: scope must be a string`);
  if (c.extra_claims !== undefined && !isObject(c.extra_claims)) fail(`client ${c.client_id}: extra_claims must be an object`);
  clientScopes.set(c.client_id, new Set(scopeList(c.scope)));
  if (c.extra_claims) clientExtra.set(c.client_id, c.extra_claims);
  if (c.may_act_for !== undefined && !(Array.isArray(c.may_act_for) && c.may_act_for.every((u) => typeof u === 'string'))) {
    fail(`client ${c.client_id}: may_act_for must be an array of user names`);
  }
  clientMayActFor.set(c.client_id, new Set(c.may_act_for ?? []));
}

if (!isObject(cfg.resources)) fail('config.resources must be an object keyed by resource URI');
const keyAlgs = new Set(cfg.keys.keys.map((k) => k.alg));
for (const [uri, r] of Object.entries(cfg.resources)) {
  if (!URL.canParse(uri)) fail(`resource ${uri} is not an absolute URI`);
  if (!isObject(r) || typeof r.alg !== 'string') fail(`resource ${uri}: alg is required`);
  if (!keyAlgs.has(r.alg)) fail(`resource ${uri}: no key with alg ${r.alg} in config.keys`);
  if (!Number.isInteger(r.ttl) || r.ttl <= 0) fail(`resource ${uri}: ttl must be a positive integer (seconds)`);
  if (r.scope !== undefined && typeof r.scope !== 'string') fail(`resource ${uri}: scope must be a string`);
}

const metadata = cfg.metadata ?? 'both';
if (!['oidc', 'oauth', 'both'].includes(metadata)) fail('config.metadata must be "oidc", "oauth" or "both"');

// The authorization-code flow, off unless configured.
const code = cfg.authorization_code;
if (code !== undefined && !isObject(code)) fail('config.authorization_code must be an object');
const user = code?.user ?? 'alice@example.com';
if (typeof user !== 'string' || !user) fail('config.authorization_code.user must be a non-empty string');
for (const flag of ['registration', 'client_id_metadata_documents']) {
  if (code?.[flag] !== undefined && typeof code[flag] !== 'boolean') fail(`config.authorization_code.${flag} must be a boolean`);
}
if (!code && publicClients.size) fail('public clients (no client_secret) need config.authorization_code');

// ---------------------------------------------------------------- provider
// stdout carries only the READY line: send oidc-provider's console.info/log
// notices to stderr. It also warns (console.warn) on import when not on
// Node >= 22 and on first use of its in-memory adapter; both are expected
// here, so drop them.
{
  console.info = console.error;
  console.log = console.error;
  const { warn } = console;
  const quiet = ['Unsupported runtime', 'in-memory adapter is used'];
  console.warn = (...a) => {
    if (typeof a[0] === 'string' && quiet.some((q) => a[0].includes(q))) return;
    warn(...a);
  };
}
const { default: Provider, errors } = await import('oidc-provider');

// With the authorization-code flow on, the resources' scopes are resource scopes only (RFC 8707),
// not OIDC ones (scopes_supported is then just openid). Config clients' scopes are enforced in
// getResourceServerInfo either way.
const allScopes = new Set(['openid']);
if (!code) {
  for (const s of clientScopes.values()) s.forEach((x) => allScopes.add(x));
  for (const r of Object.values(cfg.resources)) scopeList(r.scope).forEach((x) => allScopes.add(x));
}

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
// The subject token names the user (a test stand-in for the user's own token at a real AS).
const TEST_USER_TOKEN = 'urn:credbroker:test:user';

// A loopback https URL (a test's own metadata document host): fetched without oidc-provider's
// SSRF guard, which refuses special-use addresses such as 127.0.0.1. Any other host keeps it.
const isLoopback = (url) => ['127.0.0.1', '[::1]', 'localhost'].includes(new URL(url).hostname);

const provider = new Provider(cfg.issuer, {
  clients: cfg.clients.map((c) => (publicClients.has(c.client_id) ? {
    client_id: c.client_id,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: c.redirect_uris,
    token_endpoint_auth_method: 'none',
    application_type: 'native',
  } : {
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post works too
    // no "scope" metadata on purpose: client scopes are enforced below by
    // intersecting in getResourceServerInfo (silent filtering, no invalid_scope)
  })),
  jwks: cfg.keys,
  // no authorization endpoint flows unless configured; grant_types_supported = client_credentials
  responseTypes: code ? ['code'] : ['none'],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', ...(code ? ['none'] : [])],
  scopes: [...allScopes],
  ...(code ? {
    pkce: { required: () => true }, // S256 only (oidc-provider supports no other method)
    issueRefreshToken: async () => false, // every authorization is a fresh one (step-up included)
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    // A registered client's `scope` (an SDK registers with the first scope it is challenged
    // for) is kept as registered_scope, not as a limit: else it could never step up.
    extraClientMetadata: {
      properties: ['registered_scope'],
      validator: (ctx, key, value, metadata) => {
        if (metadata.scope !== undefined) {
          metadata.registered_scope = metadata.scope;
          delete metadata.scope;
        }
      },
    },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    fetch: (url, options) => {
      if (isLoopback(url)) delete options.dispatcher;
      return globalThis.fetch(url, options);
    },
  } : {}),
  ttl: {
    // explicit (same as the default) so oidc-provider does not print a notice
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 10 * 60,
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || 60 * 60,
    AuthorizationCode: 60,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // RFC 7662 and RFC 7009, for opaque tokens (the only ones oidc-provider stores).
    introspection: { enabled: true },
    revocation: { enabled: true },
    registration: { enabled: Boolean(code?.registration) },
    clientIdMetadataDocument: code?.client_id_metadata_documents
      ? {
        enabled: true,
        ack: 'draft-02',
        cacheDuration: { min: 0, max: 0 },
        allowFetch: async (ctx, clientId) => {
          record({ event: 'client_id_metadata_document', client_id: clientId });
          return true;
        },
      }
      : { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        const r = cfg.resources[resourceIndicator];
        if (!r) throw new errors.InvalidTarget();
        // A config client: its scopes. A registered one (DCR, CIMD): the resource's.
        const allowed = clientScopes.get(client.clientId) ?? (code ? new Set(scopeList(r.scope)) : new Set());
        return {
          scope: scopeList(r.scope).filter((s) => allowed.has(s)).join(' '),
          audience: resourceIndicator,
          accessTokenTTL: r.ttl,
          // An opaque token is stored here, so it can be introspected and revoked.
          ...(r.format === 'opaque'
            ? { accessTokenFormat: 'opaque' }
            : { accessTokenFormat: 'jwt', jwt: { sign: { alg: r.alg } } }),
        };
      },
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
  // Added to the JWT payload before the registered claims, so a client's
  // extra_claims can never override iss/sub/aud/exp/iat/jti/client_id/scope.
  // A delegated token (token exchange) also names its actor, the agent.
  extraTokenClaims: async (ctx, token) => (token.delegated
    ? { ...(clientExtra.get(token.clientId) ?? {}), act: { sub: token.clientId } }
    : clientExtra.get(token.clientId)),
});
provider.proxy = false;

// RFC 8693 delegation: the agent (the authenticated client) exchanges a user's subject token
// for an access token with sub = the user and act = {sub: the agent}, as a real AS does when an
// agent acts on a person's behalf. Same resource/scope rules as client_credentials.
// Named ClientCredentials so the ClientCredentials ttl (and model name) apply to it.
const DelegatedToken = class ClientCredentials extends provider.ClientCredentials {
  static get IN_PAYLOAD() {
    return [...super.IN_PAYLOAD, 'accountId'];
  }
};
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { client, params } = ctx.oidc;
  if (params.subject_token_type !== TEST_USER_TOKEN || !params.subject_token) {
    throw new errors.InvalidRequest(`subject_token_type must be ${TEST_USER_TOKEN} with a subject_token`);
  }
  const user = params.subject_token;
  if (!clientMayActFor.get(client.clientId)?.has(user)) {
    throw new errors.InvalidGrant(`client may not act for ${user}`);
  }
  const resource = params.resource;
  const r = cfg.resources[resource];
  if (typeof resource !== 'string' || !r) throw new errors.InvalidTarget();
  const allowed = clientScopes.get(client.clientId) ?? new Set();
  const scope = scopeList(params.scope).filter((x) => allowed.has(x) && scopeList(r.scope).includes(x)).join(' ');
  const token = new DelegatedToken({ client, scope: scope || undefined, accountId: user });
  token.resourceServer = new provider.ResourceServer(resource, {
    scope: r.scope, audience: resource, accessTokenTTL: r.ttl, accessTokenFormat: 'jwt', jwt: { sign: { alg: r.alg } },
  });
  token.delegated = true;
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}, new Set(['scope', 'resource', 'subject_token', 'subject_token_type', 'requested_token_type', 'audience']));

// What happened, for GET /test/log: tokens issued (with their decoded claims), registrations,
// metadata documents fetched, authorizations and logins.
const log = [];
function record(entry) {
  log.push(entry);
}
const jwtClaims = (jwt) => {
  try {
    return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
  } catch {
    return undefined;
  }
};
provider.on('grant.success', (ctx) => {
  const claims = jwtClaims(ctx.body?.access_token ?? '');
  record({
    event: 'token',
    grant_type: ctx.oidc.params.grant_type,
    client_id: ctx.oidc.client?.clientId,
    sub: claims?.sub,
    aud: claims?.aud,
    scope: ctx.body?.scope ?? null,
  });
});
provider.on('registration_create.success', (ctx, client) => {
  record({ event: 'registration', client_id: client.clientId });
});
provider.on('authorization.success', (ctx) => {
  record({
    event: 'authorization',
    client_id: ctx.oidc.client?.clientId,
    scope: ctx.oidc.params.scope ?? null,
    resource: ctx.oidc.params.resource ?? null,
  });
});

// The headless login: the test user logs in and consents to what was asked (the scopes
// requested ∩ the resource's ∩ a config client's, which getResourceServerInfo already applied).
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    record({ event: 'login', user, client_id: params.client_id });
    return provider.interactionFinished(req, res, { login: { accountId: user } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name !== 'consent') throw new Error(`unexpected prompt ${prompt.name}`);
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
  if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
  if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

provider.on('server_error', (ctx, err) => {
  process.stderr.write(`oidc test server: server_error: ${err?.stack ?? err}\n`);
});

// ---------------------------------------------------------------- http
const OIDC_PATH = '/.well-known/openid-configuration';
const OAUTH_PATH = '/.well-known/oauth-authorization-server';
const JWKS_PATH = '/jwks';
let jwksMode = 'ok';
const providerCallback = provider.callback();

function send(res, status, body, type = 'text/plain') {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      data += chunk;
      if (data.length > 1024) reject(new Error('body too large'));
    });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://localhost');
    const path = url.pathname;

    if (path === '/test/jwks-mode') {
      if (req.method !== 'POST') return send(res, 405, 'method not allowed\n');
      const mode = (await readBody(req)).trim();
      if (mode !== 'ok' && mode !== 'fail') return send(res, 400, 'body must be "ok" or "fail"\n');
      jwksMode = mode;
      return send(res, 200, `jwks-mode ${mode}\n`);
    }
    if (path === '/test/shutdown') {
      if (req.method !== 'POST') return send(res, 405, 'method not allowed\n');
      res.writeHead(200, { 'content-type': 'text/plain', connection: 'close' });
      res.end('bye\n', () => {
        server.close();
        server.closeAllConnections();
        process.exit(0);
      });
      return undefined;
    }
    if (path === '/test/log') return send(res, 200, JSON.stringify(log), 'application/json');
    if (code && path.startsWith('/interaction/') && req.method === 'GET') return await interaction(req, res);
    if (path === JWKS_PATH && jwksMode === 'fail') {
      return send(res, 503, '{"error":"temporarily_unavailable"}', 'application/json');
    }
    if (path === OIDC_PATH && metadata === 'oauth') return send(res, 404, 'not found\n');
    if (path === OAUTH_PATH) {
      if (metadata === 'oidc') return send(res, 404, 'not found\n');
      // RFC 8414 document: same JSON as the OIDC discovery document.
      req.url = OIDC_PATH + url.search;
    }
    return providerCallback(req, res);
  } catch (err) {
    process.stderr.write(`oidc test server: ${err?.stack ?? err}\n`);
    if (!res.headersSent) send(res, 500, 'internal error\n');
    else res.destroy();
    return undefined;
  }
});

server.on('error', (err) => {
  process.stderr.write(`oidc test server: listen on 127.0.0.1:${port} failed: ${err.message}\n`);
  process.exit(1);
});

server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${cfg.issuer}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
