"""Calls one tool of an MCP server with the official MCP Python SDK client, with a bearer token,
and prints the result as one JSON line: {"is_error", "text", "structured"}.

    MCP_TOKEN=… client.py URL TOOL '{"sql": "SELECT 1"}'

The token is read from the environment (not the command line, where `ps` would show it) and
is never printed.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, tool: str, args: dict) -> None:
    headers = {"Authorization": f"Bearer {os.environ['MCP_TOKEN']}"}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            r = await client.call_tool(tool, args)
    text = "\n".join(getattr(c, "text", "") for c in r.content)
    print(json.dumps({"is_error": bool(r.is_error), "text": text, "structured": r.structured_content}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
