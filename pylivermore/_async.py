"""The asyncio driver: :class:`AsyncRegistry` and :class:`AsyncLease` over ``redis.asyncio.Redis``.

It mirrors ``_sync`` call for call (a test compares the two public surfaces) and, like it,
only moves bytes: decisions live in ``_config``, ``_lease`` and ``_protocol``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError

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
from .errors import ClaimConflictError, LeaseLostError, LivermoreError
from .models import ActivityEntry, InstanceStatus
from .resolver import AsyncResolver, no_address

logger = logging.getLogger("pylivermore.heartbeat")


async def _evalsha(call: Call, client: aredis.Redis) -> Any:
    """*call* over ``EVALSHA`` on a standalone (or Sentinel) client, as the sync driver's ``_evalsha``."""
    command = call_command(call)
    try:
        return await client.execute_command(*command)  # type: ignore[no-untyped-call]
    except ResponseError as exc:
        if not is_missing(exc):
            raise
    for load in load_commands([call.script]):
        await client.execute_command(*load)  # type: ignore[no-untyped-call]
    return await client.execute_command(*command)  # type: ignore[no-untyped-call]


async def _fcall(call: Call, client: aredis.Redis | RedisCluster) -> Any:
    """*call* over ``FCALL``; where the server lacks the library (``Function not found``), load it
    there (``FUNCTION LOAD REPLACE``) and send the call once more."""
    command = call_command(call, "functions")

    async def send() -> Any:
        # On a cluster, straight to the key's node: left to route FCALL itself, redis-py first asks
        # a node where its keys are (COMMAND GETKEYS), a round trip more for every call.
        target: dict[str, Any] = {}
        if isinstance(client, RedisCluster):
            target["target_nodes"] = client.get_node_from_key(call.keys[0])
        try:
            return await client.execute_command(*command, **target)
        except ResponseError as exc:
            error = unsupported(exc, "functions")
            if error is not None:
                raise error from exc
            if not is_missing(exc):
                raise
        for load in load_commands([call.script], "functions"):
            await client.execute_command(*load, **target)
        return await client.execute_command(*command, **target)

    if isinstance(client, RedisCluster):  # given its target, the cluster client would not retry: its policy here
        return await client.retry.call_with_retry(send, lambda _: None)
    return await send()


