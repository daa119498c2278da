"""The ``topology`` fixture: integration tests that mean the same on any deployment are written
once and run against a standalone server and a Redis Cluster (the session's ``redis_server`` and
``cluster``), through the sync driver and through the asyncio one.

Test bodies are ``async def`` and wrap each library call in :func:`io`, which awaits the
asyncio driver's coroutines and passes the sync driver's results through; the sync driver's
blocking calls then simply run on the event loop's thread, and its heartbeat in its own thread.
Inspection goes through ``topology.admin``, a sync client with every right (``RedisCluster`` on
the cluster, so key commands reach the right node).
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

from pylivermore import AsyncLease, AsyncRegistry, Registry
from pylivermore._keys import Keys
from pylivermore.server import RedisServer
from tests.conftest import make_admin_client, make_async_client, make_client
from tests.topology import ClusterSet

#: Every combination; a test that makes sense on one driver only narrows it with
#: ``@pytest.mark.parametrize("topology", ASYNC_ONLY, indirect=True)``.
FLAVOURS = ["standalone-sync", "standalone-async", "cluster-sync", "cluster-async"]
ASYNC_ONLY = ["standalone-async", "cluster-async"]

#: Script commands counted in ``INFO commandstats``.
SCRIPT_STATS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro")


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
    ) -> None:
        self.kind = kind
        self.is_async = is_async
        self.client = client
        self.admin = admin
        self.server = server
        self.cluster = cluster
        self._registries: list[Registry | AsyncRegistry] = []

    def __repr__(self) -> str:
        return f"<Topology {self.kind}-{'async' if self.is_async else 'sync'}>"

    @property
    def is_cluster(self) -> bool:
        return self.cluster is not None

    def registry(self, client: Any = None, **options: Any) -> Any:
        """A ``Registry`` (sync) or ``AsyncRegistry`` (asyncio) on the worker's client."""
        cls = AsyncRegistry if self.is_async else Registry
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


def standalone(server: RedisServer, is_async: bool) -> Topology:
    client = make_async_client(server) if is_async else make_client(server)
    return Topology("standalone", is_async, client, make_admin_client(server), server=server)


def on_cluster(cluster: ClusterSet, is_async: bool) -> Topology:
    client = cluster.async_client() if is_async else cluster.client()
    return Topology("cluster", is_async, client, cluster.admin_client(), cluster=cluster)


@pytest.fixture(params=FLAVOURS)
async def topology(request: pytest.FixtureRequest) -> AsyncIterator[Topology]:
    """Standalone (the session server) or cluster (the session cluster), sync or asyncio."""
    kind, mode = request.param.split("-")
    if kind == "standalone":
        t = standalone(request.getfixturevalue("redis_server"), mode == "async")
    else:
        t = on_cluster(request.getfixturevalue("cluster"), mode == "async")
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
