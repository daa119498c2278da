"""Real Redis topologies for the test suite, built on :class:`pylivermore.server.RedisServer`:
a Redis Cluster of masters and replicas (:class:`ClusterSet`) and a Sentinel-managed master and
replica (:class:`SentinelSet`), on loopback, with step-by-step fault tools (slot migration in
steps, failover by SIGKILL) that tests drive while leases are live.

Every wait here polls an event (CLUSTER INFO / CLUSTER NODES / ROLE / SENTINEL) with a bound;
none sleeps for a fixed time. With ``admin`` credentials (the suite's ACL mode, see
tests/conftest.py), replicas authenticate to their master as that user, MIGRATE moves keys with
it, and the Sentinel monitors with it; worker clients connect as the restricted ``default`` user.

This module is the package ``tests.topology``; its smoke tests live next to it
(tests/topology/test_fixtures.py).
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as StartupNode
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from pylivermore.server import RedisServer

HOST = "127.0.0.1"
SLOTS = 16384
#: Socket timeout of every client made here: long enough for a loaded 2-core machine, short
#: enough that a frozen node cannot hang a test.
SOCKET_TIMEOUT = 5.0

Credentials = tuple[str, str]


class TopologyTimeout(AssertionError):
    """A topology did not reach the awaited state within its bound (the message says what is missing)."""


def wait_for(problem: Callable[[], str | None], timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll *problem* (None when the awaited state holds, else what is still missing) for at
    most *timeout* seconds; raise :class:`TopologyTimeout` naming the last problem seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = problem()
        except (RedisError, OSError) as exc:  # a node restarting or just killed: not ready yet
            last = f"{type(exc).__name__}: {exc}"
        if last is None:
            return
        if time.monotonic() >= deadline:
            raise TopologyTimeout(f"{what} not reached within {timeout:.1f} s: {last}")
        time.sleep(interval)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info_fields(raw: Any) -> dict[str, str]:
    """``key:value`` lines of a raw INFO / CLUSTER INFO reply (or redis-py's parsed dict)."""
    if isinstance(raw, dict):
        return {str(k): _text(v) for k, v in raw.items()}
    fields: dict[str, str] = {}
    for line in _text(raw).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _auth_kwargs(credentials: Credentials | None) -> dict[str, str]:
    return {} if credentials is None else {"username": credentials[0], "password": credentials[1]}


def _master_auth_args(credentials: Credentials | None) -> list[str]:
    # Every data node gets these, masters too: a master that is killed and restarted comes
    # back as a replica of its successor and must then authenticate to it.
    return [] if credentials is None else ["--masteruser", credentials[0], "--masterauth", credentials[1]]


def _cluster_port() -> int:
    """A free port in 20000-30000 whose cluster bus port (port + 10000) is free too
    (``pylivermore.server``'s own pick checks only the port itself)."""
    for _ in range(200):
        port = random.randint(20000, 30000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind((HOST, p))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port pair (p, p + 10000) found on {HOST} for p in 20000-30000")


def _start_cluster_server(binary: str | None, args: Sequence[str]) -> RedisServer:
    """Start a cluster node; another process may grab either port between the check and the
    bind, so a failed start is retried on new ports a few times."""
    for attempt in range(5):
        server = RedisServer(binary, extra_args=args, port=_cluster_port())
        try:
            return server.start()
        except RuntimeError:
            server.close()
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _node_client(port: int, credentials: Credentials | None, **kwargs: Any) -> redis.Redis:
    """A plain client on one node, retries off (a test or a poll sees exactly its own calls)."""
    options: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT, "retry": Retry(NoBackoff(), 0)}
    options.update(_auth_kwargs(credentials))
    options.update(kwargs)
    return redis.Redis(host=HOST, port=port, **options)


# -- Redis Cluster ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """One line of a node's ``CLUSTER NODES``: what that node believes about *node_id*."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        return not self.flags & {"fail", "fail?", "handshake", "noaddr"}


def parse_cluster_nodes(raw: Any) -> dict[str, NodeView]:
    views: dict[str, NodeView] = {}
    for line in _text(raw).splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split(",")[0].split("@")[0]
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # [slot->-id] / [slot-<-id]: a migration in progress
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views[parts[0]] = NodeView(
            node_id=parts[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3],
            slots=tuple(sorted(slots)),
        )
    return views


class ClusterNode:
    """One node of a :class:`ClusterSet`: its server process, its cluster id and an admin client
    owned by the set (do not close it; it reconnects by itself after a restart)."""

    def __init__(self, server: RedisServer, credentials: Credentials | None) -> None:
        self.server = server
        self.port = server.port
        self.host = HOST
        self.admin = _node_client(server.port, credentials)
        self.node_id = ""  # known once started

    def __repr__(self) -> str:
        return f"<ClusterNode {self.host}:{self.port} {self.node_id[:8]} {'up' if self.alive else 'down'}>"

    @property
    def name(self) -> str:
        """redis-py's name of the node (``host:port``), as in ``RedisCluster.get_node``."""
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.server.process is not None

    def view(self) -> dict[str, NodeView]:
        """This node's ``CLUSTER NODES``, parsed."""
        return parse_cluster_nodes(self.admin.execute_command("CLUSTER", "NODES"))

    def cluster_info(self) -> dict[str, str]:
        return _info_fields(self.admin.execute_command("CLUSTER", "INFO"))

    def replication(self) -> dict[str, str]:
        return _info_fields(self.admin.execute_command("INFO", "replication"))

    def role(self) -> str:
        """``master`` or ``slave``, from ROLE."""
        return _text(self.admin.execute_command("ROLE")[0])


class SlotMigration:
    """Moving one hash slot from *source* to *target*, in the steps Redis Cluster resharding takes,
    so that a test can act between them: :meth:`begin` (IMPORTING on the target, MIGRATING on the
    source: from then on the source answers ASK for keys it no longer has and TRYAGAIN for a
    script spanning both sides), :meth:`move` (MIGRATE of given keys, or of every key left in the
    slot), :meth:`finish` (move the rest, then SETSLOT ... NODE on every master and wait until
    every live node agrees on the new owner)."""

    def __init__(self, cluster: ClusterSet, slot: int, source: ClusterNode, target: ClusterNode) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target

    def __repr__(self) -> str:
        return f"<SlotMigration {self.slot}: {self.source.port} -> {self.target.port}>"

    def begin(self) -> SlotMigration:
        # Target first: once the source says MIGRATING, it redirects with ASK, and the target
        # must already accept ASKING for the slot.
        self.target.admin.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source.node_id)
        self.source.admin.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target.node_id)
        return self

    def keys_left(self, count: int = 1000) -> list[bytes]:
        """Keys of the slot still on the source."""
        return list(self.source.admin.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, count))

    def move(self, keys: Iterable[str | bytes] | None = None, *, batch: int = 100) -> int:
        """MIGRATE *keys* (default: every key of the slot still on the source) to the target;
        returns how many keys were moved. Keys that are no longer on the source are skipped."""
        moved = 0
        if keys is not None:
            todo = list(keys)
            for i in range(0, len(todo), batch):
                moved += self._migrate(todo[i : i + batch])
            return moved
        while chunk := self.keys_left(batch):
            moved += self._migrate(chunk)
        return moved

    def _migrate(self, keys: Sequence[str | bytes]) -> int:
        if not keys:
            return 0
        auth: list[str] = []
        if self.cluster.admin_credentials is not None:
            auth = ["AUTH2", *self.cluster.admin_credentials]
        reply = self.source.admin.execute_command(
            "MIGRATE", HOST, self.target.port, "", 0, int(SOCKET_TIMEOUT * 1000), *auth, "KEYS", *keys
        )
        return 0 if _text(reply) == "NOKEY" else len(keys)

    def finish(self, timeout: float = 15.0) -> None:
        self.move()
        # The documented order: target, source, then the other masters (the target first, so
        # that no node points clients back at the source once it gives the slot up).
        masters = self.cluster.masters()
        order = [self.target, self.source, *(m for m in masters if m not in (self.target, self.source))]
        for node in order:
            node.admin.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target.node_id)
        self.cluster.wait_slot_owner(self.slot, self.target, timeout)

    def run(self) -> None:
        """All steps at once: begin, move every key, finish."""
        self.begin()
        self.finish()


