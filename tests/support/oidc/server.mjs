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
// Client authentication: clients are registered with client_secret_basic (unless their
// token_endpoint_auth_method says client_secret_post or private_key_jwt), but
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
// Opt-in (see README.md): private_key_jwt / client_secret_post clients, per-client grant_types,
// RFC 8693 token exchange of a real access token (`exchange: true`) for a downstream resource's
// token or for an ID-JAG (draft-ietf-oauth-identity-assertion-authz-grant, `id_jag`), with an
// optional actor token, and the RFC 7523 JWT bearer grant redeeming an ID-JAG of a trusted IdP
// (`trusted_idps`, i.e. a second instance of this server).
//
// Test-control endpoints (loopback only, like the whole server):
//   POST /test/jwks-mode        body "ok" | "fail"  (fail => /jwks answers 503)
//   POST /test/token-mode       body "ok" | "fail-500" | "fail-503" | "hang"  (POST /token)
//   POST /test/revocation-mode  same bodies, for POST /token/revocation
//   POST /test/shutdown         exits the process with status 0
//   GET  /test/log              what happened: tokens issued, registrations, logins, ...
//
// Prints exactly "READY <issuer>" on stdout once listening; errors go to stderr.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import {
  createLocalJWKSet, createRemoteJWKSet, decodeJwt, decodeProtectedHeader, errors as joseErrors,
  importJWK, jwtVerify, SignJWT,
} from 'jose';

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

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
// The subject token names the user (a test stand-in for the user's own token at a real AS).
const TEST_USER_TOKEN = 'urn:credbroker:test:user';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ID_JAG_TYPE = 'urn:ietf:params:oauth:token-type:id-jag';
const ID_JAG_TYP = 'oauth-id-jag+jwt';
const ID_JAG_TTL = 300;
const ACTOR_MAX_LIFETIME = 300;
const DEFAULT_GRANTS = ['client_credentials', TOKEN_EXCHANGE];
const CLIENT_GRANTS = ['client_credentials', TOKEN_EXCHANGE, JWT_BEARER];
const AUTH_METHODS = ['client_secret_basic', 'client_secret_post', 'private_key_jwt'];
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];
const isJwks = (v) => isObject(v) && Array.isArray(v.keys) && v.keys.length > 0
  && v.keys.every((k) => isObject(k) && typeof k.kty === 'string');
