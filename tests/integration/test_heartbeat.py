"""The background heartbeat, in process, on real servers: renewal, stop on release, loss
detection (operator release, takeover, unreachable server), script-cache loss, a failing
``on_lost``, the address resolver and the eviction-policy warning.

Tests that mean the same on any deployment run on every ``topology`` (standalone and cluster,
sync and asyncio: see tests/integration/conftest.py); the ones that pause or reconfigure a
server run on a private standalone server (``fresh_standalone``), sync and asyncio.

Timings: TTL 1.5 s, heartbeat every 0.5 s, renew deadline 1.0 s. Every wait is a bounded poll.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

import pylivermore
from pylivermore import LeaseLostError, State
from pylivermore._keys import Keys
from pylivermore._renewal import BATCH
from pylivermore._scripts import load_scripts
from tests.integration.conftest import Topology, io
from tests.support import DEADLINE, HB, TTL, assert_lost_at_deadline, await_beat, await_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: For a second owner whose own heartbeat must not write during a test.
QUIET: dict[str, Any] = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}


# -- helpers --------------------------------------------------------------------------------


def iso(raw: bytes | str) -> datetime:
    text = raw.decode() if isinstance(raw, bytes) else raw
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


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


async def test_heartbeat_keeps_lease_alive_past_ttl(topology: Topology, namespace: str) -> None:
    """The heartbeat (thread or task) renews the lease for 3 x TTL: the record never disappears,
    its lastHeartbeat advances every interval, its TTL stays armed and the lease stays valid."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    lost: list[Any] = []
    key = status_key(namespace, 1)
    lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    beats: list[bytes] = []
    longest = 0  # the highest PTTL seen after a renewal: each one re-arms the full TTL
    end = time.monotonic() + 3 * TTL
    while time.monotonic() < end:
        beat = t.admin.hget(key, "lastHeartbeat")
        assert beat is not None, "the record expired although its heartbeat should renew it"
        if not beats or beats[-1] != beat:
            beats.append(beat)
        if len(beats) > 1:  # renewed at least once (the claim set the first TTL)
            longest = max(longest, t.admin.pttl(key))
        await asyncio.sleep(0.05)
    check_beats(beats)
    assert (TTL - 0.25) * 1000 < longest <= TTL * 1000, f"renewals re-armed the TTL to at most {longest} ms"
    assert lease.is_valid
    assert lease.lost_reason is None
    assert not lost
    assert 0 < t.admin.pttl(key) <= TTL * 1000
    assert (await io(lease.status())).fencing_token == lease.fencing_token
    assert await io(lease.release()) is True


MANY = 600


async def test_many_leases_are_renewed_in_batches(topology: Topology, namespace: str) -> None:
    """600 leases of one registry are all renewed by its background heartbeat in a few
    renew_many calls (INFO commandstats, summed over the masters), not one script call per
    lease: at most 3 rounds of the fewest calls that can cover them (the leases were claimed
    close together, and renewing early by up to a tenth of the interval puts them in the same
    round). A script runs on one hash slot, so on a cluster that is one call per slot."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    ids = range(1, MANY + 1)
    for i in ids:
        await io(registry.claim(i, "Binance"))
    t.reset_stats()
    await asyncio.sleep(HB * 1.3)
    calls = t.script_calls()
    pipe = t.admin.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(status_key(namespace, i), "lastHeartbeat", "registeredAt")
    stale = [i + 1 for i, (beat, claimed) in enumerate(pipe.execute()) if beat is None or beat == claimed]
    assert not stale, f"{len(stale)} of {MANY} records were not renewed, e.g. {stale[:5]}"
    bound = 3 * t.renewal_groups(namespace, ids, BATCH)
    assert 0 < calls <= bound, f"{calls} script calls for {MANY} renewals (at most {bound})"


# -- b. release stops the heartbeat ----------------------------------------------------------------


async def test_release_stops_heartbeats(topology: Topology, namespace: str) -> None:
    """After release() the heartbeat thread or task ends and not one more script call reaches
    the server (any master, on a cluster)."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    lease = await io(registry.claim(1, "Binance"))
    await await_beat(t.admin, key)
    worker = t.heartbeat_worker(registry)
    assert t.heartbeat_running(registry)
    assert await io(lease.release()) is True
    calls = t.script_calls()
    assert await await_until(lambda: t.heartbeat_stopped(registry, worker), 2.0), (
        "the heartbeat kept running after the last lease was released"
    )
    await asyncio.sleep(2 * HB + 0.2)
    assert t.script_calls() == calls, "a script ran after release"
    assert t.admin.exists(key) == 0


