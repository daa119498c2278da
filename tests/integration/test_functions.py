"""The Redis Functions transport (``transport="functions"``) on real servers: every call is an
``FCALL`` of the ``pylivermore_v<N>`` library (single calls, heartbeat rounds, durable claims), none
an ``EVALSHA``; a server that lost the library (``FUNCTION FLUSH``, a restart, a failover) gets it
loaded again by the next call or heartbeat round; over ``maxmemory`` the heartbeats still renew (the
``allow-oom`` flag) while claims are refused; and the ACL rules of
``acl.worker_rules(..., transport="functions")`` are exactly enough.

Standalone (the session server) and cluster (the session cluster), sync and asyncio, like the
``topology`` fixture; its ``-functions`` flavours also run the lease-API and heartbeat tests over
functions. Timings as in test_heartbeat.py: TTL 1.5 s, heartbeat every 0.5 s, deadline 1.0 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from redis.exceptions import NoPermissionError, ResponseError

from pylivermore import AsyncRegistry, Registry, State, acl
from pylivermore._keys import Keys
from pylivermore._library import library
from pylivermore.server import RedisServer
from tests.conftest import ACL_MODE, make_admin_client, make_async_client, make_client
from tests.integration.conftest import SCRIPT_STATS, Topology, io, on_cluster, standalone
from tests.support import DEADLINE, HB, TTL, LossLog, await_beat, await_until
from tests.topology import ClusterSet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
GIVE_UP = 10.0
FLAVOURS = ["standalone-sync", "standalone-async", "cluster-sync", "cluster-async"]


def needs_functions(server: RedisServer) -> None:
    if server.version < (7, 0):
        pytest.skip(f"Redis Functions need Redis >= 7.0 ({server.name} {server.release})")


@pytest.fixture(params=FLAVOURS)
async def functions(request: pytest.FixtureRequest) -> AsyncIterator[Topology]:
    """A topology whose registries use transport="functions", as a user with exactly
    acl.FUNCTION_WORKER_COMMANDS (tests/integration/conftest.py)."""
    kind, mode = request.param.split("-")
    if kind == "standalone":
        server = request.getfixturevalue("redis_server")
        needs_functions(server)
        t = standalone(server, mode == "async", "functions")
    else:
        cluster = request.getfixturevalue("cluster")
        needs_functions(cluster.masters()[0].server)
        t = on_cluster(cluster, mode == "async", "functions")
    try:
        yield t
    finally:
        await t.close()


def commandstats(t: Topology) -> dict[str, int]:
    """Calls per script or function command, summed over the masters."""
    out = dict.fromkeys(SCRIPT_STATS, 0)
    for admin in t.masters():
        info = admin.info("commandstats")
        for name in SCRIPT_STATS:
            out[name] += int(info[name]["calls"]) if name in info else 0
    return out


def library_on(admin: redis.Redis) -> bool:
    return bool(admin.function_list(library=library().name))


def ids_per_master(cluster: ClusterSet, namespace: str) -> dict[int, int]:
    """One exchange id whose keys live on each master, by master port."""
    out: dict[int, int] = {}
    for i in range(1, 1000):
        out.setdefault(cluster.node_for_key(Keys(namespace, str(i)).status).port, i)
        if len(out) == len(cluster.masters()):
            return out
    raise AssertionError("no id for some master")


# -- the whole API over FCALL ---------------------------------------------------------------------


async def test_lifecycle_over_fcall(functions: Topology, namespace: str) -> None:
    """Claim, transitions, updates, an error, explicit and background heartbeats, an operator's
    force_release and a release all work over FCALL, and not one EVALSHA (nor, on a cluster, a
    COMMAND GETKEYS to route an FCALL) is sent."""
    t = functions
    t.reset_stats()
    registry = t.registry(namespace=namespace, **TIMING)
    key = Keys(namespace, "1").status
    lease = await io(registry.claim(1, "Binance"))
    assert await io(lease.transition("starting")) is State.STARTING
    await io(lease.set_symbol_count(12))
    await io(lease.set_admin("ops@example.com", "Ops"))
    await io(lease.record_error("feed dropped"))
    await io(lease.heartbeat())
    await await_beat(t.admin, key)  # a background round: renew_many
    status = await io(registry.get(1))
    assert status is not None
    assert (status.connection_state, status.symbol_count, status.last_error) == (State.STARTING, 12, "feed dropped")
    assert status.admin_email == "ops@example.com"
    other = await io(registry.claim(2, "Kraken"))
    assert await io(registry.force_release(2, "test: operator")) == other.fencing_token
    assert await io(lease.release()) is True
    assert await io(registry.get(1)) is None
    events = [e.event for e in await io(registry.activity(1))]
    assert events == ["deregister", "error", "state_transition", "claim"]
    stats = commandstats(t)
    assert stats["cmdstat_fcall"] >= 8
    assert sum(n for name, n in stats.items() if name != "cmdstat_fcall") == 0, stats
    # On a cluster each FCALL goes straight to its key's node: redis-py never had to ask where its keys are.
    getkeys = [a.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0) for a in t.masters()]
    assert sum(getkeys) == 0
    for i in (1, 2):  # loaded on first use where the keys live (on a cluster: not on every master)
        assert library_on(t.node_admin(Keys(namespace, str(i)).status))


async def test_the_library_is_reloaded_after_function_flush(functions: Topology, namespace: str) -> None:
    """FUNCTION FLUSH on every master: the next single call loads the library on the node of its key
    and applies once; flushed again, the next heartbeat round loads it and renews; no lease is lost."""
    t = functions
    registry = t.registry(namespace=namespace, **TIMING)
    key = Keys(namespace, "1").status
    losses = LossLog()
    lease = await io(registry.claim(1, "Binance", on_lost=losses))
    await await_beat(t.admin, key)
    for admin in t.masters():
        admin.function_flush("SYNC")
        assert not library_on(admin)
    assert await io(lease.transition("starting")) is State.STARTING  # a single call
    assert library_on(t.node_admin(key))
    for admin in t.masters():
        admin.function_flush("SYNC")
    await await_beat(t.admin, key)  # a heartbeat round
    assert library_on(t.node_admin(key))
    await await_beat(t.admin, key)
    assert lease.is_valid
    assert losses.calls == []
    transitions = [e.to_state for e in await io(registry.activity(1)) if e.event == "state_transition"]
    assert transitions == ["starting"]
    assert await io(lease.release()) is True


# -- a Redis Cluster: one pipeline per node ---------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_cluster_rounds_over_fcall_survive_a_flush_on_one_master(
    cluster: ClusterSet, namespace: str, is_async: bool
) -> None:
    """Leases on every master are renewed by FCALL rounds (one pipeline per node); FUNCTION FLUSH on
    one master costs nothing: that node's next round loads the library there and renews."""
    needs_functions(cluster.masters()[0].server)
    t = on_cluster(cluster, is_async, "functions")
    try:
        losses = LossLog()
        registry = t.registry(namespace=namespace, **TIMING)
        placed = ids_per_master(cluster, namespace)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for i in placed.values()]
        victim = cluster.by_port(next(iter(placed)))
        for lease in leases:
            await await_beat(t.admin, Keys(namespace, lease.exchange_id).status, timeout=GIVE_UP)
        t.reset_stats()
        victim.admin.function_flush("SYNC")
        for lease in leases:
            for _ in range(2):
                await await_beat(t.admin, Keys(namespace, lease.exchange_id).status, timeout=GIVE_UP)
        assert library_on(victim.admin)
        assert losses.calls == []
        assert all(lease.is_valid for lease in leases)
        stats = commandstats(t)
        assert stats["cmdstat_fcall"] >= 2 * len(leases)
        assert stats["cmdstat_evalsha"] == 0
        for lease in leases:
            assert await io(lease.release()) is True
    finally:
        await t.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_durable_claim_over_fcall_after_a_flush(cluster: ClusterSet, namespace: str, is_async: bool) -> None:
    """A durable claim (FCALL, then WAIT, in one pipeline on the key's node) on a master that lost
    the library: it is loaded there, the claim and the WAIT are sent once more, and the replica has
    the record when claim() returns."""
    needs_functions(cluster.masters()[0].server)
    t = on_cluster(cluster, is_async, "functions")
    try:
        registry = t.registry(namespace=namespace, **TIMING)
        key = Keys(namespace, "1").status
        master = cluster.node_for_key(key)
        master.admin.function_flush("SYNC")
        lease = await io(registry.claim(1, "durable", replicas=1, replica_timeout=5.0))
        assert library_on(master.admin)
        (replica,) = cluster.replicas(master)
        replica.admin.execute_command("READONLY")  # a replica serves reads of its master's slots
        assert int(replica.admin.hget(key, "fencingToken") or 0) == lease.fencing_token
        assert await io(lease.release()) is True
    finally:
        await t.close()