class ClusterSet:
    """A Redis Cluster of *masters* masters with *replicas* replicas each, on loopback.

    Built with ``CLUSTER ADDSLOTSRANGE`` + ``CLUSTER MEET`` + ``CLUSTER REPLICATE`` (no
    redis-cli), ready once every live node reports ``cluster_state:ok``, agrees on the masters
    and their slots, and every replica's link to its master is up. Use as a context manager or
    call :meth:`start` / :meth:`close`.

    *node_timeout* (ms) is ``cluster-node-timeout``: a failover takes about that long plus up
    to a second of election delay, so failover tests want it short (500-1000 ms); a shared
    cluster on a busy machine wants it long enough that a starved node is not failed over.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout: int = 5000,
        admin: Credentials | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.n_masters = masters
        self.n_replicas = replicas
        self.node_timeout = node_timeout
        self.admin_credentials = admin
        self.binary = binary
        self.extra_args = list(extra_args)
        self.nodes: list[ClusterNode] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def _args(self) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout),
            # A replica whose link broke a moment ago may always stand for election (the
            # default refuses if the link has been down for longer than 10 node timeouts).
            "--cluster-replica-validity-factor", "0",
            *_master_auth_args(self.admin_credentials),
            *self.extra_args,
        ]  # fmt: skip

    @property
    def setup_timeout(self) -> float:
        # Redis keeps a new master's cluster_state at fail for 2 s after it starts
        # (CLUSTER_WRITABLE_DELAY); the rest is gossip, a few node-timeout-independent rounds.
        return 30.0

    @property
    def failover_timeout(self) -> float:
        # PFAIL after node_timeout, FAIL on the masters' majority, then an election delay of
        # 0.5-1 s (+1 s per rank), then the new epoch's gossip; generous for a loaded machine.
        return 15.0 + 4 * self.node_timeout / 1000

    def start(self) -> ClusterSet:
        try:
            for _ in range(self.n_masters * (1 + self.n_replicas)):
                self.nodes.append(ClusterNode(_start_cluster_server(self.binary, self._args()), self.admin_credentials))
            for node in self.nodes:
                node.node_id = _text(node.admin.execute_command("CLUSTER", "MYID"))
            masters, replicas = self.nodes[: self.n_masters], self.nodes[self.n_masters :]
            for i, node in enumerate(masters):
                lo, hi = i * SLOTS // self.n_masters, (i + 1) * SLOTS // self.n_masters - 1
                if node.server.version >= (7, 0):
                    node.admin.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
                else:  # Redis 6.x has no ADDSLOTSRANGE
                    node.admin.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
            # Every node meets every other directly: a handshake takes one cluster cron tick
            # (100 ms), where learning the others through gossip alone takes seconds.
            for node in self.nodes:
                for other in self.nodes:
                    if other is not node:
                        node.admin.execute_command("CLUSTER", "MEET", HOST, other.port)
            ids = {n.node_id for n in self.nodes}
            # CLUSTER REPLICATE needs the replica to know its master's id.
            wait_for(lambda: self._unknown(ids), self.setup_timeout, "every node knowing every other")
            for i, node in enumerate(replicas):
                node.admin.execute_command("CLUSTER", "REPLICATE", masters[i % self.n_masters].node_id)
            self.wait_ready(self.setup_timeout, full=True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.admin.close()
            node.server.close()

    def __enter__(self) -> ClusterSet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------

    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    def by_id(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def by_port(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def _view(self) -> dict[str, NodeView]:
        """The view of the first live node that answers."""
        error: Exception | None = None
        for node in self.alive():
            try:
                return node.view()
            except RedisError as exc:
                error = exc
        raise RuntimeError(f"no live cluster node answers CLUSTER NODES: {error}")

    def masters(self) -> list[ClusterNode]:
        """The live masters that serve slots, in slot order (as a live node sees them now)."""
        view = self._view()
        owners = sorted((v.slots[0], v.node_id) for v in view.values() if v.is_master and v.slots and v.healthy)
        return [self.by_id(node_id) for _, node_id in owners if self.by_id(node_id).alive]

    def replicas(self, master: ClusterNode | None = None) -> list[ClusterNode]:
        """The live replicas (of *master*, or of any master)."""
        view = self._view()
        return [
            self.by_id(v.node_id)
            for v in view.values()
            if not v.is_master
            and v.healthy
            and (master is None or v.master_id == master.node_id)
            and self.by_id(v.node_id).alive
        ]

    def master_of(self, replica: ClusterNode) -> ClusterNode:
        master_id = self._view()[replica.node_id].master_id
        assert master_id is not None, f"{replica} is not a replica"
        return self.by_id(master_id)

    @staticmethod
    def slot_of(key: str | bytes) -> int:
        return key_slot(key.encode() if isinstance(key, str) else key)

    def node_for_slot(self, slot: int) -> ClusterNode:
        """The master serving *slot* now (during a migration: the source, which still owns it)."""
        for view in self._view().values():
            if view.is_master and any(lo <= slot <= hi for lo, hi in view.slots):
                return self.by_id(view.node_id)
        raise LookupError(f"no node serves slot {slot}")

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        return self.node_for_slot(self.slot_of(key))

    @property
    def startup_nodes(self) -> list[StartupNode]:
        """redis-py startup nodes: every live node (so a dead one is never the only way in)."""
        return [StartupNode(HOST, n.port) for n in self.alive()]

    @property
    def url(self) -> str:
        """``redis://host:port`` of a live master, for ``RedisCluster.from_url``."""
        return f"redis://{HOST}:{self.masters()[0].port}"

    # -- clients -----------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> RedisCluster:
        """A ``RedisCluster`` as the worker (the restricted ``default`` user), retries off."""
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": SOCKET_TIMEOUT}
        options.update(kwargs)
        return RedisCluster(startup_nodes=self.startup_nodes, **options)

    def admin_client(self, **kwargs: Any) -> RedisCluster:
        """A ``RedisCluster`` with every right, for a test's setup and inspection."""
        return self.client(**{**_auth_kwargs(self.admin_credentials), **kwargs})

    def async_client(self, **kwargs: Any) -> AsyncRedisCluster:
        """An asyncio ``RedisCluster`` as the worker, retries off (connects on first use)."""
        from redis.asyncio.cluster import ClusterNode as AsyncStartupNode

        options: dict[str, Any] = {"retry": AsyncRetry(NoBackoff(), 0), "socket_timeout": SOCKET_TIMEOUT}
        options.update(kwargs)
        nodes = [AsyncStartupNode(HOST, n.port) for n in self.alive()]
        return AsyncRedisCluster(startup_nodes=nodes, **options)

    def async_admin_client(self, **kwargs: Any) -> AsyncRedisCluster:
        return self.async_client(**{**_auth_kwargs(self.admin_credentials), **kwargs})

    # -- waiting -----------------------------------------------------------------------------

    def _unknown(self, ids: set[str]) -> str | None:
        for node in self.alive():
            view = node.view()
            missing = ids - {v.node_id for v in view.values() if "handshake" not in v.flags}
            if missing:
                return f"{node} does not know {sorted(m[:8] for m in missing)}"
        return None

    def problem(self, *, full: bool = False) -> str | None:
        """What keeps the cluster from being ready now, or None. Ready: every live node says
        ``cluster_state:ok``, sees the same *n_masters* healthy, live masters owning all slots,
        and sees every other live node healthy; every live replica's master link is up. With
        *full*, every master also has its *n_replicas* replicas in every view."""
        alive = self.alive()
        alive_ids = {n.node_id for n in alive}
        reference: dict[str, tuple[tuple[int, int], ...]] | None = None
        for node in alive:
            state = node.cluster_info().get("cluster_state")
            if state != "ok":
                return f"{node}: cluster_state:{state}"
            view = node.view()
            owners = {v.node_id: v.slots for v in view.values() if v.is_master and v.slots}
            if len(owners) != self.n_masters or not set(owners) <= alive_ids:
                return f"{node} sees slot owners {sorted(i[:8] for i in owners)}"
            if any(not view[i].healthy for i in owners):
                return f"{node} sees a failing master"
            if reference is None:
                reference = owners
            elif owners != reference:
                return f"{node} disagrees on the slot map"
            for other in alive:
                seen = view.get(other.node_id)
                if seen is None or not seen.healthy:
                    return f"{node} sees {other} as {None if seen is None else sorted(seen.flags)}"
            if full:
                for master_id in owners:
                    n = sum(1 for v in view.values() if v.master_id == master_id and v.healthy)
                    if n < self.n_replicas:
                        return f"{node} sees {n} replicas of {master_id[:8]}"
            mine = view[node.node_id]
            if not mine.is_master:
                link = node.replication().get("master_link_status")
                if link != "up":
                    return f"{node}: master_link_status:{link}"
        return None

    def wait_ready(self, timeout: float | None = None, *, full: bool = False) -> None:
        wait_for(lambda: self.problem(full=full), timeout or self.setup_timeout, "cluster ready")

    def wait_slot_owner(self, slot: int, owner: ClusterNode, timeout: float = 15.0) -> None:
        """Wait until every live node maps *slot* to *owner*, with no migration flag left."""

        def problem() -> str | None:
            for node in self.alive():
                for line in _text(node.admin.execute_command("CLUSTER", "NODES")).splitlines():
                    if f"[{slot}-" in line:
                        return f"{node} still has slot {slot} importing/migrating"
                view = node.view()
                holders = [v.node_id for v in view.values() if any(lo <= slot <= hi for lo, hi in v.slots)]
                if holders != [owner.node_id]:
                    return f"{node} maps slot {slot} to {[h[:8] for h in holders]}"
            return None

        wait_for(problem, timeout, f"slot {slot} owned by {owner}")

    # -- resharding --------------------------------------------------------------------------

    def migration(self, slot: int, target: ClusterNode | None = None) -> SlotMigration:
        """A (not yet begun) move of *slot* from its current master to *target* (default: the
        next master in slot order)."""
        source = self.node_for_slot(slot)
        if target is None:
            masters = self.masters()
            target = masters[(masters.index(source) + 1) % len(masters)]
        assert target is not source, "a slot cannot migrate to the node that serves it"
        return SlotMigration(self, slot, source, target)

    def migrate_slot(self, slot: int, target: ClusterNode | None = None) -> ClusterNode:
        """Move *slot* and its keys in one go; returns the new owner."""
        step = self.migration(slot, target)
        step.run()
        return step.target

    # -- failover ----------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL *node* (nothing is saved; its nodes.conf stays, so :meth:`restart` rejoins)."""
        node.server.stop(kill=True)

    def fail_over(self, master: ClusterNode | None = None, timeout: float | None = None) -> ClusterNode:
        """SIGKILL *master* (default: the first in slot order) and wait until one of its replicas
        has been promoted and the cluster is ready again; returns the new master."""
        master = master or self.masters()[0]
        candidates = self.replicas(master)
        assert candidates, f"{master} has no live replica to promote"
        self.kill(master)

        def problem() -> str | None:
            if not any(c.alive and c.role() == "master" for c in candidates):
                return f"no replica of {master} promoted yet"
            return self.problem()

        wait_for(problem, timeout or self.failover_timeout, f"failover of {master}")
        (promoted,) = [c for c in candidates if c.alive and c.role() == "master"]
        return promoted

    def restart(self, node: ClusterNode, timeout: float | None = None) -> None:
        """Start a killed *node* again on its port with its nodes.conf (same id, no data): it
        rejoins, and a former master comes back as a replica of its successor. Waits until
        the cluster is ready with it."""
        node.server.start()

        def problem() -> str | None:
            if node.role() != "slave" and node.node_id not in {m.node_id for m in self.masters()}:
                return f"{node} is neither a replica nor a slot owner yet"
            return self.problem()

        wait_for(problem, timeout or self.failover_timeout, f"{node} rejoining")


