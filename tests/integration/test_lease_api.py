"""Lease API for safe work: ensure_held() and, for asyncio, guard() cancelling work on loss."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aredis

from pylivermore import AsyncRegistry, LeaseLostError, Registry

FAST = {"ttl": 1.5, "heartbeat_interval": 0.5, "renew_deadline": 1.0}


def test_ensure_held_raises_once_the_lease_is_lost(client: redis.Redis, namespace: str) -> None:
    """ensure_held() passes while the lease is held and raises LeaseLostError (no round trip) after loss."""
    registry = Registry(client, namespace=namespace, **FAST)
    lease = registry.claim(1, "X")
    lease.ensure_held()
    registry.force_release(1, "test")
    deadline = time.monotonic() + 3
    while lease.lost_reason is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(LeaseLostError) as info:
        lease.ensure_held()
    assert info.value.reason == "expired"
    registry.close()


def test_ensure_held_raises_at_the_local_deadline(client: redis.Redis, namespace: str) -> None:
    """With the heartbeat stopped, ensure_held() raises "deadline" once renew_deadline has passed."""
    now = [100.0]
    registry = Registry(client, namespace=namespace, clock=lambda: now[0], **FAST)
    lease = registry.claim(1, "X")
    registry.close()
    now[0] += 0.99
    lease.ensure_held()
    now[0] += 0.02
    with pytest.raises(LeaseLostError) as info:
        lease.ensure_held()
    assert info.value.reason == "deadline"
    lease.release()


async def test_guard_cancels_the_block_when_the_lease_is_lost(aclient: aredis.Redis, namespace: str) -> None:
    """A block under `async with lease.guard()` is cancelled soon after the lease is lost and ends
    with LeaseLostError; the task itself is not left cancelled."""
    registry = AsyncRegistry(aclient, namespace=namespace, **FAST)
    lease = await registry.claim(1, "X")
    reached_end = False

    async def work() -> None:
        nonlocal reached_end
        async with lease.guard():
            await asyncio.sleep(10)
            reached_end = True

    task = asyncio.create_task(work())
    await asyncio.sleep(0.1)
    await registry.force_release(1, "test")
    started = time.monotonic()
    with pytest.raises(LeaseLostError) as info:
        await asyncio.wait_for(task, 3)
    assert info.value.reason == "expired"
    assert time.monotonic() - started < FAST["heartbeat_interval"] + 0.5
    assert not reached_end
    await registry.close()


async def test_guard_is_transparent_while_the_lease_is_held(aclient: aredis.Redis, namespace: str) -> None:
    """A block that finishes while the lease is held returns normally; a guard on a lost lease refuses to start."""
    registry = AsyncRegistry(aclient, namespace=namespace, **FAST)
    lease = await registry.claim(1, "X")
    async with lease.guard() as held:
        await asyncio.sleep(0.6)  # spans a heartbeat
        assert held is lease
    await lease.release()
    with pytest.raises(LeaseLostError):
        async with lease.guard():
            pass
    await registry.close()