const publicJwk = (jwk) => Object.fromEntries(Object.entries(jwk).filter(([k]) => !PRIVATE_JWK_MEMBERS.includes(k)));

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
// RFC 8693 token exchange of a real access token (subject_token_type access_token).
const clientExchange = new Set();
// A confidential client's public keys: its private_key_jwt assertions and its actor tokens.
const clientJwks = new Map();
for (const c of cfg.clients) {
  if (!isObject(c) || typeof c.client_id !== 'string') fail('every client needs a string client_id');
  const method = c.token_endpoint_auth_method;
  if (c.client_secret === undefined && method !== 'private_key_jwt') {
    if (!Array.isArray(c.redirect_uris) || !c.redirect_uris.length || !c.redirect_uris.every((u) => URL.canParse(u))) {
      fail(`client ${c.client_id}: a public client (no client_secret) needs redirect_uris`);
    }
    if (c.may_act_for?.length) fail(`client ${c.client_id}: a public client cannot use token exchange`);
    for (const k of ['token_endpoint_auth_method', 'jwks', 'grant_types', 'exchange']) {
      if (c[k] !== undefined) fail(`client ${c.client_id}: a public client (no client_secret) cannot have ${k}`);
    }
    publicClients.add(c.client_id);
  } else if (method === 'private_key_jwt') {
    if (c.client_secret !== undefined) fail(`client ${c.client_id}: a private_key_jwt client has no client_secret`);
    if (c.jwks === undefined) fail(`client ${c.client_id}: a private_key_jwt client needs jwks`);
  } else if (typeof c.client_secret !== 'string') {
    fail(`client ${c.client_id}: client_secret must be a string`);
  }
  if (method !== undefined && !AUTH_METHODS.includes(method)) {
    fail(`client ${c.client_id}: token_endpoint_auth_method must be one of ${AUTH_METHODS.join(', ')}`);
  }
  if (c.jwks !== undefined) {
    if (!isJwks(c.jwks) || !c.jwks.keys.every((k) => typeof k.kid === 'string')) {
      fail(`client ${c.client_id}: jwks must be a JWKS {"keys":[...]} whose keys all have a kid`);
    }
    if (c.jwks.keys.some((k) => PRIVATE_JWK_MEMBERS.some((m) => k[m] !== undefined))) {
      fail(`client ${c.client_id}: jwks must hold public keys only`);
    }
  }
  if (c.grant_types !== undefined && !(Array.isArray(c.grant_types) && c.grant_types.length
    && c.grant_types.every((g) => CLIENT_GRANTS.includes(g)))) {
    fail(`client ${c.client_id}: grant_types must be a non-empty array of ${CLIENT_GRANTS.join(', ')}`);
  }
  if (c.exchange !== undefined && typeof c.exchange !== 'boolean') fail(`client ${c.client_id}: exchange must be a boolean`);
  if (c.exchange) clientExchange.add(c.client_id);
  if (c.jwks) clientJwks.set(c.client_id, createLocalJWKSet({ keys: c.jwks.keys.map(publicJwk) }));
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

// ID-JAG issuance: {"<resource AS issuer>": {"<client_id here>": "<client_id there>"}}.
const idJag = cfg.id_jag ?? {};
if (!isObject(idJag)) fail('config.id_jag must be an object keyed by authorization server issuer');
for (const [aud, map] of Object.entries(idJag)) {
  if (!URL.canParse(aud)) fail(`config.id_jag: ${aud} is not an issuer URL`);
  if (!isObject(map) || !Object.values(map).every((v) => typeof v === 'string' && v)) {
    fail(`config.id_jag["${aud}"] must map client ids here to client ids at that authorization server`);
  }
}
// RFC 7523 JWT bearer grant: identity providers whose ID-JAGs this server redeems.
if (cfg.trusted_idps !== undefined && !Array.isArray(cfg.trusted_idps)) fail('config.trusted_idps must be an array');
const trustedIdps = new Map();
for (const idp of cfg.trusted_idps ?? []) {
  if (!isObject(idp) || typeof idp.issuer !== 'string' || !URL.canParse(idp.issuer)
    || typeof idp.jwks_uri !== 'string' || !URL.canParse(idp.jwks_uri)) {
    fail('every config.trusted_idps entry needs an issuer and a jwks_uri (URLs)');
  }
  if (trustedIdps.has(idp.issuer)) fail(`duplicate trusted idp ${idp.issuer}`);
  // Fetched on every verification (cacheMaxAge 0): the IdP's /test/jwks-mode and key changes
  // take effect at once.
  trustedIdps.set(idp.issuer, createRemoteJWKSet(new URL(idp.jwks_uri), { cacheMaxAge: 0, cooldownDuration: 0 }));
}
const jwtBearer = cfg.trusted_idps !== undefined || cfg.clients.some((c) => c.grant_types?.includes(JWT_BEARER));
const privateKeyJwt = cfg.clients.some((c) => c.token_endpoint_auth_method === 'private_key_jwt');

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
    ...(c.token_endpoint_auth_method === 'private_key_jwt'
      ? { jwks: { keys: c.jwks.keys.map(publicJwk) } }
      : { client_secret: c.client_secret }),
    grant_types: c.grant_types ?? DEFAULT_GRANTS,
    response_types: [],
    redirect_uris: [],
    // client_secret_basic and client_secret_post are interchangeable in oidc-provider 9
    token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
    // no "scope" metadata on purpose: client scopes are enforced below by
    // intersecting in getResourceServerInfo (silent filtering, no invalid_scope)
  })),
  jwks: cfg.keys,
  // no authorization endpoint flows unless configured; grant_types_supported = client_credentials
  responseTypes: code ? ['code'] : ['none'],
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', ...(privateKeyJwt ? ['private_key_jwt'] : []), ...(code ? ['none'] : []),
  ],
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
    // Introspection: any confidential client may introspect any token (a resource server's
    // view); a public client only its own. This is oidc-provider's default policy, spelt out.
    // Revocation keeps oidc-provider's default: only the client the token was issued to
    // (another confidential client gets 400 invalid_request).
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none' || token.clientId === client.clientId,
    },
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
  // An exchanged token (access-token exchange, JWT bearer) carries the act chain it was given
  // (none: no act, even if the client's extra_claims have one). For an opaque token these are
  // stored with it and introspection returns them.
  extraTokenClaims: async (ctx, token) => {
    if (token.exchanged) {
      const { act: _ignored, ...extra } = clientExtra.get(token.clientId) ?? {};
      return { ...extra, ...(token.exchangeAct ? { act: token.exchangeAct } : {}) };
    }
    return token.delegated
      ? { ...(clientExtra.get(token.clientId) ?? {}), act: { sub: token.clientId } }
      : clientExtra.get(token.clientId);
  },
});
provider.proxy = false;

