"""Redis server faults (reliability notes §4.2, R1-R3 and R5-R8), against real redis-server processes.

Every destructive test runs on a server of its own (``fresh_server``, or ``persistent_server`` for
R2). Owners use TTL 1.5 s, heartbeat 0.5 s, renew deadline 1.0 s; contenders whose own heartbeat
must not write during a test use a long TTL (``QUIET``). Observations go through a separate admin
connection; every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.retry import Retry

from pylivermore import AsyncLease, AsyncRegistry, ClaimConflictError, Lease, LeaseLostError, Registry, State
from pylivermore._keys import Keys
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer, find_server_binary
from tests.conftest import ACL_MODE, make_admin_client, make_async_client, make_client
from tests.support import (
    DEADLINE,
    HB,
    TTL,
    Background,
    LossLog,
    OwnerClock,
    RoundTrips,
    assert_lost_at_deadline,
    await_beat,
    await_until,
    expiry_window,
    iso_ms,
    wait_for_beat,
    wait_until,
)

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: A contender whose own heartbeat cannot write during a test: every change to its record comes from someone else.
QUIET: dict[str, Any] = {"ttl": 120.0, "heartbeat_interval": 40.0, "renew_deadline": 80.0}
#: How long one heartbeat attempt may take (the registry's bound: min(hb / 2, (deadline - hb) / 2)).
BEAT_TIMEOUT = min(HB / 2, (DEADLINE - HB) / 2)
EXCHANGE, OTHER = "42", "43"
SHA = {name: spec.sha1 for name, spec in load_scripts().items()}


# -- helpers ------------------------------------------------------------------------------------


async def settle(result: object) -> Any:
    """The result of a call on a sync lease, or of an awaited call on an asyncio lease."""
    return await result if inspect.isawaitable(result) else result


def snapshot(admin: redis.Redis, keys: Keys) -> tuple[dict[bytes, bytes], list[Any], bytes | None]:
    """The record, the whole activity log and the fence (one pipeline: a MULTI is refused under OOM)."""
    pipe = admin.pipeline(transaction=False)
    pipe.hgetall(keys.status)
    pipe.xrange(keys.log)
    pipe.get(keys.fence)
    record, log, fence = pipe.execute()
    return record, log, fence


def namespace_keys(admin: redis.Redis, namespace: str) -> list[bytes]:
    return sorted(admin.scan_iter(match=f"{namespace}:*"))


def events(registry: Registry, exchange_id: str = EXCHANGE) -> list[tuple[str, str | None, int | None]]:
    """The activity log, oldest first, as (event, to_state or how, fencing_token)."""
    return [(e.event, e.to_state or e.how, e.fencing_token) for e in reversed(registry.activity(exchange_id))]


def script_stats(admin: redis.Redis) -> dict[str, int]:
    info = admin.info("commandstats")
    evalsha = info.get("cmdstat_evalsha", {})
    return {
        "evalsha": int(evalsha.get("calls", 0)),
        "noscript": int(evalsha.get("failed_calls", 0)),
        "load": int(info.get("cmdstat_script|load", {}).get("calls", 0)),
    }


class CommandLog:
    """``MONITOR`` on its own (admin) connection, in a thread: the commands the server executed, in order.

    The thread may lag behind the server on a loaded machine, so :meth:`stop` does not assume it
    has read everything: it sends a unique ``ECHO`` and the thread reads on until that command
    (MONITOR reports commands in execution order, so every command executed before it is in)."""

    def __init__(self, server: RedisServer) -> None:
        self._client = make_admin_client(server, socket_timeout=15.0)
        self.commands: list[tuple[float, str]] = []  # (server time, command)
        self._marker = f"ECHO commandlog-end-{os.getpid()}-{id(self):x}"
        self._ready = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="chaos-monitor", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            self._client.close()
            raise AssertionError("MONITOR did not start")

    def _run(self) -> None:
        try:
            with self._client.monitor() as monitor:
                self._ready.set()
                while True:
                    cmd = monitor.next_command()
                    if cmd["command"] == self._marker:
                        self._ended = True
                        return
                    if cmd["client_type"] != "lua":
                        self.commands.append((cmd["time"], cmd["command"]))
        except (redis.RedisError, OSError, ValueError):
            pass
        finally:
            self._ready.set()

    def stop(self, poke: redis.Redis) -> bool:
        """Read up to now (*poke* sends the end marker), then close the connection; False if
        the end marker was not seen (commands may be missing)."""
        poke.echo(self._marker.split(" ", 1)[1])
        self._thread.join(30)
        self._client.close()
        return self._ended

    def evalsha(self, script: str, *args: str, since: float = 0.0) -> list[str]:
        """The EVALSHA calls of *script* run at server time *since* or later whose arguments include *args*."""
        prefix = f"EVALSHA {SHA[script]} "
        return [
            c for t, c in self.commands if t >= since and c.startswith(prefix) and all(a in c.split(" ") for a in args)
        ]


def seq_arg(command: str, status_key: str) -> str:
    """The seq of a transition's EVALSHA as MONITOR shows it: KEYS are status, log; ARGV token,
    seq, to, expected."""
    words = command.split(" ")
    i = words.index(status_key)
    assert words[i - 1] == "2", command  # the key count
    return words[i + 3]


def server_time(admin: redis.Redis) -> float:
    seconds, micros = admin.time()
    return seconds + micros / 1e6


def fill_until_oom(admin: redis.Redis, stop: Callable[[], bool] = lambda: False) -> int:
    """Write 4 KB filler values until a write is refused for memory (or *stop* says so); return the count."""
    written = 0
    for batch in range(2000):
        pipe = admin.pipeline(transaction=False)
        for i in range(16):
            pipe.set(f"filler:{batch}:{i}", b"x" * 4096)
        results = pipe.execute(raise_on_error=False)
        written += sum(1 for r in results if r is True)
        if any(isinstance(r, OutOfMemoryError) for r in results) or stop():
            return written
    raise AssertionError("memory never ran out")


def squeeze(admin: redis.Redis, room: int = 256 * 1024) -> None:
    """Set maxmemory to what the server uses now plus *room* bytes (*room* may be negative)."""
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + room)


def exhaust_memory(admin: redis.Redis) -> None:
    """Under noeviction: write 1 MB of filler, then set maxmemory below what is used, so that
    every write that may grow memory is refused (a limit met only transiently could let one pass)."""
    pipe = admin.pipeline(transaction=False)
    for i in range(256):
        pipe.set(f"filler:{i}", b"x" * 4096)
    pipe.execute()
    squeeze(admin, -128 * 1024)
    with pytest.raises(OutOfMemoryError):
        admin.set("filler:probe", b"x")


class AofReplayServer(RedisServer):
    """A server whose ``default`` user (the suite's worker, see tests/conftest.py) gets its rules only
    once the append-only file has been replayed.

    redis-server checks the EXEC of a MULTI replayed from the AOF against the ``default`` user's ACL
    (redis/redis#14541, fixed by redis/redis#14545): under the worker rules the PEXPIREAT that a
    script's PEXPIRE is propagated as would be dropped on every restart, leaving records without a TTL.
    So ``default`` starts disabled with every right (the replay passes; no client can act as it, a
    command gets NOAUTH), and the admin gives it exactly the worker rules as soon as the server answers.
    """

    def command(self) -> list[str]:
        args = super().command()
        if ACL_MODE:
            first = args.index("--user")  # the suite's users: default, then admin
            assert args[first + 1] == "default", args
            end = args.index("--user", first + 1)
            self._worker_rules = args[first + 2 : end]
            args[first:end] = ["--user", "default", "off", "nopass", "~*", "&*", "+@all"]
        return args

    def start(self, timeout: float = 10.0) -> AofReplayServer:
        super().start(timeout)
        if ACL_MODE:
            with make_admin_client(self) as admin:
                # "Up" (a PING answered, NOAUTH counts) comes before the replay ends: the auth check
                # precedes the LOADING one. Restricting default mid-replay would drop PEXPIREATs.
                assert wait_until(lambda: admin.info("persistence")["loading"] == 0, timeout), "AOF never loaded"
                admin.execute_command("ACL", "SETUSER", "default", "reset", *self._worker_rules)
        return self


@pytest.fixture
def persistent_server() -> Iterator[RedisServer]:
    """A private server with an append-only file fsynced on every write, for restart tests."""
    if find_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server on PATH")
        pytest.skip("no redis-server on PATH")
    with AofReplayServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        yield server


# -- R1: the script cache is flushed ---------------------------------------------------------------------------


def check_reloaded_once(admin: redis.Redis, before: dict[str, int], script: str) -> None:
    after = script_stats(admin)
    assert admin.script_exists(SHA["renew_many"]) == [False], "a heartbeat ran inside the measured window"
    assert admin.script_exists(SHA[script]) == [True], f"{script} was not loaded again"
    delta = {k: after[k] - before.get(k, 0) for k in after}
    # One NOSCRIPT (the script did not run), one SCRIPT LOAD, one successful retry: nothing more.
    assert delta == {"evalsha": 2, "noscript": 1, "load": 1}, delta


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["claim", "transition", "deregister"])
def test_script_flush_reload_and_retry_once_sync(fresh_server: RedisServer, namespace: str, op: str) -> None:
    """R1: after SCRIPT FLUSH, the first claim / transition / deregister gets NOSCRIPT, loads its
    script and retries exactly once (commandstats: 2 EVALSHA of which 1 NOSCRIPT, 1 SCRIPT LOAD), and
    applies exactly once: one new log entry, the record as after one call."""
    admin = make_admin_client(fresh_server)
    client = make_client(fresh_server)
    # No heartbeat comes due inside the measured window (it would count), however slowly it runs.
    registry = Registry(client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    try:
        if op == "claim":
            registry.claim(EXCHANGE, "Warmup").release()  # the claim script was cached, then it is flushed
        else:
            lease = registry.claim(EXCHANGE, "Owner")
        log_before = admin.xlen(keys.log)
        admin.script_flush()
        assert admin.script_exists(*SHA.values()) == [False] * len(SHA)
        admin.config_resetstat()
        before = script_stats(admin)
        if op == "claim":
            lease = registry.claim(EXCHANGE, "Owner")
            expected = ("claim", "new", lease.fencing_token)
        elif op == "transition":
            assert lease.transition("starting") is State.STARTING
            expected = ("state_transition", "starting", lease.fencing_token)
        else:
            assert lease.release() is True
            expected = ("deregister", None, lease.fencing_token)
        check_reloaded_once(admin, before, op)
        assert admin.xlen(keys.log) == log_before + 1, "the retried call wrote more than one log entry"
        assert events(registry)[-1] == expected
        if op == "deregister":
            assert admin.exists(keys.status) == 0
        else:
            status = registry.get(EXCHANGE)
            assert status is not None
            assert status.fencing_token == lease.fencing_token
            assert status.connection_state is (State.STARTING if op == "transition" else State.IDLE)
            assert admin.get(keys.fence) == str(lease.fencing_token).encode()
            assert lease.is_valid
            assert lease.release() is True
    finally:
        registry.close()
        client.close()
        admin.close()


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ["claim", "transition", "deregister"])
async def test_script_flush_reload_and_retry_once_async(fresh_server: RedisServer, namespace: str, op: str) -> None:
    """R1 (asyncio): after SCRIPT FLUSH, the first claim / transition / deregister gets NOSCRIPT,
    loads its script and retries exactly once, and applies exactly once (one new log entry)."""
    admin = make_admin_client(fresh_server)
    client = make_async_client(fresh_server)
    # No heartbeat comes due inside the measured window (it would count), however slowly it runs.
    registry = AsyncRegistry(client, namespace=namespace, **QUIET)
    reader_client = make_client(fresh_server)
    reader = Registry(reader_client, namespace=namespace, **TIMING)  # only for activity(): claims nothing
    keys = Keys(namespace, EXCHANGE)
    try:
        if op == "claim":
            await (await registry.claim(EXCHANGE, "Warmup")).release()
        else:
            lease = await registry.claim(EXCHANGE, "Owner")
        log_before = admin.xlen(keys.log)
        admin.script_flush()
        admin.config_resetstat()
        before = script_stats(admin)
        if op == "claim":
            lease = await registry.claim(EXCHANGE, "Owner")
            expected = ("claim", "new", lease.fencing_token)
        elif op == "transition":
            assert await lease.transition("starting") is State.STARTING
            expected = ("state_transition", "starting", lease.fencing_token)
        else:
            assert await lease.release() is True
            expected = ("deregister", None, lease.fencing_token)
        check_reloaded_once(admin, before, op)
        assert admin.xlen(keys.log) == log_before + 1, "the retried call wrote more than one log entry"
        assert events(reader)[-1] == expected
        if op == "deregister":
            assert admin.exists(keys.status) == 0
        else:
            status = await registry.get(EXCHANGE)
            assert status is not None
            assert status.fencing_token == lease.fencing_token
            assert status.connection_state is (State.STARTING if op == "transition" else State.IDLE)
            assert lease.is_valid
            assert await lease.release() is True
    finally:
        await registry.close()
        await client.aclose()
        reader.close()
        reader_client.close()
        admin.close()


# -- R2: restart with persistence -------------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_restart_with_persistence_keeps_lease_ttl_and_fence(persistent_server: RedisServer, namespace: str) -> None:
    """R2, downtime < renew_deadline: after SIGKILL and a restart on the same port and --dir
    (appendonly, appendfsync always), the records, the fence and the log survive; a lease's
    absolute expiry is unchanged, so its TTL kept counting through the downtime; the owner's
    heartbeat resumes (NOSCRIPT handled: the script is loaded again) without any loss reported,
    and a transition after the restart applies once.

    Timing: TTL 6 s, heartbeat 1 s, renew deadline 4 s here, so that a restart that a loaded
    machine makes slow (up to renew_deadline - heartbeat_interval = 3 s) is still "short"."""
    server = persistent_server
    admin = make_admin_client(server)
    client = make_client(server)
    quiet_client = make_client(server)
    registry = Registry(client, namespace=namespace, ttl=6.0, heartbeat_interval=1.0, renew_deadline=4.0)
    quiet = Registry(quiet_client, namespace=namespace, **QUIET)
    keys, qkeys = Keys(namespace, EXCHANGE), Keys(namespace, OTHER)
    lost = LossLog()
    try:
        assert admin.config_get("appendonly") == {"appendonly": "yes"}
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        lease.transition("starting")
        held = quiet.claim(OTHER, "Quiet")  # renewed only every 40 s: its TTL is left to count down
        wait_for_beat(admin, keys.status)

        pipe = admin.pipeline(transaction=True)
        pipe.hgetall(qkeys.status).pexpiretime(qkeys.status).pttl(qkeys.status)
        q_record, q_expires_at, q_pttl = pipe.execute()
        q_read_at = time.monotonic()  # the server read its clock before this
        record, log, fence = snapshot(admin, keys)
        killed_at = time.monotonic()
        server.restart()  # SIGKILL, then start again on the same port and --dir
        downtime = time.monotonic() - killed_at
        assert downtime < 3.0, f"the restart took {downtime:.3f} s: too slow for this scenario"

        pipe = admin.pipeline(transaction=True)
        pipe.hgetall(qkeys.status).pexpiretime(qkeys.status).pttl(qkeys.status)
        sent_at = time.monotonic()  # the server reads its clock after this
        q_record_after, q_expires_after, q_pttl_after = pipe.execute()
        assert q_record_after == q_record
        assert q_expires_after == q_expires_at, "the absolute expiry changed across the restart"
        # At least the time between the two reads went off the TTL (1 ms: PTTL's rounding).
        counted_ms = (sent_at - q_read_at) * 1000
        assert 0 < q_pttl_after <= q_pttl - counted_ms + 1, (q_pttl, q_pttl_after, counted_ms)
        assert admin.get(qkeys.fence) == str(held.fencing_token).encode()

        record_after, log_after, fence_after = snapshot(admin, keys)
        assert log_after == log
        assert fence_after == fence == str(lease.fencing_token).encode()
        for field in (b"ownerDigest", b"fencingToken", b"connectionState", b"instanceId"):
            assert record_after[field] == record[field], field

        wait_for_beat(admin, keys.status)  # the heartbeat resumed on the restarted server
        assert admin.script_exists(SHA["renew_many"]) == [True]
        stats = script_stats(admin)  # commandstats started from zero at the restart
        assert stats["load"] >= 1, "the heartbeat did not load its script again"
        assert stats["noscript"] >= 1, "no NOSCRIPT was seen after the restart"
        assert lease.is_valid
        assert lease.transition("warming") is State.WARMING
        assert [e for e in events(registry) if e[0] == "state_transition"] == [
            ("state_transition", "starting", lease.fencing_token),
            ("state_transition", "warming", lease.fencing_token),
        ]
        wait_for_beat(admin, keys.status)
        assert lost.calls == [], "the lease was reported lost across a short restart"
        assert lease.release() is True
        assert held.release() is True
    finally:
        registry.close()
        quiet.close()
        client.close()
        quiet_client.close()
        admin.close()


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_restart_with_persistence_after_deadline_reports_deadline_loss(
    persistent_server: RedisServer, namespace: str
) -> None:
    """R2, downtime > renew_deadline: the owner reports the loss with reason "deadline" between
    renew_deadline and renew_deadline + heartbeat_interval after its last acknowledged heartbeat,
    while the server is down; after the restart its record is not renewed and expires at its
    original time (its absolute expiry is still its last renewal + TTL: the TTL counted through
    the downtime), the fence survives so a contender's token is higher, and the stale owner's
    release does not touch the contender's record.

    Timing: TTL 4 s here (heartbeat and deadline as usual), so that the record outlives the
    downtime by seconds and its expiry can be read after the restart however slow the test runs."""
    ttl = 4.0
    server = persistent_server
    admin = make_admin_client(server)
    client = make_client(server)
    contender_client = make_client(server)
    clock = OwnerClock()
    registry = Registry(client, namespace=namespace, clock=clock, **{**TIMING, "ttl": ttl})
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    try:
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        lease.transition("starting")
        acked = wait_for_beat(admin, keys.status)

        entitled = clock.deadline_now(lease)  # acknowledgements can only move it later
        killed_at = time.monotonic()
        server.stop()
        assert wait_until(lambda: lost.calls, 10.0), "no loss reported while the server was down"
        at, reason = lost.calls[0]
        assert reason == "deadline"
        assert_lost_at_deadline(at, acked, silenced=killed_at, entitled=entitled)
        calls = RoundTrips(client)
        with pytest.raises(LeaseLostError) as info:
            lease.transition("warming")
        assert info.value.reason == "deadline"
        assert calls.count == 0, "a refused transition tried the server"

        # The loss comes renew_deadline after the last acknowledged send, which may precede the
        # stop by up to an interval: keep the server down past renew_deadline all the same (R2).
        time.sleep(max(0.0, killed_at + DEADLINE + 0.05 - time.monotonic()))
        server.start()
        assert time.monotonic() - killed_at > DEADLINE
        # The record as persisted before the crash (the owner is lost: it renews nothing any more).
        pipe = admin.pipeline(transaction=True)
        pipe.hget(keys.status, "lastHeartbeat").pexpiretime(keys.status)
        last_beat, expires_ms = pipe.execute()
        assert last_beat is not None, "the record did not survive the restart"
        assert expires_ms > 0, "the record lost its TTL in the restart"
        assert abs(expires_ms - (iso_ms(last_beat) + round(ttl * 1000))) <= 2, "the expiry moved across the restart"

        def gone_or_unrenewed() -> bool:
            pipe = admin.pipeline(transaction=True)
            pipe.exists(keys.status).hget(keys.status, "lastHeartbeat")
            exists, beat = pipe.execute()
            assert not exists or beat == last_beat, "the lost owner renewed its record after the restart"
            return not exists

        assert wait_until(gone_or_unrenewed, ttl + 10.0), "the record never expired"

        assert admin.get(keys.fence) == str(lease.fencing_token).encode(), "the fence did not survive the restart"
        taken = contender.claim(EXCHANGE, "Contender")
        assert taken.fencing_token > lease.fencing_token
        record, log, _ = snapshot(admin, keys)
        assert lease.release() is False  # token-checked deregister: the record is someone else's now
        assert snapshot(admin, keys)[:2] == (record, log)
        assert [e[:2] for e in events(registry)] == [
            ("claim", "new"),
            ("state_transition", "starting"),
            ("claim", "new"),
        ]
        assert len(lost.calls) == 1
        assert taken.release() is True
    finally:
        registry.close()
        contender.close()
        client.close()
        contender_client.close()
        admin.close()


# -- R3: restart without persistence ----------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_restart_without_persistence_loses_everything_and_fencing_still_increases(
    fresh_server: RedisServer, namespace: str, mode: str
) -> None:
    """R3: a restart without persistence loses every record, log and fence key. The old owner's
    next heartbeat finds its key missing (EXPIRED), reports the loss ("expired") and does NOT
    re-create anything: the namespace stays empty until someone claims. A contender then claims at
    once, and its fencing token is strictly greater than the old owner's although the fence key was
    gone: the server-time floor (max(last + 1, server µs)) keeps tokens increasing.

    Timing: renew deadline 4 s (TTL 6 s) here, so that however long a loaded machine takes to
    restart the server, the owner's next heartbeat after it finds the key missing before its
    deadline passes (the loss is "expired", not "deadline")."""
    timing = {"ttl": 6.0, "heartbeat_interval": HB, "renew_deadline": 4.0}
    admin = make_admin_client(fresh_server)
    contender_client = make_client(fresh_server)
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    sync_registry: Registry | None = None
    async_registry: AsyncRegistry | None = None
    aclient = None
    sync_client = None
    try:
        if mode == "sync":
            sync_client = make_client(fresh_server)
            sync_registry = Registry(sync_client, namespace=namespace, **timing)
            lease: Lease | AsyncLease = sync_registry.claim(EXCHANGE, "Owner", on_lost=lost)
        else:
            aclient = make_async_client(fresh_server)
            async_registry = AsyncRegistry(aclient, namespace=namespace, **timing)
            lease = await async_registry.claim(EXCHANGE, "Owner", on_lost=lost)
        await await_beat(admin, keys.status)
        old_token = lease.fencing_token
        assert admin.get(keys.fence) == str(old_token).encode()

        fresh_server.restart()
        restarted_at = time.monotonic()
        assert namespace_keys(admin, namespace) == [], "the restart without persistence kept keys"

        assert await await_until(lambda: lost.calls, 10.0), "the old owner never noticed"
        at, reason = lost.calls[0]
        assert reason == "expired", f"expected the heartbeat to find the key missing, got {reason!r}"
        # The next heartbeat (due within an interval, or a retry a quarter interval after a failed
        # one) finds it, within one bounded attempt; one more interval of scheduling allowance.
        assert at - restarted_at <= 2 * HB + BEAT_TIMEOUT
        await asyncio.sleep(
            HB + 0.2
        )  # the loop keeps running: a stray heartbeat would show up now (load can only hide it)
        assert admin.exists(keys.status) == 0, "the old owner's heartbeat re-created its record"
        assert namespace_keys(admin, namespace) == [], "the old owner wrote after the restart"

        taken = contender.claim(EXCHANGE, "Contender")  # at once: nothing holds the resource
        assert taken.fencing_token > old_token, (
            f"fencing token went from {old_token} to {taken.fencing_token} after the fence key was lost"
        )
        record, log, fence = snapshot(admin, keys)
        assert fence == str(taken.fencing_token).encode()
        assert len(log) == 1, "the log should hold only the new claim"
        with pytest.raises(LeaseLostError) as info:
            await settle(lease.transition("starting"))
        assert info.value.reason == "expired"
        assert await settle(lease.release()) is False
        assert snapshot(admin, keys) == (record, log, fence), "the stale owner touched the contender's record"
        assert len(lost.calls) == 1
        assert taken.release() is True
    finally:
        if sync_registry is not None:
            sync_registry.close()
        if sync_client is not None:
            sync_client.close()
        if async_registry is not None:
            await async_registry.close()
        if aclient is not None:
            await aclient.aclose()
        contender.close()
        contender_client.close()
        admin.close()


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_restart_without_persistence_contender_first_is_fenced_above_old_owner(
    fresh_server: RedisServer, namespace: str
) -> None:
    """R3, contender first: right after a restart without persistence a contender claims at once
    (no conflict), with a fencing token strictly greater than the old owner's (the fence key was
    lost: the server-time floor). The old owner's next heartbeat is refused (TAKEN), it reports the
    loss once and nothing it does changes the contender's record, log or fence.

    Timing: renew deadline 4 s (TTL 6 s), so that a restart that a loaded machine makes slow still
    leaves the owner's next heartbeat to find the contender's record before its deadline."""
    admin = make_admin_client(fresh_server)
    client = make_client(fresh_server)
    contender_client = make_client(fresh_server)
    registry = Registry(client, namespace=namespace, ttl=6.0, heartbeat_interval=HB, renew_deadline=4.0)
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    try:
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        lease.transition("starting")
        wait_for_beat(admin, keys.status)
        old_token = lease.fencing_token

        fresh_server.restart()
        assert admin.get(keys.fence) is None
        taken = contender.claim(EXCHANGE, "Contender")
        assert taken.fencing_token > old_token, "fencing went backwards after the fence key was lost"
        record, log, fence = snapshot(admin, keys)
        assert [entry[1][b"event"] for entry in log] == [b"claim"]

        assert wait_until(lambda: lost.calls, 10.0), "the old owner never noticed"
        assert [reason for _, reason in lost.calls] in (["taken"], ["expired"])
        with pytest.raises(LeaseLostError):
            lease.transition("warming")
        assert lease.release() is False
        time.sleep(HB + 0.2)
        assert snapshot(admin, keys) == (record, log, fence), "the stale owner changed the contender's record"
        assert admin.get(keys.fence) == str(taken.fencing_token).encode()
        assert len(lost.calls) == 1
        assert taken.release() is True
    finally:
        registry.close()
        contender.close()
        client.close()
        contender_client.close()
        admin.close()


# -- R5: server stall -----------------------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_debug_sleep_stall_owner_lost_by_deadline_and_inflight_claim_applied_once(
    fresh_server: RedisServer, namespace: str
) -> None:
    """R5, DEBUG SLEEP 2 (longer than the TTL): the owner's heartbeats time out and it reports the
    loss ("deadline") by its deadline, while the server is still asleep. A contender's claim sent
    during the stall (once a PING goes unanswered) is retried by redis-py with the same token
    (socket timeout 0.4 s): the server runs it at least twice after waking, yet it applies once
    (one claim entry, one fencing token).
    The owner's heartbeat queued during the stall runs after it and writes nothing. Afterwards the
    record and the log decode and replay consistently; the stale owner's release changes nothing."""
    admin = make_admin_client(fresh_server)
    client = make_client(fresh_server)
    contender_client = make_client(
        fresh_server, socket_timeout=0.4, socket_connect_timeout=0.4, retry=Retry(NoBackoff(), 12)
    )
    clock = OwnerClock()
    registry = Registry(client, namespace=namespace, clock=clock, **TIMING)
    contender = Registry(contender_client, namespace=namespace, instance_id="contender-r5", **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    monitor: CommandLog | None = None
    stall: Background | None = None
    try:
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        lease.transition("starting")
        contender.claim("warmup", "Warmup").release()  # its scripts are cached and its connection is open
        monitor = CommandLog(fresh_server)
        acked = wait_for_beat(admin, keys.status)
        woke_after = server_time(admin) + 1.9
        entitled = clock.deadline_now(lease)  # acknowledgements can only move it later
        stall = Background(lambda: admin.execute_command("DEBUG", "SLEEP", "2"))
        stalled_at = time.monotonic()

        # The claim must go out once the server sleeps: wait until a PING goes unanswered for
        # 0.5 s (the thread sending DEBUG SLEEP may start late on a loaded machine; a server that
        # is merely slow answers well within that).
        def asleep() -> bool:
            try:
                prober.ping()
            except redis.TimeoutError:
                return True
            time.sleep(0.01)
            return False

        prober = make_admin_client(fresh_server, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            assert wait_until(asleep, 10.0), "the server never went to sleep"
        finally:
            prober.close()
        silenced = time.monotonic()  # it had stopped answering 0.5 s before: no ack came since
        assert not clock.valid_at(lease, silenced + DEADLINE), "the lease outlives its local deadline"

        taken = contender.claim(EXCHANGE, "Contender")  # in flight through the stall, retried on timeouts
        stall.join(10)
        assert stall.error is None, stall.error
        assert stall.finished_at is not None
        assert stall.finished_at - stalled_at >= 1.9

        assert [reason for _, reason in lost.calls] == ["deadline"]
        at = lost.calls[0][0]
        assert at < stall.finished_at, "the loss was only reported after the server woke up"
        assert_lost_at_deadline(at, acked, silenced=silenced, entitled=entitled)

        assert monitor.stop(admin), "MONITOR did not see the end marker: commands may be missing"
        claims = monitor.evalsha("claim", keys.status, "contender-r5")
        assert len(claims) >= 2, f"the in-flight claim was not retried ({len(claims)} executions)"
        assert monitor.evalsha("renew_many", keys.status, since=woke_after), "the owner's queued heartbeat never ran"
        monitor = None

        status = registry.get(EXCHANGE)  # decodes: no corruption
        assert status is not None
        assert status.fencing_token == taken.fencing_token > lease.fencing_token
        assert status.instance_id == "contender-r5"
        assert status.last_heartbeat == status.registered_at, "a heartbeat wrote to the contender's record"
        assert admin.get(keys.fence) == str(taken.fencing_token).encode()
        assert events(registry) == [
            ("claim", "new", lease.fencing_token),
            ("state_transition", "starting", lease.fencing_token),
            ("claim", "new", taken.fencing_token),
        ], "the retried claim was applied more than once, or the log is inconsistent"

        record, log, fence = snapshot(admin, keys)
        with pytest.raises(LeaseLostError):
            lease.transition("warming")
        assert lease.release() is False
        assert snapshot(admin, keys) == (record, log, fence)
        assert taken.release() is True
    finally:
        if stall is not None:
            stall.join(5)
        if monitor is not None:
            monitor.stop(admin)
        registry.close()
        contender.close()
        client.close()
        contender_client.close()
        admin.close()


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_frozen_server_owner_lost_by_deadline_and_inflight_transition_applied_once(
    fresh_server: RedisServer, namespace: str, mode: str
) -> None:
    """R5, server frozen (SIGSTOP) right after a heartbeat, until shortly before the record could
    expire (TTL 3 s here): beyond renew_deadline, within the TTL. The lease is invalid from its
    deadline on and the owner reports the loss ("deadline") while the server is still frozen. A
    transition sent before the deadline and retried by redis-py with the same seq (socket timeout
    0.3 s) runs at least twice once the server resumes, yet applies exactly once (every copy after
    the first is a replay, answered REPLAYED): one log entry, with that seq, the record in the new
    state with that seq as its last applied one. The record still decodes, and the lease's
    token-checked release after the deadline loss deletes it.

    Timing: the freeze is placed from events (a heartbeat seen, the record's expiry read with PTTL)
    and the validity is read through the injected clock, so a slow test thread cannot move the
    deadline or the expiry past each other; the TTL leaves the report TTL - renew_deadline."""
    admin = make_admin_client(fresh_server)
    reader_client = make_client(fresh_server)
    reader = Registry(reader_client, namespace=namespace, **TIMING)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    clock = OwnerClock()
    timing = {**TIMING, "ttl": 3.0}  # the heartbeat attempt is still bounded by BEAT_TIMEOUT
    monitor: CommandLog | None = None
    paused = False
    options: dict[str, Any] = {"socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    sync_client = aclient = None
    sync_registry: Registry | None = None
    async_registry: AsyncRegistry | None = None
    try:
        if mode == "sync":
            sync_client = make_client(fresh_server, retry=Retry(NoBackoff(), 12), **options)
            sync_registry = Registry(sync_client, namespace=namespace, clock=clock, **timing)
            sync_lease = sync_registry.claim(EXCHANGE, "Owner", on_lost=lost)
            sync_lease.transition("starting")
            lease: Lease | AsyncLease = sync_lease
        else:
            aclient = make_async_client(fresh_server, retry=AsyncRetry(NoBackoff(), 12), **options)
            async_registry = AsyncRegistry(aclient, namespace=namespace, clock=clock, **timing)
            async_lease = await async_registry.claim(EXCHANGE, "Owner", on_lost=lost)
            await async_lease.transition("starting")
            lease = async_lease
        monitor = CommandLog(fresh_server)
        # Freeze right after a heartbeat ran. Every acknowledged send precedes the freeze, so the
        # deadline is at most renew_deadline after it; the record expires no earlier than the PTTL
        # read just before says. The server thaws thaw_ahead before that: the deadline must pass
        # well before. If the test thread was too slow for that, thaw at once and start again.
        thaw_ahead = 0.5
        for _ in range(5):
            await await_beat(admin, keys.status)
            expires_lo, _ = expiry_window(admin, keys.status, reads=3)
            entitled = clock.deadline_now(lease)  # acknowledgements can only move it later
            fresh_server.pause()
            paused = True
            paused_at = time.monotonic()
            thaw_at = expires_lo - thaw_ahead
            if paused_at + DEADLINE + 2 * BEAT_TIMEOUT < thaw_at:
                break
            fresh_server.resume()
            paused = False
        else:
            pytest.fail("the server could not be frozen soon enough after a heartbeat (5 tries)")
        await asyncio.sleep(0.05)

        if mode == "sync":
            inflight: Background | asyncio.Task[State] = Background(lambda: sync_lease.transition("warming"))
        else:
            inflight = asyncio.ensure_future(async_lease.transition("warming"))
        assert not clock.valid_at(lease, paused_at + DEADLINE), "the lease outlives its local deadline"
        reported = await await_until(lambda: lost.calls, max(0.0, thaw_at - time.monotonic()))
        assert reported, "no loss reported while frozen"
        assert lost.calls[0][0] >= entitled, "the loss was reported before the lease's deadline"
        await asyncio.sleep(max(0.0, thaw_at - time.monotonic()))
        fresh_server.resume()
        paused = False
        # The record outlived the freeze (it expires only after thaw_at + thaw_ahead); keep it from
        # expiring while the rest is checked, however slowly that runs.
        assert admin.pexpire(keys.status, 30_000), "the record expired during the freeze"

        if isinstance(inflight, Background):
            inflight.join(5)
            outcome: object = inflight.error or inflight.result
        else:
            try:
                outcome = await asyncio.wait_for(inflight, 5)
            except Exception as exc:
                outcome = exc
        # Sent before the deadline, it may complete (the server applied it) or fail as "unknown".
        assert outcome is State.WARMING or isinstance(outcome, redis.RedisError), repr(outcome)

        assert [reason for _, reason in lost.calls] == ["deadline"]
        assert monitor.stop(admin), "MONITOR did not see the end marker: commands may be missing"
        copies = monitor.evalsha("transition", keys.status, "warming")
        monitor = None
        assert len(copies) >= 2, f"the in-flight transition was not retried ({len(copies)} executions)"
        status = reader.get(EXCHANGE)
        assert status is not None
        assert status.connection_state is State.WARMING
        transitions = [e for e in reader.activity(EXCHANGE) if e.event == "state_transition"]
        assert [e.to_state for e in transitions] == ["warming", "starting"], "a retried transition applied twice"
        # Every copy carries the seq of the one logged entry, higher than the previous call's,
        # and the record keeps it as its last applied seq (contract v2's replay rule).
        warming, starting = transitions
        assert warming.seq is not None
        assert starting.seq is not None
        assert warming.seq > starting.seq
        sent = {seq_arg(copy, keys.status) for copy in copies}
        assert sent == {str(warming.seq)}, f"the copies were not one call: seqs {sent}, logged {warming.seq}"
        assert admin.hget(keys.status, "seq") == str(warming.seq).encode()

        released = await settle(lease.release())
        assert released is True, "the token-checked release after a deadline loss did not delete the record"
        assert admin.exists(keys.status) == 0
        assert len(lost.calls) == 1
    finally:
        if paused:
            fresh_server.resume()
        if monitor is not None:
            monitor.stop(admin)
        if sync_registry is not None:
            sync_registry.close()
        if sync_client is not None:
            sync_client.close()
        if async_registry is not None:
            await async_registry.close()
        if aclient is not None:
            await aclient.aclose()
        reader.close()
        reader_client.close()
        admin.close()


# -- R6: writes paused (CLIENT PAUSE ... WRITE) ---------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_client_pause_write_queued_heartbeat_does_not_revive_expired_lease(
    fresh_server: RedisServer, namespace: str, mode: str
) -> None:
    """R6: CLIENT PAUSE 2500 WRITE (longer than the TTL) right after a heartbeat. Reads keep working
    during the pause; the owner reports the loss ("deadline") during the pause; a heartbeat sent
    before the deadline is queued by the server and runs after the pause: it finds the key expired
    (EXPIRED) and does not revive it: EXISTS stays 0, no key is created, the log and fence are
    unchanged, and a contender can claim with a higher fencing token."""
    admin = make_admin_client(fresh_server)
    contender_client = make_client(fresh_server)
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    sync_client = aclient = None
    sync_registry: Registry | None = None
    async_registry: AsyncRegistry | None = None
    try:
        if mode == "sync":
            sync_client = make_client(fresh_server)
            sync_registry = Registry(sync_client, namespace=namespace, **TIMING)
            sync_lease = sync_registry.claim(EXCHANGE, "Owner", on_lost=lost)
            sync_lease.transition("starting")
            lease: Lease | AsyncLease = sync_lease

            def get() -> Awaitable[object]:
                return asyncio.to_thread(sync_registry.get, EXCHANGE)  # type: ignore[union-attr]

        else:
            aclient = make_async_client(fresh_server)
            async_registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
            async_lease = await async_registry.claim(EXCHANGE, "Owner", on_lost=lost)
            await async_lease.transition("starting")
            lease = async_lease

            def get() -> Awaitable[object]:
                return async_registry.get(EXCHANGE)  # type: ignore[union-attr]

        await await_beat(admin, keys.status)
        _, log, fence = snapshot(admin, keys)
        pause_sent = time.monotonic()  # the pause ends 2.5 s after the server ran it: after pause_sent + 2.5
        admin.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
        paused_at = time.monotonic()  # every write acknowledged came before this

        # A heartbeat sent before the deadline: the server holds it until the pause ends.
        if mode == "sync":
            queued: Background | asyncio.Task[None] = Background(sync_lease.heartbeat)
        else:
            queued = asyncio.ensure_future(async_lease.heartbeat())
        assert await get() is not None, "reads should see the live record during a write pause"
        assert time.monotonic() < pause_sent + 2.5, "a read waited for the write pause"

        reported = await await_until(lambda: lost.calls, max(0.0, pause_sent + 2.5 - time.monotonic()))
        assert reported, "no loss reported during the pause"
        assert [reason for _, reason in lost.calls] == ["deadline"]
        assert lost.calls[0][0] < pause_sent + 2.5
        # The record was last renewed before paused_at: it has expired by paused_at + TTL.
        await asyncio.sleep(max(0.0, paused_at + TTL + 0.1 - time.monotonic()))
        assert await get() is None, "an expired record should read as gone during the pause"

        if isinstance(queued, Background):
            queued.join(5)
            error, done_at = queued.error, queued.finished_at
        else:
            try:
                await asyncio.wait_for(queued, 5)
                error = None
            except Exception as exc:
                error = exc
            done_at = time.monotonic()
        assert done_at is not None
        assert done_at >= pause_sent + 2.5, "the heartbeat was not held by the pause"
        assert isinstance(error, LeaseLostError), f"the queued heartbeat should be refused, got {error!r}"
        assert error.reason == "expired", "the queued heartbeat did not find the key missing"

        assert admin.exists(keys.status) == 0, "the queued heartbeat revived the expired lease"
        await asyncio.sleep(HB + 0.2)
        assert admin.exists(keys.status) == 0
        assert namespace_keys(admin, namespace) == sorted([keys.log.encode(), keys.fence.encode()])
        assert snapshot(admin, keys)[1:] == (log, fence)
        assert len(lost.calls) == 1

        taken = contender.claim(EXCHANGE, "Contender")
        assert taken.fencing_token > lease.fencing_token
        assert taken.release() is True
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        if sync_registry is not None:
            sync_registry.close()
        if sync_client is not None:
            sync_client.close()
        if async_registry is not None:
            await async_registry.close()
        if aclient is not None:
            await aclient.aclose()
        contender.close()
        contender_client.close()
        admin.close()


# -- R7: out of memory -----------------------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_out_of_memory_noeviction_refuses_claim_and_transition_without_partial_state(
    fresh_server: RedisServer, namespace: str
) -> None:
    """R7, maxmemory reached under noeviction: a claim fails with redis' OOM error
    (OutOfMemoryError, a ResponseError) and leaves nothing: no status, no log, no fence key. An
    existing owner's transition fails the same way with nothing written (state, log, fence and the
    record's last applied seq unchanged) and is not taken as a loss. Once memory is available again the
    transition applies exactly once. Heartbeats still renew under OOM (PEXPIRE is their first write)."""
    admin = make_admin_client(fresh_server)
    client = make_client(fresh_server)
    registry = Registry(client, namespace=namespace, **TIMING)
    keys, other = Keys(namespace, EXCHANGE), Keys(namespace, OTHER)
    lost = LossLog()
    try:
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        lease.transition("starting")
        record, log, fence = snapshot(admin, keys)
        try:
            exhaust_memory(admin)
            with pytest.raises(OutOfMemoryError) as info:
                registry.claim(OTHER, "Other")
            assert isinstance(info.value, ResponseError)
            assert "maxmemory" in str(info.value)
            assert admin.exists(other.status, other.log, other.fence) == 0, "the failed claim left keys behind"

            with pytest.raises(OutOfMemoryError):
                lease.transition("warming")
            record_now, log_now, fence_now = snapshot(admin, keys)
            assert log_now == log, "the failed transition wrote to the log"
            assert fence_now == fence
            assert record.get(b"seq") == b"1", "the first transition's seq is not the record's"
            for field in (b"connectionState", b"lastStateChange", b"seq", b"fencingToken"):
                assert record_now.get(field) == record.get(field), field
            assert lease.is_valid, "a refused write is not a lost lease"

            # The heartbeat's first write is PEXPIRE, which needs no memory: renewals keep
            # working under OOM, so owners do not lose their leases while memory is short.
            # (Shortened first, so that a renewal shows as a later absolute expiry.)
            assert admin.pexpire(keys.status, 1000)
            shortened = admin.pexpiretime(keys.status)
            lease.heartbeat()
            assert admin.pexpiretime(keys.status) > shortened, "the heartbeat did not renew under OOM"
        finally:
            admin.config_set("maxmemory", 0)
        assert lease.transition("warming") is State.WARMING
        assert [e[1] for e in events(registry) if e[0] == "state_transition"] == ["starting", "warming"]
        assert lost.calls == []
        assert lease.release() is True
    finally:
        registry.close()
        client.close()
        admin.close()


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_evicting_policy_warns_on_first_use_and_evicts_live_lease(
    fresh_server: RedisServer, namespace: str, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """R7, evicting maxmemory-policy: the registry logs one WARNING on ``pylivermore.registry``
    naming the policy on first use. This is why: under memory pressure Redis evicts the live
    lease's status key (documented here: the owner is alive and renewing). The owner's next
    heartbeat finds it missing and reports the loss ("expired"); a contender can claim at once, and
    its fencing token is still higher (the fence key, or the server-time floor if it was evicted too)."""
    caplog.set_level(logging.WARNING, logger="pylivermore.registry")
    admin = make_admin_client(fresh_server)
    client = make_client(fresh_server)
    contender_client = make_client(fresh_server)
    admin.config_set("maxmemory-policy", policy)
    registry = Registry(client, namespace=namespace, **TIMING)
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    try:
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        warnings = [r for r in caplog.records if r.name == "pylivermore.registry" and r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "maxmemory-policy" in warnings[0].getMessage()
        assert policy in warnings[0].getMessage()
        wait_for_beat(admin, keys.status)
        assert lease.is_valid

        try:
            squeeze(admin)
            fill_until_oom(admin, stop=lambda: admin.exists(keys.status) == 0)
            assert admin.exists(keys.status) == 0, f"{policy} did not evict the live lease's key"
            assert int(admin.info("stats")["evicted_keys"]) >= 1
        finally:
            admin.config_set("maxmemory", 0)

        assert wait_until(lambda: lost.calls, 10.0), "the owner never noticed the eviction"
        assert [reason for _, reason in lost.calls] == ["expired"]
        assert admin.exists(keys.status) == 0, "the owner re-created its evicted record"
        taken = contender.claim(EXCHANGE, "Contender")
        assert taken.fencing_token > lease.fencing_token
        assert taken.release() is True
    finally:
        registry.close()
        contender.close()
        client.close()
        contender_client.close()
        admin.close()


# -- R8: min-replicas-to-write without replicas --------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_min_replicas_to_write_refuses_claim_with_noreplicas_and_writes_nothing(
    fresh_server: RedisServer, namespace: str, mode: str
) -> None:
    """R8: with ``min-replicas-to-write 1`` and no replica, a claim fails with redis' NOREPLICAS
    error (a ResponseError: "not claimed") and writes nothing: no status, log or fence key. An
    existing owner's transition is refused the same way and changes nothing."""
    admin = make_admin_client(fresh_server)
    probe_client = make_client(fresh_server)
    probe = Registry(probe_client, namespace=namespace, **QUIET)
    keys, other = Keys(namespace, EXCHANGE), Keys(namespace, OTHER)
    sync_client = aclient = None
    sync_registry: Registry | None = None
    async_registry: AsyncRegistry | None = None
    try:
        if mode == "sync":
            sync_client = make_client(fresh_server)
            sync_registry = Registry(sync_client, namespace=namespace, **TIMING)
            lease: Lease | AsyncLease = sync_registry.claim(EXCHANGE, "Owner")
        else:
            aclient = make_async_client(fresh_server)
            async_registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
            lease = await async_registry.claim(EXCHANGE, "Owner")
        before = snapshot(admin, keys)
        admin.config_set("min-replicas-to-write", 1)
        try:
            registry = async_registry or sync_registry
            assert registry is not None
            with pytest.raises(ResponseError) as info:
                await settle(registry.claim(OTHER, "Other"))
            assert str(info.value).startswith("NOREPLICAS"), str(info.value)
            assert admin.exists(other.status, other.log, other.fence) == 0, "the refused claim wrote something"
            with pytest.raises(ResponseError, match="NOREPLICAS"):
                await settle(lease.transition("starting"))
            after = snapshot(admin, keys)
            assert after[1:] == before[1:]
            assert after[0].get(b"connectionState") == b"idle"
            with pytest.raises(ClaimConflictError):  # the existing record is still there and still held
                probe.claim(EXCHANGE, "Contender")
        finally:
            admin.config_set("min-replicas-to-write", 0)
        released = await settle(lease.release())
        assert released is True
    finally:
        if sync_registry is not None:
            sync_registry.close()
        if sync_client is not None:
            sync_client.close()
        if async_registry is not None:
            await async_registry.close()
        if aclient is not None:
            await aclient.aclose()
        probe.close()
        probe_client.close()
        admin.close()
