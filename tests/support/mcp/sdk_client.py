"""The official MCP Python SDK's client (PyPI `mcp` 2.x), given a gateway URL and an access
token: lists the tools, calls `query`, tries `write`, and prints what happened as JSON.

    sdk_client.py URL TOKEN
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url, token):
    out = {}
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            out["tools"] = [t.name for t in tools.tools]
            r = await client.call_tool("query", {"sql": "select 1"})
            out["query"] = r.content[0].text
            try:
                r = await client.call_tool("write", {"row": "r"})
                out["write"] = r.content[0].text if not r.is_error else f"error: {r.content[0].text}"
            except Exception as e:  # the SDK raises on an HTTP refusal
                out["write"] = f"refused: {type(e).__name__}: {e}"
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
