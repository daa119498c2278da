"""Durable claims: ``claim(..., replicas=N, replica_timeout=...)`` sends ``WAIT N`` in the claim's
own pipeline, so the claim is handed out only once N replicas have it; otherwise it is released
again and :class:`~pylivermore.NotReplicatedError` raised. On a Sentinel-managed master and a
replica, and on a cluster (each master has one replica); sync and asyncio.
"""

from __future__ import annotations

from typing import Any

import pytest

from pylivermore import ClaimConflictError, NotReplicatedError
from pylivermore._keys import Keys
from tests.integration.conftest import Topology, io, on_cluster
from tests.topology import ClusterSet, SentinelSet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TIMING: dict[str, Any] = {"ttl": 6.0, "heartbeat_interval": 1.0, "renew_deadline": 4.0}


def sentinel_topology(sentinel: SentinelSet, is_async: bool) -> Topology:
    client = sentinel.async_master_for() if is_async else sentinel.master_for()
    return Topology("sentinel", is_async, client, sentinel.master_for(admin=True))


def token_on(admin: Any, key: str) -> int | None:
    """The fencing token of the record at *key* as *admin*'s server has it (a replica included)."""
    value = admin.hget(key, "fencingToken")
    return None if value is None else int(value)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_durable_claim_is_on_the_replica_when_it_returns(
    steady_sentinel: SentinelSet, namespace: str, is_async: bool
) -> None:
    """replicas=1: the moment claim() returns, the replica already holds the record (read on the
    replica at once, no wait); a conflicting durable claim still raises ClaimConflictError."""
    sentinel = steady_sentinel
    t = sentinel_topology(sentinel, is_async)
    try:
        registry = t.registry(namespace=namespace, **TIMING)
        lease = await io(registry.claim(1, "durable", replicas=1, replica_timeout=5.0))
        with sentinel.node_admin(sentinel.replica) as replica:
            assert token_on(replica, Keys(namespace, "1").status) == lease.fencing_token
        rival = t.registry(namespace=namespace, instance_id="rival", **TIMING)
        with pytest.raises(ClaimConflictError):
            await io(rival.claim(1, "durable", replicas=1, replica_timeout=5.0))
        assert await io(lease.release())
    finally:
        await t.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_an_unreplicated_claim_is_released_and_refused(
    steady_sentinel: SentinelSet, namespace: str, is_async: bool
) -> None:
    """With the replica unreachable (paused, its link cut), replicas=1 waits replica_timeout, then
    releases the claim (a release entry follows the claim in the log; no record stays) and raises
    NotReplicatedError saying what happened and what to do. Asking for more replicas than exist
    is refused the same way. After the replica is back, the same claim succeeds."""
    sentinel = steady_sentinel
    t = sentinel_topology(sentinel, is_async)
    try:
        registry = t.registry(namespace=namespace, **TIMING)
        sentinel.replica.pause()
        try:
            t.admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
            with pytest.raises(NotReplicatedError) as refused:
                await io(registry.claim(1, "durable", replicas=1, replica_timeout=0.3))
        finally:
            sentinel.replica.resume()
        error = refused.value
        assert (error.exchange_id, error.replicas, error.acknowledged, error.timeout) == ("1", 1, 0, 0.3)
        assert "reached 0 of 1 replica(s) within 0.3 s, so it was released" in str(error)
        assert await io(registry.get(1)) is None
        events = [e.event for e in reversed(await io(registry.activity(1)))]
        assert events == ["claim", "deregister"], events

        with pytest.raises(NotReplicatedError, match="reached 1 of 2 replica"):
            await io(registry.claim(2, "too many", replicas=2, replica_timeout=0.3))
        assert await io(registry.get(2)) is None

        lease = await io(registry.claim(1, "durable", replicas=1, replica_timeout=5.0))  # the replica reconnects
        assert lease.fencing_token > 0
        assert await io(lease.release())
    finally:
        await t.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_durable_claims_on_a_cluster(cluster: ClusterSet, namespace: str, is_async: bool) -> None:
    """On a cluster, WAIT goes to the master that took the claim, on the same connection: with
    replicas=1 the record is on that master's replica when claim() returns, on every master;
    replicas=2 (each master has one replica) is refused and leaves nothing behind."""
    t = on_cluster(cluster, is_async)
    try:
        registry = t.registry(namespace=namespace, **TIMING)
        masters = {m.port: m for m in cluster.masters()}
        seen: set[int] = set()
        i = 0
        while len(seen) < len(masters):
            i += 1
            key = Keys(namespace, str(i)).status
            master = cluster.node_for_key(key)
            if master.port in seen:
                continue
            seen.add(master.port)
            lease = await io(registry.claim(i, "durable", replicas=1, replica_timeout=5.0))
            (replica,) = cluster.replicas(master)
            replica.admin.execute_command("READONLY")  # a replica serves reads of its master's slots
            assert token_on(replica.admin, key) == lease.fencing_token
            assert await io(lease.release())
        with pytest.raises(NotReplicatedError, match="reached 1 of 2 replica"):
            await io(registry.claim(i, "too many", replicas=2, replica_timeout=0.3))
        assert await io(registry.get(i)) is None
    finally:
        await t.close()
