"""The background heartbeat, in process, on a real redis-server: renewal, stop on release, loss
detection (operator release, takeover, unreachable server), script-cache loss, a failing
``on_lost``, the address resolver and the eviction-policy warning. Sync and asyncio.

Timings: TTL 1.5 s, heartbeat every 0.5 s, renew deadline 1.0 s. Every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

import pylivermore
from pylivermore import AsyncLease, AsyncRegistry, Lease, LeaseLostError, Registry, State
from pylivermore._keys import Keys
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer
from tests.conftest import make_admin_client, make_async_admin_client, make_async_client, make_client
from tests.support import DEADLINE, HB, TTL, assert_lost_at_deadline, await_beat, await_until, wait_for_beat, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: For a second owner whose own heartbeat must not write during a test.
QUIET: dict[str, Any] = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}
SCRIPT_COMMANDS = ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro")


# -- helpers --------------------------------------------------------------------------------


async def truthy(value: object) -> object:
    return value


def iso(raw: bytes | str) -> datetime:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def script_calls(info: dict[str, Any]) -> int:
    """Script invocations counted by the server, from ``INFO commandstats``."""
    return sum(int(info[name]["calls"]) for name in SCRIPT_COMMANDS if name in info)


def status_key(namespace: str, exchange_id: str | int) -> str:
    return Keys(namespace, str(exchange_id)).status


def log_key(namespace: str, exchange_id: str | int) -> str:
    return Keys(namespace, str(exchange_id)).log


def lost_reasons(calls: list[Any]) -> list[str | None]:
    return [lease.lost_reason for lease in calls]


# -- a. renewal ------------------------------------------------------------------------------


def check_beats(beats: list[bytes]) -> None:
    times = [iso(b) for b in beats]
    assert times == sorted(times), "lastHeartbeat went backwards"
    assert len(times) >= int(3 * TTL / HB) - 2, f"only {len(times)} distinct heartbeats in {3 * TTL} s"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert max(gaps) < DEADLINE, f"a renewal gap of {max(gaps):.3f} s"


def test_heartbeat_keeps_lease_alive_past_ttl_sync(client: redis.Redis, admin: redis.Redis, namespace: str) -> None:
    """The heartbeat thread renews the lease for 3 x TTL: the record never disappears, its
    lastHeartbeat advances every interval, its TTL stays armed and the lease stays valid."""
    registry = Registry(client, namespace=namespace, **TIMING)
    lost: list[Lease] = []
    key = status_key(namespace, 1)
    try:
        lease = registry.claim(1, "Binance", on_lost=lost.append)
        beats: list[bytes] = []
        longest = 0  # the highest PTTL seen after a renewal: each one re-arms the full TTL
        end = time.monotonic() + 3 * TTL
        while time.monotonic() < end:
            beat = admin.hget(key, "lastHeartbeat")
            assert beat is not None, "the record expired although its heartbeat should renew it"
            if not beats or beats[-1] != beat:
                beats.append(beat)
            if len(beats) > 1:  # renewed at least once (the claim set the first TTL)
                longest = max(longest, admin.pttl(key))
            time.sleep(0.05)
        check_beats(beats)
        assert (TTL - 0.25) * 1000 < longest <= TTL * 1000, f"renewals re-armed the TTL to at most {longest} ms"
        assert lease.is_valid
        assert lease.lost_reason is None
        assert not lost
        assert 0 < admin.pttl(key) <= TTL * 1000
        assert lease.status().fencing_token == lease.fencing_token
        assert lease.release() is True
    finally:
        registry.close()


async def test_heartbeat_keeps_lease_alive_past_ttl_async(
    aclient: aredis.Redis, aadmin: aredis.Redis, namespace: str
) -> None:
    """The heartbeat task renews the lease for 3 x TTL: the record never disappears, its
    lastHeartbeat advances every interval, its TTL stays armed and the lease stays valid."""
    registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
    lost: list[AsyncLease] = []
    key = status_key(namespace, 1)
    try:
        lease = await registry.claim(1, "Binance", on_lost=lost.append)
        beats: list[bytes] = []
        longest = 0  # the highest PTTL seen after a renewal: each one re-arms the full TTL
        end = time.monotonic() + 3 * TTL
        while time.monotonic() < end:
            beat = await aadmin.hget(key, "lastHeartbeat")
            assert beat is not None, "the record expired although its heartbeat should renew it"
            if not beats or beats[-1] != beat:
                beats.append(beat)
            if len(beats) > 1:  # renewed at least once (the claim set the first TTL)
                longest = max(longest, await aadmin.pttl(key))
            await asyncio.sleep(0.05)
        check_beats(beats)
        assert (TTL - 0.25) * 1000 < longest <= TTL * 1000, f"renewals re-armed the TTL to at most {longest} ms"
        assert lease.is_valid
        assert lease.lost_reason is None
        assert not lost
        assert 0 < await aadmin.pttl(key) <= TTL * 1000
        assert (await lease.status()).fencing_token == lease.fencing_token
        assert await lease.release() is True
    finally:
        await registry.close()


MANY = 600


def check_many_renewed(admin: redis.Redis, namespace: str, calls: int) -> None:
    """Every one of the MANY records got a heartbeat after its claim, with a handful of script calls."""
    pipe = admin.pipeline(transaction=False)
    for i in range(1, MANY + 1):
        pipe.hmget(status_key(namespace, i), "lastHeartbeat", "registeredAt")
    stale = [i + 1 for i, (beat, claimed) in enumerate(pipe.execute()) if beat is None or beat == claimed]
    assert not stale, f"{len(stale)} of {MANY} records were not renewed, e.g. {stale[:5]}"
    # one renew_many call per BATCH leases per round (the leases were claimed close together:
    # renewing early by up to a tenth of the interval puts them in the same round)
    assert 0 < calls <= 3 * -(-MANY // pylivermore._lease.BATCH), f"{calls} script calls for {MANY} renewals"


def test_many_leases_are_renewed_in_batches_sync(client: redis.Redis, admin: redis.Redis, namespace: str) -> None:
    """600 leases of one registry are all renewed by its background heartbeat in a few
    renew_many calls (INFO commandstats), not one script call per lease."""
    registry = Registry(client, namespace=namespace, **TIMING)
    try:
        for i in range(1, MANY + 1):
            registry.claim(i, "Binance")
        admin.config_resetstat()
        time.sleep(HB * 1.3)
        check_many_renewed(admin, namespace, script_calls(admin.info("commandstats")))
    finally:
        registry.close()


async def test_many_leases_are_renewed_in_batches_async(
    aclient: aredis.Redis, aadmin: aredis.Redis, admin: redis.Redis, namespace: str
) -> None:
    """The asyncio registry's heartbeat task renews 600 leases in a few renew_many calls."""
    registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
    try:
        for i in range(1, MANY + 1):
            await registry.claim(i, "Binance")
        await aadmin.config_resetstat()
        await asyncio.sleep(HB * 1.3)
        check_many_renewed(admin, namespace, script_calls(await aadmin.info("commandstats")))
    finally:
        await registry.close()


