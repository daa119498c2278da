"""The synchronous driver: :class:`Registry` and :class:`Lease` over ``redis.Redis``.

It only moves bytes: what to send and what replies mean live in ``_config``, ``_lease``
and ``_protocol``, shared with the asyncio driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from . import _lease as core
from ._config import DAY, PendingClaim, RegistryConfig
from ._config import client_options as _client_options
from ._lease import LeaseCore
from ._protocol import (
    Call,
    Transport,
    call_command,
    is_missing,
    load_commands,
    noscript_indexes,
    parse_force_release,
    pipeline_commands,
    pipeline_replies,
    unsupported,
)
from ._renewal import (
    IDLE_LINGER,
    ClusterRound,
    Node,
    NodeClients,
    Renewal,
    Schedule,
    address,
    redirection,
    renewal_calls,
    settle_round,
)
from ._scripts import load_scripts
from ._states import State
from ._waiting import (
    NO_ENTRY,
    STANDBY_ROUND,
    ClaimWait,
    got_entry,
    last_generated_id,
    newest_id,
    socket_timeout_of,
    standby_round,
    wait_seconds,
)
from .errors import ClaimConflictError, LivermoreError
from .models import ActivityEntry, InstanceStatus
from .resolver import Resolver, no_address

logger = logging.getLogger("pylivermore.heartbeat")


def _bounded(client: redis.Redis, timeout: float) -> redis.Redis:
    """A client on the same server whose calls give up after *timeout* and never retry."""
    pool: Any = getattr(client, "connection_pool", None)
    if type(pool) not in (redis.ConnectionPool, SentinelConnectionPool):
        return client  # a cluster has its own per-node clients; custom pools cannot be cloned safely
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if isinstance(pool, SentinelConnectionPool):  # same service, same sentinels: it follows failovers too
        kwargs.pop("connection_pool", None)
        kwargs.update(is_master=pool.is_master, check_connection=pool.check_connection)
        clone = SentinelConnectionPool(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class, **kwargs
        )
        return redis.Redis.from_pool(clone)
    return redis.Redis.from_pool(redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _node_client(cluster: redis.Redis | RedisCluster, node: Node, timeout: float | None) -> redis.Redis:
    """A plain client of one cluster node, with the cluster's connection options (credentials,
    TLS, protocol), for pipelines of scripts (redis-py's cluster pipeline refuses EVALSHA).
    With *timeout*, its calls give up after that many seconds and never retry."""
    assert isinstance(cluster, RedisCluster), "node clients exist on a cluster only"
    manager = cluster.nodes_manager
    kwargs = {**manager.connection_kwargs, "host": node[0], "port": node[1]}
    if timeout is not None:
        kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    if manager.from_url:  # as redis-py builds its node clients: the options are a pool's (connection_class ...)
        return redis.Redis.from_pool(manager.connection_pool_class(**kwargs))
    return redis.Redis(**kwargs)


def _socket_timeout(client: redis.Redis | RedisCluster) -> float | None:
    """The client's socket timeout (a node's, on a cluster), if it has one."""
    if isinstance(client, RedisCluster):
        return socket_timeout_of(client.nodes_manager.connection_kwargs)
    return socket_timeout_of(getattr(getattr(client, "connection_pool", None), "connection_kwargs", None))


def _evalsha(call: Call, client: redis.Redis) -> Any:
    """*call* over ``EVALSHA`` on a standalone (or Sentinel) client, straight through
    ``execute_command`` (redis-py's ``Script`` costs ≈ 4 µs of CPU more per call); after
    ``NOSCRIPT`` (a restart, a failover, ``SCRIPT FLUSH``) the script is loaded and the call sent again."""
    command = call_command(call)
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if not is_missing(exc):
            raise
    for load in load_commands([call.script]):
        client.execute_command(*load)  # type: ignore[no-untyped-call]
    return client.execute_command(*command)  # type: ignore[no-untyped-call]


def _fcall(call: Call, client: redis.Redis | RedisCluster) -> Any:
    """*call* over ``FCALL``; where the server lacks the library (``Function not found``), load it
    there (``FUNCTION LOAD REPLACE``) and send the call once more."""
    command = call_command(call, "functions")

    def send() -> Any:
        # On a cluster, straight to the key's node: left to route FCALL itself, redis-py first asks
        # a node where its keys are (COMMAND GETKEYS), a round trip more for every call.
        target: dict[str, Any] = {}
        if isinstance(client, RedisCluster):
            target["target_nodes"] = client.get_node_from_key(call.keys[0])  # type: ignore[no-untyped-call]
        try:
            return client.execute_command(*command, **target)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            error = unsupported(exc, "functions")
            if error is not None:
                raise error from exc
            if not is_missing(exc):
                raise
        for load in load_commands([call.script], "functions"):
            client.execute_command(*load, **target)  # type: ignore[no-untyped-call]
        return client.execute_command(*command, **target)  # type: ignore[no-untyped-call]

    if isinstance(client, RedisCluster):  # given its target, the cluster client would not retry: its policy here
        return client.retry.call_with_retry(send, lambda _: None)
    return send()


class Registry:
    """The instance registry over a synchronous ``redis.Redis`` client.

    Args:
        client: the redis-py client. Its retry policy applies to owner operations, which are
            idempotent; heartbeats use their own bounded, non-retrying connection.
        namespace: first part of every key (``<namespace>:{<id>}:status``).
        ttl: lease duration in seconds; a record not renewed for this long expires.
        heartbeat_interval: seconds between renewals by the background heartbeat.
        renew_deadline: seconds after the last acknowledged renewal's send time at which the
            lease counts as lost locally. Need ``ttl > renew_deadline > 1.2 * heartbeat_interval``.
        log_retention: seconds of activity log kept (trimmed with ``MINID``); ``0``: no history,
            leases write no log entry (≈ 0.7 KB per resource instead of ≈ 5 KB; a release still
            wakes ``claim(wait=...)``; ``activity()`` stays empty).
        transitions: a custom state table (``{from: [to, ...]}``); default: the seed's.
        instance_id: this process's identity (default ``host:pid:random``); ``claim(reclaim=True)``
            takes over a record held by the same identity.
        hostname: reported host name (default: the OS's).
        transport: ``"scripts"`` (default): every call is an ``EVALSHA`` of a ``lua/`` script;
            ``"functions"``: an ``FCALL`` of the ``pylivermore_v<N>`` library built from the same
            scripts (Redis >= 7.0 or Valkey; ACL: :func:`pylivermore.acl.worker_rules` with
            ``transport="functions"``). Either way a server that lost them (restart, failover,
            ``SCRIPT FLUSH`` / ``FUNCTION FLUSH``) gets them loaded again on the next call.
        resolver: called after each claim, in a background thread, to report the public address.
        clock: monotonic clock, for tests.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "exchange",
        ttl: float = 45.0,
        heartbeat_interval: float = 15.0,
        renew_deadline: float = 30.0,
        log_retention: float = 90 * DAY,
        transitions: Mapping[State | str, Iterable[State | str]] | None = None,
        instance_id: str | None = None,
        hostname: str | None = None,
        transport: Transport = "scripts",
        resolver: Resolver = no_address,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = RegistryConfig(
            namespace=namespace,
            ttl=ttl,
            heartbeat_interval=heartbeat_interval,
            renew_deadline=renew_deadline,
            log_retention=log_retention,
            transitions=transitions,
            instance_id=instance_id,
            hostname=hostname,
            transport=transport,
        )
        self._client = client
        self._own_client = False  # from_url: close() closes the client it made
        self._beat_client = _bounded(client, self._config.heartbeat_timeout)
        self._refresher: threading.Thread | None = None
        self._nodes: NodeClients[redis.Redis] = NodeClients(lambda node, timeout: _node_client(client, node, timeout))
        self._scripts: dict[str, Script] = {n: client.register_script(s.source) for n, s in load_scripts().items()}
        self._clock = clock
        self._resolver = resolver
        self._checked = False
        self._heartbeat = _Heartbeat(self)

    @classmethod
    def from_url(cls, url: str, *, client_options: Mapping[str, Any] | None = None, **options: Any) -> Registry:
        """A registry on a new client for *url*, with bounded socket timeouts and a short retry policy;
        :meth:`close` (or leaving ``with registry:``) closes that client too."""
        client = redis.Redis.from_url(url, **{**_client_options(Retry), **(client_options or {})})
        registry = cls(client, **options)
        registry._own_client = True
        return registry

    @property
    def client(self) -> redis.Redis:
        return self._client

    @property
    def instance_id(self) -> str:
        return self._config.instance_id

    def _run(self, call: Call, client: redis.Redis | None = None) -> Any:
        target = client or self._client
        if self._config.transport == "functions":
            return _fcall(call, target)
        if isinstance(target, RedisCluster):  # redis-py's Script: the cluster client routes and redirects it
            return self._scripts[call.script](keys=call.keys, args=call.args, client=target)
        return _evalsha(call, target)

    def _run_batch(
        self,
        calls: list[Call],
        client: redis.Redis,
        asking: bool = False,
        tail: tuple[tuple[str | int, ...], ...] = (),
    ) -> list[Any]:
        """Send *calls*, then the *tail* commands, in one pipeline on *client*: each call's reply
        (or the exception that stands for it), then the tail's replies."""
        transport = self._config.transport
        replies = self._pipeline(client, calls, asking, tail, transport)
        missing = noscript_indexes(replies[: len(calls)])
        if missing:  # the server lost the scripts or the library: load, send those calls (and the tail) once more
            for load in load_commands({calls[i].script for i in missing}, transport):
                client.execute_command(*load)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            again = self._pipeline(client, [calls[i] for i in missing], asking, tail, transport)
            for i, reply in zip(missing, again, strict=False):
                replies[i] = reply
            replies[len(calls) :] = again[len(missing) :]
        if transport == "functions":  # a server without FCALL (Redis < 7.0): say so
            replies[: len(calls)] = [unsupported(r, transport) or r for r in replies[: len(calls)]]
        return replies

    @staticmethod
    def _pipeline(
        client: redis.Redis,
        calls: list[Call],
        asking: bool,
        tail: tuple[tuple[str | int, ...], ...],
        transport: str = "scripts",
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for command in pipeline_commands(calls, asking, tail, transport):
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        return pipeline_replies(pipe.execute(raise_on_error=False), len(calls), asking)

    def _renew(self, renewals: list[Renewal]) -> list[Any]:
        """Send one heartbeat round; each call's reply, or the exception that stands for it."""
        calls = [call for _, call in renewals]
        cluster = self._client
        if not isinstance(cluster, RedisCluster):  # one pipeline: the server works while replies are read
            try:
                return self._run_batch(calls, self._beat_client)
            except Exception as exc:
                return [exc] * len(calls)
        plan = ClusterRound(renewals, lambda key: address(cluster.get_node_from_key(key)))
        while batches := plan.batches():
            for batch in batches:  # one pipeline per node
                try:
                    client = self._nodes.get(batch.node, self._config.heartbeat_timeout)
                    plan.absorb(batch, self._run_batch(batch.calls, client, batch.asking))
                except Exception as exc:  # that node is down or unreachable: only its leases wait
                    plan.absorb(batch, exc)
        if plan.refresh:
            self._refresh_slots_soon(cluster)
        return plan.replies

    def _refresh_slots_soon(self, cluster: RedisCluster) -> None:
        """Reload the slot map in the background, once at a time: a stalled node can hold the
        reload for the client's whole socket timeout, and no heartbeat round may wait for that."""
        if self._refresher is None or not self._refresher.is_alive():
            self._refresher = threading.Thread(
                target=self._refresh_slots, args=(cluster,), name="pylivermore-slots", daemon=True
            )
            self._refresher.start()

    @staticmethod
    def _refresh_slots(cluster: RedisCluster) -> None:
        """Reload the slot map after a redirection or a node failure (never raises)."""
        try:
            cluster.nodes_manager.initialize()
        except Exception as exc:
            logger.warning("could not refresh the cluster's slot map: %r", exc)

    def _check_server(self) -> None:
        if self._checked:
            return
        self._checked = True
        cluster = isinstance(self._client, RedisCluster)
        try:
            try:  # INFO first: least-privilege users have it (pylivermore.acl), CONFIG they do not
                if cluster:  # every master: one evicting node is enough to lose leases
                    reply = self._client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                else:
                    reply = self._client.info("memory")
            except ResponseError:
                if cluster:
                    raise
                policy = (self._client.config_get("maxmemory-policy")).get("maxmemory-policy")
                reply = {"maxmemory_policy": policy}
        except RedisError as exc:
            logger.debug("could not read maxmemory-policy: %s", exc)
            return
        for warning in self._config.eviction_warnings(reply, cluster):
            logging.getLogger("pylivermore.registry").warning(warning)

    # -- owner side ------------------------------------------------------------------------

    def claim(
        self,
        exchange_id: int | str,
        exchange_name: str,
        *,
        reclaim: bool = False,
        on_lost: Callable[[Lease], object] | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        wait: float = 0,
    ) -> Lease:
        """Claim *exchange_id* in one round trip and start renewing it in the background.

        Raises :class:`~pylivermore.ClaimConflictError` (with ``.holder`` and ``.ttl``) when
        another live owner holds it. ``on_lost(lease)`` is called once if the lease is lost.
        With *replicas*, the claim also waits (``WAIT``, in the same round trip) until that many
        replicas have it, at most *replica_timeout* seconds; if they do not, it is released
        again and :class:`~pylivermore.NotReplicatedError` raised. (``replica_timeout`` must stay
        below the client's socket timeout.)

        With *wait* (seconds, default ``0``: do not wait), a held resource is waited for, up to
        that long: the call blocks on the resource's activity log (``XREAD BLOCK``, no polling)
        and tries again within milliseconds of a release or ``force_release``, or when the
        holder's record expires (a holder that died writes nothing). Each block stays below the
        client's socket timeout. When *wait* runs out, the last
        :class:`~pylivermore.ClaimConflictError` is raised (``try_claim``: ``None``).
        """
        lease = self._claim(exchange_id, exchange_name, reclaim, on_lost, replicas, replica_timeout, wait, False)
        assert lease is not None
        return lease

    def try_claim(
        self,
        exchange_id: int | str,
        exchange_name: str,
        *,
        reclaim: bool = False,
        on_lost: Callable[[Lease], object] | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        wait: float = 0,
    ) -> Lease | None:
        """:meth:`claim`, but ``None`` when another live owner holds *exchange_id* (after *wait*
        seconds, if given): no exception is built and the holder is not decoded (the cheap path
        for callers that only retry)."""
        return self._claim(exchange_id, exchange_name, reclaim, on_lost, replicas, replica_timeout, wait, True)

    def standby(
        self,
        exchange_id: int | str,
        exchange_name: str,
        *,
        on_lost: Callable[[Lease], object] | None = None,
        stop: threading.Event | None = None,
        check_every: float = STANDBY_ROUND,
    ) -> Lease | None:
        """A warm spare: wait, for as long as it takes, until this process holds *exchange_id*.

        Holds nothing while the owner lives; takes over within milliseconds of the owner's
        release or a ``force_release``, or as soon as a dead owner's record expires (blocked on the
        resource's log in between, as :meth:`claim` with *wait*). Answers the lease, or ``None``
        once *stop* is set: it is looked at every *check_every* seconds (5).
        """
        seconds = standby_round(check_every)
        while stop is None or not stop.is_set():
            lease = self._claim(exchange_id, exchange_name, False, on_lost, 0, 1.0, seconds, True)
            if lease is not None:
                return lease
        return None

    def _claim(
        self,
        exchange_id: int | str,
        exchange_name: str,
        reclaim: bool,
        on_lost: Callable[[Lease], object] | None,
        replicas: int,
        replica_timeout: float,
        wait: float,
        quiet: bool,
    ) -> Lease | None:
        pending = self._config.claim(exchange_id, exchange_name, reclaim)
        durable = self._config.durability(replicas, replica_timeout)
        waiting = wait_seconds(wait)
        self._check_server()
        if not waiting:
            lease_core = self._attempt(pending, durable, quiet)
        else:
            lease_core = self._claim_waiting(pending, durable, waiting, quiet)
        if lease_core is None:
            return None
        lease = Lease(self, lease_core, on_lost)
        self._heartbeat.add(lease)
        if self._resolver is not no_address:
            threading.Thread(target=self._resolve, args=(lease,), name="pylivermore-resolver", daemon=True).start()
        return lease

    def _claim_waiting(
        self, pending: PendingClaim, durable: tuple[int, int] | None, wait: float, quiet: bool
    ) -> LeaseCore | None:
        """Claim attempts until one succeeds or *wait* runs out, blocked on the log in between."""
        client = self._client
        waiter = ClaimWait(self._clock, wait, _socket_timeout(client))
        log = pending.keys.log
        while True:
            # The newest entry before the attempt: a release between the attempt and the block is
            # then newer than it, and ends the block at once.
            since = newest_id(client.xrevrange(log, count=1))
            if since == NO_ENTRY:
                since = self._last_generated_id(log)
            try:
                return self._attempt(pending, durable, False)
            except ClaimConflictError as conflict:
                block = waiter.block_ms(conflict.ttl)
                if block is None:
                    if quiet:
                        return None
                    raise
            waiter.woke(got_entry(client.xread({log: since}, block=block)))

    def _last_generated_id(self, log: str) -> bytes | str:
        """An empty log's last generated id (where a block must start), or ``0-0`` without a log."""
        try:
            return last_generated_id(self._client.xinfo_stream(log))
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return NO_ENTRY  # no log yet: any entry that creates it is newer than 0-0

    def _attempt(self, pending: PendingClaim, durable: tuple[int, int] | None, quiet: bool) -> LeaseCore | None:
        """One claim round trip: the lease's core, or on conflict an error (``None`` if *quiet*)."""
        sent = self._clock()
        if durable is None:
            lease_core = self._config.claimed(pending, self._run(pending.call), sent, quiet)
        else:
            reply, acknowledged = self._claim_and_wait(pending.call, durable)
            lease_core = self._config.claimed(pending, reply, sent, quiet)
            if lease_core is None:
                return None
            shortfall = self._config.replication_error(pending.wire_id, acknowledged, durable)
            if shortfall is not None:
                self._abandon(lease_core)
                raise shortfall from (acknowledged if isinstance(acknowledged, Exception) else None)
        return lease_core

    def _claim_and_wait(self, call: Call, durable: tuple[int, int]) -> tuple[Any, Any]:
        """The claim's reply and ``WAIT``'s, from one pipeline on one connection (``WAIT`` counts
        the replicas that acknowledged that connection's writes)."""
        wait = (("WAIT", *durable),)
        cluster = self._client
        if not isinstance(cluster, RedisCluster):
            reply, acknowledged = self._run_batch([call], cluster, tail=wait)
        else:
            node = address(cluster.get_node_from_key(call.keys[0]))
            reply, acknowledged = self._run_batch([call], self._nodes.get(node, None), tail=wait)
            redirect = redirection(reply)
            if redirect is not None:  # the slot moved (MOVED) or is moving (ASK): once more, there
                target, asking = redirect
                if not asking:
                    self._refresh_slots_soon(cluster)
                reply, acknowledged = self._run_batch([call], self._nodes.get(target, None), asking, wait)
        if isinstance(reply, Exception):
            raise reply
        return reply, acknowledged

    def _abandon(self, lease_core: LeaseCore) -> None:
        """Release a claim that will not be handed out (never raises: the TTL ends it otherwise)."""
        call = lease_core.release_call()
        try:
            if call is not None:
                lease_core.release_done(self._run(call))
        except (LivermoreError, RedisError) as exc:
            logger.warning("could not release exchange %s (it expires with its TTL): %s", lease_core.exchange_id, exc)

    def _resolve(self, lease: Lease) -> None:
        try:
            address = self._resolver()
            if address is not None:
                lease.set_address(address.ip, address.country_code)
        except Exception as exc:
            logger.warning("address resolver failed for exchange %s: %s", lease.exchange_id, exc)

    # -- readers and operators ---------------------------------------------------------------

    def get(self, exchange_id: int | str) -> InstanceStatus | None:
        """The live record of *exchange_id*, or ``None`` if nobody holds it."""
        _, keys = self._config.keys(exchange_id)
        try:
            raw = self._client.hgetall(keys.status)
        except ResponseError as exc:
            raise self._config.read_error(exc, keys.status) from exc
        return self._config.decode_status(raw, keys)

    def instances(self) -> list[InstanceStatus]:
        """Every live record of this namespace (SCAN, then pipelined HGETALL), sorted by id."""
        keys = list(self._client.scan_iter(match=self._config.status_pattern, count=1000))
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return self._config.decode_listing(keys, pipe.execute(raise_on_error=False) if keys else [])

    def activity(self, exchange_id: int | str, count: int = 100) -> list[ActivityEntry]:
        """The newest *count* activity-log entries of *exchange_id*, newest first."""
        _, keys = self._config.keys(exchange_id)
        try:
            raw = self._client.xrevrange(keys.log, count=self._config.activity_count(count))
        except ResponseError as exc:
            raise self._config.read_error(exc, keys.log) from exc
        return self._config.decode_activity(raw, keys)

    def force_release(self, exchange_id: int | str, reason: str, *, operator: str | None = None) -> int | None:
        """Operator tool: remove any holder of *exchange_id* and log who and why.

        Returns the removed holder's fencing token, or ``None`` if nobody held it.
        """
        keys, call = self._config.force_release(exchange_id, reason, operator)
        return parse_force_release(self._run(call), keys)

    def close(self) -> None:
        """Stop the background heartbeat (leases stop being renewed; they are not released)
        and close the heartbeat's own connections. A client passed in stays open; the one
        :meth:`from_url` made is closed."""
        self._heartbeat.stop()
        if self._beat_client is not self._client:
            self._beat_client.close()
        for node_client in self._nodes.drain():
            node_client.close()
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Leaving ``with registry:`` closes it (:meth:`close`): leases still held stop being renewed."""
        self.close()


class Lease:
    """Ownership of one resource, renewed in the background until released or lost.

    A context manager: on exit it records the error if the block raised, walks to
    ``stopping``/``stopped`` where the state table allows, and deregisters.
    """

    def __init__(self, registry: Registry, lease_core: LeaseCore, on_lost: Callable[[Lease], object] | None) -> None:
        self._registry = registry
        self._core = lease_core
        self._clock = registry._clock
        if on_lost is not None:
            lease_core.on_lost = lambda: on_lost(self)

    def __repr__(self) -> str:
        return f"<Lease exchange={self.exchange_id} fencing_token={self.fencing_token} state={self.state}>"

    @property
    def exchange_id(self) -> int | str:
        return self._core.exchange_id

    @property
    def exchange_name(self) -> str:
        return self._core.exchange_name

    @property
    def fencing_token(self) -> int:
        """Strictly greater than every token issued before for this resource; give it to
        downstream systems so that they can reject writes from a stale owner."""
        return self._core.fencing_token

    @property
    def state(self) -> State | str:
        return self._core.state

    @property
    def is_valid(self) -> bool:
        """True until the lease is lost or its local deadline passes (no round trip)."""
        return self._core.is_valid(self._clock())

    @property
    def lost_reason(self) -> str | None:
        return self._core.lost_reason

    def ensure_held(self) -> None:
        """Raise :class:`~pylivermore.LeaseLostError` if the lease is lost or its local deadline
        has passed (no round trip). Call it before each step that needs ownership."""
        self._core.check(self._clock())

    def _run(self, call: Call) -> Any:
        return self._registry._run(call)

    def transition(self, to: State | str, *, expected: State | str | None = None) -> State | str:
        """Move to state *to*; with *expected*, only if the record is in that state now."""
        call = self._core.transition_call(to, expected, self._clock())
        return self._core.transition_done(self._run(call), call)

    def set_symbol_count(self, count: int) -> None:
        self._core.update_done(self._run(self._core.update_call(*core.symbols_args(count), self._clock())))

    def set_admin(self, email: str | None, display_name: str | None) -> None:
        self._core.update_done(self._run(self._core.update_call(*core.admin_args(email, display_name), self._clock())))

    def set_address(self, ip: str | None, country_code: str | None = None) -> None:
        self._core.update_done(self._run(self._core.update_call(*core.address_args(ip, country_code), self._clock())))

    def record_error(self, message: str) -> None:
        """Record *message* as the record's last error and log it."""
        self._core.record_error_done(self._run(self._core.record_error_call(message, self._clock())))

    def status(self) -> InstanceStatus:
        """This lease's record, read from Redis."""
        self._core.check(self._clock())
        status = self._registry.get(self.exchange_id)
        self._core.check_record(status)
        assert status is not None
        return status

    def heartbeat(self) -> None:
        """Renew now (the background heartbeat does this on its own)."""
        sent = self._clock()
        call = self._core.heartbeat_call(sent)
        self._core.heartbeat_done(self._registry._run(call), sent, self._clock())

    def release(self) -> bool:
        """Stop renewing and deregister; True if this call deleted the record. Never raises
        :class:`~pylivermore.LeaseLostError`: releasing a lost lease does nothing."""
        self._registry._heartbeat.discard(self)
        call = self._core.release_call()
        if call is None:
            return False
        return self._core.release_done(self._run(call))

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if isinstance(exc, Exception) and self.is_valid:
                self.record_error(f"{type(exc).__name__}: {exc}")
            for step in self._core.shutdown_path():
                self.transition(step)
        except (LivermoreError, RedisError) as err:
            logger.warning("graceful shutdown of exchange %s cut short: %s", self.exchange_id, err)
        finally:
            try:
                self.release()
            except (LivermoreError, RedisError):
                if exc is None:
                    raise
                logger.exception("release of exchange %s failed", self.exchange_id)


class _Heartbeat:
    """One daemon thread per registry renews all its leases. It outlives its last lease by
    :data:`~pylivermore._renewal.IDLE_LINGER` seconds, so that a claim / release cycle never
    starts a thread (a thread start costs more CPU than the claim's round trip)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._schedule: Schedule[Lease] = Schedule()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._planned = 0.0  # when the loop will wake next (monotonic clock)
        client = registry._beat_client
        self._slot_of = client.keyslot if isinstance(client, RedisCluster) else None

    def add(self, lease: Lease) -> None:
        with self._lock:
            self._schedule.add(lease, lease._core)
            self._stopping = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="pylivermore-heartbeat", daemon=True)
                self._thread.start()
            elif lease._core.wake_at() >= self._planned:
                return  # the loop wakes before this lease needs it: spare a thread switch
        self._wake.set()

    def discard(self, lease: Lease) -> None:
        with self._lock:  # no wake-up: the loop finds nothing due at its planned time
            self._schedule.discard(lease)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _loop(self) -> None:
        clock, registry = self._registry._clock, self._registry
        ahead = registry._config.renew_ahead
        idle_since: float | None = None  # time.monotonic(): the registry's clock may be a test's
        while True:
            with self._lock:
                if self._stopping:
                    self._thread = None
                    return
                idle = not self._schedule
                if idle:
                    if idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= IDLE_LINGER:  # end; add() starts another
                        self._thread = None
                        return
                    # Idle, the loop looks again every half interval unasked: a new lease's first
                    # beat is a whole interval away, so add() need not wake it (a thread switch
                    # per claim in a claim / release loop).
                    poll = registry._config.heartbeat_interval / 2
                    self._planned = clock() + poll
            if idle:
                self._wake.wait(poll)
                self._wake.clear()
                continue
            idle_since = None
            with self._lock:
                due = self._schedule.pop_due(clock() + ahead)
            renewals = renewal_calls(due, _core_of, clock(), ahead, self._slot_of)
            if renewals:  # never raises: failed beats are retried until the deadline
                sent = clock()
                settle_round(
                    renewals, registry._renew(renewals), sent, clock(), registry._config.lease_settings.observer
                )
            with self._lock:
                self._schedule.push_all(due)
                wake = self._schedule.next_wake()
                self._planned = float("inf") if wake is None else wake
            self._wake.wait(None if wake is None else max(0.0, wake - clock()))
            self._wake.clear()


def _core_of(lease: Lease) -> LeaseCore:
    return lease._core
