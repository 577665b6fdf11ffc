"""`credbroker.mcp.broker_tool` in a real MCP SDK server (MCPServer over Streamable HTTP, in
this process), called by the SDK's own client, against the real daemon."""

from __future__ import annotations

import asyncio
import socket as sockets
import threading
import time
from contextlib import contextmanager

import httpx2
import pytest
import uvicorn
from conftest import GRANT
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import MCPServer
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context

from credbroker import AsyncBroker, AsyncTask, Broker, Task
from credbroker.mcp import broker_tool


def free_port() -> int:
    with sockets.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(broker_socket: str, provider, seen: dict, **server_kw) -> MCPServer:
    server = MCPServer("orders", **server_kw)
    abroker = AsyncBroker(broker_socket)
    sbroker = Broker(broker_socket)

    @server.tool()
    @broker_tool(abroker, grants=[GRANT])
    async def query(sql: str, task: AsyncTask) -> str:
        """Read from the orders database."""
        cred = task.credential(GRANT)
        seen["lease"], seen["secret"] = cred.lease_id, cred.secret["password"]
        seen["live"] = provider.issued(cred.lease_id)
        return f"ran {sql!r} as {cred.public['username']} in {task.id}"

    @server.tool()
    @broker_tool(sbroker, grants=[GRANT])
    def sync_query(sql: str, task: Task, limit: int = 10) -> str:
        """The same, as a sync function (run on a worker thread)."""
        cred = task.credential(GRANT)
        seen["lease"], seen["secret"] = cred.lease_id, cred.secret["password"]
        seen["live"] = provider.issued(cred.lease_id)
        return f"ran {sql!r} limit {limit} in {task.id}"

    @server.tool()
    @broker_tool(abroker, grants=[GRANT])
    async def explode(task: AsyncTask, ctx: Context) -> str:
        """Fails after getting its credential; takes the SDK's Context too."""
        seen["lease"], seen["secret"] = task.credentials[0].lease_id, task.credentials[0].secret["password"]
        seen["ctx"] = ctx.request_id is not None
        raise RuntimeError("the query failed")

    return server


@contextmanager
def serving(server: MCPServer):
    port = free_port()
    app = server.streamable_http_app(stateless_http=True)
    run = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=run.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not run.started:
        assert time.monotonic() < deadline, "the MCP server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        run.should_exit = True
        thread.join(timeout=10)


async def session(url: str, headers: dict, steps):
    async with httpx2.AsyncClient(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            return await steps(client)


def call(url: str, token: str | None, tool: str, args: dict, extra: dict | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers |= extra or {}
    return asyncio.run(session(url, headers, lambda c: c.call_tool(tool, args)))


@pytest.fixture
def mcp_server(socket, provider):
    seen: dict = {}
    with serving(build(socket, provider, seen)) as url:
        yield url, seen


def test_the_injected_task_is_not_in_the_tool_schemas(mcp_server, token):
    url, _ = mcp_server
    tools = asyncio.run(session(url, {"Authorization": f"Bearer {token}"}, lambda c: c.list_tools()))
    schemas = {t.name: t.input_schema for t in tools.tools}
    assert set(schemas["query"]["properties"]) == {"sql"}
    assert schemas["query"]["required"] == ["sql"]
    assert set(schemas["sync_query"]["properties"]) == {"sql", "limit"}
    assert schemas["explode"].get("properties", {}) == {}
    assert next(t for t in tools.tools if t.name == "query").description == "Read from the orders database."


@pytest.mark.parametrize("tool", ["query", "sync_query"])
def test_a_tool_call_begins_and_ends_its_task(mcp_server, token, provider, report, tool):
    url, seen = mcp_server
    r = call(url, token, tool, {"sql": "select 1"})
    assert not r.is_error, r.content[0].text
    report(secret=seen["secret"], lease=seen["lease"])
    assert seen["lease"] in provider.revoked_ids() and "in " in r.content[0].text
    assert seen["live"], "the credential was live during the call"
    assert provider.revoked(seen["lease"]), "and revoked when the tool returned"
    assert seen["secret"] not in r.content[0].text


def test_a_tool_that_raises_still_ends_its_task(mcp_server, token, provider, report):
    url, seen = mcp_server
    r = call(url, token, "explode", {})
    report(secret=seen["secret"], lease=seen["lease"])
    assert r.is_error
    assert seen["ctx"], "the tool's own Context parameter was passed through"
    assert provider.revoked(seen["lease"])


def test_insufficient_scope_is_the_tool_error_the_client_sees(mcp_server, token_noscope, provider):
    url, seen = mcp_server
    before = provider.outstanding()
    r = call(url, token_noscope, "query", {"sql": "select 1"})
    assert r.is_error
    text = r.content[0].text
    assert "insufficient_scope" in text and "mcp.tool:postgres.read" in text, text
    assert token_noscope not in text
    assert "lease" not in seen, "the tool body never ran"
    assert provider.outstanding() == before


def test_a_call_without_a_token_is_refused_before_the_broker(mcp_server):
    url, seen = mcp_server
    r = call(url, None, "query", {"sql": "select 1"})
    assert r.is_error and "no_token" in r.content[0].text
    assert "lease" not in seen


def test_the_gateway_call_header_is_forwarded_as_the_call_id(mcp_server, token):
    url, seen = mcp_server
    # A call the gateway never recorded: the daemon refuses it, which shows it was sent.
    r = call(url, token, "query", {"sql": "select 1"}, {"Credbroker-Call": "0190a5b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b"})
    assert r.is_error and "call_unknown" in r.content[0].text, r.content[0].text
    assert "lease" not in seen


class Aliases:
    """A token verifier that knows the caller by an alias: the tool can only get the real token
    from the SDK's auth context, never from the request's header (which holds the alias)."""

    def __init__(self, real: str) -> None:
        self.real = real

    async def verify_token(self, token: str) -> AccessToken | None:
        if token != "alias-of-alice":
            return None
        return AccessToken(token=self.real, client_id="agent-1", scopes=[])


def test_the_token_comes_from_the_sdk_auth_context(socket, token, provider, report):
    seen: dict = {}
    port_probe = "http://127.0.0.1:1"
    server = build(
        socket,
        provider,
        seen,
        token_verifier=Aliases(token),
        auth=AuthSettings(
            issuer_url=port_probe,
            resource_server_url="http://127.0.0.1/mcp",
            # The verifier stands in for a real one; credbroker checks the audience itself.
            validate_token_resource=False,
        ),
    )
    with serving(server) as url:
        r = call(url, "alias-of-alice", "query", {"sql": "select 1"})
    assert not r.is_error, r.content[0].text
    report(secret=seen["secret"], lease=seen["lease"])
    assert provider.revoked(seen["lease"])


def test_a_tool_without_the_task_parameter_is_refused_at_decoration(socket):
    with pytest.raises(TypeError, match="'task' parameter"):

        @broker_tool(Broker(socket), grants=[GRANT])
        def nothing(sql: str) -> str:
            return sql
