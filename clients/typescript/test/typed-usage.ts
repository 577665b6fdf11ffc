// Checked by `tsc --noEmit` (test/types.test.mjs): the hand-written declarations describe the
// API as the README uses it. Each `@ts-expect-error` fails the check if the misuse compiles.
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { z } from "zod";
import {
  Broker, Credential, InsufficientScopeError, RefusedError, Task, TokenRejectedError, UnavailableError,
} from "@credbroker/client";
import { brokerTool } from "@credbroker/client/mcp";

const broker = new Broker({ socket: "/run/credbroker/broker.sock", retryForMs: 5000, logger: null });

export async function usage(token: string): Promise<number> {
  const rows: number = await broker.withTask(
    token,
    { tool: "query", grants: ["orders-db-read"], ttlSeconds: 60, narrow: { "orders-db-read": { tables: ["orders"] } } },
    async (task: Task) => {
      const cred: Credential = task.credential("orders-db-read");
      const password: string | undefined = cred.secret["password"];
      const when: Date | null = cred.expiresAt;
      const pub: string | undefined = cred.public["DB_HOST"];
      void [password, when, pub, cred.leaseId, cred.kind, cred.provider, cred.grant];
      return task.credentials.length;
    },
  );
  const task = await broker.begin(token, { tool: "query", grants: ["g"], callId: "c" });
  await task.renew({ ttlSeconds: 30 });
  await task.end();
  const ended: boolean = task.ended;
  void ended;
  try {
    await broker.begin(token, { tool: "q", grants: ["g"] });
  } catch (e) {
    if (e instanceof InsufficientScopeError) {
      const scope: string | null = e.scope;
      const reason: string | null = e.reason;
      const code: number = e.code;
      void [scope, reason, code, e.grant];
    } else if (e instanceof TokenRejectedError || e instanceof UnavailableError) {
      const r: RefusedError = e;
      void r.transport;
    }
  }
  // @ts-expect-error grants is required
  await broker.begin(token, { tool: "q" });
  // @ts-expect-error a credential's fields are read-only
  task.credentials[0]!.leaseId = "x";
  // @ts-expect-error secret values are read-only
  task.credentials[0]!.secret["password"] = "x";
  return rows;
}

const server = new McpServer({ name: "example", version: "1.0.0" });
server.registerTool(
  "create_issue",
  { description: "Creates an issue", inputSchema: { repo: z.string(), title: z.string() } },
  brokerTool(
    broker,
    {
      tool: "create_issue",
      grants: ["github-issues"],
      narrow: (args: { repo: string; title: string }) => ({ "github-issues": { repositories: [args.repo] } }),
    },
    async (args: { repo: string; title: string }, task, extra) => {
      const token: string | undefined = task.credential("github-issues").secret["GITHUB_TOKEN"];
      void [token, extra.authInfo?.token];
      return { content: [{ type: "text", text: `created in ${args.repo}` }] };
    },
  ),
);
server.registerTool(
  "ping",
  { description: "No arguments" },
  brokerTool(broker, { tool: "ping", grants: ["g"] }, async (_args, task) => ({
    content: [{ type: "text", text: task.id }],
  })),
);
// @ts-expect-error the tool name is required
brokerTool(broker, { grants: ["g"] }, async () => ({ content: [] }));
