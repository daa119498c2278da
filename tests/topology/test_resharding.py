"""Resharding while leases are live: the slot of a live lease moves to another master in the steps
Redis Cluster resharding takes, with the background heartbeat running (sync and asyncio).

Each step changes what the source node answers to the heartbeat's ``renew_many``:
1. IMPORTING/MIGRATING set, no key moved: the source still runs it.
2. The status key moved, the log and fence not yet: the source answers ``ASK`` (the heartbeat
   resends with ``ASKING`` to the target); a script over status and log answers ``TRYAGAIN``.
3. Every key moved: ``ASK`` for everything.
4. ``SETSLOT ... NODE``: the source answers ``MOVED`` (the heartbeat resends, then refreshes
   its slot map).
No lease may be lost, the record must end on the target alone, and owner operations during the
move either succeed or raise a clear error and change nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import RedisError

from pylivermore import State
from pylivermore._keys import Keys
from tests.integration.conftest import io, on_cluster
from tests.support import LossLog, await_beat
from tests.topology import ClusterSet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TTL, HB, DEADLINE = 3.0, 1.0, 2.0
TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_live_leases_survive_their_slot_moving(
    patient_cluster: ClusterSet, namespace: str, is_async: bool
) -> None:
    cluster = patient_cluster
    t = on_cluster(cluster, is_async)
    try:
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for i in (1, 2, 3)]
        moving, keys = leases[0], Keys(namespace, "1")
        step = cluster.migration(ClusterSet.slot_of(keys.status))
        source, target = step.source, step.target

        async def renewed_twice(phase: str) -> None:
            # Two beats written in this phase: the heartbeat got through its redirections.
            for _ in range(2):
                await await_beat(
                    t.admin, keys.status, timeout=10.0
                )  # a give-up: a late beat loses the lease, asserted below
            assert moving.is_valid, f"lost while {phase}: {moving.lost_reason}"

        await asyncio.to_thread(step.begin)
        await renewed_twice("the slot was marked migrating")

        await asyncio.to_thread(step.move, [keys.status])
        await renewed_twice("the status key had moved, the log and fence not")
        # A transition touches status and log, now on two nodes: Redis refuses it (TRYAGAIN).
        # It must either succeed or fail clearly, and change nothing when it fails.
        error: RedisError | None = None
        try:
            await io(moving.transition(State.STARTING))
        except RedisError as exc:
            error = exc
        if error is not None:
            assert "TRYAGAIN" in str(error) or "TTL exhausted" in str(error), f"unclear error: {error!r}"
            assert t.admin.hget(keys.status, "connectionState") == b"idle"
        done = error is None

        await asyncio.to_thread(step.move)
        await renewed_twice("every key had moved, the slot still migrating")
        if not done:
            await io(moving.transition(State.STARTING))  # ASK, followed by the cluster client
        await io(moving.transition(State.WARMING))

        await asyncio.to_thread(step.finish)
        await renewed_twice("the slot had moved (MOVED for a stale slot map)")
        await io(moving.transition(State.ACTIVE))

        await asyncio.sleep(TTL)  # a whole TTL more on the new owner
        assert losses.calls == [], f"leases lost: {losses.reasons}"
        assert all(lease.is_valid for lease in leases)
        assert target.admin.exists(keys.status, keys.log, keys.fence) == 3
        # (a plain client on the source would only be told MOVED: count the slot's keys there)
        assert source.admin.execute_command("CLUSTER", "COUNTKEYSINSLOT", step.slot) == 0, "keys left on the source"
        record = await io(registry.get(1))
        assert record.fencing_token == moving.fencing_token
        assert record.connection_state == State.ACTIVE
        moves = [(e.from_state, e.to_state) for e in reversed(await io(registry.activity(1))) if e.to_state]
        assert moves == [("idle", "starting"), ("starting", "warming"), ("warming", "active")], "a step logged twice"
        for lease in leases:
            assert await io(lease.release())
    finally:
        await t.close()
