"""credbroker: short-lived credentials for MCP tools, from the credbroker daemon.

An MCP server hands the caller's OAuth access token to the daemon over its unix socket and
gets one credential per grant for the duration of one task::

    from credbroker import Broker

    broker = Broker("/run/credbroker/broker.sock")
    with broker.task(token, tool="query", grants=["orders-db-read"]) as task:
        cred = task.credential("orders-db-read")
        ...  # cred.public["username"], cred.secret["password"]

The task ends, and its credentials are revoked, when the block returns or raises. Refusals
raise :class:`Refused` subclasses carrying the daemon's stable reason code. For asyncio use
:class:`AsyncBroker`; for the official MCP Python SDK, :func:`credbroker.mcp.broker_tool`.
"""

from credbroker._model import Credential, Principal, SecretMap, TaskState
from credbroker.aio import AsyncBroker, AsyncTask
from credbroker.client import DEFAULT_SOCKET, Broker, Task
from credbroker.errors import (
    CredbrokerError,
    Denied,
    InsufficientScope,
    Refused,
    TokenRejected,
    Unavailable,
)

__all__ = [
    "DEFAULT_SOCKET",
    "AsyncBroker",
    "AsyncTask",
    "Broker",
    "Credential",
    "CredbrokerError",
    "Denied",
    "InsufficientScope",
    "Principal",
    "Refused",
    "SecretMap",
    "Task",
    "TaskState",
    "TokenRejected",
    "Unavailable",
]

__version__ = "0.1.0"