// oidc-provider answers a client that lacks the grant type with invalid_request; RFC 6749 5.2
// says unauthorized_client. Rewritten for the grants of confidential config clients only (a
// public client, or authorization_code, keeps oidc-provider's answer, as before).
const confidentialClients = new Set(cfg.clients.map((c) => c.client_id).filter((id) => !publicClients.has(id)));
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && ctx.status === 400 && ctx.body?.error === 'invalid_request'
    && ctx.body.error_description === 'requested grant type is not allowed for this client'
    && CLIENT_GRANTS.includes(ctx.oidc?.params?.grant_type)
    && confidentialClients.has(ctx.oidc?.client?.clientId)) {
    ctx.body = { error: 'unauthorized_client', error_description: 'the client is not allowed this grant type' };
  }
});

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
  if (params.subject_token_type === ACCESS_TOKEN_TYPE) return exchangeAccessToken(ctx);
  if (params.subject_token_type !== TEST_USER_TOKEN || !params.subject_token) {
    throw new errors.InvalidRequest(`subject_token_type must be ${TEST_USER_TOKEN} or ${ACCESS_TOKEN_TYPE} with a subject_token`);
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
  return undefined;
}, new Set([
  'scope', 'resource', 'subject_token', 'subject_token_type', 'requested_token_type', 'audience',
  'actor_token', 'actor_token_type',
]));

// invalid_grant with an error_description that says which check failed (oidc-provider's
// InvalidGrant always says "grant request is invalid"). Never put a token in it.
class InvalidGrantBecause extends errors.InvalidGrant {
  constructor(description) {
    super(description);
    this.error_description = description;
  }
}
const because = (what, err) => {
  if (err instanceof InvalidGrantBecause) return err;
  const reason = err instanceof joseErrors.JOSEError ? err.message : 'cannot be verified';
  return new InvalidGrantBecause(`${what}: ${reason}`);
};
const epoch = () => Math.floor(Date.now() / 1000);

// This server's own public keys (every configured key, the rotated ones too).
const ownJwks = createLocalJWKSet({ keys: cfg.keys.keys.map(publicJwk) });
const [signingJwk] = cfg.keys.keys;
const signingKey = await importJWK(signingJwk, signingJwk.alg);

// The subject of an access-token exchange: a JWT access token (RFC 9068) issued by this server,
// or an opaque one it stored. Returns its claims.
async function subjectClaims(value) {
  if (value.split('.').length === 3) {
    try {
      const { payload } = await jwtVerify(value, ownJwks, {
        issuer: cfg.issuer, typ: 'at+jwt', requiredClaims: ['exp', 'sub'],
      });
      return payload;
    } catch (err) {
      throw because('subject_token', err);
    }
  }
  const stored = (await provider.AccessToken.find(value).catch(() => undefined))
    ?? (await provider.ClientCredentials.find(value).catch(() => undefined));
  if (!stored?.isValid) throw new InvalidGrantBecause('subject_token: unknown, expired or revoked');
  return {
    sub: stored.accountId ?? stored.clientId, client_id: stored.clientId, act: stored.extra?.act, exp: stored.exp,
  };
}

