// The official MCP TypeScript SDK client (@modelcontextprotocol/sdk 1.32, protocol 2025-11-25:
// initialize, then requests), given a gateway URL and an access token: lists the tools, calls
// `query`, tries `write`, and prints what happened as JSON.
//
//   node client.mjs URL TOKEN
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: 'credbroker-gateway-test', version: '1.0.0' });
const out = {};
await client.connect(transport);
out.protocol = transport.protocolVersion ?? null;
out.tools = (await client.listTools()).tools.map((t) => t.name);
out.query = (await client.callTool({ name: 'query', arguments: { sql: 'select 1' } })).content[0].text;
try {
  const r = await client.callTool({ name: 'write', arguments: { row: 'r' } });
  out.write = r.isError ? `error: ${r.content[0].text}` : r.content[0].text;
} catch (e) {
  out.write = `refused: ${e.message}`;
}
await client.close();
console.log(JSON.stringify(out));
