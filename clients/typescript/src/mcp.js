// Integration with the official MCP TypeScript SDK (@modelcontextprotocol/sdk, McpServer):
//
//   server.registerTool('create_issue', { inputSchema: { title: z.string() } },
//     brokerTool(broker, { tool: 'create_issue', grants: ['github-issues'] },
//       async (args, task, extra) => ({ content: [{ type: 'text', text: '…' }] })));
//
// The wrapper takes the caller's bearer token from the handler's `extra.authInfo.token` (the
// SDK's streamable HTTP transport copies `req.auth` there: set it from the Authorization header,
// or use the SDK's `requireBearerAuth` middleware), passes the `Credbroker-Call` header that
// `credbroker gateway` adds as the task's call id, begins the task, runs the handler, and ends
// the task when the handler returns or throws. A refusal becomes a tool error result that names
// the reason (and, for insufficient_scope, the missing scope): never the token or a credential.
import { RefusedError, InsufficientScopeError } from './errors.js';

/** The `_meta` key of a refusal's details in the tool error result. */
export const REFUSAL_META = 'credbroker/refusal';

const CALL_HEADER = 'credbroker-call';

/** The gateway's call id from the request headers the SDK hands a handler, if any. */
export function callIdOf(extra) {
  const headers = extra?.requestInfo?.headers;
  if (!headers) return undefined;
  const v = typeof headers.get === 'function' ? headers.get(CALL_HEADER) : headers[CALL_HEADER];
  const first = Array.isArray(v) ? v[0] : v;
  return typeof first === 'string' && first.length > 0 ? first : undefined;
}

/** A tool error result for a refusal: the reason code and the daemon's message. */
export function refusalResult(e) {
  const reason = e.reason ?? (e.transport ? 'unavailable' : 'refused');
  // The daemon's messages mostly start with their reason code already.
  const text = e.message.startsWith(reason) ? e.message : `${reason}: ${e.message}`;
  const detail = { reason, code: e.codeName };
  if (e.grant) detail.grant = e.grant;
  if (e instanceof InsufficientScopeError && e.scope) detail.scope = e.scope;
  return {
    // Starts with the reason code, as the Python client's tool errors do.
    content: [{ type: 'text', text }],
    isError: true,
    _meta: { [REFUSAL_META]: detail },
  };
}

function noToken() {
  return {
    content: [{
      type: 'text',
      text: 'no_token: the request carried no bearer token for credbroker (the server must ' +
        'set extra.authInfo from the Authorization header)',
    }],
    isError: true,
    _meta: { [REFUSAL_META]: { reason: 'no_token' } },
  };
}

/**
 * A tool handler for `McpServer.registerTool` that runs `handler(args, task, extra)` inside a
 * credbroker task. Options: `tool` (the MCP tool's name, recorded and matched against grants),
 * `grants`, and optionally `ttlSeconds` and `narrow` (an object, or a function of the tool's
 * arguments and extra returning one: `{grant: {param: [values]}}`).
 */
export function brokerTool(broker, options, handler) {
  const { tool, grants, ttlSeconds, narrow } = options ?? {};
  if (typeof tool !== 'string' || tool.length === 0) {
    throw new TypeError('brokerTool needs the tool name (options.tool)');
  }
  if (typeof handler !== 'function') throw new TypeError('brokerTool needs a handler');
  // The SDK calls (args, extra) for a tool with an input schema and (extra) for one without.
  return async (...params) => {
    const extra = params.length > 1 ? params[1] : params[0];
    const args = params.length > 1 ? params[0] : undefined;
    const token = extra?.authInfo?.token;
    if (typeof token !== 'string' || token.length === 0) return noToken();
    const request = {
      tool,
      grants,
      ttlSeconds,
      narrow: typeof narrow === 'function' ? narrow(args, extra) : narrow,
      callId: callIdOf(extra),
    };
    try {
      return await broker.withTask(token, request, (task) => handler(args, task, extra));
    } catch (e) {
      if (e instanceof RefusedError) return refusalResult(e);
      throw e;
    }
  };
}
