"""Least privilege: the documented ACL rules are enough for workers and dashboards, and no more.

A private server gets three users: ``worker`` and ``dashboard`` built from
:mod:`pylivermore.acl` for namespace ``exchange``, and ``admin`` for the test's own setup. A
private Redis Cluster (3 masters, 3 replicas) gets the same users: there the worker's client is
redis-py's ``RedisCluster``, sync and asyncio, and ACL LOG proves that no node refused it a single
command. A Sentinel with ACL users of its own gives a client :func:`acl.sentinel_client_rules`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import NoPermissionError

from pylivermore import AsyncRegistry, ClaimConflictError, Registry, State, acl
from pylivermore._keys import Keys
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer, find_server_binary, server_info
from tests.support import await_beat, wait_for_beat
from tests.topology import ClusterSet, SentinelSet

ADMIN = ("admin", "admin-secret")


def require_server() -> str:
    binary = find_server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server on PATH")
        pytest.skip("no redis-server on PATH")
    return binary


def setinfo_rules() -> list[str]:
    """``+client|setinfo`` where the server knows it (7.2+, Valkey), as acl.CLIENT_SETINFO advises:
    redis-py sends it on every connection, and the ACL LOG checks below must see no refusal."""
    return [f"+{c}" for c in acl.CLIENT_SETINFO] if server_info(require_server()).version >= (7, 2) else []


def users() -> list[str]:
    return [
        "--user", "default", "off",
        "--user", "admin", "on", f">{ADMIN[1]}", "~*", "&*", "+@all",
        "--user", "worker", *acl.worker_rules("exchange", "w-secret"), *setinfo_rules(),
        "--user", "dashboard", *acl.dashboard_rules("exchange", "d-secret"), *setinfo_rules(),
    ]  # fmt: skip


@contextlib.contextmanager
def own_users_only() -> Iterator[None]:
    """These servers have users of their own: the suite's (PYLIVERMORE_REDIS_ARGS, see
    tests/conftest.py) would define ``default`` and ``admin`` a second time, so they are left
    out while the servers start."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYLIVERMORE_REDIS_ARGS", raising=False)
        yield


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    require_server()
    with own_users_only():
        s = RedisServer(extra_args=users()).start()
    try:
        yield s
    finally:
        s.close()


def connect(server: RedisServer, user: str, password: str) -> redis.Redis:
    return redis.Redis.from_url(server.url, username=user, password=password, retry=None, socket_timeout=5)


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    c = connect(server, *ADMIN)
    yield c
    c.close()


@pytest.fixture
def worker(server: RedisServer) -> Iterator[redis.Redis]:
    c = connect(server, "worker", "w-secret")
    yield c
    c.close()


def test_script_commands_match_the_lua_sources() -> None:
    """SCRIPT_COMMANDS lists exactly the commands the Lua scripts call (the ACL must allow them all)."""
    called = set()
    for spec in load_scripts().values():
        called |= {c.lower() for c in re.findall(r"(?:rcall|redis\.p?call)\('([A-Z]+)'", spec.source)}
    granted = set(acl.SCRIPT_COMMANDS)
    assert not called - granted, f"the scripts call commands SCRIPT_COMMANDS lacks: {sorted(called - granted)}"
    assert not granted - called, f"SCRIPT_COMMANDS lists commands no script calls: {sorted(granted - called)}"


