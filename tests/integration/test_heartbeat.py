"""The background heartbeat, in process, on real servers: renewal, stop on release, loss
detection (operator release, takeover, unreachable server), script-cache loss, a failing
``on_lost``, the address resolver and the eviction-policy warning.

Tests that mean the same on any deployment run on every ``topology`` (standalone and cluster,
sync and asyncio: see tests/integration/conftest.py); the ones that pause or reconfigure a
server run on a private standalone server (``fresh_standalone``), sync and asyncio.

Timings: TTL 1.5 s, heartbeat every 0.5 s, renew deadline 1.0 s. Every wait is a bounded poll
whose timeout is a give-up bound (10 s), not a measurement: bounds come from the server's clock
(read atomically with the record), from an injected owner clock, from events and from the
configured intervals, never from how promptly this process got scheduled (see tests/support.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

import pylivermore
from pylivermore import LeaseLostError, State
from pylivermore._keys import Keys
from pylivermore._renewal import BATCH
from tests.integration.conftest import Topology, io
from tests.support import (
    DEADLINE,
    HB,
    TTL,
    OwnerClock,
    RoundTrips,
    assert_lost_at_deadline,
    await_beat,
    await_until,
    iso_ms,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: For a second owner whose own heartbeat must not write during a test.
QUIET: dict[str, Any] = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}
#: How long a poll waits for something that must happen before giving up (not a bound on the library).
GIVE_UP = 10.0
#: A heartbeat may go out this much before it is due (``RegistryConfig.renew_ahead``: heartbeat_interval / 10).
RENEW_AHEAD = HB / 10
TTL_MS, HB_MS, DEADLINE_MS = round(TTL * 1000), round(HB * 1000), round(DEADLINE * 1000)


# -- helpers --------------------------------------------------------------------------------


def status_key(namespace: str, exchange_id: str | int) -> str:
    return Keys(namespace, str(exchange_id)).status


def log_key(namespace: str, exchange_id: str | int) -> str:
    return Keys(namespace, str(exchange_id)).log


def lost_reasons(calls: list[Any]) -> list[str | None]:
    return [lease.lost_reason for lease in calls]


class HeldClock:
    """An owner's monotonic clock (``Registry(clock=...)``) that the test can hold still: while it
    is held no heartbeat comes due, however long the test's own steps take on a loaded machine;
    :meth:`run` lets it go on from where it was held. :meth:`valid_at` reads ``is_valid`` at a
    given reading of this clock, for the calling thread only (the heartbeat's thread, or the
    event loop once the call returns, reads the clock as usual)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._held: float | None = None
        self._pinned = threading.local()

    def __call__(self) -> float:
        pinned: float | None = getattr(self._pinned, "value", None)
        if pinned is not None:
            return pinned
        held = self._held
        return time.monotonic() + self._offset if held is None else held

    def hold(self, at: float | None = None) -> float:
        """Stop the clock, at its current reading or at *at*; return the reading it shows."""
        self._held = self() if at is None else at
        return self._held

    def run(self) -> None:
        """Let the clock run again, on from the reading it was held at (no jump)."""
        held = self._held
        assert held is not None, "the clock is not held"
        self._offset = held - time.monotonic()
        self._held = None

    def valid_at(self, lease: Any, reading: float) -> bool:
        """``lease.is_valid`` as the owner computes it when this clock reads *reading*."""
        self._pinned.value = reading
        try:
            return bool(lease.is_valid)
        finally:
            self._pinned.value = None


# -- a. renewal ------------------------------------------------------------------------------


def record_sample(node: redis.Redis, key: str) -> tuple[int, int | None, int]:
    """(server time, lastHeartbeat, absolute expiry) of *key*, in ms of the server's clock, read in
    one MULTI on the node that holds it: no renewal can fall between the three reads, and the
    age of the last renewal is the server's own reading, however late this poll ran."""
    pipe = node.pipeline(transaction=True)
    pipe.time()
    pipe.hget(key, "lastHeartbeat")
    pipe.pexpiretime(key)
    (sec, usec), beat, expires = pipe.execute()
    return sec * 1000 + usec // 1000, None if beat is None else iso_ms(beat), expires