async def test_cluster_failover_over_fcall(fresh_cluster: ClusterSet, namespace: str) -> None:
    """A master holding leases is killed and its replica promoted: the library came with the
    replication, the leases' next rounds renew on the new master and a transition goes through."""
    cluster = fresh_cluster
    needs_functions(cluster.masters()[0].server)
    t = on_cluster(cluster, False, "functions")
    try:
        victim = cluster.masters()[0]
        ids = [i for i in range(1, 300) if cluster.node_for_key(Keys(namespace, str(i)).status) is victim][:2]
        losses = LossLog()
        timing = {"ttl": 6.0, "heartbeat_interval": 1.0, "renew_deadline": 4.0}  # a failover fits in the deadline
        registry = t.registry(namespace=namespace, **timing)
        leases = [await io(registry.claim(i, f"exchange-{i}", on_lost=losses)) for i in ids]
        (replica,) = cluster.replicas(victim)
        assert await await_until(lambda: library_on(replica.admin), GIVE_UP), "the library never reached the replica"
        target = int(victim.replication()["master_repl_offset"])
        assert await await_until(lambda: int(replica.replication().get("slave_repl_offset", -1)) >= target, GIVE_UP)
        killed_at = time.monotonic()
        promoted = await asyncio.to_thread(cluster.fail_over, victim)
        assert promoted is replica

        def renewed() -> bool:
            return all(lease.lost_reason is not None or lease._core.deadline > killed_at + 4.0 for lease in leases)

        assert await await_until(renewed, 20.0), "the leases neither renewed nor were lost"
        assert losses.calls == [], losses.calls
        assert await io(leases[0].transition("starting")) is State.STARTING
        for lease in leases:
            assert await io(lease.release()) is True
    finally:
        await t.close()


