// The official MCP TypeScript SDK client (@modelcontextprotocol/sdk 1.32) doing the whole OAuth
// flow, given nothing but the MCP server's URL: the SDK's auth() does RFC 9728 discovery from
// the 401, RFC 8414 metadata, client registration and the authorization request with PKCE and
// resource indicators; this script is the application around it: an in-memory
// OAuthClientProvider whose redirectToAuthorization follows the authorization URL headlessly
// (fetch, manual redirects, a cookie jar; the test authorization server logs its user in and
// consents by itself) up to the redirect_uri, where it takes the code (nothing listens there).
// The SDK leaves the rest to the application: on UnauthorizedError it calls
// transport.finishAuth(code) and connects again or retries the call; a tool's 403
// insufficient_scope makes the transport call auth() with the challenged scope (step-up),
// which ends the same way.
//
//   node oauth_client.mjs URL MODE [--client-id ID] [--redirect-uri URI] [--tls-cert PEM --tls-key PEM]
//
// MODE: preregistered (--client-id, a public client registered beforehand), dcr (RFC 7591),
// cimd (a Client ID Metadata Document this script serves over https on 127.0.0.1). Prints the
// same JSON as tests/support/mcp/oauth_client.py.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const { values: opt, positionals: [url, mode] } = parseArgs({
  allowPositionals: true,
  options: {
    'client-id': { type: 'string' },
    'redirect-uri': { type: 'string', default: 'http://127.0.0.1/callback' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
  },
});
if (!url || !['preregistered', 'dcr', 'cimd'].includes(mode)) {
  console.error('usage: node oauth_client.mjs URL preregistered|dcr|cimd [options]');
  process.exit(2);
}
const redirectUri = opt['redirect-uri'];
const clientMetadata = {
  client_name: 'credbroker test client (TypeScript SDK)',
  redirect_uris: [redirectUri],
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'none',
};

// cimd: this client's metadata document, at https://127.0.0.1:PORT/client.json.
let metadataUrl;
let documentFetches = 0;
let documentServer;
if (mode === 'cimd') {
  documentServer = https.createServer(
    { cert: readFileSync(opt['tls-cert']), key: readFileSync(opt['tls-key']) },
    (req, res) => {
      documentFetches += 1;
      const found = req.url === '/client.json';
      res.writeHead(found ? 200 : 404, { 'content-type': 'application/json' });
      res.end(found ? JSON.stringify({ client_id: metadataUrl, ...clientMetadata, application_type: 'native' }) : '{}');
    },
  );
  await new Promise((resolve) => documentServer.listen(0, '127.0.0.1', resolve));
  metadataUrl = `https://127.0.0.1:${documentServer.address().port}/client.json`;
}

// A browser that follows redirects and keeps cookies, stopping at the redirect_uri.
const jar = new Map();
async function followToRedirectUri(start) {
  let at = start;
  for (let i = 0; i < 10; i += 1) {
    if (at.href.startsWith(redirectUri)) return at.searchParams;
    const r = await fetch(at, {
      redirect: 'manual',
      headers: { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq).trim(), pair.slice(eq + 1));
    }
    if (![302, 303, 307].includes(r.status)) {
      throw new Error(`authorization stopped at ${at}: ${r.status} ${(await r.text()).slice(0, 300)}`);
    }
    at = new URL(r.headers.get('location'), at);
  }
  throw new Error('too many redirects');
}

const record = { authorizations: [], tokens: [], clients: [] };
let pendingCode;
const provider = {
  get redirectUrl() { return redirectUri; },
  get clientMetadata() { return clientMetadata; },
  clientMetadataUrl: metadataUrl,
  _client: mode === 'preregistered' ? { client_id: opt['client-id'], token_endpoint_auth_method: 'none' } : undefined,
  _tokens: undefined,
  _verifier: undefined,
  _state: undefined,
  _discovery: undefined,
  clientInformation() { return this._client; },
  saveClientInformation(info) { this._client = info; record.clients.push(info); },
  tokens() { return this._tokens; },
  saveTokens(tokens) { this._tokens = tokens; record.tokens.push(tokens); },
  saveCodeVerifier(v) { this._verifier = v; },
  codeVerifier() { return this._verifier; },
  state() { this._state = randomBytes(16).toString('base64url'); return this._state; },
  saveDiscoveryState(s) { this._discovery = s; },
  discoveryState() { return this._discovery; },
  async redirectToAuthorization(authorizationUrl) {
    record.authorizations.push({
      scope: authorizationUrl.searchParams.get('scope'),
      resource: authorizationUrl.searchParams.get('resource'),
    });
    const params = await followToRedirectUri(authorizationUrl);
    if (params.get('state') !== this._state) throw new Error('state mismatch');
    const issuer = this._discovery?.authorizationServerMetadata?.issuer;
    if (params.get('iss') !== issuer) throw new Error(`iss ${params.get('iss')} is not ${issuer} (RFC 9207)`);
    if (!params.get('code')) throw new Error(`authorization refused: ${params}`);
    pendingCode = params.get('code');
  },
};

// Every answer of the MCP endpoint: status and challenge.
const mcpResponses = [];
const recordingFetch = async (input, init) => {
  const r = await fetch(input, init);
  if (String(input) === url) mcpResponses.push({ status: r.status, www_authenticate: r.headers.get('www-authenticate') });
  return r;
};

let transport;
// After the SDK ran into an authorization: exchange the code it got, then do `again`.
async function authorized(again) {
  try {
    return await again();
  } catch (e) {
    if (!(e instanceof UnauthorizedError) || !pendingCode) throw e;
    const code = pendingCode;
    pendingCode = undefined;
    await transport.finishAuth(code);
    return again();
  }
}

const client = await authorized(async () => {
  transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: recordingFetch });
  const c = new Client({ name: 'credbroker-gateway-oauth-test', version: '1.0.0' });
  await c.connect(transport);
  return c;
});
const out = {};
out.tools = (await client.listTools()).tools.map((t) => t.name);
out.query = (await client.callTool({ name: 'query', arguments: { sql: 'select 1' } })).content[0].text;
try {
  const r = await authorized(() => client.callTool({ name: 'write', arguments: { row: 'r' } }));
  out.write = r.isError ? `error: ${r.content[0].text}` : r.content[0].text;
} catch (e) {
  out.write = `refused: ${e.message}`;
}
out.tools_after = (await client.listTools()).tools.map((t) => t.name);
await client.close();
documentServer?.close();

const claims = (jwt) => {
  try {
    return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url'));
  } catch {
    return {};
  }
};
out.authorizations = record.authorizations;
out.tokens = record.tokens.map((t) => ({ scope: t.scope ?? null, aud: claims(t.access_token).aud ?? null }));
const clientId = provider._client?.client_id ?? null;
let how = 'unknown';
// (auth() stamps a pre-registered record with the issuer and saves it back: not a registration)
const registered = record.clients.some((c) => c.client_id_issued_at !== undefined);
if (mode === 'preregistered') how = !registered && clientId === opt['client-id'] ? 'preregistered' : 'replaced';
else if (metadataUrl && clientId === metadataUrl) how = 'cimd';
else if (registered) how = 'dcr';
out.registration = { mode: how, client_id: clientId };
out.mcp_responses = mcpResponses;
if (mode === 'cimd') out.document_fetches = documentFetches;
console.log(JSON.stringify(out));
