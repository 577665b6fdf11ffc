// A client for trying github-mcp (the official MCP TypeScript SDK client): calls create_issue
// once with a bearer token it is given, through `credbroker gateway`, and prints the outcome as
// one JSON line: {"result": CallToolResult} or {"refused": message}. The token is read from
// stdin, so it is in no process listing.
//
//   node client.mjs URL REPO TITLE < token
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, repo, title] = process.argv.slice(2);
const token = readFileSync(0, 'utf8').trim();
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: 'github-mcp-example-client', version: '0.1.0' });
const out = {};
try {
  await client.connect(transport);
  out.tools = (await client.listTools()).tools.map((t) => t.name);
  out.result = await client.callTool({ name: 'create_issue', arguments: { repo, title } });
} catch (e) {
  out.refused = e.message;
}
await client.close().catch(() => {});
console.log(JSON.stringify(out));