# -- c. operator force_release -------------------------------------------------------------------------


async def test_force_release_is_seen_by_heartbeat(topology: Topology, namespace: str) -> None:
    """An operator's force_release makes the owner's next heartbeat see EXPIRED: on_lost runs
    exactly once with the lease, lost_reason is "expired", and transition / set_symbol_count /
    record_error then raise LeaseLostError without any script call and without creating a key."""
    t = topology
    owner = t.registry(namespace=namespace, **TIMING)
    operator = t.registry(namespace=namespace)
    key, log = status_key(namespace, 1), log_key(namespace, 1)
    lost: list[Any] = []
    lease = await io(owner.claim(1, "Binance", on_lost=lost.append))
    await io(lease.transition("starting"))
    assert await io(operator.force_release(1, "maintenance", operator="ops")) == lease.fencing_token
    assert await await_until(lambda: lost, HB + 1.0), "on_lost was not called after force_release"
    await asyncio.sleep(HB + 0.1)  # a second loss report would show up by now
    assert len(lost) == 1
    assert lost[0] is lease
    assert lease.lost_reason == "expired"
    assert not lease.is_valid

    calls, entries = t.script_calls(), t.admin.xlen(log)
    ops: list[tuple[str, Callable[[], object]]] = [
        ("transition", lambda: lease.transition("warming")),
        ("set_symbol_count", lambda: lease.set_symbol_count(5)),
        ("record_error", lambda: lease.record_error("boom")),
    ]
    for name, op in ops:
        with pytest.raises(LeaseLostError) as info:
            await io(op())
        assert info.value.reason == "expired", name
        assert t.admin.exists(key) == 0, f"{name} re-created the record"
    assert t.script_calls() == calls, "a refused operation still ran a script"
    assert t.admin.xlen(log) == entries
    newest = (await io(owner.activity(1, count=1)))[0]
    assert (newest.event, newest.operator, newest.reason) == ("force_release", "ops", "maintenance")
    assert await io(lease.release()) is False
    assert t.admin.exists(key) == 0
    assert len(lost) == 1


# -- d. takeover ---------------------------------------------------------------------------------------


async def test_takeover_is_reported_as_taken(topology: Topology, namespace: str) -> None:
    """When another registry holds the record (DEL + claim right after one of the owner's
    heartbeats, so the owner's next beat finds the new holder), the owner's on_lost runs once
    with reason "taken", later transitions are refused, and the new holder's record is untouched."""
    t = topology
    owner = t.registry(namespace=namespace, **TIMING)
    thief = t.registry(namespace=namespace, **QUIET)
    key = status_key(namespace, 1)
    lost: list[Any] = []
    stolen: Any = None
    try:
        lease = await io(owner.claim(1, "Binance", on_lost=lost.append))
        seen = await await_beat(t.admin, key)  # the owner's next beat is about HB away
        t.admin.delete(key)
        stolen = await io(thief.claim(1, "Binance"))
        assert time.monotonic() - seen < HB / 2, "the takeover was too slow for a deterministic outcome"
        snapshot = t.admin.hgetall(key)
        assert await await_until(lambda: lost, HB + 1.0), "the owner did not notice the takeover"
        assert lost_reasons(lost) == ["taken"]
        assert lost[0] is lease
        with pytest.raises(LeaseLostError) as info:
            await io(lease.transition("starting"))
        assert info.value.reason == "taken"
        await asyncio.sleep(HB + 0.1)
        assert len(lost) == 1
        assert stolen.fencing_token > lease.fencing_token
        assert t.admin.hgetall(key) == snapshot, "the old owner wrote to the new holder's record"
        assert snapshot[b"instanceId"] == thief.instance_id.encode()
    finally:
        if stolen is not None:
            await io(stolen.release())


# -- e. unreachable (paused) server: the deadline ------------------------------------------------------------