def refused_on(admin: redis.Redis, user: str) -> list[str]:
    """What this server's ACL LOG recorded as refused to *user* (command or key names)."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    objects = []
    for entry in admin.execute_command("ACL", "LOG"):
        fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        fields = {text(k): v for k, v in fields.items()}
        if text(fields["username"]) == user:
            objects.append(text(fields["object"]))
    return objects


def test_worker_runs_the_whole_lifecycle(server: RedisServer, worker: redis.Redis, admin: redis.Redis) -> None:
    """Under the worker rules: claim, transitions, field updates, errors, heartbeat, reads, release,
    force_release, and recovery from SCRIPT FLUSH (SCRIPT LOAD is allowed) all work, and the
    server refused the worker nothing (ACL LOG)."""
    admin.execute_command("ACL", "LOG", "RESET")
    registry = Registry(worker, ttl=3, heartbeat_interval=1, renew_deadline=2)
    lease = registry.claim(1, "Coinbase")
    with pytest.raises(ClaimConflictError):
        Registry(worker).claim(1, "Coinbase")
    for step in ("starting", "warming", "active"):
        lease.transition(step)
    admin.script_flush()
    lease.set_symbol_count(5)
    lease.set_admin("ops@example.com", "Ops")
    lease.set_address("192.0.2.1", "DE")
    lease.record_error("boom")
    lease.heartbeat()
    assert lease.status().symbol_count == 5
    assert [s.exchange_id for s in registry.instances()] == [1]
    assert len(registry.activity(1)) == 5
    assert lease.release()
    second = registry.claim(1, "Coinbase")
    assert registry.force_release(1, "maintenance") == second.fencing_token
    # Without history: a waiting claim reads the empty log's last id (XINFO STREAM), then blocks on it.
    bare = Registry(worker, ttl=3, heartbeat_interval=1, renew_deadline=2, log_retention=0)
    bare.claim(2, "Kraken").release()
    held = bare.claim(2, "Kraken")
    assert bare.try_claim(2, "Kraken", wait=0.2) is None
    assert held.release()
    bare.close()
    registry.close()
    assert refused_on(admin, "worker") == []


def test_worker_is_refused_outside_its_namespace(worker: redis.Redis, admin: redis.Redis) -> None:
    """A worker of namespace "exchange" gets NOPERM for any other namespace, and nothing is written."""
    registry = Registry(worker, namespace="other")
    with pytest.raises(NoPermissionError):
        registry.claim(1, "X")
    assert admin.keys("other:*") == []
    with pytest.raises(NoPermissionError):
        worker.set("unrelated", "x")
    registry.close()


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "GET", "requirepass"),
        ("FLUSHALL",),
        ("DEBUG", "SLEEP", "0"),
        ("SCRIPT", "FLUSH"),
        ("KEYS", "*"),
        ("CLIENT", "LIST"),
        ("EVAL", "return 1", "0"),
        ("ACL", "LIST"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_worker_is_refused_administrative_commands(worker: redis.Redis, command: tuple[str, ...]) -> None:
    """Administrative and free-form commands get NOPERM for a worker."""
    with pytest.raises(NoPermissionError):
        worker.execute_command(*command)


def test_dashboard_reads_but_cannot_write(server: RedisServer, worker: redis.Redis) -> None:
    """The dashboard rules allow get/instances/activity and refuse claims and direct writes."""
    owner = Registry(worker)
    lease = owner.claim(2, "Kraken")
    lease.transition("starting")
    dash_client = connect(server, "dashboard", "d-secret")
    dashboard = Registry(dash_client)
    status = dashboard.get(2)
    assert status is not None
    assert status.connection_state == "starting"
    assert 2 in [s.exchange_id for s in dashboard.instances()]
    assert [e.event for e in dashboard.activity(2)] == ["state_transition", "claim"]
    with pytest.raises(NoPermissionError):
        dashboard.claim(3, "X")
    with pytest.raises(NoPermissionError):
        dash_client.hset("exchange:{2}:status", "connectionState", "active")
    assert lease.release()
    owner.close()
    dashboard.close()
    dash_client.close()


# -- Redis Cluster ---------------------------------------------------------------------------------

WORKER, DASHBOARD = ("worker", "w-secret"), ("dashboard", "d-secret")
BEAT = {"ttl": 3, "heartbeat_interval": 1, "renew_deadline": 2}


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[ClusterSet]:
    """3 masters and 3 replicas with the users above (replicas and MIGRATE use ``admin``)."""
    require_server()
    with own_users_only():
        c = ClusterSet(3, 1, admin=ADMIN, extra_args=users()).start()
    try:
        yield c
    finally:
        c.close()


def refused(cluster: ClusterSet, user: str) -> list[str]:
    """What ACL LOG on any live node recorded as refused to *user* (command or key names)."""
    return [obj for node in cluster.alive() for obj in refused_on(node.admin, user)]


@pytest.fixture
def clean_acl_log(acl_cluster: ClusterSet) -> ClusterSet:
    for node in acl_cluster.alive():
        node.admin.execute_command("ACL", "LOG", "RESET")
    return acl_cluster


def test_worker_runs_the_whole_lifecycle_on_a_cluster(clean_acl_log: ClusterSet) -> None:
    """Under the worker rules a sync RedisCluster client (it also sends CLUSTER SLOTS and
    COMMAND) claims, transitions, updates, recovers from SCRIPT FLUSH on every master, is renewed
    by the background heartbeat, reads, releases, force-releases and makes a durable claim (WAIT);
    no node refused it anything."""
    cluster = clean_acl_log
    client, admin = cluster.client(username=WORKER[0], password=WORKER[1]), cluster.admin_client()
    registry = Registry(client, **BEAT)
    try:
        lease = registry.claim(1, "Coinbase")
        with pytest.raises(ClaimConflictError):
            Registry(client).claim(1, "Coinbase")
        for step in ("starting", "warming", "active"):
            lease.transition(step)
        for node in cluster.masters():
            node.admin.script_flush()
        lease.set_symbol_count(5)
        lease.record_error("boom")
        lease.heartbeat()
        wait_for_beat(admin, Keys("exchange", "1").status, timeout=BEAT["heartbeat_interval"] + 2)
        assert lease.status().symbol_count == 5
        assert 1 in [s.exchange_id for s in registry.instances()]
        assert len(registry.activity(1)) == 5
        assert lease.release()
        second = registry.claim(1, "Coinbase")
        assert registry.force_release(1, "maintenance") == second.fencing_token
        durable = registry.claim(7, "Durable", replicas=1)  # WAIT in the claim's pipeline
        assert durable.release()
        assert refused(cluster, "worker") == []
    finally:
        registry.close()
        client.close()
        admin.close()


async def test_async_worker_runs_on_a_cluster(clean_acl_log: ClusterSet) -> None:
    """Under the worker rules an asyncio RedisCluster client claims, transitions, is renewed by
    the heartbeat task, reads and releases; no node refused it anything."""
    cluster = clean_acl_log
    client, admin = cluster.async_client(username=WORKER[0], password=WORKER[1]), cluster.admin_client()
    registry = AsyncRegistry(client, **BEAT)
    try:
        lease = await registry.claim(2, "Kraken")
        await lease.transition("starting")
        await await_beat(admin, Keys("exchange", "2").status, timeout=BEAT["heartbeat_interval"] + 2)
        assert 2 in [s.exchange_id for s in await registry.instances()]
        assert [e.event for e in await registry.activity(2)] == ["state_transition", "claim"]
        assert await lease.release()
        assert refused(cluster, "worker") == []
    finally:
        await registry.close()
        await client.aclose()
        admin.close()


def test_worker_follows_redirections_while_a_slot_migrates(clean_acl_log: ClusterSet) -> None:
    """While the slot of a live lease migrates and its keys already moved, the worker's reads,
    transitions and explicit and background heartbeats follow ASK (ASKING is granted), and after
    the slot changes owner every call follows MOVED; the lease is never lost and no node refused
    the worker anything."""
    cluster = clean_acl_log
    client, admin = cluster.client(username=WORKER[0], password=WORKER[1]), cluster.admin_client()
    registry = Registry(client, **BEAT)
    lost: list[Any] = []
    try:
        lease = registry.claim(3, "Bitstamp", on_lost=lost.append)
        key = Keys("exchange", "3").status
        step = cluster.migration(cluster.slot_of(key)).begin()
        # Every key of the resource moves at once: a script whose keys are split between the
        # two nodes gets TRYAGAIN until they are together again.
        assert step.move() >= 2  # the status record and the activity log
        assert step.keys_left() == []
        lease.heartbeat()  # ASK -> ASKING + EVALSHA on the target
        wait_for_beat(admin, key, timeout=BEAT["heartbeat_interval"] + 2)  # a background round, with ASKING
        assert lease.transition("starting") is State.STARTING
        status = registry.get(3)
        assert status is not None
        assert status.connection_state is State.STARTING
        step.finish()
        assert lease.transition("warming") is State.WARMING
        lease.heartbeat()
        wait_for_beat(admin, key, timeout=BEAT["heartbeat_interval"] + 2)
        assert lease.release()
        assert not lost
        assert refused(cluster, "worker") == []
    finally:
        registry.close()
        client.close()
        admin.close()


def test_worker_reads_from_replicas(clean_acl_log: ClusterSet) -> None:
    """A worker client reading from replicas (READONLY is granted) sees the records."""
    from redis.cluster import LoadBalancingStrategy

    cluster = clean_acl_log
    client = cluster.client(username=WORKER[0], password=WORKER[1])
    reader = cluster.client(
        username=WORKER[0], password=WORKER[1], load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS
    )
    owner = Registry(client)
    try:
        lease = owner.claim(4, "Gemini")
        master = cluster.node_for_key(Keys("exchange", "4").status)
        assert master.admin.execute_command("WAIT", 1, 10_000) >= 1
        status = Registry(reader).get(4)
        assert status is not None
        assert status.fencing_token == lease.fencing_token
        assert lease.release()
        assert refused(cluster, "worker") == []
    finally:
        owner.close()
        client.close()
        reader.close()


def test_dashboard_reads_a_cluster_but_cannot_write(clean_acl_log: ClusterSet) -> None:
    """The dashboard rules let a RedisCluster client read records and activity without a single
    refusal, and refuse a claim."""
    cluster = clean_acl_log
    client = cluster.client(username=WORKER[0], password=WORKER[1])
    dash_client = cluster.client(username=DASHBOARD[0], password=DASHBOARD[1])
    owner, dashboard = Registry(client), Registry(dash_client)
    try:
        lease = owner.claim(5, "Bybit")
        status = dashboard.get(5)
        assert status is not None
        assert 5 in [s.exchange_id for s in dashboard.instances()]
        assert [e.event for e in dashboard.activity(5)] == ["claim"]
        assert refused(cluster, "dashboard") == []
        with pytest.raises(NoPermissionError):
            dashboard.claim(6, "X")
        assert "evalsha" in refused(cluster, "dashboard")
        assert lease.release()
    finally:
        owner.close()
        dashboard.close()
        client.close()
        dash_client.close()


# -- Sentinel ---------------------------------------------------------------------------------------

SENTINEL_ADMIN, SENTINEL_CLIENT = ("sentinel-admin", "sa-secret"), ("lookup", "l-secret")


@pytest.fixture
def acl_sentinel() -> Iterator[SentinelSet]:
    """A master, a replica and a Sentinel, all with users of their own."""
    require_server()
    sentinel_users = [
        "user default off",
        f"user {SENTINEL_ADMIN[0]} on >{SENTINEL_ADMIN[1]} ~* &* +@all",
        " ".join(["user", SENTINEL_CLIENT[0], *acl.sentinel_client_rules(SENTINEL_CLIENT[1]), *setinfo_rules()]),
    ]
    with own_users_only():
        s = SentinelSet(admin=ADMIN, extra_args=users(), sentinel_config=sentinel_users, sentinel_admin=SENTINEL_ADMIN)
        s.start()
    try:
        yield s
    finally:
        s.close()


async def test_sentinel_managed_worker_needs_nothing_more(acl_sentinel: SentinelSet) -> None:
    """A Sentinel-managed worker (sync and asyncio) finds the master with the sentinel client
    rules and runs a registry with the worker rules: no data node and no Sentinel refused it
    anything, and a Sentinel user without those rules is refused the lookup."""
    sync_client = acl_sentinel.master_for(sentinel_auth=SENTINEL_CLIENT, username=WORKER[0], password=WORKER[1])
    async_client = acl_sentinel.async_master_for(sentinel_auth=SENTINEL_CLIENT, username=WORKER[0], password=WORKER[1])
    try:
        registry = Registry(sync_client, **BEAT)
        lease = registry.claim(1, "Coinbase", replicas=1)  # durable: WAIT for the replica
        lease.heartbeat()
        registry.close()
        aregistry = AsyncRegistry(async_client, **BEAT)
        status = await aregistry.get(1)
        assert status is not None
        assert await aregistry.force_release(1, "test") == lease.fencing_token
        await aregistry.close()
    finally:
        sync_client.close()
        await async_client.aclose()
    for server in acl_sentinel.servers:
        with acl_sentinel.node_admin(server) as node:
            assert node.execute_command("ACL", "LOG") == []
    with acl_sentinel.sentinel_client() as sentinel:
        assert [e for e in sentinel.execute_command("ACL", "LOG") if e["username"] == SENTINEL_CLIENT[0]] == []
        sentinel.execute_command("ACL", "SETUSER", "bare", "on", ">b-secret", "-@all")
    bare = acl_sentinel.master_for(sentinel_auth=("bare", "b-secret"), username=WORKER[0], password=WORKER[1])
    try:
        with pytest.raises(NoPermissionError):
            bare.ping()
    finally:
        bare.close()