# -- restart, memory pressure, a server without functions ---------------------------------------------


def functions_login(admin: redis.Redis, namespace: str) -> dict[str, str]:
    """A worker of *namespace* with exactly acl.worker_rules(namespace, ..., transport="functions")."""
    if not ACL_MODE:
        return {}
    user, password = f"fn-{namespace}", "fn-secret"
    admin.execute_command(
        "ACL", "SETUSER", user, "reset", *acl.worker_rules(namespace, password, transport="functions")
    )
    return {"username": user, "password": password}


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_restarted_server_gets_the_library_again(
    fresh_server: RedisServer, namespace: str, is_async: bool
) -> None:
    """A restart without persistence loses the library (and the records): the next heartbeat round
    reloads it and learns the lease expired; a new claim then works."""
    needs_functions(fresh_server)
    admin = make_admin_client(fresh_server)
    login = functions_login(admin, namespace)
    client: Any = make_async_client(fresh_server, **login) if is_async else make_client(fresh_server, **login)
    registry: Any = (AsyncRegistry if is_async else Registry)(
        client, namespace=namespace, transport="functions", **TIMING
    )
    try:
        losses = LossLog()
        lease = await io(registry.claim(1, "Binance", on_lost=losses))
        assert library_on(admin)
        fresh_server.restart()
        functions_login(admin, namespace)  # users are not persisted either
        assert not library_on(admin)
        assert await await_until(lambda: losses.calls, GIVE_UP), "the loss was not noticed"
        assert losses.reasons == ["expired"]  # the round ran renew_many: the library was loaded again
        assert library_on(admin)
        again = await io(registry.claim(1, "Binance"))
        assert await io(again.release()) is True
        assert lease.lost_reason == "expired"
    finally:
        await io(registry.close())
        await io(client.aclose() if is_async else client.close())
        admin.close()


