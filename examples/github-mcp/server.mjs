// github-mcp: an MCP server (official TypeScript SDK, stateless Streamable HTTP) with one tool,
// `create_issue`, that holds no GitHub secret. Each call gets a GitHub App installation token
// from credbroker narrowed to the one repository the issue is for; the token is revoked at
// GitHub when the call returns or throws.
//
// Environment:
//   CREDBROKER_SOCKET    the broker socket (default /run/credbroker/broker.sock)
//   GITHUB_MCP_LISTEN    host:port to serve MCP on, at /mcp (default 127.0.0.1:8000)
//   GITHUB_API_URL       GitHub's REST API (default https://api.github.com)
//   GITHUB_MCP_GRANT     the credbroker grant to use (default github-issues)
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import { Broker } from '@credbroker/client';
import { brokerTool } from '@credbroker/client/mcp';

const env = process.env;
const broker = new Broker({ socket: env.CREDBROKER_SOCKET || undefined });
const api = (env.GITHUB_API_URL || 'https://api.github.com').replace(/\/$/, '');
const grant = env.GITHUB_MCP_GRANT || 'github-issues';
const [host, port] = (env.GITHUB_MCP_LISTEN || '127.0.0.1:8000').split(/:(?=\d+$)/);

const input = {
  repo: z.string().regex(/^[A-Za-z0-9._-]+$/).describe('The repository (its name, without the owner)'),
  title: z.string().min(1).describe('The issue title'),
  body: z.string().optional().describe('The issue body (Markdown)'),
};
const output = {
  repository: z.string().describe('owner/name'),
  number: z.number().int(),
  url: z.string().describe('The issue on github.com'),
};

/** A tool error whose text starts with a reason code, like credbroker's refusals. */
const failure = (text) => ({ content: [{ type: 'text', text }], isError: true });

async function createIssue(args, task) {
  const cred = task.credential(grant);
  // The credential names the repositories it reaches as owner/name: exactly one, narrowed.
  const repos = (cred.public.GITHUB_REPOSITORIES ?? '').split(',').filter(Boolean);
  if (repos.length !== 1 || repos[0].split('/')[1] !== args.repo) {
    return failure(`unexpected_credential: it reaches ${repos.join(', ') || 'no repository'}`);
  }
  const resp = await fetch(`${api}/repos/${repos[0]}/issues`, {
    method: 'POST',
    headers: {
      accept: 'application/vnd.github+json',
      authorization: `Bearer ${cred.secret.GITHUB_TOKEN}`,
      'content-type': 'application/json',
      'user-agent': 'credbroker-github-mcp',
      'x-github-api-version': '2022-11-28',
    },
    body: JSON.stringify({ title: args.title, body: args.body }),
  });
  const got = await resp.json().catch(() => ({}));
  if (resp.status !== 201) {
    // GitHub's message, never the request (which holds the token).
    return failure(`github_error: ${resp.status} ${got.message ?? resp.statusText}`);
  }
  const result = { repository: repos[0], number: got.number, url: got.html_url };
  console.log(`create_issue: ${repos[0]}#${got.number} in task ${task.id} (lease ${cred.leaseId})`);
  return { content: [{ type: 'text', text: JSON.stringify(result) }], structuredContent: result };
}

function mcpServer() {
  const server = new McpServer({ name: 'github-mcp', version: '0.1.0' });
  server.registerTool(
    'create_issue',
    {
      description: 'Creates an issue in one repository of the GitHub App installation.',
      inputSchema: input,
      outputSchema: output,
    },
    brokerTool(
      broker,
      {
        tool: 'create_issue',
        grants: [grant],
        // The token GitHub mints reaches this one repository only, whatever the grant allows.
        narrow: (args) => ({ [grant]: { repositories: [args.repo] } }),
      },
      createIssue,
    ),
  );
  return server;
}

const httpServer = http.createServer(async (req, res) => {
  if (new URL(req.url, 'http://x').pathname !== '/mcp') {
    res.writeHead(404).end();
    return;
  }
  // Behind `credbroker gateway`, which checked the caller's token (audience, the tool's
  // scopes) and forwards it: hand it to the SDK as the request's auth info, for brokerTool to
  // pass to credbroker, which checks it again against the grant.
  const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
  if (bearer) req.auth = { token: bearer[1], clientId: '', scopes: [] };
  // Stateless: a server and a transport per request.
  const server = mcpServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res);
  } catch (e) {
    console.error(`request failed: ${e.message}`);
    if (!res.headersSent) res.writeHead(500).end();
  }
});

httpServer.listen(Number(port), host, () => {
  console.log(`github-mcp: MCP at http://${host}:${httpServer.address().port}/mcp`);
});
