// brokerTool through the official MCP TypeScript SDK: a real McpServer behind streamable HTTP
// (the server sets req.auth from the Authorization header, as behind `credbroker gateway`) and
// the SDK's own Client calling it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { z } from 'zod';
import { Broker } from '../src/index.js';
import { brokerTool, REFUSAL_META } from '../src/mcp.js';
import { env, needDaemon, GRANT, report } from './support.mjs';

const seen = []; // tasks the handlers ran in
let server;
let url;

function mcpServer(broker) {
  const s = new McpServer({ name: 'credbroker-client-test', version: '1.0.0' });
  s.registerTool('query', { description: 'Runs SQL', inputSchema: { sql: z.string() } },
    brokerTool(broker, { tool: 'query', grants: [GRANT] }, async (args, task, extra) => {
      seen.push(task);
      report({ task: task.id, via: 'mcp' });
      const cred = task.credential(GRANT);
      assert.ok(cred.secret.password.startsWith('tp_'));
      assert.equal(extra.authInfo.clientId, 'behind-the-gateway');
      return { content: [{ type: 'text', text: `ran ${args.sql} with lease ${cred.leaseId}` }] };
    }));
  s.registerTool('explode', { description: 'Always fails' },
    brokerTool(broker, { tool: 'explode', grants: [GRANT] }, async (args, task) => {
      assert.equal(args, undefined);
      seen.push(task);
      report({ task: task.id, via: 'mcp-throw' });
      throw new Error('the tool exploded');
    }));
  return s;
}

before(async () => {
  if (!env.CREDBROKER_SOCKET) return;
  const broker = new Broker({ socket: env.CREDBROKER_SOCKET, logger: null });
  server = http.createServer(async (req, res) => {
    // Behind `credbroker gateway` the token was checked already; the MCP server hands it on
    // to credbroker, which validates it again for the grants.
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    if (m) req.auth = { token: m[1], clientId: 'behind-the-gateway', scopes: [] };
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    const s = mcpServer(broker);
    res.on('close', () => { transport.close(); s.close(); });
    await s.connect(transport);
    await transport.handleRequest(req, res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  url = new URL(`http://127.0.0.1:${server.address().port}/mcp`);
});

after(() => server?.close());

async function call(token, name, args, headers = {}) {
  const h = { ...headers };
  if (token) h.Authorization = `Bearer ${token}`;
  const client = new Client({ name: 'credbroker-client-test', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(url, { requestInit: { headers: h } }));
  try {
    return await client.callTool({ name, arguments: args });
  } finally {
    await client.close();
  }
}

const leaks = (result) => {
  const text = JSON.stringify(result);
  return [env.CB_TOKEN, env.CB_TOKEN_NOSCOPE, ...seen.map((t) => t.credentials[0]?.secret.password)]
    .filter(Boolean).some((s) => text.includes(s));
};

test('a tool runs with its credential and the task ends when it returns', needDaemon, async () => {
  const r = await call(env.CB_TOKEN, 'query', { sql: 'select 1' });
  assert.ok(!r.isError, r.content?.[0]?.text);
  const task = seen.at(-1);
  assert.equal(r.content[0].text, `ran select 1 with lease ${task.credentials[0].leaseId}`);
  assert.ok(task.ended && task.state === 'ended');
  assert.ok(!leaks(r), 'no token or secret in the result');
});

test('a tool that throws still ends its task; the client sees the tool error', needDaemon, async () => {
  const r = await call(env.CB_TOKEN, 'explode', undefined);
  assert.equal(r.isError, true);
  assert.match(r.content[0].text, /the tool exploded/);
  assert.ok(seen.at(-1).ended, 'ended after the throw');
});

test('insufficient_scope becomes a tool error naming the reason and the missing scope', needDaemon, async () => {
  const before = seen.length;
  const r = await call(env.CB_TOKEN_NOSCOPE, 'query', { sql: 'select 1' });
  assert.equal(r.isError, true);
  assert.match(r.content[0].text, /insufficient_scope/);
  assert.match(r.content[0].text, /mcp\.tool:postgres\.read/);
  assert.deepEqual(r._meta[REFUSAL_META], {
    reason: 'insufficient_scope', code: 'PERMISSION_DENIED', grant: GRANT, scope: 'mcp.tool:postgres.read',
  });
  assert.equal(seen.length, before, 'the handler never ran');
  assert.ok(!leaks(r), 'no token or secret in the error');
  report({ refused: 'insufficient_scope', via: 'mcp' });
});

test('without a bearer token the tool answers no_token, and nothing is asked of credbroker', needDaemon, async () => {
  const r = await call(null, 'query', { sql: 'select 1' });
  assert.equal(r.isError, true);
  assert.match(r.content[0].text, /no_token/);
  assert.equal(r._meta[REFUSAL_META].reason, 'no_token');
});

test('the Credbroker-Call header is passed on as the call id (an unrecorded one is refused)', needDaemon, async () => {
  const r = await call(env.CB_TOKEN, 'query', { sql: 'select 1' }, {
    'Credbroker-Call': '0190d7f0-0000-7000-8000-000000000000',
  });
  assert.equal(r.isError, true);
  assert.equal(r._meta[REFUSAL_META].reason, 'call_unknown', r.content[0].text);
  report({ refused: 'call_unknown', via: 'mcp' });
});