def test_heartbeats_renew_over_maxmemory(fresh_server: RedisServer, namespace: str) -> None:
    """Over maxmemory (noeviction) a heartbeat still renews (its first write, PEXPIRE, needs no
    memory: the heartbeat functions carry allow-oom, as EVALSHA would run the script), while a claim
    is refused with OOM, as its script would be at its first write."""
    needs_functions(fresh_server)
    admin = make_admin_client(fresh_server)
    client = make_client(fresh_server, **functions_login(admin, namespace))
    registry = Registry(client, namespace=namespace, transport="functions", **TIMING)
    try:
        lease = registry.claim(1, "Binance")
        registry.claim(2, "Kraken").release()  # the library is loaded, the log stream exists
        admin.config_set("maxmemory", 1)
        try:
            lease.heartbeat()
            with pytest.raises(ResponseError, match="maxmemory"):
                registry.claim(3, "Bitstamp")
            with pytest.raises(ResponseError, match="maxmemory"):
                lease.transition("starting")
            lease.heartbeat()
            assert lease.is_valid
        finally:
            admin.config_set("maxmemory", 0)
        assert lease.release() is True
    finally:
        registry.close()
        client.close()
        admin.close()


# -- ACL: exactly the documented rules -------------------------------------------------------------


def refusals(admin: redis.Redis, user: str) -> list[str]:
    """What ACL LOG recorded as refused to *user*, less CLIENT SETINFO (redis-py sends it on every
    connection; acl.CLIENT_SETINFO explains why the rules leave it out)."""

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    out = []
    for entry in admin.execute_command("ACL", "LOG"):
        fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        fields = {text(k): v for k, v in fields.items()}
        if text(fields["username"]) == user and text(fields["object"]) not in ("client|setinfo", "client"):
            out.append(text(fields["object"]))
    return out


@pytest.mark.skipif(not ACL_MODE, reason="the suite runs without ACL users (PYLIVERMORE_TEST_ACL=0)")
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_functions_worker_rules_are_exactly_enough(
    redis_server: RedisServer, admin: redis.Redis, namespace: str, is_async: bool
) -> None:
    """A user with exactly acl.worker_rules(namespace, ..., transport="functions") runs the whole
    lifecycle over FCALL, including loading the library after FUNCTION FLUSH, and ACL LOG records
    no refusal; the same rules refuse EVALSHA, and the scripts worker's rules refuse FCALL."""
    needs_functions(redis_server)
    login = functions_login(admin, namespace)
    admin.execute_command("ACL", "LOG", "RESET")
    client: Any = make_async_client(redis_server, **login) if is_async else make_client(redis_server, **login)
    cls: Any = AsyncRegistry if is_async else Registry
    registry = cls(client, namespace=namespace, transport="functions", **TIMING)
    scripts_registry = cls(client, namespace=namespace, **TIMING)
    default_client: Any = make_async_client(redis_server) if is_async else make_client(redis_server)
    default_registry = cls(default_client, namespace=namespace, transport="functions", **TIMING)
    try:
        admin.function_flush("SYNC")
        lease = await io(registry.claim(1, "Binance"))
        await io(lease.transition("starting"))
        await io(lease.set_symbol_count(3))
        await io(lease.record_error("x"))
        await await_beat(admin, Keys(namespace, "1").status)
        admin.function_flush("SYNC")
        await await_beat(admin, Keys(namespace, "1").status)
        assert await io(registry.get(1)) is not None
        assert [s.exchange_id for s in await io(registry.instances())] == [1]
        assert await io(registry.activity(1, 10))
        assert await io(lease.release()) is True
        assert refusals(admin, login["username"]) == []
        with pytest.raises(NoPermissionError):  # the functions worker may not EVALSHA
            await io(scripts_registry.claim(2, "Kraken"))
        with pytest.raises(NoPermissionError):  # the suite's default user is the scripts worker: no FCALL
            await io(default_registry.claim(3, "Bitstamp"))
    finally:
        for r in (registry, scripts_registry, default_registry):
            await io(r.close())
        for c in (client, default_client):
            await io(c.aclose() if is_async else c.close())
        admin.execute_command("ACL", "DELUSER", login["username"])
