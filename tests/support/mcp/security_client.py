"""The official MCP Python SDK's client (PyPI `mcp` 2.x) driving `credbroker mcp` over stdio.

Reads a plan from stdin: {"command": [...], "calls": [{"tool": NAME, "args": {...}}, ...]}, or
{"url": ..., "token": ..., "calls": [...]} for Streamable HTTP with a bearer token.
Prints one JSON object: the tools listed (name, schemas, annotations) and, per call, its
structured content, whether it was a tool error, its text, or the protocol error raised.

    security_client.py < plan.json
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True) if model else None


async def main(plan):
    if "url" in plan:
        headers = {"Authorization": f"Bearer {plan['token']}"}
        async with httpx2.AsyncClient(headers=headers) as http:
            await session(streamable_http_client(plan["url"], http_client=http), plan)
    else:
        command = plan["command"]
        await session(
            StdioServerParameters(command=command[0], args=command[1:], env=plan.get("env")), plan
        )


async def session(server, plan):
    out = {"tools": [], "calls": []}
    async with Client(server, mode=plan.get("mode", "auto")) as client:
        listed = await client.list_tools()
        for t in listed.tools:
            out["tools"].append({
                "name": t.name,
                "description": t.description,
                "inputSchema": t.input_schema,
                "outputSchema": t.output_schema,
                "annotations": dump(t.annotations),
            })
        for call in plan["calls"]:
            try:
                r = await client.call_tool(call["tool"], call.get("args", {}))
                out["calls"].append({
                    "structured": r.structured_content,
                    "is_error": bool(r.is_error),
                    "text": "".join(c.text for c in r.content if getattr(c, "text", None)),
                })
            except Exception as e:  # a protocol error (invalid params) raises
                out["calls"].append({"raised": f"{type(e).__name__}: {e}"})
    print(json.dumps(out))


asyncio.run(main(json.load(sys.stdin)))