#: Renewal gaps measured exactly (both ends seen by samples less than HB / 2 apart) before the
#: renewal test stops: the gaps between the 7 distinct heartbeats it used to require in 3 x TTL.
EXACT_GAPS = int(3 * TTL / HB) - 3
#: Their mean may not exceed this (ms): halfway between the interval and the deadline, the rate
#: those 7 heartbeats in 3 x TTL stood for (3 x TTL / 6 gaps = 0.75 s).
MEAN_GAP_MS = (HB_MS + DEADLINE_MS) / 2


async def test_heartbeat_keeps_lease_alive_past_ttl(topology: Topology, namespace: str) -> None:
    """The heartbeat (thread or task) renews the lease for 3 x TTL: the record never disappears,
    its lastHeartbeat advances every interval, its TTL stays armed and the lease stays valid.

    Each sample reads the server's time, lastHeartbeat and PEXPIRETIME in one MULTI, so every
    check is on the server's clock: at every sample the last renewal is less than renew_deadline
    old and re-armed the full TTL (absolute expiry = lastHeartbeat + TTL); lastHeartbeat never
    goes backwards; and the gaps between two consecutive renewals whose change was seen by
    samples less than HB / 2 apart (renewals come about HB apart: none was missed between them)
    are each shorter than renew_deadline and on average at most halfway between the interval
    and the deadline. A poll that a loaded machine runs late only leaves a gap out and makes the
    run longer: it goes on (give-up 10 s) until 3 x TTL have passed on the server and enough
    gaps were measured."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    lost: list[Any] = []
    key = status_key(namespace, 1)
    node = t.node_admin(key)
    lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    claimed_at = node.hget(key, "registeredAt")
    assert claimed_at is not None
    registered = iso_ms(claimed_at)
    gaps: list[int] = []  # ms between consecutive renewals, where no renewal can have been missed
    previous: tuple[int, int] | None = None  # (server time, lastHeartbeat) of the sample before
    give_up = time.monotonic() + 3 * TTL + GIVE_UP
    while True:
        now, beat, expires = record_sample(node, key)
        assert beat is not None, "the record expired although its heartbeat should renew it"
        assert abs(expires - beat - TTL_MS) <= 2, f"a renewal armed {expires - beat} ms, not the TTL"
        assert now - beat < DEADLINE_MS, f"no renewal for {now - beat} ms"
        if previous is not None and beat != previous[1]:
            assert beat > previous[1], "lastHeartbeat went backwards"
            if now - previous[0] < HB_MS / 2:
                gaps.append(beat - previous[1])
        previous = (now, beat)
        if now - registered >= 3 * TTL_MS and len(gaps) >= EXACT_GAPS:
            break
        assert time.monotonic() < give_up, f"only {len(gaps)} renewal gaps seen in {(now - registered) / 1000} s"
        await asyncio.sleep(0.02)
    assert max(gaps) < DEADLINE_MS, f"a renewal gap of {max(gaps)} ms"
    assert sum(gaps) / len(gaps) <= MEAN_GAP_MS, f"renewals every {sum(gaps) / len(gaps):.0f} ms on average: {gaps}"
    assert lease.is_valid
    assert lease.lost_reason is None
    assert not lost
    assert 0 < t.admin.pttl(key) <= TTL * 1000
    assert (await io(lease.status())).fencing_token == lease.fencing_token
    assert await io(lease.release()) is True


MANY = 600


#: The batching test's timings: the usual heartbeat, and a TTL that outlives claiming 600 leases on
#: a loaded machine while the owner's clock is held (no record may expire before its first renewal).
BATCHING: dict[str, Any] = {**TIMING, "ttl": 30.0}


async def test_many_leases_are_renewed_in_batches(topology: Topology, namespace: str) -> None:
    """600 leases of one registry are all renewed by its background heartbeat in a few
    renew_many calls (INFO commandstats, summed over the masters), not one script call per
    lease: at most 3 rounds of the fewest calls that can cover them (the leases were claimed
    close together, and renewing early by up to a tenth of the interval puts them in the same
    round). A script runs on one hash slot, so on a cluster that is one call per slot.

    "Close together" is on the owner's injected clock, held while claiming: the leases' claims
    are spread over 0.9 x renew_ahead of its time however long a loaded machine takes to send
    them. Then the clock is held at the first lease's due time, where every lease is due within
    renew_ahead, until every record shows a renewal (give-up 10 s): no later round can come due
    meanwhile, so the count covers the renewals checked, however late the test reads it."""
    t = topology
    clock = HeldClock()
    registry = t.registry(namespace=namespace, clock=clock, **BATCHING)
    ids = range(1, MANY + 1)
    start = clock.hold()
    for n, i in enumerate(ids):
        clock.hold(start + n * 0.9 * RENEW_AHEAD / MANY)
        await io(registry.claim(i, "Binance"))
    await asyncio.sleep(0.01)  # a renewal's lastHeartbeat (ms) differs from the last claim's registeredAt
    t.reset_stats()
    clock.hold(start + HB)

    def stale() -> list[int]:
        pipe = t.admin.pipeline(transaction=False)
        for i in ids:
            pipe.hmget(status_key(namespace, i), "lastHeartbeat", "registeredAt")
        return [i + 1 for i, (beat, claimed) in enumerate(pipe.execute()) if beat is None or beat == claimed]

    await await_until(lambda: not stale(), GIVE_UP, interval=0.05)
    calls = t.script_calls()
    missed = stale()
    assert not missed, f"{len(missed)} of {MANY} records were not renewed, e.g. {missed[:5]}"
    bound = 3 * t.renewal_groups(namespace, ids, BATCH)
    assert 0 < calls <= bound, f"{calls} script calls for {MANY} renewals (at most {bound})"


# -- b. release stops the heartbeat ----------------------------------------------------------------


async def test_release_stops_heartbeats(topology: Topology, namespace: str) -> None:
    """After release() not one more script call reaches the server (any master, on a cluster);
    the heartbeat thread or task stays for the next claim (no thread start per claim) and ends
    when the registry closes."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    lease = await io(registry.claim(1, "Binance"))
    await await_beat(t.admin, key)
    worker = t.heartbeat_worker(registry)
    assert t.heartbeat_running(registry)
    assert await io(lease.release()) is True
    calls = t.script_calls()
    await asyncio.sleep(2 * HB + 0.2)
    assert t.script_calls() == calls, "a script ran after release"
    assert t.admin.exists(key) == 0
    again = await io(registry.claim(1, "Binance"))
    assert t.heartbeat_worker(registry) is worker, "the next claim started another heartbeat worker"
    await io(again.release())
    await io(registry.close())
    assert await await_until(lambda: t.heartbeat_stopped(registry, worker), GIVE_UP), (
        "the heartbeat kept running after the registry closed"
    )


