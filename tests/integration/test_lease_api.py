"""Lease API for safe work: ensure_held() and, for asyncio, guard() cancelling work on loss; on
every topology (standalone and cluster; sync and asyncio where the API exists on both)."""

from __future__ import annotations

import asyncio

import pytest

from pylivermore import LeaseLostError
from pylivermore._keys import Keys
from tests.integration.conftest import ASYNC_ONLY, Topology, io
from tests.support import await_beat, await_until

FAST = {"ttl": 1.5, "heartbeat_interval": 0.5, "renew_deadline": 1.0}
#: How long a wait for something that must happen goes on before giving up (not a bound on the library).
GIVE_UP = 10.0


async def test_ensure_held_raises_once_the_lease_is_lost(topology: Topology, namespace: str) -> None:
    """ensure_held() passes while the lease is held and raises LeaseLostError (no round trip)
    once the heartbeat has seen the loss."""
    registry = topology.registry(namespace=namespace, **FAST)
    lease = await io(registry.claim(1, "X"))
    lease.ensure_held()
    await io(registry.force_release(1, "test"))
    assert await await_until(lambda: lease.lost_reason is not None, GIVE_UP), "the heartbeat did not see the loss"
    with pytest.raises(LeaseLostError) as info:
        lease.ensure_held()
    assert info.value.reason == "expired"


async def test_ensure_held_raises_at_the_local_deadline(topology: Topology, namespace: str) -> None:
    """With the heartbeat stopped, ensure_held() raises "deadline" once renew_deadline has passed."""
    now = [100.0]
    registry = topology.registry(namespace=namespace, clock=lambda: now[0], **FAST)
    lease = await io(registry.claim(1, "X"))
    await io(registry.close())
    now[0] += 0.99
    lease.ensure_held()
    now[0] += 0.02
    with pytest.raises(LeaseLostError) as info:
        lease.ensure_held()
    assert info.value.reason == "deadline"
    await io(lease.release())


@pytest.mark.parametrize("topology", ASYNC_ONLY, indirect=True)
async def test_guard_cancels_the_block_when_the_lease_is_lost(topology: Topology, namespace: str) -> None:
    """A block under `async with lease.guard()` is cancelled once the lease is lost (the heartbeat
    sees the loss) and ends with LeaseLostError; the task itself is not left cancelled. The
    block would sleep far longer than the give-up: it ends only by being cancelled."""
    registry = topology.registry(namespace=namespace, **FAST)
    lease = await registry.claim(1, "X")
    inside = asyncio.Event()
    reached_end = False

    async def work() -> None:
        nonlocal reached_end
        async with lease.guard():
            inside.set()
            await asyncio.sleep(6 * GIVE_UP)
            reached_end = True

    task = asyncio.create_task(work())
    await asyncio.wait_for(inside.wait(), GIVE_UP)
    await registry.force_release(1, "test")
    with pytest.raises(LeaseLostError) as info:
        await asyncio.wait_for(task, GIVE_UP)
    assert info.value.reason == "expired"
    assert not reached_end


@pytest.mark.parametrize("topology", ASYNC_ONLY, indirect=True)
async def test_guard_is_transparent_while_the_lease_is_held(topology: Topology, namespace: str) -> None:
    """A block that finishes while the lease is held returns normally; a guard on a lost lease refuses to start."""
    registry = topology.registry(namespace=namespace, **FAST)
    lease = await registry.claim(1, "X")
    async with lease.guard() as held:
        await await_beat(topology.admin, Keys(namespace, "1").status)  # spans a heartbeat
        assert held is lease
    await lease.release()
    with pytest.raises(LeaseLostError):
        async with lease.guard():
            pass


async def test_try_claim_answers_none_while_another_owner_holds(topology: Topology, namespace: str) -> None:
    """try_claim() gives a lease when the resource is free and None (no exception) while another
    owner holds it; the holder keeps its record untouched. After the release it succeeds again,
    with a higher fencing token."""
    first = topology.registry(namespace=namespace, **FAST)
    second = topology.registry(namespace=namespace, **FAST)
    lease = await io(first.try_claim(1, "X"))
    assert lease is not None
    key = Keys(namespace, "1").status
    before = topology.admin.hgetall(key)
    assert await io(second.try_claim(1, "X")) is None
    assert await io(second.try_claim(1, "X", replicas=0)) is None
    assert topology.admin.hgetall(key) == before
    assert await io(lease.release()) is True
    again = await io(second.try_claim(1, "X"))
    assert again is not None
    assert again.fencing_token > lease.fencing_token
    await io(again.release())