// RFC 8693 actor token: a JWT the authenticated client signed (a key of its jwks, by kid) naming
// the actor (sub), for this server (aud), short-lived.
async function actorClaims(client, value) {
  const keys = clientJwks.get(client.clientId);
  if (!keys) throw new InvalidGrantBecause('actor_token: the client has no jwks to verify it with');
  let header;
  try {
    header = decodeProtectedHeader(value);
  } catch {
    throw new InvalidGrantBecause('actor_token: not a JWT');
  }
  if (typeof header.kid !== 'string') throw new InvalidGrantBecause('actor_token: no kid in the header');
  let payload;
  try {
    ({ payload } = await jwtVerify(value, keys, { requiredClaims: ['iss', 'aud', 'exp', 'iat', 'sub'] }));
  } catch (err) {
    throw because('actor_token', err);
  }
  if (payload.iss !== client.clientId) throw new InvalidGrantBecause('actor_token: iss is not the client_id');
  if (!(Array.isArray(payload.aud) ? payload.aud : [payload.aud]).includes(cfg.issuer)) {
    throw new InvalidGrantBecause('actor_token: aud is not this issuer');
  }
  if (payload.exp - payload.iat > ACTOR_MAX_LIFETIME) {
    throw new InvalidGrantBecause(`actor_token: lifetime (exp - iat) exceeds ${ACTOR_MAX_LIFETIME} s`);
  }
  if (typeof payload.sub !== 'string' || !payload.sub) throw new InvalidGrantBecause('actor_token: sub must be a string');
  return payload;
}

// RFC 8693 4.1: the new token's act chain. The subject's own act, or the client it was issued to
// when that is not its subject (a delegated token), is the prior actor; the actor token's sub,
// if any, acts now.
function actChain(subject, actor) {
  let prior;
  if (isObject(subject.act)) prior = subject.act;
  else if (typeof subject.client_id === 'string' && subject.client_id !== subject.sub) prior = { sub: subject.client_id };
  if (!actor) return prior;
  return { sub: actor.sub, ...(prior ? { act: prior } : {}) };
}

// An access token for one of config.resources, with sub and act given (exchange, JWT bearer).
// An AccessToken (no grant, no session), not a ClientCredentials one: oidc-provider stores and
// loads its accountId, so introspection of an opaque one has sub. TTL: the resource's.
async function issueFor(ctx, { resource, scope, sub, act, gty }) {
  const r = cfg.resources[resource];
  const token = new provider.AccessToken({
    client: ctx.oidc.client, scope: scope || undefined, accountId: sub, gty,
  });
  token.resourceServer = new provider.ResourceServer(resource, {
    scope: r.scope,
    audience: resource,
    accessTokenTTL: r.ttl,
    ...(r.format === 'opaque'
      ? { accessTokenFormat: 'opaque' }
      : { accessTokenFormat: 'jwt', jwt: { sign: { alg: r.alg } } }),
  });
  token.exchanged = true;
  token.exchangeAct = act;
  return { value: await token.save(), token };
}

// scope = requested (or, none requested, all the resource's) ∩ the resource's ∩ the client's.
function grantedScope(clientId, resource, requested) {
  const r = cfg.resources[resource];
  const allowed = clientScopes.get(clientId) ?? new Set();
  const resourceScopes = scopeList(r.scope);
  const wanted = requested === undefined ? resourceScopes : scopeList(requested);
  return wanted.filter((x) => allowed.has(x) && resourceScopes.includes(x)).join(' ');
}