async def test_paused_server_loses_lease_at_deadline(fresh_standalone: Topology, namespace: str) -> None:
    """With the server frozen (SIGSTOP) the heartbeat's calls block, yet the lease is reported
    lost with reason "deadline" between renew_deadline and renew_deadline + heartbeat_interval
    after the last acknowledged heartbeat; owner calls then fail at once, without a round trip."""
    t = fresh_standalone
    assert t.server is not None
    registry = t.registry(namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    lost: list[tuple[float, str | None]] = []
    lease = await io(registry.claim(1, "Binance", on_lost=lambda ls: lost.append((time.monotonic(), ls.lost_reason))))
    acked = await await_beat(t.admin, key)  # the last heartbeat the server will acknowledge
    t.server.pause()
    try:
        assert await await_until(lambda: lost, DEADLINE + HB + 1.0), "no loss reported while the server was frozen"
        at, reason = lost[0]
        assert reason == "deadline"
        assert_lost_at_deadline(at, acked)
        assert not lease.is_valid
        started = time.monotonic()
        with pytest.raises(LeaseLostError) as info:
            await io(lease.transition("starting"))
        assert info.value.reason == "deadline"
        assert time.monotonic() - started < 0.2, "a refused transition waited for the frozen server"
    finally:
        t.server.resume()
    await io(lease.release())  # token-checked: deletes the record if it is still there and still ours
    assert t.admin.exists(key) == 0
    assert len(lost) == 1


# -- f. script cache flushed -----------------------------------------------------------------------------------


async def test_script_flush_is_survived(topology: Topology, namespace: str) -> None:
    """After SCRIPT FLUSH (on every master) the next heartbeat reloads its script (NOSCRIPT) on
    the server that holds the lease and renews, a transition reloads and applies exactly once,
    and the lease is never lost."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    shas = [spec.sha1 for spec in load_scripts().values()]
    beat_sha = load_scripts()["renew_many"].sha1  # the background heartbeat's script
    lost: list[Any] = []
    lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    await io(lease.transition("starting"))
    await await_beat(t.admin, key)
    for server in t.masters():
        server.script_flush()
        assert server.script_exists(*shas) == [False] * len(shas)
    await await_beat(t.admin, key)
    assert t.node_admin(key).script_exists(beat_sha) == [True]
    assert await io(lease.transition("warming")) is State.WARMING
    await await_beat(t.admin, key)
    assert lease.is_valid
    assert not lost
    assert (await io(lease.status())).connection_state is State.WARMING
    transitions = [e.to_state for e in await io(registry.activity(1)) if e.event == "state_transition"]
    assert transitions == ["warming", "starting"]
    assert await io(lease.release()) is True


# -- g. a failing on_lost ---------------------------------------------------------------------------------


async def test_raising_on_lost_does_not_stop_other_leases(
    topology: Topology, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_lost callback that raises is logged, and the registry's heartbeat thread or task
    goes on renewing its other leases for longer than a TTL."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    operator = t.registry(namespace=namespace)
    calls: list[Any] = []

    def broken(lease: Any) -> None:
        calls.append(lease)
        raise RuntimeError("bug in on_lost")

    doomed = await io(registry.claim(1, "Doomed", on_lost=broken))
    other = await io(registry.claim(2, "Other"))
    await io(operator.force_release(1, "test"))
    assert await await_until(lambda: calls, HB + 1.0), "on_lost was not called"
    assert calls == [doomed]
    other_key = status_key(namespace, 2)
    beats = {t.admin.hget(other_key, "lastHeartbeat")}
    end = time.monotonic() + TTL + HB
    while time.monotonic() < end:
        beat = t.admin.hget(other_key, "lastHeartbeat")
        assert beat is not None, "the other lease's record expired"
        beats.add(beat)
        await asyncio.sleep(0.05)
    assert len(beats) >= 3, "the other lease was no longer renewed"
    assert other.is_valid
    assert t.heartbeat_running(registry)
    failures = [r for r in caplog.records if r.name == "pylivermore.lease" and r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)
    assert await io(other.release()) is True


# -- h. address resolver -------------------------------------------------------------------------------------


def resolver_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and "address resolver failed" in r.getMessage()]


def resolved(registry: Any) -> Callable[[], Any]:
    """A poll: the record of exchange 1 has an IP address."""

    async def check() -> bool:
        status = await io(registry.get(1))
        return status is not None and status.ip_address is not None

    return check


async def test_static_resolver_reports_address(topology: Topology, namespace: str) -> None:
    """A static_address resolver's IP address and country code appear in the record shortly after the claim."""
    registry = topology.registry(
        namespace=namespace, resolver=pylivermore.static_address("203.0.113.7", "NL"), **TIMING
    )
    lease = await io(registry.claim(1, "Binance"))
    assert await await_until(resolved(registry), 2.0)
    status = await io(registry.get(1))
    assert status is not None
    assert (status.ip_address, status.country_code) == ("203.0.113.7", "NL")
    assert lease.is_valid
    assert await io(lease.release()) is True


def failing_resolver() -> pylivermore.Address:
    raise OSError("address service unreachable")


async def test_failing_resolver_is_logged_and_harmless(
    topology: Topology, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A resolver that raises is logged as a warning; the lease stays valid, keeps being renewed
    and accepts transitions, and the record has no address."""
    t = topology
    registry = t.registry(namespace=namespace, resolver=failing_resolver, **TIMING)
    lost: list[Any] = []
    lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    assert await await_until(lambda: resolver_failures(caplog), 2.0), "the resolver's failure was not logged"
    (record,) = resolver_failures(caplog)
    assert "address service unreachable" in record.getMessage()
    await await_beat(t.admin, status_key(namespace, 1))
    assert await io(lease.transition("starting")) is State.STARTING
    assert lease.is_valid
    assert not lost
    status = await io(lease.status())
    assert (status.ip_address, status.country_code) == (None, None)
    assert await io(lease.release()) is True


SLOW_RESOLVE = DEADLINE + 0.3


def slow_resolver() -> pylivermore.Address:
    time.sleep(SLOW_RESOLVE)  # a blocking lookup, e.g. an HTTP request to an IP-echo service
    return pylivermore.Address("203.0.113.9", "DE")


async def test_slow_resolver_runs_off_the_callers_path(topology: Topology, namespace: str) -> None:
    """A plain, blocking resolver that takes longer than the renew deadline delays neither the
    claim nor the heartbeat (Registry runs it in a thread; AsyncRegistry, as the AsyncResolver
    type documents, in a thread too, off the event loop): the lease stays valid and the address
    shows up once the resolver returns."""
    registry = topology.registry(namespace=namespace, resolver=slow_resolver, **TIMING)
    lost: list[Any] = []
    started = time.monotonic()
    lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    assert time.monotonic() - started < 0.5, "claim() waited for the resolver"
    poll = resolved(registry)
    assert await await_until(lambda: lost or poll(), SLOW_RESOLVE + 2)
    assert lost_reasons(lost) == [], "the slow resolver starved the heartbeat past its deadline"
    assert lease.is_valid
    status = await io(lease.status())
    assert (status.ip_address, status.country_code) == ("203.0.113.9", "DE")
    assert await io(lease.release()) is True


# -- i. eviction-policy warning -------------------------------------------------------------------------------


def eviction_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pylivermore.registry" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
async def test_evicting_policy_warns_once(
    fresh_standalone: Topology, namespace: str, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under an evicting maxmemory-policy the first claim logs exactly one WARNING on
    pylivermore.registry naming the policy (and still claims); the next claim logs nothing more."""
    t = fresh_standalone
    t.admin.config_set("maxmemory-policy", policy)
    registry = t.registry(namespace=namespace, **TIMING)
    first = await io(registry.claim(1, "Binance"))
    (record,) = eviction_warnings(caplog)
    assert record.levelno == logging.WARNING
    assert "maxmemory-policy" in record.getMessage()
    assert policy in record.getMessage()
    second = await io(registry.claim(2, "Kraken"))
    assert len(eviction_warnings(caplog)) == 1
    assert first.is_valid
    assert second.is_valid
    await io(first.release())
    await io(second.release())


async def test_noeviction_policy_does_not_warn(
    fresh_standalone: Topology, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the default noeviction policy a claim logs no warning on pylivermore.registry."""
    t = fresh_standalone
    registry = t.registry(namespace=namespace, **TIMING)
    assert t.admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    lease = await io(registry.claim(1, "Binance"))
    await io((await io(registry.claim(2, "Kraken"))).release())
    assert eviction_warnings(caplog) == []
    await io(lease.release())
