// Hand-written declarations for src/mcp.js (checked by `tsc --noEmit` in the tests).
import type { RequestHandlerExtra } from "@modelcontextprotocol/sdk/shared/protocol.js";
import type { CallToolResult, ServerNotification, ServerRequest } from "@modelcontextprotocol/sdk/types.js";
import type { Broker, Narrow, RefusedError, Task } from "./index.js";

export type ToolExtra = RequestHandlerExtra<ServerRequest, ServerNotification>;

export declare const REFUSAL_META: "credbroker/refusal";

export interface BrokerToolOptions<Args> {
  /** The MCP tool's name (recorded in the task, matched against a grant's `tools`). */
  tool: string;
  grants: string[];
  ttlSeconds?: number;
  narrow?: Narrow | ((args: Args, extra: ToolExtra) => Narrow | undefined);
}

/**
 * A handler for `McpServer.registerTool`: runs `handler(args, task, extra)` in a credbroker
 * task begun with `extra.authInfo.token`, ended when it returns or throws; a refusal becomes
 * a tool error result naming the reason.
 */
export declare function brokerTool<Args = undefined>(
  broker: Broker,
  options: BrokerToolOptions<Args>,
  handler: (args: Args, task: Task, extra: ToolExtra) => CallToolResult | Promise<CallToolResult>,
): Args extends undefined
  ? (extra: ToolExtra) => Promise<CallToolResult>
  : (args: Args, extra: ToolExtra) => Promise<CallToolResult>;

export declare function callIdOf(extra: ToolExtra | undefined): string | undefined;
export declare function refusalResult(error: RefusedError): CallToolResult;