# -- Sentinel ---------------------------------------------------------------------------------------


class SentinelServer(RedisServer):
    """``redis-server <conf> --sentinel``. It gets none of ``$PYLIVERMORE_REDIS_ARGS`` (the suite's
    restricted users would lock every client out of the SENTINEL commands) and none of the data
    node flags; its config file lives in its own directory, where Sentinel rewrites it."""

    def __init__(self, config: str, binary: str | None = None) -> None:
        super().__init__(binary)
        self.config_path = os.path.join(self.dir, "sentinel.conf")
        with open(self.config_path, "w", encoding="utf-8") as fh:
            fh.write(config)

    def command(self) -> list[str]:
        return [
            self.binary, self.config_path, "--sentinel",
            "--port", str(self.port), "--bind", HOST, "--dir", self.dir,
            "--daemonize", "no", "--hz", "100", "--logfile", self.log_path,
        ]  # fmt: skip


class _SentinelRedis(redis.Redis):
    """A Sentinel-managed client that also closes its ``Sentinel``'s connections on close()."""

    _owner: Sentinel | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._owner is not None:
                self._owner.close()


class _AsyncSentinelRedis(aredis.Redis):
    """The asyncio twin of :class:`_SentinelRedis`."""

    _owner: AsyncSentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self._owner is not None:
                await self._owner.aclose()


