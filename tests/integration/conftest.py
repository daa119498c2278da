"""The ``topology`` fixture: integration tests that mean the same on any deployment are written
once and run against a standalone server and a Redis Cluster (the session's ``redis_server`` and
``cluster``), through the sync driver and through the asyncio one.

Test bodies are ``async def`` and wrap each library call in :func:`io`, which awaits the
asyncio driver's coroutines and passes the sync driver's results through; the sync driver's
blocking calls then simply run on the event loop's thread, and its heartbeat in its own thread.
Inspection goes through ``topology.admin``, a sync client with every right (``RedisCluster`` on
the cluster, so key commands reach the right node).

Two more flavours run the same tests over Redis Functions (``transport="functions"``, ``FCALL``):
``standalone-sync-functions`` and ``cluster-async-functions``. Their worker is a user with exactly
``pylivermore.acl.FUNCTION_WORKER_COMMANDS`` (on every key, like the suite's ``default`` user), made
on each server when the flavour starts, and :meth:`Topology.registry` passes the transport on.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from pylivermore import AsyncLease, AsyncRegistry, Registry, acl
from pylivermore._keys import Keys
from pylivermore._library import library
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer
from tests.conftest import ACL_MODE, make_admin_client, make_async_client, make_client
from tests.topology import ClusterSet

#: Every combination; a test that makes sense on one driver only narrows it with
#: ``@pytest.mark.parametrize("topology", ASYNC_ONLY, indirect=True)``.
FLAVOURS = [
    "standalone-sync",
    "standalone-async",
    "cluster-sync",
    "cluster-async",
    "standalone-sync-functions",
    "cluster-async-functions",
]
ASYNC_ONLY = ["standalone-async", "cluster-async"]

#: Script and function invocations counted in ``INFO commandstats``.
SCRIPT_STATS = (
    "cmdstat_eval",
    "cmdstat_evalsha",
    "cmdstat_eval_ro",
    "cmdstat_evalsha_ro",
    "cmdstat_fcall",
    "cmdstat_fcall_ro",
)

#: The worker of the functions flavours: a user with exactly acl.FUNCTION_WORKER_COMMANDS.
FUNCTIONS_USER, FUNCTIONS_PASSWORD = "functions-worker", "pylivermore-test-functions"


def add_functions_user(admins: Iterable[redis.Redis]) -> dict[str, str]:
    """Make the functions worker on each server of *admins*; the client options that log in as it."""
    if not ACL_MODE:
        return {}
    rules = ["reset", "on", f">{FUNCTIONS_PASSWORD}", "resetkeys", "~*", "resetchannels", "-@all"]
    rules += [f"+{c}" for c in acl.FUNCTION_WORKER_COMMANDS]
    for admin in admins:
        admin.execute_command("ACL", "SETUSER", FUNCTIONS_USER, *rules)
    return {"username": FUNCTIONS_USER, "password": FUNCTIONS_PASSWORD}


async def io(value: Any) -> Any:
    """The result of a library call: awaited for the asyncio driver, as is for the sync one."""
    return await value if inspect.isawaitable(value) else value


@contextlib.asynccontextmanager
async def entered(lease: Any) -> AsyncIterator[Any]:
    """``async with`` an AsyncLease, ``with`` a Lease: the same exit path either way."""
    if isinstance(lease, AsyncLease):
        async with lease:
            yield lease
    else:
        with lease:
            yield lease


class Topology:
    """One way of reaching Redis: ``kind`` (standalone or cluster) x driver (sync or asyncio).

    ``client`` is the worker's client for the driver under test (the restricted user),
    ``admin`` a sync all-rights client for setup and inspection. Registries made with
    :meth:`registry` are closed at teardown if the test did not close them.
    """

    def __init__(
        self,
        kind: str,
        is_async: bool,
        client: Any,
        admin: redis.Redis | RedisCluster,
        *,
        server: RedisServer | None = None,
        cluster: ClusterSet | None = None,
        transport: str = "scripts",
    ) -> None:
        self.kind = kind
        self.is_async = is_async
        self.transport = transport
        self.client = client
        self.admin = admin
        self.server = server
        self.cluster = cluster
        self._registries: list[Registry | AsyncRegistry] = []

    def __repr__(self) -> str:
        return f"<Topology {self.kind}-{'async' if self.is_async else 'sync'}-{self.transport}>"

    @property
    def is_cluster(self) -> bool:
        return self.cluster is not None

    def registry(self, client: Any = None, **options: Any) -> Any:
        """A ``Registry`` (sync) or ``AsyncRegistry`` (asyncio) on the worker's client."""
        cls = AsyncRegistry if self.is_async else Registry
        options.setdefault("transport", self.transport)
        registry = cls(client if client is not None else self.client, **options)
        self._registries.append(registry)
        return registry

    # The heartbeat's thread (sync) or task (asyncio) is private; these three are the only
    # places the tests reach for it.

    def heartbeat_worker(self, registry: Any) -> Any:
        """*registry*'s heartbeat thread or task, or None."""
        return registry._heartbeat._task if self.is_async else registry._heartbeat._thread

    def heartbeat_running(self, registry: Any) -> bool:
        """Whether *registry*'s background heartbeat (thread or task) is alive."""
        worker = self.heartbeat_worker(registry)
        if worker is None:
            return False
        return not worker.done() if self.is_async else bool(worker.is_alive())

    def heartbeat_stopped(self, registry: Any, worker: Any) -> bool:
        """Whether the heartbeat *worker* seen earlier has ended (and, for a thread, the registry
        has dropped it)."""
        if self.is_async:
            return bool(worker.done())
        return registry._heartbeat._thread is None and not worker.is_alive()

    # -- per-node inspection ---------------------------------------------------------------------

    def masters(self) -> list[redis.Redis]:
        """An admin client on each server that runs scripts: the server, or every master."""
        if self.cluster is None:
            assert isinstance(self.admin, redis.Redis)
            return [self.admin]
        return [node.admin for node in self.cluster.masters()]

    def node_admin(self, key: str) -> redis.Redis:
        """An admin client on the server that holds *key*."""
        if self.cluster is None:
            assert isinstance(self.admin, redis.Redis)
            return self.admin
        return self.cluster.node_for_key(key).admin

    def script_calls(self) -> int:
        """Script invocations so far (``INFO commandstats``), summed over the masters."""
        total = 0
        for admin in self.masters():
            info = admin.info("commandstats")
            total += sum(int(info[name]["calls"]) for name in SCRIPT_STATS if name in info)
        return total

    def reset_stats(self) -> None:
        for admin in self.masters():
            admin.config_resetstat()

    def flush_code(self, admin: redis.Redis) -> None:
        """Make *admin*'s server forget what the transport calls: ``SCRIPT FLUSH`` or ``FUNCTION FLUSH``."""
        if self.transport == "functions":
            admin.function_flush("SYNC")
        else:
            admin.script_flush()

    def code_loaded(self, admin: redis.Redis) -> bool:
        """Whether *admin*'s server has what the heartbeat calls: ``renew_many``'s script, or the library."""
        if self.transport == "functions":
            return bool(admin.function_list(library=library().name))
        return admin.script_exists(load_scripts()["renew_many"].sha1) == [True]

    def renewal_groups(self, namespace: str, ids: Iterable[int | str], batch: int) -> int:
        """The fewest renew_many calls that can renew *ids* once: a script runs on one hash
        slot, so on a cluster the leases are batched per slot (*batch* at most per call)."""
        keys = [Keys(namespace, str(i)).status for i in ids]
        if self.cluster is None:
            return math.ceil(len(keys) / batch)
        per_slot = Counter(ClusterSet.slot_of(k) for k in keys)
        return sum(math.ceil(n / batch) for n in per_slot.values())

    async def close(self) -> None:
        for registry in self._registries:
            await io(registry.close())
        await io(self.client.aclose() if self.is_async else self.client.close())
        self.admin.close()


