"""The asyncio client (grpc.aio) against the real daemon."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import GRANT

from credbroker import AsyncBroker, InsufficientScope, TokenRejected


def test_an_async_task_is_begun_used_and_ended(socket, token, provider, report):
    async def run():
        async with AsyncBroker(socket) as broker:
            async with broker.task(token, tool="query", grants=[GRANT]) as task:
                cred = task.credential(GRANT)
                report(secret=cred.secret["password"], lease=cred.lease_id)
                assert provider.issued(cred.lease_id)
                renewed = await task.renew(token, ttl=60)
                assert renewed.state == "active"
            return task, cred

    task, cred = asyncio.run(run())
    assert task.ended and task.state.state == "ended"
    assert provider.revoked(cred.lease_id)


def test_an_async_task_ends_when_the_block_raises(socket, token, provider, report):
    seen = {}

    async def run():
        broker = AsyncBroker(socket)
        async with broker.task(token, tool="query", grants=[GRANT]) as task:
            seen["lease"] = task.credentials[0].lease_id
            report(secret=task.credentials[0].secret["password"], lease=seen["lease"])
            raise ValueError("bad rows")

    with pytest.raises(ValueError, match="bad rows"):
        asyncio.run(run())
    assert provider.revoked(seen["lease"])


def test_an_async_task_ends_when_the_block_is_cancelled(socket, token, provider, report):
    seen = {}

    async def run():
        broker = AsyncBroker(socket)
        started = asyncio.Event()

        async def tool():
            async with broker.task(token, tool="query", grants=[GRANT]) as task:
                seen["lease"] = task.credentials[0].lease_id
                report(secret=task.credentials[0].secret["password"], lease=seen["lease"])
                started.set()
                await asyncio.sleep(60)

        t = asyncio.create_task(tool())
        await started.wait()
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        # The EndTask ran to completion despite the cancellation.
        for _ in range(100):
            if provider.revoked(seen["lease"]):
                break
            await asyncio.sleep(0.05)

    asyncio.run(run())
    assert provider.revoked(seen["lease"])


def test_async_refusals_carry_the_reason_code(socket, token_noscope, token_wrong_aud, caplog):
    caplog.set_level(logging.DEBUG, logger="credbroker")

    async def run():
        broker = AsyncBroker(socket)
        with pytest.raises(InsufficientScope) as a:
            await broker.begin(token_noscope, tool="query", grants=[GRANT])
        with pytest.raises(TokenRejected) as b:
            await broker.begin(token_wrong_aud, tool="query", grants=[GRANT])
        return a.value, b.value

    a, b = asyncio.run(run())
    assert a.reason == "insufficient_scope" and a.grant == GRANT
    assert b.reason == "audience_mismatch"
    for t in (token_noscope, token_wrong_aud):
        assert t not in repr(a) + str(a) + repr(b) + str(b) + caplog.text
