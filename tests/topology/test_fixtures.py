"""The topology fixtures do what they promise: a 3+3 cluster with replication, slot migration in
steps, a failover by SIGKILL, and a Sentinel failover; worker clients (the restricted ACL user)
work on each of them."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import AskError, MovedError

from pylivermore import AsyncRegistry, Registry
from tests.topology import SLOTS, ClusterSet, SentinelSet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def replicate(master_admin: redis.Redis) -> None:
    """Block until every write the master acknowledged so far reached one replica (WAIT)."""
    assert master_admin.execute_command("WAIT", 1, 10_000) >= 1, "no replica acknowledged the write"


def test_cluster_has_three_masters_each_with_a_replica(cluster: ClusterSet) -> None:
    """3 masters cover all 16384 slots, each has exactly one live replica whose link is up, and
    every node agrees on that (ROLE on each replica names its master's port)."""
    masters = cluster.masters()
    assert len(masters) == 3
    views = [node.view() for node in cluster.alive()]
    for view in views:
        owned = [v.slots for v in view.values() if v.is_master and v.slots]
        assert sum(hi - lo + 1 for slots in owned for lo, hi in slots) == SLOTS
    for master in masters:
        (replica,) = cluster.replicas(master)
        for view in views:
            assert view[replica.node_id].master_id == master.node_id
        role = replica.admin.execute_command("ROLE")
        assert role[0] in (b"slave", "slave")
        assert int(role[2]) == master.port
        assert replica.replication()["master_link_status"] == "up"
    assert len(cluster.alive()) == 6


def test_cluster_write_is_readable_on_the_replica(cluster: ClusterSet, namespace: str) -> None:
    """A key written through the worker's RedisCluster client is readable on the replica of the
    master that serves it, by the worker in READONLY mode, once replicated."""
    key = f"{namespace}:{{1}}:probe"
    client = cluster.client()
    try:
        client.set(key, "v1")
        master = cluster.node_for_key(key)
        assert client.get_node_from_key(key).port == master.port
        replicate(master.admin)
        (replica,) = cluster.replicas(master)
        with redis.Redis(host=replica.host, port=replica.port, single_connection_client=True) as on_replica:
            with pytest.raises(MovedError):
                on_replica.get(key)  # a replica redirects reads until READONLY
            on_replica.execute_command("READONLY")
            assert on_replica.get(key) == b"v1"
        client.delete(key)
    finally:
        client.close()


def test_slot_migration_moves_a_key(fresh_cluster: ClusterSet, namespace: str) -> None:
    """In steps: while the slot is MIGRATING the worker still reads the key (from the source,
    then through ASK from the target once the key has moved); after SETSLOT ... NODE every node
    maps the slot to the target and the key lives there only."""
    cluster = fresh_cluster
    key = f"{namespace}:{{1}}:probe"
    slot = cluster.slot_of(key)
    client = cluster.client()
    try:
        client.set(key, "v1")
        step = cluster.migration(slot)
        source, target = step.source, step.target
        step.begin()
        assert client.get(key) == b"v1"  # still on the source
        assert step.move([key]) == 1
        with pytest.raises(AskError):
            source.admin.get(key)
        assert client.get(key) == b"v1"  # redis-py follows the ASK (the worker may send ASKING)
        step.finish()
        assert cluster.node_for_slot(slot) is target
        assert target.admin.get(key) == b"v1"
        with pytest.raises(MovedError):
            source.admin.get(key)
        assert client.get(key) == b"v1"  # after MOVED, redis-py learns the new owner
        assert client.get_node_from_key(key).port == target.port
        cluster.wait_ready()
    finally:
        client.close()


def test_master_kill_promotes_its_replica(fresh_cluster: ClusterSet, namespace: str) -> None:
    """SIGKILL of a master: its replica is promoted with the replicated data, the cluster is ok
    again, and the killed node, restarted, rejoins as a replica of its successor."""
    cluster = fresh_cluster
    key = f"{namespace}:{{1}}:probe"
    with cluster.client() as client:
        client.set(key, "v1")
    master = cluster.node_for_key(key)
    replicate(master.admin)
    (replica,) = cluster.replicas(master)
    promoted = cluster.fail_over(master)
    assert promoted is replica
    assert not master.alive
    assert cluster.node_for_key(key) is replica
    assert len(cluster.masters()) == 3
    with cluster.client() as client:  # a new client learns the new slot map
        assert client.get(key) == b"v1"
        client.set(key, "v2")
    cluster.restart(master)
    assert master.role() == "slave"
    assert cluster.master_of(master) is replica
    cluster.wait_ready(full=True)


def test_sentinel_fails_over(sentinel: SentinelSet, namespace: str) -> None:
    """SIGKILL of the master: the Sentinel promotes the replica, and a Sentinel-managed worker
    client then writes to the new master; a Registry works through it before and after."""
    key = f"{namespace}:{{1}}:probe"
    client = sentinel.master_for()
    try:
        registry = Registry(client, namespace=namespace)
        lease = registry.claim(1, "X")
        client.set(key, "v1")
        with sentinel.admin_client() as admin:
            replicate(admin)
        old = sentinel.master
        new = sentinel.kill_master()
        assert new is not old
        assert sentinel.reported_master() == new.port
        with sentinel.master_for() as after:
            assert after.get(key) == b"v1"
            after.set(key, "v2")
            second = Registry(after, namespace=namespace)
            assert second.get(1) is not None
            assert second.force_release(1, "failover test") == lease.fencing_token
            second.close()
        with sentinel.admin_client() as admin:
            assert admin.get(key) == b"v2"
            assert admin.execute_command("ROLE")[0] in (b"master", "master")
        registry.close()
    finally:
        client.close()


async def test_sentinel_async_client_follows_the_master(sentinel: SentinelSet, namespace: str) -> None:
    """The asyncio Sentinel-managed worker client runs a registry on the master, and after a
    failover a new one reaches the promoted replica."""
    client = sentinel.async_master_for()
    try:
        registry = AsyncRegistry(client, namespace=namespace)
        lease = await registry.claim(1, "X")
        await lease.transition("starting")
        await lease.heartbeat()
        with sentinel.admin_client() as admin:
            replicate(admin)
        await registry.close()
    finally:
        await client.aclose()
    new = sentinel.kill_master()
    assert sentinel.reported_master() == new.port
    after = sentinel.async_master_for()
    try:
        registry = AsyncRegistry(after, namespace=namespace)
        status = await registry.get(1)
        assert status is not None
        assert status.fencing_token == lease.fencing_token
        assert await registry.force_release(1, "failover test") == lease.fencing_token
        await registry.close()
    finally:
        await after.aclose()