def standalone(server: RedisServer, is_async: bool, transport: str = "scripts") -> Topology:
    admin = make_admin_client(server)
    login: dict[str, str] = add_functions_user([admin]) if transport == "functions" else {}
    client = make_async_client(server, **login) if is_async else make_client(server, **login)
    return Topology("standalone", is_async, client, admin, server=server, transport=transport)


def on_cluster(cluster: ClusterSet, is_async: bool, transport: str = "scripts") -> Topology:
    login = add_functions_user(node.admin for node in cluster.alive()) if transport == "functions" else {}
    client = cluster.async_client(**login) if is_async else cluster.client(**login)
    return Topology("cluster", is_async, client, cluster.admin_client(), cluster=cluster, transport=transport)


@pytest.fixture(params=FLAVOURS)
async def topology(request: pytest.FixtureRequest) -> AsyncIterator[Topology]:
    """Standalone (the session server) or cluster (the session cluster), sync or asyncio, over the
    scripts or (``-functions``) over Redis Functions."""
    kind, mode, *rest = request.param.split("-")
    transport = rest[0] if rest else "scripts"
    if kind == "standalone":
        server = request.getfixturevalue("redis_server")
        if transport == "functions" and server.version < (7, 0):
            pytest.skip(f"Redis Functions need Redis >= 7.0 ({server.name} {server.release})")
        t = standalone(server, mode == "async", transport)
    else:
        cluster = request.getfixturevalue("cluster")
        if transport == "functions" and cluster.masters()[0].server.version < (7, 0):
            pytest.skip("Redis Functions need Redis >= 7.0")
        t = on_cluster(cluster, mode == "async", transport)
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture(params=["sync", "async"])
async def fresh_standalone(request: pytest.FixtureRequest, fresh_server: RedisServer) -> AsyncIterator[Topology]:
    """A private server of this test's own (to pause, reconfigure ...), sync or asyncio."""
    t = standalone(fresh_server, request.param == "async")
    try:
        yield t
    finally:
        await t.close()