// RFC 8693 token exchange of a real access token: for a downstream resource's access token, or
// (requested_token_type id-jag) for an Identity Assertion JWT Authorization Grant.
async function exchangeAccessToken(ctx) {
  const { client, params } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('subject_token is required');
  if ((params.actor_token === undefined) !== (params.actor_token_type === undefined)) {
    throw new errors.InvalidRequest('actor_token and actor_token_type must be given together');
  }
  if (params.actor_token_type !== undefined && params.actor_token_type !== JWT_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`actor_token_type must be ${JWT_TOKEN_TYPE}`);
  }
  const requested = params.requested_token_type ?? ACCESS_TOKEN_TYPE;
  if (requested !== ACCESS_TOKEN_TYPE && requested !== ID_JAG_TYPE) {
    throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE} or ${ID_JAG_TYPE}`);
  }
  if (!clientExchange.has(client.clientId)) throw new InvalidGrantBecause('client may not exchange access tokens');

  let resource;
  let remoteClientId;
  if (requested === ACCESS_TOKEN_TYPE) {
    if (params.resource !== undefined && params.audience !== undefined && params.resource !== params.audience) {
      throw new errors.InvalidTarget('resource and audience must name the same resource');
    }
    resource = params.resource ?? params.audience;
    if (!resource) throw new errors.InvalidTarget('resource or audience is required');
    if (!Object.hasOwn(cfg.resources, resource)) throw new errors.InvalidTarget('unknown resource');
  } else {
    if (!params.audience) throw new errors.InvalidRequest('audience (the resource authorization server) is required for an ID-JAG');
    const map = Object.hasOwn(idJag, params.audience) ? idJag[params.audience] : undefined;
    if (!map) throw new errors.InvalidTarget('audience is not a known authorization server');
    remoteClientId = Object.hasOwn(map, client.clientId) ? map[client.clientId] : undefined;
    if (!remoteClientId) throw new InvalidGrantBecause('client has no client_id at that authorization server');
  }

  const subject = await subjectClaims(params.subject_token);
  const actor = params.actor_token === undefined ? undefined : await actorClaims(client, params.actor_token);
  const act = actChain(subject, actor);
  ctx.tokenLog = {
    sub: subject.sub,
    aud: requested === ACCESS_TOKEN_TYPE ? resource : params.audience,
    act: act ?? null,
    actor: Boolean(actor),
    requested_token_type: params.requested_token_type ?? null,
    resource: params.resource ?? null,
    audience: params.audience ?? null,
  };

  if (requested === ACCESS_TOKEN_TYPE) {
    const scope = grantedScope(client.clientId, resource, params.scope);
    const { value, token } = await issueFor(ctx, {
      resource, scope, sub: subject.sub, act, gty: 'token_exchange',
    });
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
    return;
  }

  // The ID-JAG: scope and resource as requested (the resource's authorization server filters).
  const scope = scopeList(params.scope).join(' ');
  const iat = epoch();
  const jag = await new SignJWT({
    sub: subject.sub,
    client_id: remoteClientId,
    ...(params.resource !== undefined ? { resource: params.resource } : {}),
    ...(scope ? { scope } : {}),
    ...(act ? { act } : {}),
  })
    .setProtectedHeader({ alg: signingJwk.alg, kid: signingJwk.kid, typ: ID_JAG_TYP })
    .setIssuer(cfg.issuer)
    .setAudience(params.audience)
    .setJti(randomBytes(16).toString('base64url'))
    .setIssuedAt(iat)
    .setExpirationTime(iat + ID_JAG_TTL)
    .sign(signingKey);
  ctx.body = {
    access_token: jag,
    issued_token_type: ID_JAG_TYPE,
    token_type: 'N_A',
    expires_in: ID_JAG_TTL,
    ...(scope ? { scope } : {}),
  };
}

// RFC 7523 JWT bearer grant redeeming an ID-JAG from a trusted IdP: an access token for the
// JAG's resource, for the JAG's sub, acting as its act says. Each JAG (iss + jti) is redeemed once.
const redeemed = new Map(); // "iss jti" -> exp
if (jwtBearer) {
  provider.registerGrantType(JWT_BEARER, async (ctx) => {
    const { client, params } = ctx.oidc;
    if (!params.assertion) throw new errors.InvalidRequest('assertion is required');
    let unverified;
    try {
      unverified = decodeJwt(params.assertion);
    } catch {
      throw new InvalidGrantBecause('assertion: not a JWT');
    }
    const jwks = typeof unverified.iss === 'string' ? trustedIdps.get(unverified.iss) : undefined;
    if (!jwks) throw new InvalidGrantBecause('assertion: iss is not a trusted identity provider');
    let jag;
    try {
      ({ payload: jag } = await jwtVerify(params.assertion, jwks, {
        issuer: unverified.iss, audience: cfg.issuer, typ: ID_JAG_TYP, requiredClaims: ['exp', 'sub', 'jti', 'client_id'],
      }));
    } catch (err) {
      throw because('assertion', err);
    }
    if (jag.client_id !== client.clientId) throw new InvalidGrantBecause('assertion: client_id is not the authenticated client');
    const now = epoch();
    for (const [k, exp] of redeemed) if (exp < now) redeemed.delete(k);
    const key = `${jag.iss} ${jag.jti}`;
    if (redeemed.has(key)) throw new InvalidGrantBecause('assertion: already used (jti replay)');

    if (params.resource !== undefined && jag.resource !== undefined && params.resource !== jag.resource) {
      throw new errors.InvalidTarget('resource differs from the assertion\'s');
    }
    const resource = jag.resource ?? params.resource;
    if (typeof resource !== 'string' || !resource) throw new errors.InvalidTarget('the assertion names no resource');
    if (!Object.hasOwn(cfg.resources, resource)) throw new errors.InvalidTarget('unknown resource');
    redeemed.set(key, jag.exp);

    // scope = the JAG's (∩ the request's, if any) ∩ the resource's ∩ the client's
    // (a JAG without scope: the resource's ∩ the client's)
    let scope = grantedScope(client.clientId, resource, jag.scope);
    if (params.scope !== undefined) scope = scopeList(scope).filter((x) => scopeList(params.scope).includes(x)).join(' ');
    const act = isObject(jag.act) ? jag.act : undefined;
    ctx.tokenLog = {
      sub: jag.sub,
      aud: resource,
      act: act ?? null,
      actor: false,
      requested_token_type: null,
      resource,
      audience: null,
      idp: jag.iss,
    };
    const { value, token } = await issueFor(ctx, {
      resource, scope, sub: jag.sub, act, gty: 'jwt_bearer',
    });
    ctx.body = {
      access_token: value,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
  }, new Set(['assertion', 'scope', 'resource']));
}

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
// The new grants (access-token exchange, ID-JAG, JWT bearer) also record the issued token's act
// (null: none), whether an actor token was presented, requested_token_type, resource and
// audience; sub/aud come from the handler, so an opaque token's are there too.
provider.on('grant.success', (ctx) => {
  const claims = jwtClaims(ctx.body?.access_token ?? '');
  const extra = ctx.tokenLog;
  record({
    event: 'token',
    grant_type: ctx.oidc.params.grant_type,
    client_id: ctx.oidc.client?.clientId,
    sub: claims?.sub ?? extra?.sub,
    aud: claims?.aud ?? extra?.aud,
    scope: ctx.body?.scope ?? null,
    ...(extra ? {
      act: extra.act,
      actor: extra.actor,
      requested_token_type: extra.requested_token_type,
      resource: extra.resource,
      audience: extra.audience,
      ...(extra.idp ? { idp: extra.idp } : {}),
    } : {}),
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
// Failure switches for POST /token and POST /token/revocation.
const FAIL_MODES = ['ok', 'fail-500', 'fail-503', 'hang'];
const failModes = { '/token': 'ok', '/token/revocation': 'ok' };
const modeSwitches = { '/test/token-mode': '/token', '/test/revocation-mode': '/token/revocation' };
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
    if (Object.hasOwn(modeSwitches, path)) {
      if (req.method !== 'POST') return send(res, 405, 'method not allowed\n');
      const mode = (await readBody(req)).trim();
      if (!FAIL_MODES.includes(mode)) return send(res, 400, `body must be one of ${FAIL_MODES.join(', ')}\n`);
      failModes[modeSwitches[path]] = mode;
      return send(res, 200, `${path.slice('/test/'.length)} ${mode}\n`);
    }
    if (req.method === 'POST' && Object.hasOwn(failModes, path) && failModes[path] !== 'ok') {
      switch (failModes[path]) {
        case 'fail-500':
          return send(res, 500, '{"error":"server_error"}', 'application/json');
        case 'fail-503':
          return send(res, 503, '{"error":"temporarily_unavailable"}', 'application/json');
        default: // hang: read the request, never answer (until the client gives up or shutdown)
          req.resume();
          return undefined;
      }
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
