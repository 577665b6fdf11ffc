"""The official MCP Python SDK (PyPI ``mcp`` >= 2.3, ``MCPServer``) and credbroker: a tool that
needs a credential says so with one decorator::

    from mcp.server import MCPServer
    from credbroker import AsyncBroker, AsyncTask
    from credbroker.mcp import broker_tool

    server = MCPServer("orders")
    broker = AsyncBroker("/run/credbroker/broker.sock")

    @server.tool()
    @broker_tool(broker, grants=["orders-db-read"])
    async def query(sql: str, task: AsyncTask) -> str:
        cred = task.credential("orders-db-read")
        ...

For each call the decorator takes the caller's bearer token — from the SDK's auth context when
the server verifies tokens itself (``token_verifier=``), else from the HTTP request's
``Authorization`` header, as when the server runs behind ``credbroker gateway`` — begins a task
for the tool (with the gateway's ``Credbroker-Call`` header as its ``call_id``, so the lineage
reads owner → client → token → call → task → lease), hands it to the tool as the ``task``
argument, and ends it when the tool returns, raises or is cancelled.

The injected parameter is not part of the tool's input schema. A refusal (``insufficient_scope``,
an expired token, …) becomes a tool error result whose text starts with the reason code and
names what is missing (e.g. the scope); it never holds the token or a credential.

Sync tools work too: a sync function runs on a worker thread, as the SDK runs sync tools. Pass a
:class:`credbroker.Broker` (the tool gets a :class:`credbroker.Task`) or an
:class:`credbroker.AsyncBroker` (an :class:`credbroker.AsyncTask`); either serves both kinds of
tool, and the task is begun and ended by the decorator, so a tool only reads its credentials.
"""

from __future__ import annotations

import functools
import inspect
import logging
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread

try:
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("credbroker.mcp needs the MCP SDK: pip install 'credbroker[mcp]'") from e

from credbroker import errors
from credbroker.aio import AsyncBroker, AsyncTask
from credbroker.client import Broker, Task

log = logging.getLogger("credbroker.mcp")

F = TypeVar("F", bound=Callable[..., Any])

#: The parameter the decorator adds to receive the SDK's Context when the tool has none. The
#: SDK leaves Context parameters out of the input schema and refuses names starting with `_`.
CONTEXT_PARAM = "credbroker_ctx"

CALL_HEADER = "credbroker-call"


def broker_tool(
    broker: Broker | AsyncBroker,
    *,
    grants: list[str] | tuple[str, ...],
    tool: str | None = None,
    ttl: int | float | None = None,
    narrow: Mapping[str, Mapping[str, list[str]]] | None = None,
    param: str = "task",
) -> Callable[[F], F]:
    """Makes an MCP tool function run inside a credbroker task; put it under ``@server.tool()``.

    Args:
        broker: the client to begin and end tasks with.
        grants: the grants the tool needs, by name.
        tool: the tool name to begin the task for; by default the name the call was made with.
        ttl: wanted task lifetime in seconds (capped by the daemon).
        narrow: narrowing of list-valued grant parameters, per grant.
        param: the name of the function's parameter that receives the task.
    """
    grants = list(grants)

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        if param not in sig.parameters:
            raise TypeError(f"{fn.__name__} must take a {param!r} parameter to receive the credbroker task")
        hints = typing.get_type_hints(fn, include_extras=True)
        own_ctx = find_context_parameter(fn)
        ctx_name = own_ctx or CONTEXT_PARAM
        params = [p for p in sig.parameters.values() if p.name != param]
        if own_ctx is None:
            params.append(inspect.Parameter(CONTEXT_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Context))
        # Keyword-only parameters must come last, after any with defaults.
        params.sort(key=lambda p: p.kind)
        is_async = inspect.iscoroutinefunction(fn)

        @functools.wraps(fn)
        async def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs[ctx_name] if own_ctx else kwargs.pop(ctx_name)
            token, call_id = _caller(ctx)
            name = tool or _called_tool(ctx) or fn.__name__
            if token is None:
                raise ToolError(f"no_token: tool {name!r} needs the caller's bearer token for its credentials")
            try:
                task = await _begin(broker, token, name, grants, ttl, narrow, call_id)
            except errors.Refused as e:
                raise ToolError(explain(e)) from None
            try:
                kwargs[param] = task
                if is_async:
                    return await fn(**kwargs)
                return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs))
            finally:
                # Shielded: a cancelled call must still revoke what it was given.
                with anyio.CancelScope(shield=True):
                    await _end(broker, task)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        annotations = {k: v for k, v in hints.items() if k != param}
        if own_ctx is None:
            annotations[CONTEXT_PARAM] = Context
        wrapper.__annotations__ = annotations
        # The SDK inspects the signature above, not the wrapped function's.
        del wrapper.__wrapped__  # type: ignore[attr-defined]
        return typing.cast(F, wrapper)

    return decorate


def explain(e: errors.Refused) -> str:
    """The text the MCP client sees for a refusal: the reason code first, then the daemon's
    message (which names the missing scope for ``insufficient_scope``)."""
    if e.reason is None:
        return f"credbroker_unavailable: no answer from the credential broker ({e.code.name})"
    if e.message.startswith(f"{e.reason}:"):
        return e.message
    return f"{e.reason}: {e.message}"


def _caller(ctx: Context) -> tuple[str | None, str | None]:
    """The caller's bearer token and the gateway's call id, for this request."""
    token = None
    verified = get_access_token()
    if verified is not None:
        token = verified.token
    request = getattr(ctx.request_context, "request", None)
    headers = getattr(request, "headers", None)
    if token is None and headers is not None:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    call_id = headers.get(CALL_HEADER) if headers is not None else None
    return token, call_id or None


def _called_tool(ctx: Context) -> str | None:
    params = ctx.request_context.params or {}
    name = params.get("name")
    return name if isinstance(name, str) else None


async def _begin(
    broker: Broker | AsyncBroker,
    token: str,
    tool: str,
    grants: list[str],
    ttl: int | float | None,
    narrow: Mapping[str, Mapping[str, list[str]]] | None,
    call_id: str | None,
) -> Task | AsyncTask:
    kw: dict[str, Any] = {"tool": tool, "grants": grants, "ttl": ttl, "narrow": narrow, "call_id": call_id}
    if isinstance(broker, AsyncBroker):
        return await broker.begin(token, **kw)
    return await anyio.to_thread.run_sync(functools.partial(broker.begin, token, **kw))


async def _end(broker: Broker | AsyncBroker, task: Task | AsyncTask) -> None:
    try:
        if isinstance(task, AsyncTask):
            await task.end()
        else:
            await anyio.to_thread.run_sync(task.end)
    except errors.CredbrokerError as e:
        # The tool's own outcome is what the client gets; the daemon ends the task at expiry.
        log.warning("could not end task %s: %s", task.id, e.reason or e.code.name, extra={"task_id": task.id})
