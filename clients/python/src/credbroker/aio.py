"""The asyncio client (``grpc.aio``): :class:`AsyncBroker` and its :class:`AsyncTask`.

::

    broker = AsyncBroker()
    async with broker.task(token, tool="query", grants=["orders-db-read"]) as task:
        ...

Same semantics as the synchronous :class:`credbroker.Broker`: idempotent BeginTask retries,
the task ended when the block exits or raises, and nothing secret in a ``repr`` or a log line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

import grpc
import grpc.aio

from credbroker import errors
from credbroker._model import Credential, TaskState, begin_request
from credbroker._proto.credbroker.v1 import broker_pb2, broker_pb2_grpc
from credbroker.client import CHANNEL_OPTIONS, DEFAULT_SOCKET, RETRY_FOR, log, target


class AsyncTask:
    """A begun task (see :class:`credbroker.Task`), with coroutine methods."""

    def __init__(self, broker: AsyncBroker, state: TaskState, credentials: list[Credential]) -> None:
        self._broker = broker
        self.state = state
        self.credentials = credentials
        self._ended = False

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def expires_at(self) -> datetime | None:
        return self.state.expires_at

    @property
    def ended(self) -> bool:
        return self._ended

    def credential(self, grant: str) -> Credential:
        """The credential issued for ``grant`` (KeyError if the task has none)."""
        for c in self.credentials:
            if c.grant == grant:
                return c
        raise KeyError(f"task {self.id} holds no credential for grant {grant!r}")

    async def renew(self, token: str, ttl: int | float | None = None) -> TaskState:
        """RenewTask: see :meth:`credbroker.Task.renew`."""
        req = broker_pb2.RenewTaskRequest(task_id=self.id, token=token)
        if ttl is not None:
            req.ttl_seconds = max(1, int(ttl))
        try:
            resp = await self._broker._stub().RenewTask(req, timeout=self._broker.timeout)
        except grpc.aio.AioRpcError as e:
            raise errors.from_rpc_error(e) from None
        self.state = TaskState._from_proto(resp.task)
        log.info("task renewed", extra={"task_id": self.id})
        return self.state

    async def end(self) -> TaskState:
        """EndTask: see :meth:`credbroker.Task.end`."""
        if self._ended:
            return self.state
        self.state = await self._broker._end(self.id)
        self._ended = True
        return self.state

    def __repr__(self) -> str:
        return f"AsyncTask(id={self.id!r}, state={self.state.state!r}, credentials={self.credentials!r})"


class AsyncBroker:
    """An asyncio client of the daemon's broker socket.

    A ``grpc.aio`` channel belongs to the event loop it was made on, so the broker keeps one
    per loop: the same ``AsyncBroker`` serves a server whose framework runs several loops.
    """

    def __init__(self, socket: str = DEFAULT_SOCKET, *, timeout: float = 30.0, retry_for: float = RETRY_FOR) -> None:
        self.socket = socket
        self.timeout = timeout
        self.retry_for = retry_for
        self._channels: dict[int, tuple[asyncio.AbstractEventLoop, grpc.aio.Channel, broker_pb2_grpc.BrokerStub]] = {}

    def _stub(self) -> broker_pb2_grpc.BrokerStub:
        loop = asyncio.get_running_loop()
        held = self._channels.get(id(loop))
        if held is None or held[0] is not loop:
            # Loops that are gone (one per `asyncio.run`) leave their channels behind: drop them.
            for key in [k for k, (l, _, _) in self._channels.items() if l.is_closed()]:
                del self._channels[key]
            channel = grpc.aio.insecure_channel(target(self.socket), options=CHANNEL_OPTIONS)
            held = (loop, channel, broker_pb2_grpc.BrokerStub(channel))
            self._channels[id(loop)] = held
        return held[2]

    async def close(self) -> None:
        """Closes the channel of the running loop."""
        held = self._channels.pop(id(asyncio.get_running_loop()), None)
        if held is not None:
            await held[1].close()

    async def __aenter__(self) -> AsyncBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncBroker(socket={self.socket!r})"

    async def begin(
        self,
        token: str,
        *,
        tool: str,
        grants: list[str] | tuple[str, ...],
        ttl: int | float | None = None,
        narrow: Mapping[str, Mapping[str, list[str]]] | None = None,
        call_id: str | None = None,
    ) -> AsyncTask:
        """BeginTask, safe to retry: see :meth:`credbroker.Broker.begin`."""
        req = begin_request(token, tool=tool, grants=grants, ttl=ttl, narrow=narrow, call_id=call_id)
        for _fresh in range(2):
            req.idempotency_key = str(uuid.uuid4())
            deadline = time.monotonic() + self.retry_for
            delay = 0.05
            while True:
                try:
                    resp = await self._stub().BeginTask(req, timeout=self.timeout)
                except grpc.aio.AioRpcError as e:
                    err = errors.from_rpc_error(e)
                    if err.reason == "begin_replayed":
                        log.info("an earlier attempt's task was ended; beginning afresh")
                        break
                    if not err.transport or time.monotonic() + delay >= deadline:
                        raise err from None
                    log.debug("BeginTask got no answer (%s); retrying", err.code.name)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                task = AsyncTask(
                    self,
                    TaskState._from_proto(resp.task),
                    [Credential._from_proto(c) for c in resp.credentials],
                )
                log.info(
                    "task %s begun for tool %s with leases %s",
                    task.id,
                    tool,
                    [c.lease_id for c in task.credentials],
                    extra={"task_id": task.id},
                )
                return task
        raise errors.Refused("BeginTask was replayed twice; giving up", reason="begin_replayed")

    @asynccontextmanager
    async def task(
        self,
        token: str,
        *,
        tool: str,
        grants: list[str] | tuple[str, ...],
        ttl: int | float | None = None,
        narrow: Mapping[str, Mapping[str, list[str]]] | None = None,
        call_id: str | None = None,
    ) -> AsyncIterator[AsyncTask]:
        """Begins a task for the ``async with`` block and ends it when the block returns, raises
        or is cancelled (the block's exception is re-raised)."""
        task = await self.begin(token, tool=tool, grants=grants, ttl=ttl, narrow=narrow, call_id=call_id)
        raising = False
        try:
            yield task
        except BaseException:
            raising = True
            raise
        finally:
            await end_shielded(task, raising)

    async def _end(self, task_id: str) -> TaskState:
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                resp = await self._stub().EndTask(broker_pb2.EndTaskRequest(task_id=task_id), timeout=self.timeout)
            except grpc.aio.AioRpcError as e:
                err = errors.from_rpc_error(e)
                if not err.transport or time.monotonic() + delay >= deadline:
                    raise err from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            log.info("task %s ended", task_id, extra={"task_id": task_id})
            return TaskState._from_proto(resp.task)


async def end_shielded(task: AsyncTask, raising: bool) -> None:
    """Ends ``task`` even when the block is being cancelled (a cancelled tool call must still
    revoke its credentials). If the block raised, a failure to end is logged, not raised."""
    try:
        await asyncio.shield(task.end())
    except errors.CredbrokerError as e:
        if not raising:
            raise
        log.warning(
            "could not end task %s after the block raised: %s",
            task.id,
            e.reason or e.code.name,
            extra={"task_id": task.id},
        )
