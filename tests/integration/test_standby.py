"""``registry.standby(...)``: a warm spare that holds nothing while the owner lives and takes over
within moments of its release, or once a dead owner's record expires; it gives up only when its
*stop* event is set (looked at every *check_every* seconds). On every topology, sync and asyncio.

Bounds come from events and the configured intervals (a holder TTL far beyond the give-up time,
the record's PTTL), not from wall time alone.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest

from pylivermore._keys import Keys
from tests.integration.conftest import Topology, io
from tests.integration.test_claim_wait import GIVE_UP, LONG, SHORT, STANDALONE, commandstats, waiting


def start_standby(topology: Topology, registry: Any, **options: Any) -> asyncio.Task[Any]:
    if topology.is_async:
        return asyncio.create_task(registry.standby(1, "Spare", **options))
    return asyncio.create_task(asyncio.to_thread(registry.standby, 1, "Spare", **options))


def new_event(topology: Topology) -> asyncio.Event | threading.Event:
    return asyncio.Event() if topology.is_async else threading.Event()


async def test_standby_takes_over_when_the_owner_releases(topology: Topology, namespace: str) -> None:
    """Across several rounds of check_every, the spare holds nothing; the owner's release hands it
    the resource long before the owner's TTL would have ended (GIVE_UP is a third of it)."""
    owner_registry = topology.registry(namespace=namespace, **LONG)
    spare_registry = topology.registry(namespace=namespace, **LONG)
    owner = await io(owner_registry.claim(1, "Owner"))
    task = start_standby(topology, spare_registry, check_every=0.2)
    await waiting(topology, namespace, task)
    await asyncio.sleep(0.5)  # a few rounds go by: the spare still holds nothing
    assert not task.done()
    status = await io(owner_registry.get(1))
    assert status is not None
    assert status.fencing_token == owner.fencing_token
    await io(owner.release())
    lease = await asyncio.wait_for(task, GIVE_UP)
    assert lease is not None
    assert lease.fencing_token > owner.fencing_token
    assert lease.is_valid
    await io(lease.release())


async def test_standby_takes_over_from_a_dead_owner(topology: Topology, namespace: str) -> None:
    owner_registry = topology.registry(namespace=namespace, **SHORT)
    spare_registry = topology.registry(namespace=namespace, **SHORT)
    owner = await io(owner_registry.claim(1, "Owner"))
    await io(owner_registry.close())  # the owner's heartbeat stops: its record runs out its TTL
    before = time.monotonic()
    pttl = topology.admin.pttl(Keys(namespace, "1").status)
    assert pttl > 0, "the record expired before the spare started: the test proves nothing"
    task = start_standby(topology, spare_registry, check_every=0.4)
    lease = await asyncio.wait_for(task, SHORT["ttl"] + GIVE_UP)
    assert time.monotonic() >= before + pttl / 1000 - 0.002, "the spare got the resource before the record expired"
    assert lease is not None
    assert lease.fencing_token > owner.fencing_token
    await io(lease.release())


async def test_standby_stops_when_asked(topology: Topology, namespace: str) -> None:
    """*stop* set while the spare waits: it answers None within a round, having taken nothing; set
    before it starts: None without a claim."""
    owner_registry = topology.registry(namespace=namespace, **LONG)
    spare_registry = topology.registry(namespace=namespace, **LONG)
    owner = await io(owner_registry.claim(1, "Owner"))
    stop = new_event(topology)
    task = start_standby(topology, spare_registry, stop=stop, check_every=0.3)
    await waiting(topology, namespace, task)
    stop.set()
    assert await asyncio.wait_for(task, 0.3 + GIVE_UP) is None
    status = await io(owner_registry.get(1))
    assert status is not None
    assert status.fencing_token == owner.fencing_token
    await io(owner.release())


@pytest.mark.parametrize("topology", STANDALONE, indirect=True)
async def test_standby_with_stop_already_set_claims_nothing(topology: Topology, namespace: str) -> None:
    registry = topology.registry(namespace=namespace, **LONG)
    await io(registry.get(1))  # the registry's first-use check is done
    stop = new_event(topology)
    stop.set()
    topology.reset_stats()
    assert await io(registry.standby(1, "Spare", stop=stop)) is None
    stats = commandstats(topology)
    assert not stats.get("evalsha", 0) + stats.get("fcall", 0), stats
    assert topology.admin.exists(Keys(namespace, "1").status) == 0


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
@pytest.mark.parametrize("topology", STANDALONE, indirect=True)
async def test_bad_check_every_is_refused(topology: Topology, namespace: str, bad: float) -> None:
    registry = topology.registry(namespace=namespace, **LONG)
    with pytest.raises(ValueError, match="check_every"):
        await io(registry.standby(1, "Spare", check_every=bad))
    assert topology.admin.exists(Keys(namespace, "1").status) == 0