async def test_an_idle_heartbeat_ends_after_its_linger(
    topology: Topology, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry left open without leases does not keep its heartbeat worker: it ends
    IDLE_LINGER seconds after the last lease left, and the next claim starts another."""
    t = topology
    monkeypatch.setattr(pylivermore._sync, "IDLE_LINGER", 0.2)
    monkeypatch.setattr(pylivermore._async, "IDLE_LINGER", 0.2)
    registry = t.registry(namespace=namespace, **TIMING)
    lease = await io(registry.claim(1, "Binance"))
    worker = t.heartbeat_worker(registry)
    await io(lease.release())
    assert await await_until(lambda: t.heartbeat_stopped(registry, worker), GIVE_UP), (
        "the idle heartbeat did not end after its linger"
    )
    again = await io(registry.claim(1, "Binance"))
    await await_beat(t.admin, status_key(namespace, 1))
    assert t.heartbeat_running(registry)
    await io(again.release())


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
    assert await await_until(lambda: lost, GIVE_UP), "on_lost was not called after force_release"
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
    with reason "taken", later transitions are refused, and the new holder's record is untouched.

    The takeover happens with the owner's injected clock held still between two of its beats:
    held once a beat was seen and only if, by the owner's own deadline, its next beat is not due
    yet at the held reading (else the clock runs on to the next beat and tries again), so the
    owner sends nothing until the new holder has the record, however slow the takeover. The new
    holder's clock is held for the whole test: its heartbeat never writes."""
    t = topology
    clock = HeldClock()
    owner = t.registry(namespace=namespace, clock=clock, **TIMING)
    frozen = HeldClock()
    frozen.hold()
    thief = t.registry(namespace=namespace, clock=frozen, **QUIET)
    key = status_key(namespace, 1)
    lost: list[Any] = []
    stolen: Any = None
    try:
        lease = await io(owner.claim(1, "Binance", on_lost=lost.append))
        for _ in range(10):
            await await_beat(t.admin, key)
            held = clock.hold()
            # Its next beat goes out at (last acknowledged send) + HB - renew_ahead at the earliest,
            # and its deadline is that send + renew_deadline: the beat is not due while held iff
            # the lease is still valid (DEADLINE - HB) + renew_ahead after the held reading.
            if clock.valid_at(lease, held + (DEADLINE - HB) + RENEW_AHEAD):
                break
            clock.run()
        else:
            raise AssertionError("the owner's clock was never held before its next beat in 10 intervals")
        t.admin.delete(key)
        stolen = await io(thief.claim(1, "Binance"))
        snapshot = t.admin.hgetall(key)
        clock.run()
        assert await await_until(lambda: lost, GIVE_UP), "the owner did not notice the takeover"
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
    after the last acknowledged heartbeat; owner calls then fail at once, without a round trip.

    "Not before the deadline" is exact: the owner's deadline is read through its injected clock
    right before the pause (acknowledgements can only move it later); "by renew_deadline +
    heartbeat_interval" counts from the instant the server was frozen, and so, exactly, does the
    end of the lease's validity (renew_deadline after its last acknowledged send). "Without a
    round trip" counts the worker client's round trips instead of timing the refused call."""
    t = fresh_standalone
    assert t.server is not None
    clock = OwnerClock()
    registry = t.registry(namespace=namespace, clock=clock, **TIMING)
    key = status_key(namespace, 1)
    lost: list[tuple[float, str | None]] = []
    lease = await io(registry.claim(1, "Binance", on_lost=lambda ls: lost.append((time.monotonic(), ls.lost_reason))))
    acked = await await_beat(t.admin, key)
    entitled = clock.deadline_now(lease)  # acknowledgements can only move it later
    t.server.pause()
    silenced = time.monotonic()  # the server answers nothing from here on
    try:
        # Every acknowledged send came before the pause: the owner's validity ends by then + renew_deadline.
        assert not clock.valid_at(lease, silenced + DEADLINE), "the lease outlives its local deadline"
        assert await await_until(lambda: lost, GIVE_UP), "no loss reported while the server was frozen"
        at, reason = lost[0]
        assert reason == "deadline"
        assert_lost_at_deadline(at, acked, silenced=silenced, entitled=entitled)
        assert not lease.is_valid
        trips = RoundTrips(t.client)
        with pytest.raises(LeaseLostError) as info:
            await io(lease.transition("starting"))
        assert info.value.reason == "deadline"
        assert trips.count == 0, "a refused transition tried the frozen server"
    finally:
        t.server.resume()
    await io(lease.release())  # token-checked: deletes the record if it is still there and still ours
    assert t.admin.exists(key) == 0
    assert len(lost) == 1


# -- f. script cache flushed -----------------------------------------------------------------------------------


async def test_script_flush_is_survived(topology: Topology, namespace: str) -> None:
    """After SCRIPT FLUSH (FUNCTION FLUSH over functions; on every master) the next heartbeat reloads
    its script (NOSCRIPT) or the library (Function not found) on the server that holds the lease
    and renews, a transition reloads and applies exactly once, and the lease is never lost."""
    t = topology
    registry = t.registry(namespace=namespace, **TIMING)
    key = status_key(namespace, 1)
    lost: list[Any] = []
    lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    await io(lease.transition("starting"))
    await await_beat(t.admin, key)
    for server in t.masters():
        t.flush_code(server)
        assert not t.code_loaded(server)
    await await_beat(t.admin, key)
    assert t.code_loaded(t.node_admin(key))  # the heartbeat's renew_many, or the library
    assert await io(lease.transition("warming")) is State.WARMING
    await await_beat(t.admin, key)
    assert lease.is_valid
    assert not lost
    assert (await io(lease.status())).connection_state is State.WARMING
    transitions = [e.to_state for e in await io(registry.activity(1)) if e.event == "state_transition"]
    assert transitions == ["warming", "starting"]
    assert await io(lease.release()) is True


# -- g. a failing on_lost ---------------------------------------------------------------------------------


def on_lost_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pylivermore.lease" and r.levelno == logging.ERROR]


async def test_raising_on_lost_does_not_stop_other_leases(
    topology: Topology, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_lost callback that raises is logged, and the registry's heartbeat thread or task
    goes on renewing its other leases for longer than a TTL: the other record, never gone, is
    renewed at a server time at least a TTL after an instant the callback had already raised by
    (so at least twice after it: a record that is not renewed expires within a TTL)."""
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
    assert await await_until(lambda: on_lost_failures(caplog), GIVE_UP), "on_lost was not called, or did not raise"
    assert calls == [doomed]
    other_key = status_key(namespace, 2)
    node = t.node_admin(other_key)
    sec, usec = node.time()
    raised = sec * 1000 + usec // 1000  # server ms: on_lost had raised (and been logged) by then

    def renewed_a_ttl_later() -> bool:
        beat = node.hget(other_key, "lastHeartbeat")
        assert beat is not None, "the other lease's record expired"
        return iso_ms(beat) >= raised + TTL_MS

    assert await await_until(renewed_a_ttl_later, TTL + GIVE_UP, interval=0.02), "the other lease was no longer renewed"
    assert other.is_valid
    assert t.heartbeat_running(registry)
    failures = on_lost_failures(caplog)
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
    assert await await_until(resolved(registry), GIVE_UP)
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
    assert await await_until(lambda: resolver_failures(caplog), GIVE_UP), "the resolver's failure was not logged"
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


def slow_resolver(claimed: threading.Event, saw_claim: list[bool]) -> Callable[[], pylivermore.Address]:
    """A blocking resolver that takes longer than the renew deadline (e.g. an HTTP request to an
    IP-echo service) and starts its lookup only once *claimed* is set (the test sets it when
    claim() has returned; give-up 10 s): it appends to *saw_claim* whether it saw that happen."""

    def resolve() -> pylivermore.Address:
        saw_claim.append(claimed.wait(GIVE_UP))
        time.sleep(SLOW_RESOLVE)
        return pylivermore.Address("203.0.113.9", "DE")

    return resolve


async def test_slow_resolver_runs_off_the_callers_path(topology: Topology, namespace: str) -> None:
    """A plain, blocking resolver that takes longer than the renew deadline delays neither the
    claim nor the heartbeat (Registry runs it in a thread; AsyncRegistry, as the AsyncResolver
    type documents, in a thread too, off the event loop): the lease stays valid and the address
    shows up once the resolver returns.

    "Not the claim" is an order of events, not a duration: the resolver waits for the claim to
    return before it starts, which a claim that waited for it would never do."""
    claimed = threading.Event()
    saw_claim: list[bool] = []
    registry = topology.registry(namespace=namespace, resolver=slow_resolver(claimed, saw_claim), **TIMING)
    lost: list[Any] = []
    try:
        lease = await io(registry.claim(1, "Binance", on_lost=lost.append))
    finally:
        claimed.set()
    poll = resolved(registry)
    assert await await_until(lambda: lost or poll(), SLOW_RESOLVE + GIVE_UP)
    assert saw_claim == [True], "claim() waited for the resolver"
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