# -- b. release stops the heartbeat ----------------------------------------------------------------


def test_release_stops_heartbeats_sync(fresh_server: RedisServer, namespace: str) -> None:
    """After release() the heartbeat thread ends and not one more script call reaches the server."""
    client = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    registry = Registry(client, namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    try:
        lease = registry.claim(1, "Binance")
        wait_for_beat(admin, key)
        thread = registry._heartbeat._thread
        assert thread is not None
        assert thread.is_alive()
        assert lease.release() is True
        calls = script_calls(client.info("commandstats"))
        assert wait_until(lambda: registry._heartbeat._thread is None and not thread.is_alive(), 2.0), (
            "the heartbeat thread kept running after the last lease was released"
        )
        time.sleep(2 * HB + 0.2)
        assert script_calls(client.info("commandstats")) == calls, "a script ran after release"
        assert client.exists(key) == 0
    finally:
        registry.close()
        client.close()
        admin.close()


async def test_release_stops_heartbeats_async(fresh_server: RedisServer, namespace: str) -> None:
    """After release() the heartbeat task ends and not one more script call reaches the server."""
    client = make_async_client(fresh_server)
    admin = make_async_admin_client(fresh_server)
    registry = AsyncRegistry(client, namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    try:
        lease = await registry.claim(1, "Binance")
        await await_beat(admin, key)
        task = registry._heartbeat._task
        assert task is not None
        assert not task.done()
        assert await lease.release() is True
        calls = script_calls(await client.info("commandstats"))
        assert await await_until(lambda: truthy(task.done()), 2.0), "the heartbeat task kept running after release"
        await asyncio.sleep(2 * HB + 0.2)
        assert script_calls(await client.info("commandstats")) == calls, "a script ran after release"
        assert await client.exists(key) == 0
    finally:
        await registry.close()
        await client.aclose()
        await admin.aclose()


# -- c. operator force_release -------------------------------------------------------------------------


def test_force_release_is_seen_by_heartbeat_sync(fresh_server: RedisServer, namespace: str) -> None:
    """An operator's force_release makes the owner's next heartbeat see EXPIRED: on_lost runs
    exactly once with the lease, lost_reason is "expired", and transition / set_symbol_count /
    record_error then raise LeaseLostError without any script call and without creating a key."""
    client = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    owner = Registry(client, namespace=namespace, **TIMING)
    operator = Registry(client, namespace=namespace)
    key, log = status_key(namespace, 1), log_key(namespace, 1)
    lost: list[Lease] = []
    try:
        lease = owner.claim(1, "Binance", on_lost=lost.append)
        lease.transition("starting")
        assert operator.force_release(1, "maintenance", operator="ops") == lease.fencing_token
        assert wait_until(lambda: lost, HB + 1.0), "on_lost was not called after force_release"
        time.sleep(HB + 0.1)  # a second loss report would show up by now
        assert len(lost) == 1
        assert lost[0] is lease
        assert lease.lost_reason == "expired"
        assert not lease.is_valid

        calls, entries = script_calls(client.info("commandstats")), admin.xlen(log)
        ops: list[tuple[str, Callable[[], object]]] = [
            ("transition", lambda: lease.transition("warming")),
            ("set_symbol_count", lambda: lease.set_symbol_count(5)),
            ("record_error", lambda: lease.record_error("boom")),
        ]
        for name, op in ops:
            with pytest.raises(LeaseLostError) as info:
                op()
            assert info.value.reason == "expired", name
            assert client.exists(key) == 0, f"{name} re-created the record"
        assert script_calls(client.info("commandstats")) == calls, "a refused operation still ran a script"
        assert admin.xlen(log) == entries
        newest = owner.activity(1, count=1)[0]
        assert (newest.event, newest.operator, newest.reason) == ("force_release", "ops", "maintenance")
        assert lease.release() is False
        assert client.exists(key) == 0
        assert len(lost) == 1
    finally:
        owner.close()
        client.close()
        admin.close()


async def test_force_release_is_seen_by_heartbeat_async(fresh_server: RedisServer, namespace: str) -> None:
    """An operator's force_release makes the owner's next heartbeat see EXPIRED: on_lost runs
    exactly once with the lease, lost_reason is "expired", and transition / set_symbol_count /
    record_error then raise LeaseLostError without any script call and without creating a key."""
    client = make_async_client(fresh_server)
    admin = make_async_admin_client(fresh_server)
    owner = AsyncRegistry(client, namespace=namespace, **TIMING)
    operator = AsyncRegistry(client, namespace=namespace)
    key, log = status_key(namespace, 1), log_key(namespace, 1)
    lost: list[AsyncLease] = []
    try:
        lease = await owner.claim(1, "Binance", on_lost=lost.append)
        await lease.transition("starting")
        assert await operator.force_release(1, "maintenance", operator="ops") == lease.fencing_token
        assert await await_until(lambda: truthy(lost), HB + 1.0), "on_lost was not called after force_release"
        await asyncio.sleep(HB + 0.1)
        assert len(lost) == 1
        assert lost[0] is lease
        assert lease.lost_reason == "expired"
        assert not lease.is_valid

        calls, entries = script_calls(await client.info("commandstats")), await admin.xlen(log)
        ops: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("transition", lambda: lease.transition("warming")),
            ("set_symbol_count", lambda: lease.set_symbol_count(5)),
            ("record_error", lambda: lease.record_error("boom")),
        ]
        for name, op in ops:
            with pytest.raises(LeaseLostError) as info:
                await op()
            assert info.value.reason == "expired", name
            assert await client.exists(key) == 0, f"{name} re-created the record"
        assert script_calls(await client.info("commandstats")) == calls, "a refused operation still ran a script"
        assert await admin.xlen(log) == entries
        newest = (await owner.activity(1, count=1))[0]
        assert (newest.event, newest.operator, newest.reason) == ("force_release", "ops", "maintenance")
        assert await lease.release() is False
        assert await client.exists(key) == 0
        assert len(lost) == 1
    finally:
        await owner.close()
        await client.aclose()
        await admin.aclose()


# -- d. takeover ---------------------------------------------------------------------------------------


def test_takeover_is_reported_as_taken_sync(client: redis.Redis, admin: redis.Redis, namespace: str) -> None:
    """When another registry holds the record (DEL + claim right after one of the owner's
    heartbeats, so the owner's next beat finds the new holder), the owner's on_lost runs once
    with reason "taken", later transitions are refused, and the new holder's record is untouched."""
    owner = Registry(client, namespace=namespace, **TIMING)
    thief = Registry(client, namespace=namespace, **QUIET)
    key = status_key(namespace, 1)
    lost: list[Lease] = []
    stolen: Lease | None = None
    try:
        lease = owner.claim(1, "Binance", on_lost=lost.append)
        seen = wait_for_beat(admin, key)  # the owner's next beat is about HB away
        admin.delete(key)
        stolen = thief.claim(1, "Binance")
        assert time.monotonic() - seen < HB / 2, "the takeover was too slow for a deterministic outcome"
        snapshot = admin.hgetall(key)
        assert wait_until(lambda: lost, HB + 1.0), "the owner did not notice the takeover"
        assert lost_reasons(lost) == ["taken"]
        assert lost[0] is lease
        with pytest.raises(LeaseLostError) as info:
            lease.transition("starting")
        assert info.value.reason == "taken"
        time.sleep(HB + 0.1)
        assert len(lost) == 1
        assert stolen.fencing_token > lease.fencing_token
        assert admin.hgetall(key) == snapshot, "the old owner wrote to the new holder's record"
        assert snapshot[b"instanceId"] == thief.instance_id.encode()
    finally:
        if stolen is not None:
            stolen.release()
        owner.close()
        thief.close()


async def test_takeover_is_reported_as_taken_async(aclient: aredis.Redis, aadmin: aredis.Redis, namespace: str) -> None:
    """When another registry holds the record (DEL + claim right after one of the owner's
    heartbeats, so the owner's next beat finds the new holder), the owner's on_lost runs once
    with reason "taken", later transitions are refused, and the new holder's record is untouched."""
    owner = AsyncRegistry(aclient, namespace=namespace, **TIMING)
    thief = AsyncRegistry(aclient, namespace=namespace, **QUIET)
    key = status_key(namespace, 1)
    lost: list[AsyncLease] = []
    stolen: AsyncLease | None = None
    try:
        lease = await owner.claim(1, "Binance", on_lost=lost.append)
        seen = await await_beat(aadmin, key)
        await aadmin.delete(key)
        stolen = await thief.claim(1, "Binance")
        assert time.monotonic() - seen < HB / 2, "the takeover was too slow for a deterministic outcome"
        snapshot = await aadmin.hgetall(key)
        assert await await_until(lambda: truthy(lost), HB + 1.0), "the owner did not notice the takeover"
        assert lost_reasons(lost) == ["taken"]
        assert lost[0] is lease
        with pytest.raises(LeaseLostError) as info:
            await lease.transition("starting")
        assert info.value.reason == "taken"
        await asyncio.sleep(HB + 0.1)
        assert len(lost) == 1
        assert stolen.fencing_token > lease.fencing_token
        assert await aadmin.hgetall(key) == snapshot, "the old owner wrote to the new holder's record"
        assert snapshot[b"instanceId"] == thief.instance_id.encode()
    finally:
        if stolen is not None:
            await stolen.release()
        await owner.close()
        await thief.close()


# -- e. unreachable (paused) server: the deadline ------------------------------------------------------------


def test_paused_server_loses_lease_at_deadline_sync(fresh_server: RedisServer, namespace: str) -> None:
    """With the server frozen (SIGSTOP) the heartbeat's calls block, yet the lease is reported
    lost with reason "deadline" between renew_deadline and renew_deadline + heartbeat_interval
    after the last acknowledged heartbeat; owner calls then fail at once, without a round trip."""
    client = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    registry = Registry(client, namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    lost: list[tuple[float, str | None]] = []
    try:
        lease = registry.claim(1, "Binance", on_lost=lambda ls: lost.append((time.monotonic(), ls.lost_reason)))
        acked = wait_for_beat(admin, key)  # the last heartbeat the server will acknowledge
        fresh_server.pause()
        try:
            assert wait_until(lambda: lost, DEADLINE + HB + 1.0), "no loss reported while the server was frozen"
            at, reason = lost[0]
            assert reason == "deadline"
            assert_lost_at_deadline(at, acked)
            assert not lease.is_valid
            started = time.monotonic()
            with pytest.raises(LeaseLostError) as info:
                lease.transition("starting")
            assert info.value.reason == "deadline"
            assert time.monotonic() - started < 0.2, "a refused transition waited for the frozen server"
        finally:
            fresh_server.resume()
        lease.release()  # token-checked: deletes the record if it is still there and still ours
        assert client.exists(key) == 0
        assert len(lost) == 1
    finally:
        registry.close()
        client.close()
        admin.close()


async def test_paused_server_loses_lease_at_deadline_async(fresh_server: RedisServer, namespace: str) -> None:
    """With the server frozen (SIGSTOP) the heartbeat's calls block, yet the lease is reported
    lost with reason "deadline" between renew_deadline and renew_deadline + heartbeat_interval
    after the last acknowledged heartbeat; owner calls then fail at once, without a round trip."""
    client = make_async_client(fresh_server)
    admin = make_async_admin_client(fresh_server)
    registry = AsyncRegistry(client, namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    lost: list[tuple[float, str | None]] = []
    try:
        lease = await registry.claim(1, "Binance", on_lost=lambda ls: lost.append((time.monotonic(), ls.lost_reason)))
        acked = await await_beat(admin, key)
        fresh_server.pause()
        try:
            assert await await_until(lambda: truthy(lost), DEADLINE + HB + 1.0), "no loss while the server was frozen"
            at, reason = lost[0]
            assert reason == "deadline"
            assert_lost_at_deadline(at, acked)
            assert not lease.is_valid
            started = time.monotonic()
            with pytest.raises(LeaseLostError) as info:
                await lease.transition("starting")
            assert info.value.reason == "deadline"
            assert time.monotonic() - started < 0.2, "a refused transition waited for the frozen server"
        finally:
            fresh_server.resume()
        await lease.release()
        assert await client.exists(key) == 0
        assert len(lost) == 1
    finally:
        await registry.close()
        await client.aclose()
        await admin.aclose()


# -- f. script cache flushed -----------------------------------------------------------------------------------


def test_script_flush_is_survived_sync(fresh_server: RedisServer, namespace: str) -> None:
    """After SCRIPT FLUSH the next heartbeat reloads its script (NOSCRIPT) and renews, a
    transition reloads and applies exactly once, and the lease is never lost."""
    client = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    registry = Registry(client, namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    shas = [spec.sha1 for spec in load_scripts().values()]
    beat_sha = load_scripts()["renew_many"].sha1  # the background heartbeat's script
    lost: list[Lease] = []
    try:
        lease = registry.claim(1, "Binance", on_lost=lost.append)
        lease.transition("starting")
        wait_for_beat(admin, key)
        admin.script_flush()
        assert admin.script_exists(*shas) == [False] * len(shas)
        wait_for_beat(admin, key)
        assert admin.script_exists(beat_sha) == [True]
        assert lease.transition("warming") is State.WARMING
        wait_for_beat(admin, key)
        assert lease.is_valid
        assert not lost
        assert lease.status().connection_state is State.WARMING
        transitions = [e.to_state for e in registry.activity(1) if e.event == "state_transition"]
        assert transitions == ["warming", "starting"]
        assert lease.release() is True
    finally:
        registry.close()
        client.close()
        admin.close()


async def test_script_flush_is_survived_async(fresh_server: RedisServer, namespace: str) -> None:
    """After SCRIPT FLUSH the next heartbeat reloads its script (NOSCRIPT) and renews, a
    transition reloads and applies exactly once, and the lease is never lost."""
    client = make_async_client(fresh_server)
    admin = make_async_admin_client(fresh_server)
    registry = AsyncRegistry(client, namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    shas = [spec.sha1 for spec in load_scripts().values()]
    beat_sha = load_scripts()["renew_many"].sha1  # the background heartbeat's script
    lost: list[AsyncLease] = []
    try:
        lease = await registry.claim(1, "Binance", on_lost=lost.append)
        await lease.transition("starting")
        await await_beat(admin, key)
        await admin.script_flush()
        assert await admin.script_exists(*shas) == [False] * len(shas)
        await await_beat(admin, key)
        assert await admin.script_exists(beat_sha) == [True]
        assert await lease.transition("warming") is State.WARMING
        await await_beat(admin, key)
        assert lease.is_valid
        assert not lost
        assert (await lease.status()).connection_state is State.WARMING
        transitions = [e.to_state for e in await registry.activity(1) if e.event == "state_transition"]
        assert transitions == ["warming", "starting"]
        assert await lease.release() is True
    finally:
        await registry.close()
        await client.aclose()
        await admin.aclose()


# -- g. a failing on_lost ---------------------------------------------------------------------------------


def test_raising_on_lost_does_not_stop_other_leases_sync(
    client: redis.Redis, admin: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_lost callback that raises is logged, and the registry's heartbeat thread goes on
    renewing its other leases for longer than a TTL."""
    registry = Registry(client, namespace=namespace, **TIMING)
    operator = Registry(client, namespace=namespace)
    calls: list[Lease] = []

    def broken(lease: Lease) -> None:
        calls.append(lease)
        raise RuntimeError("bug in on_lost")

    try:
        doomed = registry.claim(1, "Doomed", on_lost=broken)
        other = registry.claim(2, "Other")
        operator.force_release(1, "test")
        assert wait_until(lambda: calls, HB + 1.0), "on_lost was not called"
        assert calls == [doomed]
        other_key = status_key(namespace, 2)
        beats = {admin.hget(other_key, "lastHeartbeat")}
        end = time.monotonic() + TTL + HB
        while time.monotonic() < end:
            beat = admin.hget(other_key, "lastHeartbeat")
            assert beat is not None, "the other lease's record expired"
            beats.add(beat)
            time.sleep(0.05)
        assert len(beats) >= 3, "the other lease was no longer renewed"
        assert other.is_valid
        thread = registry._heartbeat._thread
        assert thread is not None
        assert thread.is_alive()
        failures = [r for r in caplog.records if r.name == "pylivermore.lease" and r.levelno == logging.ERROR]
        assert len(failures) == 1
        assert failures[0].exc_info is not None
        assert isinstance(failures[0].exc_info[1], RuntimeError)
        assert other.release() is True
    finally:
        registry.close()


async def test_raising_on_lost_does_not_stop_other_leases_async(
    aclient: aredis.Redis, aadmin: aredis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_lost callback that raises is logged, and the registry's heartbeat task goes on
    renewing its other leases for longer than a TTL."""
    registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
    operator = AsyncRegistry(aclient, namespace=namespace)
    calls: list[AsyncLease] = []

    def broken(lease: AsyncLease) -> None:
        calls.append(lease)
        raise RuntimeError("bug in on_lost")

    try:
        doomed = await registry.claim(1, "Doomed", on_lost=broken)
        other = await registry.claim(2, "Other")
        await operator.force_release(1, "test")
        assert await await_until(lambda: truthy(calls), HB + 1.0), "on_lost was not called"
        assert calls == [doomed]
        other_key = status_key(namespace, 2)
        beats = {await aadmin.hget(other_key, "lastHeartbeat")}
        end = time.monotonic() + TTL + HB
        while time.monotonic() < end:
            beat = await aadmin.hget(other_key, "lastHeartbeat")
            assert beat is not None, "the other lease's record expired"
            beats.add(beat)
            await asyncio.sleep(0.05)
        assert len(beats) >= 3, "the other lease was no longer renewed"
        assert other.is_valid
        task = registry._heartbeat._task
        assert task is not None
        assert not task.done()
        failures = [r for r in caplog.records if r.name == "pylivermore.lease" and r.levelno == logging.ERROR]
        assert len(failures) == 1
        assert failures[0].exc_info is not None
        assert isinstance(failures[0].exc_info[1], RuntimeError)
        assert await other.release() is True
    finally:
        await registry.close()


# -- h. address resolver -------------------------------------------------------------------------------------


def resolver_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "address resolver failed" in r.getMessage()]


def test_static_resolver_reports_address_sync(client: redis.Redis, namespace: str) -> None:
    """A static_address resolver's IP address and country code appear in the record shortly after the claim."""
    registry = Registry(client, namespace=namespace, resolver=pylivermore.static_address("203.0.113.7", "NL"), **TIMING)
    try:
        lease = registry.claim(1, "Binance")
        assert wait_until(lambda: (s := registry.get(1)) is not None and s.ip_address is not None, 2.0)
        status = registry.get(1)
        assert status is not None
        assert (status.ip_address, status.country_code) == ("203.0.113.7", "NL")
        assert lease.is_valid
        assert lease.release() is True
    finally:
        registry.close()


async def test_static_resolver_reports_address_async(aclient: aredis.Redis, namespace: str) -> None:
    """A static_address resolver's IP address and country code appear in the record shortly after the claim."""
    registry = AsyncRegistry(
        aclient, namespace=namespace, resolver=pylivermore.static_address("203.0.113.7", "NL"), **TIMING
    )

    async def resolved() -> bool:
        status = await registry.get(1)
        return status is not None and status.ip_address is not None

    try:
        lease = await registry.claim(1, "Binance")
        assert await await_until(resolved, 2.0)
        status = await registry.get(1)
        assert status is not None
        assert (status.ip_address, status.country_code) == ("203.0.113.7", "NL")
        assert lease.is_valid
        assert await lease.release() is True
    finally:
        await registry.close()


def failing_resolver() -> pylivermore.Address:
    raise OSError("address service unreachable")


def test_failing_resolver_is_logged_and_harmless_sync(
    client: redis.Redis, admin: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A resolver that raises is logged as a warning; the lease stays valid, keeps being renewed
    and accepts transitions, and the record has no address."""
    registry = Registry(client, namespace=namespace, resolver=failing_resolver, **TIMING)
    lost: list[Lease] = []
    try:
        lease = registry.claim(1, "Binance", on_lost=lost.append)
        assert wait_until(lambda: resolver_failures(caplog), 2.0), "the resolver's failure was not logged"
        (record,) = resolver_failures(caplog)
        assert "address service unreachable" in record.getMessage()
        wait_for_beat(admin, status_key(namespace, 1))
        assert lease.transition("starting") is State.STARTING
        assert lease.is_valid
        assert not lost
        status = lease.status()
        assert (status.ip_address, status.country_code) == (None, None)
        assert lease.release() is True
    finally:
        registry.close()


async def test_failing_resolver_is_logged_and_harmless_async(
    aclient: aredis.Redis, aadmin: aredis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A resolver that raises is logged as a warning; the lease stays valid, keeps being renewed
    and accepts transitions, and the record has no address."""
    registry = AsyncRegistry(aclient, namespace=namespace, resolver=failing_resolver, **TIMING)
    lost: list[AsyncLease] = []
    try:
        lease = await registry.claim(1, "Binance", on_lost=lost.append)
        assert await await_until(lambda: truthy(resolver_failures(caplog)), 2.0), "the failure was not logged"
        (record,) = resolver_failures(caplog)
        assert "address service unreachable" in record.getMessage()
        await await_beat(aadmin, status_key(namespace, 1))
        assert await lease.transition("starting") is State.STARTING
        assert lease.is_valid
        assert not lost
        status = await lease.status()
        assert (status.ip_address, status.country_code) == (None, None)
        assert await lease.release() is True
    finally:
        await registry.close()


SLOW_RESOLVE = DEADLINE + 0.3


def slow_resolver() -> pylivermore.Address:
    time.sleep(SLOW_RESOLVE)  # a blocking lookup, e.g. an HTTP request to an IP-echo service
    return pylivermore.Address("203.0.113.9", "DE")


def test_slow_resolver_runs_off_the_callers_path_sync(client: redis.Redis, namespace: str) -> None:
    """A resolver that blocks for longer than the renew deadline delays neither the claim nor
    the heartbeat: the lease stays valid and the address shows up once the resolver returns."""
    registry = Registry(client, namespace=namespace, resolver=slow_resolver, **TIMING)
    lost: list[Lease] = []
    try:
        started = time.monotonic()
        lease = registry.claim(1, "Binance", on_lost=lost.append)
        assert time.monotonic() - started < 0.5, "claim() waited for the resolver"
        assert wait_until(lambda: lost or ((s := registry.get(1)) is not None and s.ip_address), SLOW_RESOLVE + 2)
        assert lost_reasons(lost) == [], "the slow resolver starved the heartbeat past its deadline"
        assert lease.is_valid
        status = lease.status()
        assert (status.ip_address, status.country_code) == ("203.0.113.9", "DE")
        assert lease.release() is True
    finally:
        registry.close()


async def test_slow_plain_resolver_runs_off_the_event_loop_async(aclient: aredis.Redis, namespace: str) -> None:
    """A plain (blocking) resolver given to AsyncRegistry runs in a thread, as the AsyncResolver
    type documents: blocking for longer than the renew deadline must not starve the heartbeat
    task, so the lease stays valid and the address shows up once the resolver returns."""
    registry = AsyncRegistry(aclient, namespace=namespace, resolver=slow_resolver, **TIMING)
    lost: list[AsyncLease] = []

    async def resolved() -> bool:
        status = await registry.get(1)
        return status is not None and status.ip_address is not None

    try:
        started = time.monotonic()
        lease = await registry.claim(1, "Binance", on_lost=lost.append)
        assert time.monotonic() - started < 0.5, "claim() waited for the resolver"
        assert await await_until(lambda: truthy(lost) if lost else resolved(), SLOW_RESOLVE + 2)
        assert lost_reasons(lost) == [], "the blocking resolver starved the heartbeat task past its deadline"
        assert lease.is_valid
        status = await lease.status()
        assert (status.ip_address, status.country_code) == ("203.0.113.9", "DE")
        assert await lease.release() is True
    finally:
        await registry.close()


# -- i. eviction-policy warning -------------------------------------------------------------------------------


def eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pylivermore.registry" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_evicting_policy_warns_once_sync(
    fresh_server: RedisServer, namespace: str, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under an evicting maxmemory-policy the first claim logs exactly one WARNING on
    pylivermore.registry naming the policy (and still claims); the next claim logs nothing more."""
    client = make_client(fresh_server)
    with make_admin_client(fresh_server) as admin:
        admin.config_set("maxmemory-policy", policy)
    registry = Registry(client, namespace=namespace, **TIMING)
    try:
        first = registry.claim(1, "Binance")
        (record,) = eviction_warnings(caplog)
        assert record.levelno == logging.WARNING
        assert "maxmemory-policy" in record.getMessage()
        assert policy in record.getMessage()
        second = registry.claim(2, "Kraken")
        assert len(eviction_warnings(caplog)) == 1
        assert first.is_valid
        assert second.is_valid
        first.release()
        second.release()
    finally:
        registry.close()
        client.close()


def test_noeviction_policy_does_not_warn_sync(
    fresh_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default noeviction policy a claim logs no warning on pylivermore.registry."""
    client = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    registry = Registry(client, namespace=namespace, **TIMING)
    try:
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        lease = registry.claim(1, "Binance")
        registry.claim(2, "Kraken").release()
        assert eviction_warnings(caplog) == []
        lease.release()
    finally:
        registry.close()
        client.close()
        admin.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
async def test_evicting_policy_warns_once_async(
    fresh_server: RedisServer, namespace: str, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under an evicting maxmemory-policy the first claim logs exactly one WARNING on
    pylivermore.registry naming the policy (and still claims); the next claim logs nothing more."""
    client = make_async_client(fresh_server)
    admin = make_async_admin_client(fresh_server)
    try:
        await admin.config_set("maxmemory-policy", policy)
    finally:
        await admin.aclose()
    registry = AsyncRegistry(client, namespace=namespace, **TIMING)
    try:
        first = await registry.claim(1, "Binance")
        (record,) = eviction_warnings(caplog)
        assert record.levelno == logging.WARNING
        assert "maxmemory-policy" in record.getMessage()
        assert policy in record.getMessage()
        second = await registry.claim(2, "Kraken")
        assert len(eviction_warnings(caplog)) == 1
        assert first.is_valid
        assert second.is_valid
        await first.release()
        await second.release()
    finally:
        await registry.close()
        await client.aclose()


async def test_noeviction_policy_does_not_warn_async(
    fresh_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default noeviction policy a claim logs no warning on pylivermore.registry."""
    client = make_async_client(fresh_server)
    admin = make_async_admin_client(fresh_server)
    registry = AsyncRegistry(client, namespace=namespace, **TIMING)
    try:
        assert await admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        lease = await registry.claim(1, "Binance")
        await (await registry.claim(2, "Kraken")).release()
        assert eviction_warnings(caplog) == []
        await lease.release()
    finally:
        await registry.close()
        await client.aclose()
        await admin.aclose()
