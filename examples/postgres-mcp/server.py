"""postgres-mcp: an MCP server (official Python SDK, Streamable HTTP) whose tools run SQL as a
short-lived PostgreSQL user that credbroker issues for each call (an OpenBao dynamic database
credential), so it holds no database password of its own.

    query(sql)        one read-only statement, as the user of grant POSTGRES_MCP_READ_GRANT
    delete_rows(ids)  deletes orders by id, as the user of grant POSTGRES_MCP_WRITE_GRANT

Configuration (environment):

    CREDBROKER_SOCKET         the daemon's broker socket      /run/credbroker/broker.sock
    PGHOST, PGPORT            the database server             127.0.0.1, 5432
    PGDATABASE                the database                    orders
    POSTGRES_MCP_LISTEN       where to serve MCP (at /mcp)    127.0.0.1:8000
    POSTGRES_MCP_READ_GRANT   the grant for query             orders-db-read
    POSTGRES_MCP_WRITE_GRANT  the grant for delete_rows       orders-db-write
    POSTGRES_MCP_MAX_ROWS     rows returned at most           100

It has no authentication of its own: run it behind `credbroker gateway`, which checks the
caller's token and forwards it (and the call's id) here. See README.md.
"""

from __future__ import annotations

import datetime
import decimal
import os
import uuid
from typing import Any

import psycopg
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

from credbroker import AsyncBroker, AsyncTask, Credential
from credbroker.mcp import broker_tool

SOCKET = os.environ.get("CREDBROKER_SOCKET", "/run/credbroker/broker.sock")
PGHOST = os.environ.get("PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("PGPORT", "5432"))
PGDATABASE = os.environ.get("PGDATABASE", "orders")
LISTEN = os.environ.get("POSTGRES_MCP_LISTEN", "127.0.0.1:8000")
READ_GRANT = os.environ.get("POSTGRES_MCP_READ_GRANT", "orders-db-read")
WRITE_GRANT = os.environ.get("POSTGRES_MCP_WRITE_GRANT", "orders-db-write")
MAX_ROWS = int(os.environ.get("POSTGRES_MCP_MAX_ROWS", "100"))

server = MCPServer(
    "postgres-mcp",
    instructions="Query the orders database. Every call runs as its own short-lived database user.",
)
broker = AsyncBroker(SOCKET)


class Rows(BaseModel):
    """What a query returned."""

    #: The PostgreSQL user the statement ran as (issued for this call, gone after it).
    user: str
    columns: list[str]
    rows: list[list[Any]]
    #: Whether more rows than POSTGRES_MCP_MAX_ROWS matched.
    truncated: bool


class Deleted(BaseModel):
    user: str
    deleted: int


def _json(v: Any) -> Any:
    """A cell as JSON: numbers, text, booleans and nulls as they are, the rest as text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (decimal.Decimal, datetime.date, datetime.time, datetime.timedelta, uuid.UUID)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    return str(v)


async def connect(cred: Credential, *, read_only: bool) -> psycopg.AsyncConnection:
    """Logs in as the credential's user. The password is read here only and never logged."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            host=PGHOST,
            port=PGPORT,
            dbname=PGDATABASE,
            user=cred.public["username"],
            password=cred.secret["password"],
            connect_timeout=10,
            application_name="postgres-mcp",
            # A statement cannot outlive the call's credential by much.
            options="-c statement_timeout=60000",
        )
    except psycopg.OperationalError as e:
        raise ToolError(f"database_unavailable: cannot log in as {cred.public['username']}: {_first_line(e)}") from None
    await conn.set_read_only(read_only)
    return conn


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@server.tool()
@broker_tool(broker, grants=[READ_GRANT])
async def query(sql: str, task: AsyncTask) -> Rows:
    """Runs one read-only SQL statement on the orders database (table `orders`: id, item) and
    returns its rows (at most 100). Writes are refused: the transaction is read-only and the
    database user may only SELECT."""
    cred = task.credential(READ_GRANT)
    async with await connect(cred, read_only=True) as conn:
        try:
            # psycopg sends one statement per execute (extended protocol): no `; DROP …`.
            cur = await conn.execute(sql)
        except psycopg.Error as e:
            raise ToolError(f"sql_error: {e.sqlstate or ''} {_first_line(e)}".strip()) from None
        columns = [d.name for d in cur.description or []]
        rows = await cur.fetchmany(MAX_ROWS + 1) if cur.description else []
    return Rows(
        user=cred.public["username"],
        columns=columns,
        rows=[[_json(v) for v in r] for r in rows[:MAX_ROWS]],
        truncated=len(rows) > MAX_ROWS,
    )


@server.tool()
@broker_tool(broker, grants=[WRITE_GRANT])
async def delete_rows(ids: list[int], task: AsyncTask) -> Deleted:
    """Deletes the orders with these ids. Needs the write grant (scope mcp.tool:postgres.write
    in the default policy)."""
    cred = task.credential(WRITE_GRANT)
    async with await connect(cred, read_only=False) as conn:
        try:
            cur = await conn.execute("DELETE FROM orders WHERE id = ANY(%s)", [ids])
        except psycopg.Error as e:
            raise ToolError(f"sql_error: {e.sqlstate or ''} {_first_line(e)}".strip()) from None
        deleted = cur.rowcount
    return Deleted(user=cred.public["username"], deleted=deleted)


def main() -> None:
    host, _, port = LISTEN.rpartition(":")
    app = server.streamable_http_app(stateless_http=True)
    uvicorn.run(app, host=host or "127.0.0.1", port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