class AsyncRegistry:
    """The instance registry over an asyncio ``redis.asyncio.Redis`` client.

    Takes the same options as :class:`~pylivermore.Registry`. The heartbeat is one asyncio
    task per registry, started on the first claim; each renewal is bounded with a timeout.
    """

    def __init__(
        self,
        client: aredis.Redis,
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
        resolver: AsyncResolver = no_address,
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
        self._scripts: dict[str, AsyncScript] = {n: client.register_script(s.source) for n, s in load_scripts().items()}
        self._clock = clock
        self._resolver = resolver
        self._checked = False
        self._heartbeat = _Heartbeat(self)
        self._background: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Future[None] | None = None
        self._nodes: NodeClients[aredis.Redis] = NodeClients(lambda node, timeout: _node_client(client, node, timeout))

    @classmethod
    def from_url(cls, url: str, *, client_options: Mapping[str, Any] | None = None, **options: Any) -> AsyncRegistry:
        """A registry on a new client for *url*, with bounded socket timeouts and a short retry policy;
        :meth:`close` (or leaving ``async with registry:``) closes that client too."""
        client = aredis.Redis.from_url(url, **{**_client_options(Retry), **(client_options or {})})
        registry = cls(client, **options)
        registry._own_client = True
        return registry

    @property
    def client(self) -> aredis.Redis:
        return self._client

    @property
    def instance_id(self) -> str:
        return self._config.instance_id

    async def _run(self, call: Call) -> Any:
        if self._config.transport == "functions":
            return await _fcall(call, self._client)
        if isinstance(self._client, RedisCluster):  # redis-py's Script: the cluster client routes and redirects it
            return await self._scripts[call.script](keys=call.keys, args=call.args, client=self._client)
        return await _evalsha(call, self._client)

    async def _run_batch(
        self,
        calls: list[Call],
        client: aredis.Redis,
        asking: bool = False,
        tail: tuple[tuple[str | int, ...], ...] = (),
    ) -> list[Any]:
        """Send *calls*, then the *tail* commands, in one pipeline on *client*: each call's reply
        (or the exception that stands for it), then the tail's replies."""
        transport = self._config.transport
        replies = await self._pipeline(client, calls, asking, tail, transport)
        missing = noscript_indexes(replies[: len(calls)])
        if missing:  # the server lost the scripts or the library: load, send those calls (and the tail) once more
            for load in load_commands({calls[i].script for i in missing}, transport):
                await client.execute_command(*load)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            again = await self._pipeline(client, [calls[i] for i in missing], asking, tail, transport)
            for i, reply in zip(missing, again, strict=False):
                replies[i] = reply
            replies[len(calls) :] = again[len(missing) :]
        if transport == "functions":  # a server without FCALL (Redis < 7.0): say so
            replies[: len(calls)] = [unsupported(r, transport) or r for r in replies[: len(calls)]]
        return replies

    @staticmethod
    async def _pipeline(
        client: aredis.Redis,
        calls: list[Call],
        asking: bool,
        tail: tuple[tuple[str | int, ...], ...],
        transport: str = "scripts",
    ) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for command in pipeline_commands(calls, asking, tail, transport):
            pipe.execute_command(*command)
        return pipeline_replies(await pipe.execute(raise_on_error=False), len(calls), asking)

    async def _renew(self, renewals: list[Renewal]) -> list[Any]:
        """Send one heartbeat round, each attempt bounded in time; each call's reply, or the
        exception that stands for it. No retry policy or slow server holds it past the deadline."""
        sent = self._clock()
        first_deadline = min(c.deadline for cores, _ in renewals for c in cores)
        budget = min(self._config.heartbeat_timeout, max(first_deadline - sent, 0.001))
        calls = [call for _, call in renewals]
        cluster = self._client
        if not isinstance(cluster, RedisCluster):  # one pipeline: the server works while replies are read
            try:
                return await asyncio.wait_for(self._run_batch(calls, cluster), budget)
            except Exception as exc:
                return [exc] * len(calls)
        plan = ClusterRound(renewals, lambda key: address(cluster.get_node_from_key(key)))

        async def send(batch: Any) -> None:
            try:
                client = self._nodes.get(batch.node, self._config.heartbeat_timeout)
                plan.absorb(batch, await asyncio.wait_for(self._run_batch(batch.calls, client, batch.asking), budget))
            except Exception as exc:  # that node is down or unreachable: only its leases wait
                plan.absorb(batch, exc)

        while batches := plan.batches():  # one pipeline per node, all nodes at once
            await asyncio.gather(*(send(batch) for batch in batches))
        if plan.refresh:
            self._refresh_slots_soon(cluster)
        return plan.replies

    def _refresh_slots_soon(self, cluster: RedisCluster) -> None:
        """Reload the slot map in the background, once at a time: a stalled node can hold the
        reload for the client's whole socket timeout, and no heartbeat round may wait for that."""
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.ensure_future(self._refresh_slots(cluster))

    @staticmethod
    async def _refresh_slots(cluster: RedisCluster) -> None:
        """Reload the slot map after a redirection or a node failure (never raises)."""
        try:
            await cluster.nodes_manager.initialize()
        except Exception as exc:
            logger.warning("could not refresh the cluster's slot map: %r", exc)

    def _spawn(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _check_server(self) -> None:
        if self._checked:
            return
        self._checked = True
        cluster = isinstance(self._client, RedisCluster)
        try:
            try:  # INFO first: least-privilege users have it (pylivermore.acl), CONFIG they do not
                if cluster:  # every master: one evicting node is enough to lose leases
                    reply = await self._client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                else:
                    reply = await self._client.info("memory")
            except ResponseError:
                if cluster:
                    raise
                policy = (await self._client.config_get("maxmemory-policy")).get("maxmemory-policy")
                reply = {"maxmemory_policy": policy}
        except RedisError as exc:
            logger.debug("could not read maxmemory-policy: %s", exc)
            return
        for warning in self._config.eviction_warnings(reply, cluster):
            logging.getLogger("pylivermore.registry").warning(warning)

    # -- owner side ------------------------------------------------------------------------

    async def claim(
        self,
        exchange_id: int | str,
        exchange_name: str,
        *,
        reclaim: bool = False,
        on_lost: Callable[[AsyncLease], object] | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        wait: float = 0,
    ) -> AsyncLease:
        """Claim *exchange_id* in one round trip and start renewing it in the background.

        ``on_lost(lease)`` may be a plain function or a coroutine function. *replicas*,
        *replica_timeout* and *wait* as in :meth:`Registry.claim <pylivermore.Registry.claim>`.
        """
        lease = await self._claim(exchange_id, exchange_name, reclaim, on_lost, replicas, replica_timeout, wait, False)
        assert lease is not None
        return lease

    async def try_claim(
        self,
        exchange_id: int | str,
        exchange_name: str,
        *,
        reclaim: bool = False,
        on_lost: Callable[[AsyncLease], object] | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        wait: float = 0,
    ) -> AsyncLease | None:
        """:meth:`claim`, but ``None`` when another live owner holds *exchange_id* (after *wait*
        seconds, if given): no exception is built and the holder is not decoded (the cheap path
        for callers that only retry)."""
        return await self._claim(exchange_id, exchange_name, reclaim, on_lost, replicas, replica_timeout, wait, True)

    async def standby(
        self,
        exchange_id: int | str,
        exchange_name: str,
        *,
        on_lost: Callable[[AsyncLease], object] | None = None,
        stop: asyncio.Event | None = None,
        check_every: float = STANDBY_ROUND,
    ) -> AsyncLease | None:
        """A warm spare, as :meth:`Registry.standby <pylivermore.Registry.standby>`: the lease once
        this process holds *exchange_id*, or ``None`` once *stop* is set (looked at every
        *check_every* seconds). Cancelling the task ends it at once."""
        seconds = standby_round(check_every)
        while stop is None or not stop.is_set():
            lease = await self._claim(exchange_id, exchange_name, False, on_lost, 0, 1.0, seconds, True)
            if lease is not None:
                return lease
        return None

    async def _claim(
        self,
        exchange_id: int | str,
        exchange_name: str,
        reclaim: bool,
        on_lost: Callable[[AsyncLease], object] | None,
        replicas: int,
        replica_timeout: float,
        wait: float,
        quiet: bool,
    ) -> AsyncLease | None:
        pending = self._config.claim(exchange_id, exchange_name, reclaim)
        durable = self._config.durability(replicas, replica_timeout)
        waiting = wait_seconds(wait)
        await self._check_server()
        if not waiting:
            lease_core = await self._attempt(pending, durable, quiet)
        else:
            lease_core = await self._claim_waiting(pending, durable, waiting, quiet)
        if lease_core is None:
            return None
        lease = AsyncLease(self, lease_core, on_lost)
        self._heartbeat.add(lease)
        if self._resolver is not no_address:
            self._spawn(self._resolve(lease))
        return lease

    async def _claim_waiting(
        self, pending: PendingClaim, durable: tuple[int, int] | None, wait: float, quiet: bool
    ) -> LeaseCore | None:
        """Claim attempts until one succeeds or *wait* runs out, blocked on the log in between."""
        client = self._client
        waiter = ClaimWait(self._clock, wait, _socket_timeout(client))
        log = pending.keys.log
        while True:
            # The newest entry before the attempt: a release between the attempt and the block is
            # then newer than it, and ends the block at once.
            since = newest_id(await client.xrevrange(log, count=1))
            if since == NO_ENTRY:
                since = await self._last_generated_id(log)
            try:
                return await self._attempt(pending, durable, False)
            except ClaimConflictError as conflict:
                block = waiter.block_ms(conflict.ttl)
                if block is None:
                    if quiet:
                        return None
                    raise
            waiter.woke(got_entry(await client.xread({log: since}, block=block)))

    async def _last_generated_id(self, log: str) -> bytes | str:
        """An empty log's last generated id (where a block must start), or ``0-0`` without a log."""
        try:
            return last_generated_id(await self._client.xinfo_stream(log))
        except ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return NO_ENTRY  # no log yet: any entry that creates it is newer than 0-0

    async def _attempt(self, pending: PendingClaim, durable: tuple[int, int] | None, quiet: bool) -> LeaseCore | None:
        """One claim round trip: the lease's core, or on conflict an error (``None`` if *quiet*)."""
        sent = self._clock()
        if durable is None:
            lease_core = self._config.claimed(pending, await self._run(pending.call), sent, quiet)
        else:
            reply, acknowledged = await self._claim_and_wait(pending.call, durable)
            lease_core = self._config.claimed(pending, reply, sent, quiet)
            if lease_core is None:
                return None
            shortfall = self._config.replication_error(pending.wire_id, acknowledged, durable)
            if shortfall is not None:
                await self._abandon(lease_core)
                raise shortfall from (acknowledged if isinstance(acknowledged, Exception) else None)
        return lease_core

    async def _claim_and_wait(self, call: Call, durable: tuple[int, int]) -> tuple[Any, Any]:
        """The claim's reply and ``WAIT``'s, from one pipeline on one connection (``WAIT`` counts
        the replicas that acknowledged that connection's writes)."""
        wait = (("WAIT", *durable),)
        cluster = self._client
        if not isinstance(cluster, RedisCluster):
            reply, acknowledged = await self._run_batch([call], cluster, tail=wait)
        else:
            node = address(cluster.get_node_from_key(call.keys[0]))
            reply, acknowledged = await self._run_batch([call], self._nodes.get(node, None), tail=wait)
            redirect = redirection(reply)
            if redirect is not None:  # the slot moved (MOVED) or is moving (ASK): once more, there
                target, asking = redirect
                if not asking:
                    self._refresh_slots_soon(cluster)
                reply, acknowledged = await self._run_batch([call], self._nodes.get(target, None), asking, wait)
        if isinstance(reply, Exception):
            raise reply
        return reply, acknowledged

    async def _abandon(self, lease_core: LeaseCore) -> None:
        """Release a claim that will not be handed out (never raises: the TTL ends it otherwise)."""
        call = lease_core.release_call()
        try:
            if call is not None:
                lease_core.release_done(await self._run(call))
        except (LivermoreError, RedisError) as exc:
            logger.warning("could not release exchange %s (it expires with its TTL): %s", lease_core.exchange_id, exc)

    async def _resolve(self, lease: AsyncLease) -> None:
        try:
            resolver = self._resolver
            # A plain resolver may block (it may do network I/O): keep it off the event loop.
            result = resolver() if inspect.iscoroutinefunction(resolver) else await asyncio.to_thread(resolver)
            address = await result if inspect.isawaitable(result) else result
            if address is not None:
                await lease.set_address(address.ip, address.country_code)
        except Exception as exc:
            logger.warning("address resolver failed for exchange %s: %s", lease.exchange_id, exc)

    # -- readers and operators ---------------------------------------------------------------

    async def get(self, exchange_id: int | str) -> InstanceStatus | None:
        """The live record of *exchange_id*, or ``None`` if nobody holds it."""
        _, keys = self._config.keys(exchange_id)
        try:
            raw = await self._client.hgetall(keys.status)
        except ResponseError as exc:
            raise self._config.read_error(exc, keys.status) from exc
        return self._config.decode_status(raw, keys)

    async def instances(self) -> list[InstanceStatus]:
        """Every live record of this namespace (SCAN, then pipelined HGETALL), sorted by id."""
        keys = [k async for k in self._client.scan_iter(match=self._config.status_pattern, count=1000)]
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return self._config.decode_listing(keys, await pipe.execute(raise_on_error=False) if keys else [])

    async def activity(self, exchange_id: int | str, count: int = 100) -> list[ActivityEntry]:
        """The newest *count* activity-log entries of *exchange_id*, newest first."""
        _, keys = self._config.keys(exchange_id)
        try:
            raw = await self._client.xrevrange(keys.log, count=self._config.activity_count(count))
        except ResponseError as exc:
            raise self._config.read_error(exc, keys.log) from exc
        return self._config.decode_activity(raw, keys)

    async def force_release(self, exchange_id: int | str, reason: str, *, operator: str | None = None) -> int | None:
        """Operator tool: remove any holder of *exchange_id* and log who and why."""
        keys, call = self._config.force_release(exchange_id, reason, operator)
        return parse_force_release(await self._run(call), keys)

    async def close(self) -> None:
        """Stop the background heartbeat (leases stop being renewed; they are not released)
        and close its own connections. A client passed in stays open; the one :meth:`from_url`
        made is closed."""
        await self._heartbeat.stop()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for node_client in self._nodes.drain():
            await node_client.aclose()
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Leaving ``async with registry:`` closes it (:meth:`close`): leases still held stop being renewed."""
        await self.close()


class AsyncLease:
    """Ownership of one resource, renewed by the registry's heartbeat task until released or lost."""

    def __init__(
        self, registry: AsyncRegistry, lease_core: LeaseCore, on_lost: Callable[[AsyncLease], object] | None
    ) -> None:
        self._registry = registry
        self._core = lease_core
        self._clock = registry._clock
        self._on_lost = on_lost
        self._guards: set[_LossGuard] = set()
        lease_core.on_lost = self._fire

    def _fire(self) -> None:
        for guard in list(self._guards):
            guard.cancel()
        if self._on_lost is not None:
            result = self._on_lost(self)
            if inspect.isawaitable(result):
                self._registry._spawn(result)

    def __repr__(self) -> str:
        return f"<AsyncLease exchange={self.exchange_id} fencing_token={self.fencing_token} state={self.state}>"

    @property
    def exchange_id(self) -> int | str:
        return self._core.exchange_id

    @property
    def exchange_name(self) -> str:
        return self._core.exchange_name

    @property
    def fencing_token(self) -> int:
        """Strictly greater than every token issued before for this resource."""
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

    def guard(self) -> _LossGuard:
        """``async with lease.guard():`` runs the block while the lease is held: if the lease is
        lost meanwhile, the task running the block is cancelled and the block ends with
        :class:`~pylivermore.LeaseLostError` (like ``asyncio.timeout`` for ownership)."""
        return _LossGuard(self)

    async def _run(self, call: Call) -> Any:
        return await self._registry._run(call)

    async def transition(self, to: State | str, *, expected: State | str | None = None) -> State | str:
        """Move to state *to*; with *expected*, only if the record is in that state now."""
        call = self._core.transition_call(to, expected, self._clock())
        return self._core.transition_done(await self._run(call), call)

    async def set_symbol_count(self, count: int) -> None:
        self._core.update_done(await self._run(self._core.update_call(*core.symbols_args(count), self._clock())))

    async def set_admin(self, email: str | None, display_name: str | None) -> None:
        call = self._core.update_call(*core.admin_args(email, display_name), self._clock())
        self._core.update_done(await self._run(call))

    async def set_address(self, ip: str | None, country_code: str | None = None) -> None:
        call = self._core.update_call(*core.address_args(ip, country_code), self._clock())
        self._core.update_done(await self._run(call))

    async def record_error(self, message: str) -> None:
        """Record *message* as the record's last error and log it."""
        self._core.record_error_done(await self._run(self._core.record_error_call(message, self._clock())))

    async def status(self) -> InstanceStatus:
        """This lease's record, read from Redis."""
        self._core.check(self._clock())
        status = await self._registry.get(self.exchange_id)
        self._core.check_record(status)
        assert status is not None
        return status

    async def heartbeat(self) -> None:
        """Renew now (the background heartbeat does this on its own)."""
        sent = self._clock()
        call = self._core.heartbeat_call(sent)
        self._core.heartbeat_done(await self._registry._run(call), sent, self._clock())

    async def release(self) -> bool:
        """Stop renewing and deregister; True if this call deleted the record."""
        self._registry._heartbeat.discard(self)
        call = self._core.release_call()
        if call is None:
            return False
        return self._core.release_done(await self._run(call))

    async def __aenter__(self) -> AsyncLease:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if isinstance(exc, Exception) and self.is_valid:
                await self.record_error(f"{type(exc).__name__}: {exc}")
            for step in self._core.shutdown_path():
                await self.transition(step)
        except (LivermoreError, RedisError) as err:
            logger.warning("graceful shutdown of exchange %s cut short: %s", self.exchange_id, err)
        finally:
            try:
                await self.release()
            except (LivermoreError, RedisError):
                if exc is None:
                    raise
                logger.exception("release of exchange %s failed", self.exchange_id)


class _LossGuard:
    """The context manager of :meth:`AsyncLease.guard`."""

    def __init__(self, lease: AsyncLease) -> None:
        self._lease = lease
        self._task: asyncio.Task[Any] | None = None
        self._fired = False

    def cancel(self) -> None:
        # When the guarded task itself noticed the loss (its own call raised), it is already
        # unwinding with LeaseLostError: cancelling it too would leave a stray cancellation.
        if self._task is not None and not self._fired and self._task is not asyncio.current_task():
            self._fired = True
            self._task.cancel()

    async def __aenter__(self) -> AsyncLease:
        self._lease.ensure_held()
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("lease.guard() must be used inside an asyncio task")
        self._lease._guards.add(self)
        return self._lease

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lease._guards.discard(self)
        if self._fired and self._task is not None and self._task.uncancel() == 0 and exc_type is asyncio.CancelledError:
            reason = self._lease.lost_reason or "deadline"
            raise LeaseLostError(self._lease.exchange_id, reason) from exc


class _Heartbeat:
    """One asyncio task per registry renews all its leases. It outlives its last lease by
    :data:`~pylivermore._renewal.IDLE_LINGER` seconds, so that a claim / release cycle never
    creates a task."""

    def __init__(self, registry: AsyncRegistry) -> None:
        self._registry = registry
        self._schedule: Schedule[AsyncLease] = Schedule()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._planned = 0.0  # when the loop will wake next (monotonic clock)
        client = registry._client
        self._slot_of = client.keyslot if isinstance(client, RedisCluster) else None

    def add(self, lease: AsyncLease) -> None:
        self._schedule.add(lease, lease._core)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()  # an Event binds to the loop that first waits on it
            self._task = loop.create_task(self._loop(), name="pylivermore-heartbeat")
        elif lease._core.wake_at() >= self._planned:
            return  # the loop wakes before this lease needs it
        self._wake.set()

    def discard(self, lease: AsyncLease) -> None:
        self._schedule.discard(lease)  # no wake-up: the loop finds nothing due at its planned time

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        clock, registry = self._registry._clock, self._registry
        ahead = registry._config.renew_ahead
        idle_since: float | None = None  # time.monotonic(): the registry's clock may be a test's
        while True:
            if not self._schedule:
                if idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= IDLE_LINGER:  # end; add() creates another
                    return
                # Idle, the loop looks again every half interval unasked: a new lease's first beat
                # is a whole interval away, so add() need not wake it.
                poll = registry._config.heartbeat_interval / 2
                self._planned = clock() + poll
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll)
                continue
            idle_since = None
            due = self._schedule.pop_due(clock() + ahead)
            renewals = renewal_calls(due, _core_of, clock(), ahead, self._slot_of)
            if renewals:  # never raises: failed beats are retried until the deadline
                sent = clock()
                settle_round(
                    renewals, await registry._renew(renewals), sent, clock(), registry._config.lease_settings.observer
                )
            self._schedule.push_all(due)
            wake = self._schedule.next_wake()
            self._planned = float("inf") if wake is None else wake
            self._wake.clear()
            if wake is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, wake - clock()))


def _core_of(lease: AsyncLease) -> LeaseCore:
    return lease._core


def _socket_timeout(client: aredis.Redis | RedisCluster) -> float | None:
    """The client's socket timeout (a node's, on a cluster), if it has one."""
    if isinstance(client, RedisCluster):
        return socket_timeout_of(client.connection_kwargs)
    return socket_timeout_of(getattr(getattr(client, "connection_pool", None), "connection_kwargs", None))


def _node_client(cluster: aredis.Redis | RedisCluster, node: Node, timeout: float | None) -> aredis.Redis:
    """A plain client of one cluster node, with the cluster's connection options (credentials,
    TLS, protocol), for pipelines of scripts (redis-py's cluster pipeline refuses EVALSHA).
    With *timeout*, its calls give up after that many seconds and never retry."""
    assert isinstance(cluster, RedisCluster), "node clients exist on a cluster only"
    kwargs = dict(cluster.nodes_manager.connection_kwargs)
    for internal in ("response_callbacks", "redis_connect_func"):  # the cluster's own wiring
        kwargs.pop(internal, None)
    kwargs.update(host=node[0], port=node[1])
    if timeout is not None:
        kwargs.update(socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    return aredis.Redis.from_pool(aredis.ConnectionPool(**kwargs))
