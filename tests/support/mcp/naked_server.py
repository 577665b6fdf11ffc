"""A naked MCP server (official Python SDK, Streamable HTTP, no authentication at all), as
too many are deployed: the upstream the tests put credbroker's gateway in front of.

Every request it receives is appended to the log file (argv[2]) as one JSON line, so a test can
prove what reached it and what did not.

    naked_server.py PORT|unix:PATH LOG [stateful]

Stateless by default (2026-07-28); `stateful` keeps 2025-11-25 sessions (`Mcp-Session-Id`).
With NAKED_TLS_CERT and NAKED_TLS_KEY it speaks HTTPS.
"""

import asyncio
import json
import os
import sys
import time

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

LISTEN = sys.argv[1]
LOG = sys.argv[2]

mcp = MCPServer("orders")


@mcp.tool()
def query(sql: str) -> str:
    """Read from the orders database."""
    return f"3 rows for {sql}"


@mcp.tool()
def write(row: str) -> str:
    """Write to the orders database."""
    return f"wrote {row}"


@mcp.tool()
async def stream(ticks: int, ctx: Context) -> str:
    """Reports each tick as it happens, 300 ms apart."""
    for i in range(ticks):
        await ctx.info(json.dumps({"tick": i, "at": time.time()}))
        await asyncio.sleep(0.3)
    return "done"


@mcp.tool()
async def report(ctx: Context) -> str:
    """Runs a report with a database credential from the broker: begins a task for this very
    call (the caller's token, the gateway's Credbroker-Call id), then ends it. Needs
    CREDBROKER_BIN and CREDBROKER_SOCKET in the environment."""
    req = ctx.request_context.request
    token = req.headers.get("authorization", "").partition(" ")[2]
    cmd = [os.environ["CREDBROKER_BIN"], "task", "begin", "--tool", "report",
           "--grant", "orders-db-read", "--token-file", "-"]
    call = req.headers.get("credbroker-call")
    if call:
        cmd += ["--call-id", call]
    begin = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await begin.communicate(token.encode())
    if begin.returncode != 0:
        raise RuntimeError(f"task begin failed: {err.decode().strip()}")
    task = json.loads(out)["task"]["id"]
    end = await asyncio.create_subprocess_exec(
        os.environ["CREDBROKER_BIN"], "task", "end", "--task", task,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await end.communicate()
    if end.returncode != 0:
        raise RuntimeError(f"task end failed: {err.decode().strip()}")
    return f"report done in task {task}"


inner = mcp.streamable_http_app(stateless_http=sys.argv[3:] != ["stateful"])


async def app(scope, receive, send):
    """Logs each HTTP request (method, path, headers, body) before the SDK sees it."""
    if scope["type"] != "http":
        return await inner(scope, receive, send)
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    with open(LOG, "a") as f:
        f.write(json.dumps({
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode(),
            "headers": headers,
            "body": body.decode(errors="replace"),
        }) + "\n")
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await inner(scope, replay, send)


where = ({"uds": LISTEN[len("unix:"):]} if LISTEN.startswith("unix:")
         else {"host": "127.0.0.1", "port": int(LISTEN)})
tls = ({"ssl_certfile": os.environ["NAKED_TLS_CERT"], "ssl_keyfile": os.environ["NAKED_TLS_KEY"]}
       if "NAKED_TLS_CERT" in os.environ else {})
uvicorn.run(app, log_level="warning", **where, **tls)