class SentinelSet:
    """A master, one replica and one Sentinel monitoring them as *service* (quorum 1), with
    ``down-after-milliseconds`` *down_after*: SIGKILL of the master is failed over in about a
    second. Use as a context manager or call :meth:`start` / :meth:`close`."""

    def __init__(
        self,
        *,
        service: str = "mymaster",
        down_after: int = 300,
        admin: Credentials | None = None,
        binary: str | None = None,
        extra_args: Sequence[str] = (),
        sentinel_config: Sequence[str] = (),
        sentinel_admin: Credentials | None = None,
    ) -> None:
        """*admin*: the data nodes' all-rights user (replication and the Sentinel use it);
        *extra_args*: more flags for both data nodes. *sentinel_config*: extra lines for
        sentinel.conf, e.g. ``user`` rules of the Sentinel's own ACL; then *sentinel_admin* is
        the Sentinel user this set inspects it with."""
        self.service = service
        self.down_after = down_after
        self.admin_credentials = admin
        self.binary = binary
        self.sentinel_config = list(sentinel_config)
        self.sentinel_admin = sentinel_admin
        args = [*_master_auth_args(admin), *extra_args]
        self.master = RedisServer(binary, extra_args=args)
        self.replica = RedisServer(binary, extra_args=[*args, "--replicaof", HOST, str(self.master.port)])
        self.servers = [self.master, self.replica]
        self.sentinel: SentinelServer | None = None

    @property
    def timeout(self) -> float:
        # down-after, then the leader election and the promotion (≈1 s measured at 300 ms).
        return 15.0 + 3 * self.down_after / 1000

    def _config(self) -> str:
        lines = [
            f"sentinel monitor {self.service} {HOST} {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.service} {self.down_after}",
            f"sentinel failover-timeout {self.service} 5000",
        ]
        if self.admin_credentials is not None:
            user, password = self.admin_credentials
            lines += [f"sentinel auth-user {self.service} {user}", f"sentinel auth-pass {self.service} {password}"]
        return "\n".join([*lines, *self.sentinel_config]) + "\n"

    def start(self) -> SentinelSet:
        try:
            self.master.start()
            self.replica.start()
            self.sentinel = SentinelServer(self._config(), self.binary)
            self.sentinel.start()
            wait_for(self._problem, self.timeout, "sentinel set ready")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for server in [*self.servers, self.sentinel]:
            if server is not None:
                server.close()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- inspection ----------------------------------------------------------------------------

    def sentinel_client(self) -> redis.Redis:
        """A plain client on the Sentinel process (as *sentinel_admin*, if given)."""
        assert self.sentinel is not None, "the sentinel set is not started"
        return _node_client(self.sentinel.port, self.sentinel_admin, decode_responses=True)

    def node_admin(self, server: RedisServer, **kwargs: Any) -> redis.Redis:
        """An all-rights client on one data node (the caller closes it)."""
        return _node_client(server.port, self.admin_credentials, **kwargs)

    def master_state(self) -> dict[str, str]:
        """``SENTINEL MASTER <service>``: what redis-py's ``Sentinel`` reads to find the master
        (``SENTINEL GET-MASTER-ADDR-BY-NAME`` names the promoted replica earlier, while the
        failover is still reconfiguring, when clients would still be sent to the old master)."""
        with self.sentinel_client() as s:
            reply = s.execute_command("SENTINEL", "MASTER", self.service)
        pairs = dict(zip(reply[::2], reply[1::2], strict=True)) if isinstance(reply, list) else reply
        return {_text(k): _text(v) for k, v in pairs.items()}

    def reported_master(self) -> int:
        """The master port the Sentinel gives clients now."""
        return int(self.master_state()["port"])

    def _role(self, server: RedisServer) -> str:
        with self.node_admin(server) as c:
            return _text(c.execute_command("ROLE")[0])

    def _link_up(self, server: RedisServer) -> bool:
        with self.node_admin(server) as c:
            return _info_fields(c.execute_command("INFO", "replication")).get("master_link_status") == "up"

    def _master_problem(self, server: RedisServer) -> str | None:
        """Why the Sentinel does not (yet) give clients *server* as a healthy master, or None."""
        state = self.master_state()
        if int(state["port"]) != server.port or state["flags"] != "master":
            return f"sentinel reports the master as {state['port']} ({state['flags']})"
        return None

    def _problem(self) -> str | None:
        if not self._link_up(self.replica):
            return "the replica's master link is not up"
        problem = self._master_problem(self.master)
        if problem:
            return problem
        with self.sentinel_client() as s:
            replicas = s.execute_command("SENTINEL", "REPLICAS", self.service)
        entries = [dict(zip(r[::2], r[1::2], strict=True)) if isinstance(r, list) else r for r in replicas]
        if not any(int(r["port"]) == self.replica.port and r["flags"] == "slave" for r in entries):
            return f"sentinel does not list the replica as ok: {[(r['port'], r['flags']) for r in entries]}"
        return None

    # -- clients ---------------------------------------------------------------------------------

    def _client_options(self, admin: bool, kwargs: dict[str, Any], retry: Any) -> dict[str, Any]:
        options: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT, "retry": retry}
        if admin:
            options.update(_auth_kwargs(self.admin_credentials))
        options.update(kwargs)
        return options

    def master_for(
        self, *, admin: bool = False, sentinel_auth: Credentials | None = None, **kwargs: Any
    ) -> redis.Redis:
        """A ``redis.sentinel.Sentinel``-managed client on the current master, as the worker (or
        with every right), retries off; it asks the Sentinel as *sentinel_auth* (default: the
        Sentinel's ``default`` user). Closing it also closes its Sentinel connections."""
        assert self.sentinel is not None
        sentinel = Sentinel(
            [(HOST, self.sentinel.port)],
            sentinel_kwargs={
                "socket_timeout": SOCKET_TIMEOUT,
                "retry": Retry(NoBackoff(), 0),
                **_auth_kwargs(sentinel_auth),
            },
            **self._client_options(admin, kwargs, Retry(NoBackoff(), 0)),
        )
        client = sentinel.master_for(self.service, redis_class=_SentinelRedis)
        client._owner = sentinel
        return client

    def async_master_for(
        self, *, admin: bool = False, sentinel_auth: Credentials | None = None, **kwargs: Any
    ) -> aredis.Redis:
        """The asyncio twin of :meth:`master_for` (``redis.asyncio.sentinel.Sentinel``)."""
        assert self.sentinel is not None
        sentinel = AsyncSentinel(
            [(HOST, self.sentinel.port)],
            sentinel_kwargs={
                "socket_timeout": SOCKET_TIMEOUT,
                "retry": AsyncRetry(NoBackoff(), 0),
                **_auth_kwargs(sentinel_auth),
            },
            **self._client_options(admin, kwargs, AsyncRetry(NoBackoff(), 0)),
        )
        client = sentinel.master_for(self.service, redis_class=_AsyncSentinelRedis)
        client._owner = sentinel
        return client

    def admin_client(self, **kwargs: Any) -> redis.Redis:
        """An all-rights plain client on the current master (the caller closes it)."""
        return self.node_admin(self.master, **kwargs)

    # -- failover ---------------------------------------------------------------------------------

    def kill_master(self, timeout: float | None = None) -> RedisServer:
        """SIGKILL the master and wait until the Sentinel reports the replica as the new master
        and the replica says so itself (ROLE); returns the new master."""
        old, new = self.master, self.replica

        def problem() -> str | None:
            role = self._role(new)
            return self._master_problem(new) or (None if role == "master" else f"the replica's role is {role}")

        old.stop(kill=True)
        wait_for(problem, timeout or self.timeout, "sentinel failover")
        self.master, self.replica = new, old
        return new

    def restart_replica(self, timeout: float | None = None) -> None:
        """Start the killed former master again as a replica of the new master; wait until its
        link is up and the Sentinel lists it as a healthy replica. (Left alone, the Sentinel
        would reconfigure a returning old master only after 8 s, 4 publish periods: this sends
        the same REPLICAOF at once.)"""
        self.replica.start()
        with self.node_admin(self.replica) as admin:
            admin.execute_command("REPLICAOF", HOST, self.master.port)

        def problem() -> str | None:
            if self._role(self.replica) != "slave":
                return "the restarted node is not a replica yet"
            return self._problem()

        wait_for(problem, timeout or self.timeout, "former master rejoining as a replica")
