"""Failover with live leases: a cluster master, or the Sentinel-managed master, is killed (SIGKILL)
while it holds leases, and a replica is promoted.

What must hold: an owner either still holds a live record on the promoted replica (its heartbeat
finds the new master and renews), or learns of the loss (``on_lost``) by its deadline. It never
goes on believing it owns a record that is gone or held by another. A claim after the failover
gets a higher fencing token than any issued before. Where asynchronous replication lost an
acknowledged claim, the fencing token still orders the owners (RELIABILITY.md).

Timings: TTL 6 s, heartbeat every 1 s, renew deadline 4 s: a failover (≈2-3 s here) fits in the
deadline, so the usual outcome is a lease that survives.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pylivermore import NotReplicatedError, Registry
from pylivermore._keys import Keys
from tests.integration.conftest import Topology, io, on_cluster
from tests.support import LossLog, await_until, wait_until
from tests.topology import ClusterSet, SentinelSet

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(180)]

TTL, HB, DEADLINE = 6.0, 1.0, 4.0
TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: How long a test waits for an event before it gives up (not a bound on the library).
GIVE_UP = 10.0


async def settle_after_failover(registry: Any, leases: list[Any], losses: LossLog, killed_at: float) -> None:
    """Wait until every lease either renewed on the new master or is lost, then check the
    invariant: a valid lease's record exists with its own fencing token; a lost one was reported
    once, by its deadline."""

    def renewed_after_kill(lease: Any) -> bool:
        # renewed after the kill: the local deadline moved past kill + renew_deadline
        return bool(lease.is_valid and lease._core.deadline > killed_at + DEADLINE)

    def settled() -> bool:
        return all(lease.lost_reason is not None or renewed_after_kill(lease) for lease in leases)

    assert await await_until(settled, GIVE_UP), "a lease neither renewed nor lost"
    for lease in leases:
        record = await io(registry.get(lease.exchange_id))
        if lease.is_valid:
            assert record is not None, f"{lease.exchange_id}: valid, but its record is gone"
            assert record.fencing_token == lease.fencing_token, f"{lease.exchange_id}: valid, but held by another"
        else:
            assert lease.lost_reason in ("deadline", "expired", "taken")
            # valid no longer than the deadline of its last beat before the kill
            assert lease._core.deadline <= killed_at + DEADLINE
    assert len(losses.calls) == sum(1 for lease in leases if not lease.is_valid), "on_lost not called once per loss"


async def check_new_claims_fence_higher(registry: Any, leases: list[Any], claimant: Any) -> None:
    """Release (or give up) each lease; another owner's claim then gets a higher fencing token."""
    for lease in leases:
        old = lease.fencing_token
        await io(lease.release())
        if await io(claimant.get(lease.exchange_id)) is not None:  # lost but still recorded: let it go
            await io(claimant.force_release(lease.exchange_id, "test: after failover"))
        new = await io(claimant.claim(lease.exchange_id, "after-failover"))
        assert new.fencing_token > old, f"{lease.exchange_id}: token {new.fencing_token} after {old}"
        await io(new.release())


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_cluster_master_failover_with_live_leases(
    fresh_cluster: ClusterSet, namespace: str, is_async: bool
) -> None:
    cluster = fresh_cluster
    t = on_cluster(cluster, is_async)
    try:
        victim = cluster.masters()[0]
        ids = [i for i in range(1, 200) if cluster.node_for_key(Keys(namespace, str(i)).status) is victim][:3]
        elsewhere = next(i for i in range(1, 200) if i not in ids)
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for i in [*ids, elsewhere]]
        # Replication is asynchronous: let the replica have the claims before the kill (the
        # lost-claim case is test_a_claim_lost_by_asynchronous_replication).
        for replica in cluster.replicas(victim):
            replica_offset_reached(victim, replica)
        killed_at = time.monotonic()
        promoted = await asyncio.to_thread(cluster.fail_over, victim)
        assert promoted is not victim
        await settle_after_failover(registry, leases, losses, killed_at)
        claimant = t.registry(t.client, namespace=namespace, **TIMING)
        await check_new_claims_fence_higher(registry, leases, claimant)
    finally:
        await t.close()


def replica_offset_reached(master: Any, replica: Any, timeout: float = 10.0) -> None:
    """Wait until *replica* has processed everything *master* has written so far."""
    target = int(master.replication()["master_repl_offset"])
    deadline = time.monotonic() + timeout
    while int(replica.replication().get("slave_repl_offset", -1)) < target:
        assert time.monotonic() < deadline, f"{replica} did not catch up with {master}"
        time.sleep(0.01)


def sentinel_topology(sentinel: SentinelSet, is_async: bool) -> Topology:
    client = sentinel.async_master_for() if is_async else sentinel.master_for()
    return Topology("sentinel", is_async, client, sentinel.master_for(admin=True))


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_sentinel_failover_with_live_leases(sentinel: SentinelSet, namespace: str, is_async: bool) -> None:
    t = sentinel_topology(sentinel, is_async)
    try:
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        # replicas=1: each claim is on the replica before it is handed out (see test_durable_claims)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses, replicas=1)) for i in (1, 2, 3)]
        killed_at = time.monotonic()
        await asyncio.to_thread(sentinel.kill_master)
        await settle_after_failover(registry, leases, losses, killed_at)
        claimant = t.registry(t.client, namespace=namespace, **TIMING)
        await check_new_claims_fence_higher(registry, leases, claimant)
    finally:
        await t.close()


def test_a_claim_lost_by_asynchronous_replication(sentinel: SentinelSet, namespace: str) -> None:
    """The replica is paused and its link cut, so a plain claim is acknowledged by the master alone; the master dies
    and the replica is promoted without it. The owner learns of the loss (its heartbeat finds no
    record: "expired") by its deadline; the next owner's fencing token is still higher (it counts
    from the server's clock in microseconds, not only from the lost fence key), so a store that
    keeps the highest token it has seen still refuses the first owner. A durable claim
    (replicas=1) made in the same situation is refused and leaves nothing behind."""
    client, admin = sentinel.master_for(), sentinel.master_for(admin=True)
    registry = Registry(client, namespace=namespace, **TIMING)
    try:
        losses = LossLog()
        # Paused alone, the replica would still find the claim in its socket buffer on resuming:
        # cut its link too, so that the master has nowhere to send the claim.
        sentinel.replica.pause()
        admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
        try:
            lease = registry.claim(1, "acknowledged-then-lost", on_lost=losses)
            with pytest.raises(NotReplicatedError) as refused:
                registry.claim(2, "durable", replicas=1, replica_timeout=0.3)
            assert refused.value.acknowledged == 0
            assert registry.get(2) is None  # released at once, not left to expire
            sentinel.master.stop(kill=True)  # the claim of 1 never reached the replica
        finally:
            sentinel.replica.resume()
        killed_at = time.monotonic()
        sentinel.kill_master()  # the master is already dead: wait for the promotion
        assert registry.get(1) is None, "the promoted replica has the claim: it was replicated after all"
        assert wait_until(lambda: lease.lost_reason is not None, GIVE_UP), "the owner never learned"
        assert lease.lost_reason in ("expired", "deadline")
        assert lease._core.deadline <= killed_at + DEADLINE  # valid no longer than its deadline
        assert len(losses.calls) == 1
        successor = Registry(client, namespace=namespace, **TIMING)
        try:
            with successor.claim(1, "successor") as second:
                assert second.fencing_token > lease.fencing_token
        finally:
            successor.close()
    finally:
        registry.close()
        client.close()
        admin.close()
