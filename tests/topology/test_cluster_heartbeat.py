"""The background heartbeat on a real 3-master cluster: it alone keeps 15 leases spread over every
master alive for 3 x TTL (sync and asyncio), ``instances()`` lists them all, and a round costs
one pipeline per node, not one round trip per lease.

Timings: TTL 3 s, heartbeat every 1 s, renew deadline 2 s (the defaults' ratios).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import Registry
from pylivermore._keys import Keys
from tests.integration.conftest import io, on_cluster
from tests.support import LossLog, await_beat, await_until, wait_for_beat
from tests.topology import ClusterSet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TTL, HB, DEADLINE = 3.0, 1.0, 2.0
TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
PER_MASTER = 5
#: How long a test waits for an event before it gives up (not a bound on the library).
GIVE_UP = 10.0


def spread(cluster: ClusterSet, namespace: str, per_master: int = PER_MASTER) -> dict[int, list[int]]:
    """Resource ids of *namespace* whose keys live on each master: ``{master port: ids}``, with
    *per_master* ids each (every id hashes to a slot of its own)."""
    view = cluster.masters()[0].view()
    ranges = [(lo, hi, cluster.by_id(v.node_id).port) for v in view.values() if v.is_master for lo, hi in v.slots]
    out: dict[int, list[int]] = {port: [] for *_, port in ranges}
    i = 0
    while min(len(ids) for ids in out.values()) < per_master:
        i += 1
        slot = ClusterSet.slot_of(Keys(namespace, str(i)).status)
        port = next(p for lo, hi, p in ranges if lo <= slot <= hi)
        if len(out[port]) < per_master:
            out[port].append(i)
    return out


def evalsha_calls(cluster: ClusterSet) -> dict[int, int]:
    """EVALSHA calls so far on each master (``INFO commandstats``)."""
    out = {}
    for master in cluster.masters():
        info = master.admin.info("commandstats")
        out[master.port] = int(info.get("cmdstat_evalsha", {}).get("calls", 0))
    return out


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_heartbeat_alone_keeps_15_leases_on_every_master(
    cluster: ClusterSet, namespace: str, is_async: bool
) -> None:
    """15 leases, 5 on each master, renewed by the background heartbeat alone for 3 x TTL: none is
    lost, each record still carries its lease's fencing token, and instances() lists all 15."""
    ids = [i for group in spread(cluster, namespace).values() for i in group]
    t = on_cluster(cluster, is_async)
    try:
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for i in ids]
        await asyncio.sleep(3 * TTL)  # the observation window: without renewals every record expires in it
        assert losses.calls == [], f"leases lost: {losses.reasons}"
        assert all(lease.is_valid for lease in leases)
        for lease in leases:
            record = await io(registry.get(lease.exchange_id))
            assert record is not None, f"the record of {lease.exchange_id} expired"
            assert record.fencing_token == lease.fencing_token
        listed = await io(registry.instances())
        assert sorted(str(s.exchange_id) for s in listed) == sorted(str(i) for i in ids)
        for lease in leases:
            assert await io(lease.release())
    finally:
        await t.close()


def test_a_round_is_one_pipeline_per_node(cluster: ClusterSet, namespace: str) -> None:
    """Each master's 5 leases (5 slots: 5 renew_many calls a round) reach it in one write a round:
    the writes the heartbeat sends to a master number at most its renewals / 5 (+ 1 for a round
    cut by the window's edges), where one round trip per lease would send 5 times as many."""
    groups = spread(cluster, namespace)
    sends: Counter[int] = Counter()

    class CountingConnection(redis.Connection):
        """A real connection that counts its writes (a pipeline is one write) per server port."""

        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            sends[self.port] += 1
            super().send_packed_command(command, check_health)

    # from_url: the only way redis-py lets a cluster client choose its connection class
    client = redis.RedisCluster.from_url(
        cluster.url, connection_class=CountingConnection, retry=Retry(NoBackoff(), 0), socket_timeout=5.0
    )
    registry = Registry(client, namespace=namespace, **TIMING)
    try:
        losses = LossLog()
        leases = [registry.claim(i, f"exchange-{i}", on_lost=losses) for ids in groups.values() for i in ids]
        # Count from the second round on: the first also opens the connections (a handshake of a
        # few writes) and loads renew_many into each node's script cache.
        with cluster.admin_client() as admin:
            for ids in groups.values():
                wait_for_beat(admin, Keys(namespace, str(ids[0])).status, timeout=GIVE_UP)
        before, seen = evalsha_calls(cluster), Counter(sends)
        time.sleep(3 * TTL)
        calls = {port: n - before[port] for port, n in evalsha_calls(cluster).items()}
        window = sends - seen
        assert losses.calls == []
        for port in groups:
            rounds = calls[port] / PER_MASTER
            assert rounds >= 3 * TTL / HB - 3, f"master {port}: only {calls[port]} renewals in {3 * TTL} s"
            assert window[port] <= rounds + 1, f"master {port}: {window[port]} writes for {calls[port]} renewals"
        for lease in leases:
            lease.release()
    finally:
        registry.close()
        client.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_nodes_that_lost_their_script_cache_are_reloaded(
    cluster: ClusterSet, namespace: str, is_async: bool
) -> None:
    """SCRIPT FLUSH on every master (a restart or failover loses the cache the same way): each
    node answers the next round NOSCRIPT, the heartbeat loads renew_many there and renews."""
    groups = spread(cluster, namespace, per_master=1)
    t = on_cluster(cluster, is_async)
    try:
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for ids in groups.values() for i in ids]
        for master in cluster.masters():
            master.admin.script_flush()
        for lease in leases:
            for _ in range(2):
                await await_beat(t.admin, Keys(namespace, lease.exchange_id).status, timeout=GIVE_UP)
        assert losses.calls == []
        assert all(lease.is_valid for lease in leases)
    finally:
        await t.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_stalled_node_costs_only_its_own_leases(
    patient_cluster: ClusterSet, namespace: str, is_async: bool
) -> None:
    """One master stops answering (SIGSTOP): its leases are lost at their deadline, while the other
    masters' leases are renewed all along, each round's attempt on the stalled node being bounded
    in time (and the slot-map reload it triggers running beside the rounds, not in them)."""
    cluster = patient_cluster
    groups = spread(cluster, namespace, per_master=2)
    t = on_cluster(cluster, is_async)
    stalled = cluster.by_port(next(iter(groups)))
    try:
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        leases = {
            i: await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for ids in groups.values() for i in ids
        }
        victims = [leases[i] for i in groups[stalled.port]]
        others = [lease for i, lease in leases.items() if i not in groups[stalled.port]]
        paused_at = time.monotonic()
        stalled.server.pause()
        try:
            # Bound: the deadline of a beat acknowledged just before the pause, plus a round.
            assert await await_until(lambda: all(v.lost_reason for v in victims), GIVE_UP)
            # not renewed since the pause: each was valid no longer than a deadline past it
            assert all(v._core.deadline <= paused_at + DEADLINE for v in victims)
            for lease in others:  # renewed while the stalled node held up every round
                await await_beat(t.admin, Keys(namespace, lease.exchange_id).status, timeout=GIVE_UP)
        finally:
            stalled.server.resume()
        assert sorted(reason for _, reason in losses.calls) == ["deadline"] * len(victims)
        assert all(lease.is_valid for lease in others)
        for lease in leases.values():
            await io(lease.release())  # a lease lost at its deadline still deletes its record
    finally:
        await t.close()
