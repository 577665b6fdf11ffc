"""The synchronous client: :class:`Broker` and its :class:`Task`.

::

    broker = Broker()  # /run/credbroker/broker.sock
    with broker.task(token, tool="query", grants=["orders-db-read"]) as task:
        cred = task.credential("orders-db-read")
        connect(user=cred.public["username"], password=cred.secret["password"])
    # the task has ended and its credentials are revoked, whether the block returned or raised
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

import grpc

from credbroker import errors
from credbroker._model import Credential, TaskState, begin_request
from credbroker._proto.credbroker.v1 import broker_pb2, broker_pb2_grpc

log = logging.getLogger("credbroker")

DEFAULT_SOCKET = "/run/credbroker/broker.sock"

#: How long an answer lost to the transport is retried (BeginTask with the same idempotency
#: key, EndTask as it is), as the daemon's own CLI does.
RETRY_FOR = 10.0

#: Reconnect quickly after a daemon restart: gRPC's default backoff grows to two minutes,
#: longer than any retry here would wait.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def target(socket: str) -> str:
    """The gRPC target for a unix socket path."""
    return socket if socket.startswith("unix:") else f"unix:{socket}"


class Task:
    """A begun task: its credentials, until :meth:`end` (or the ``with`` block) ends it.

    Attributes:
        id: the task id.
        credentials: one :class:`Credential` per requested grant, in request order.
        state: the task as the daemon last reported it (:class:`TaskState`).
    """

    def __init__(self, broker: Broker, state: TaskState, credentials: list[Credential]) -> None:
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

    def renew(self, token: str, ttl: int | float | None = None) -> TaskState:
        """Extends the task and its renewable leases (RenewTask); needs a token of the same
        issuer, client and subject as the one the task was begun with."""
        req = broker_pb2.RenewTaskRequest(task_id=self.id, token=token)
        if ttl is not None:
            req.ttl_seconds = max(1, int(ttl))
        try:
            resp = self._broker._stub().RenewTask(req, timeout=self._broker.timeout)
        except grpc.RpcError as e:
            raise errors.from_rpc_error(e) from None
        self.state = TaskState._from_proto(resp.task)
        log.info("task renewed", extra={"task_id": self.id})
        return self.state

    def end(self) -> TaskState:
        """Ends the task and revokes its credentials (EndTask). Idempotent; an answer lost to
        the transport is retried for up to ten seconds."""
        if self._ended:
            return self.state
        self.state = self._broker._end(self.id)
        self._ended = True
        return self.state

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        _end_on_exit(self.end, self.id, exc[1] is not None)

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, state={self.state.state!r}, credentials={self.credentials!r})"


def _end_on_exit(end: object, task_id: str, raising: bool) -> None:
    """Ends a task leaving a ``with`` block. If the block raised, its exception is what the
    caller sees: a failure to end is logged (the daemon's reaper ends the task at its expiry)."""
    try:
        end()  # type: ignore[operator]
    except errors.CredbrokerError as e:
        if not raising:
            raise
        log.warning(
            "could not end task %s after the block raised: %s",
            task_id,
            e.reason or e.code.name,
            extra={"task_id": task_id},
        )


class Broker:
    """A client of the daemon's broker socket. Thread-safe; one per process is enough.

    Args:
        socket: the broker socket's path (the daemon's ``server.broker_socket``).
        timeout: seconds each call may take (issuing can wait on a provider).
        retry_for: seconds an answer lost to the transport is retried for.
    """

    def __init__(self, socket: str = DEFAULT_SOCKET, *, timeout: float = 30.0, retry_for: float = RETRY_FOR) -> None:
        self.socket = socket
        self.timeout = timeout
        self.retry_for = retry_for
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub_: broker_pb2_grpc.BrokerStub | None = None

    def _stub(self) -> broker_pb2_grpc.BrokerStub:
        with self._lock:
            if self._stub_ is None:
                self._channel = grpc.insecure_channel(target(self.socket), options=CHANNEL_OPTIONS)
                self._stub_ = broker_pb2_grpc.BrokerStub(self._channel)
            return self._stub_

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._stub_ = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Broker(socket={self.socket!r})"

    def begin(
        self,
        token: str,
        *,
        tool: str,
        grants: list[str] | tuple[str, ...],
        ttl: int | float | None = None,
        narrow: Mapping[str, Mapping[str, list[str]]] | None = None,
        call_id: str | None = None,
    ) -> Task:
        """Begins a task (BeginTask) and returns it; the caller must :meth:`Task.end` it.

        Safe to retry: every attempt carries an idempotency key, an answer lost to the
        transport is retried with the same key for up to ten seconds, and when the daemon says
        the key already began a task (``begin_replayed``: it ended that task, whose answer was
        lost) the request is made once more with a new key.

        Raises:
            credbroker.Refused: (a subclass of) with the daemon's reason code.
        """
        req = begin_request(token, tool=tool, grants=grants, ttl=ttl, narrow=narrow, call_id=call_id)
        for _fresh in range(2):
            req.idempotency_key = str(uuid.uuid4())
            deadline = time.monotonic() + self.retry_for
            delay = 0.05
            while True:
                try:
                    resp = self._stub().BeginTask(req, timeout=self.timeout)
                except grpc.RpcError as e:
                    err = errors.from_rpc_error(e)
                    if err.reason == "begin_replayed":
                        log.info("an earlier attempt's task was ended; beginning afresh")
                        break
                    if not err.transport or time.monotonic() + delay >= deadline:
                        raise err from None
                    log.debug("BeginTask got no answer (%s); retrying", err.code.name)
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                task = Task(
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

    @contextmanager
    def task(
        self,
        token: str,
        *,
        tool: str,
        grants: list[str] | tuple[str, ...],
        ttl: int | float | None = None,
        narrow: Mapping[str, Mapping[str, list[str]]] | None = None,
        call_id: str | None = None,
    ) -> Iterator[Task]:
        """Begins a task for the ``with`` block and ends it when the block returns or raises
        (the block's exception is re-raised). Arguments as for :meth:`begin`."""
        task = self.begin(token, tool=tool, grants=grants, ttl=ttl, narrow=narrow, call_id=call_id)
        raising = False
        try:
            yield task
        except BaseException:
            raising = True
            raise
        finally:
            _end_on_exit(task.end, task.id, raising)

    def _end(self, task_id: str) -> TaskState:
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                resp = self._stub().EndTask(broker_pb2.EndTaskRequest(task_id=task_id), timeout=self.timeout)
            except grpc.RpcError as e:
                err = errors.from_rpc_error(e)
                if not err.transport or time.monotonic() + delay >= deadline:
                    raise err from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            log.info("task %s ended", task_id, extra={"task_id": task_id})
            return TaskState._from_proto(resp.task)
