"""Network faults between an owner and redis-server (reliability notes §4.3 N1-N5, §4.1 P4 and P6).

The owner's registry talks to the real server through :class:`tests.chaos.proxy.FaultProxy`; a
contender talks to the server directly. Timings: TTL 1.5 s, heartbeat every 0.5 s, renew
deadline 1.0 s (so each heartbeat attempt is bounded by 0.25 s). Contenders use long timings so
that their own heartbeat never writes while a test compares their record byte for byte (DUMP).
Every wait is a bounded poll; every client, registry and proxy is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from pylivermore import (
    AsyncLease,
    AsyncRegistry,
    ClaimConflictError,
    InvalidTransitionError,
    Lease,
    LeaseLostError,
    Registry,
    State,
)
from pylivermore._keys import Keys
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer
from tests.chaos.proxy import FaultProxy
from tests.conftest import make_async_client, make_client
from tests.support import (
    DEADLINE,
    HB,
    TTL,
    OwnerClock,
    await_beat,
    await_credited_beat,
    await_until,
    expiry_window,
    wait_for_beat,
    wait_for_credited_beat,
    wait_until,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(60)]

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: The library bounds each heartbeat attempt by this (``RegistryConfig.heartbeat_timeout``).
BEAT_TIMEOUT = min(HB / 2, (DEADLINE - HB) / 2)
#: For contenders: their heartbeat must not write during a test.
QUIET: dict[str, Any] = {"ttl": 120.0, "heartbeat_interval": 40.0, "renew_deadline": 80.0}

Lost = list[tuple[float, str | None]]


# -- helpers --------------------------------------------------------------------------------


def owner_client(proxy: FaultProxy, policy: str, **kwargs: Any) -> redis.Redis:
    """A sync client through *proxy*; ``default`` keeps redis-py's own retry policy."""
    options: dict[str, Any] = {"socket_timeout": 5.0, **kwargs}
    if policy != "default":
        options["retry"] = Retry(NoBackoff(), 0 if policy == "off" else 3)
    return redis.Redis(host="127.0.0.1", port=proxy.port, **options)


def async_owner_client(proxy: FaultProxy, policy: str, **kwargs: Any) -> aredis.Redis:
    options: dict[str, Any] = {"socket_timeout": 5.0, **kwargs}
    if policy != "default":
        options["retry"] = AsyncRetry(NoBackoff(), 0 if policy == "off" else 3)
    return aredis.Redis(host="127.0.0.1", port=proxy.port, **options)


def recorder(lost: Lost) -> Callable[[Any], None]:
    return lambda lease: lost.append((time.monotonic(), lease.lost_reason))


def events(raw: list[Any]) -> list[dict[str, str]]:
    """XRANGE output as a list of text dicts."""
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as p:
        yield p


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A worker client straight to the server (no proxy), for contenders; inspection uses ``admin``."""
    c = make_client(redis_server)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def markers(direct: redis.Redis) -> dict[str, bytes]:
    """Load every script first, so that no NOSCRIPT round trip goes through a faulty link (script
    cache loss is §4.2's subject); returns each script's SHA-1, which marks its EVALSHA requests."""
    out = {}
    for name, spec in load_scripts().items():
        assert direct.script_load(spec.source) == spec.sha1
        out[name] = spec.sha1.encode()
    return out


@pytest.fixture
async def adirect(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = make_async_client(redis_server)
    yield c
    await c.aclose()


# -- N1: owner partitioned (blackhole) -----------------------------------------------------------


def check_n1_partition(clock: OwnerClock, lease: Lease | AsyncLease, cut: float, expires: float) -> None:
    """Right after the partition began at *cut* (every acknowledged send happened before it): the
    lease is invalid from renew_deadline after the cut on, and before the server's record can
    expire at *expires* (the earliest instant, from PTTL). Read through the injected clock: exact,
    however late this thread runs (and sound even if the loss was already reported)."""
    assert not clock.valid_at(lease, cut + DEADLINE), "still valid renew_deadline after the partition"
    assert not clock.valid_at(lease, expires), "still valid when the server's TTL could run out"


def check_n1_report(entitled: float, cut: float, expires: float, lost: Lost, taken_at: float) -> None:
    """The loss report of N1: once, "deadline", not before *entitled* (the owner's deadline read
    right before the partition: a partition does not shorten the deadline), and
    within one bounded heartbeat attempt of the deadline (never a retry policy's 5 s socket
    timeouts); the scheduling allowance is one heartbeat interval. The contender's claim, which
    returned at *taken_at*, came no earlier than the TTL ran out."""
    assert len(lost) == 1, f"on_lost fired {len(lost)} times"
    lost_at, reason = lost[0]
    assert reason == "deadline"
    assert lost_at >= entitled, f"loss reported {entitled - lost_at:.3f} s before the lease's deadline"
    assert lost_at <= cut + DEADLINE + BEAT_TIMEOUT + HB, f"loss reported {lost_at - cut:.3f} s after the partition"
    assert taken_at >= expires, "the contender claimed before the owner's TTL ran out"


@pytest.mark.parametrize("policy", ["off", "default"])
def test_n1_blackhole_owner_gives_up_before_ttl_sync(
    proxy: FaultProxy, direct: redis.Redis, admin: redis.Redis, namespace: str, policy: str
) -> None:
    """N1 (sync). Expected: with the owner partitioned, its heartbeats time out; its lease is
    invalid from last acknowledged send + renew_deadline on, before the server's TTL runs out, and
    it reports the loss (on_lost once, reason "deadline") within one bounded heartbeat attempt,
    even with redis-py's default retry policy (10 retries of a 5 s timeout) on the owner's client.
    The contender's claim succeeds only after the TTL. After healing, the old owner cannot
    resurrect: its calls raise LeaseLostError without a round trip, its heartbeat stays silent and
    its token-checked release leaves the contender's record byte-identical."""
    client = owner_client(proxy, policy)
    clock = OwnerClock()
    owner = Registry(client, namespace=namespace, clock=clock, **TIMING)
    contender = Registry(direct, namespace=namespace, **QUIET)
    keys = Keys(namespace, "1")
    lost: Lost = []
    try:
        lease = owner.claim(1, "Binance", on_lost=recorder(lost))
        wait_for_credited_beat(admin, keys.status, lease, clock)
        entitled = clock.deadline_now(lease)  # acknowledgements can only move it later
        proxy.blackhole()
        cut = time.monotonic()
        expires, _ = expiry_window(admin, keys.status)
        check_n1_partition(clock, lease, cut, expires)
        new: Lease | None = None
        end = cut + TTL + 10.0  # a give-up bound: the record expires by cut + TTL
        while new is None and time.monotonic() < end:
            try:
                new = contender.claim(1, "Kraken")
            except ClaimConflictError:
                time.sleep(0.005)
        taken_at = time.monotonic()
        assert new is not None, "the contender never got the resource"
        assert not lease.is_valid
        assert wait_until(lambda: lost, 10.0)
        check_n1_report(entitled, cut, expires, lost, taken_at)
        assert new.fencing_token > lease.fencing_token

        proxy.pass_through()  # heal
        dump, xlen, sent = admin.dump(keys.status), admin.xlen(keys.log), proxy.bytes_up
        for call in (lambda: lease.transition("starting"), lambda: lease.set_symbol_count(5), lease.heartbeat):
            with pytest.raises(LeaseLostError) as info:
                call()
            assert info.value.reason == "deadline"
        with pytest.raises(LeaseLostError):
            lease.ensure_held()
        assert proxy.bytes_up == sent, "a refused call made a round trip"
        # The heartbeat thread gets two intervals to show itself (a loaded machine can only make
        # this check see less, never fail it).
        time.sleep(2 * HB)
        assert proxy.bytes_up == sent, "the lost lease's heartbeat still sent something"
        assert lease.release() is False  # token-checked deregister: TAKEN
        assert admin.dump(keys.status) == dump
        assert admin.xlen(keys.log) == xlen
        assert admin.pttl(keys.status) > 60_000, "the contender's TTL was cut by the old owner"
        assert len(lost) == 1
        assert new.release() is True
    finally:
        owner.close()
        contender.close()
        client.close()


@pytest.mark.parametrize("policy", ["off", "default"])
async def test_n1_blackhole_owner_gives_up_before_ttl_async(
    proxy: FaultProxy, adirect: aredis.Redis, admin: redis.Redis, aadmin: aredis.Redis, namespace: str, policy: str
) -> None:
    """N1 (asyncio). Expected: as in the sync test; the heartbeat task bounds each attempt with
    a timeout, so neither the blackhole nor the client's own (default) retry policy stretches a
    renewal past the deadline. The lease is invalid before the server's TTL runs out, the loss
    (on_lost once, "deadline") comes within one bounded attempt, the contender claims only after
    the TTL, and the healed old owner cannot act or resurrect."""
    client = async_owner_client(proxy, policy)
    clock = OwnerClock()
    owner = AsyncRegistry(client, namespace=namespace, clock=clock, **TIMING)
    contender = AsyncRegistry(adirect, namespace=namespace, **QUIET)
    keys = Keys(namespace, "1")
    lost: Lost = []
    try:
        lease = await owner.claim(1, "Binance", on_lost=recorder(lost))
        await await_credited_beat(admin, keys.status, lease, clock)
        entitled = clock.deadline_now(lease)  # acknowledgements can only move it later
        proxy.blackhole()
        cut = time.monotonic()
        expires, _ = expiry_window(admin, keys.status)
        check_n1_partition(clock, lease, cut, expires)
        new: AsyncLease | None = None
        end = cut + TTL + 10.0  # a give-up bound: the record expires by cut + TTL
        while new is None and time.monotonic() < end:
            try:
                new = await contender.claim(1, "Kraken")
            except ClaimConflictError:
                await asyncio.sleep(0.005)
        taken_at = time.monotonic()
        assert new is not None, "the contender never got the resource"
        assert not lease.is_valid

        async def reported() -> bool:
            return bool(lost)

        assert await await_until(reported, 10.0)
        check_n1_report(entitled, cut, expires, lost, taken_at)

        proxy.pass_through()
        dump, xlen, sent = await aadmin.dump(keys.status), await aadmin.xlen(keys.log), proxy.bytes_up
        with pytest.raises(LeaseLostError) as info:
            await lease.transition("starting")
        assert info.value.reason == "deadline"
        with pytest.raises(LeaseLostError):
            await lease.set_symbol_count(5)
        with pytest.raises(LeaseLostError):
            await lease.heartbeat()
        assert proxy.bytes_up == sent, "a refused call made a round trip"
        await asyncio.sleep(2 * HB)  # the heartbeat task's chance to show itself (load can only hide it)
        assert proxy.bytes_up == sent, "the lost lease's heartbeat still sent something"
        assert await lease.release() is False
        assert await aadmin.dump(keys.status) == dump
        assert await aadmin.xlen(keys.log) == xlen
        assert await aadmin.pttl(keys.status) > 60_000
        assert len(lost) == 1
        assert await new.release() is True
    finally:
        await owner.close()
        await contender.close()
        await client.aclose()


# -- N2 / P4: replies delayed beyond the deadline -----------------------------------------------


def test_n2_late_heartbeat_reply_is_not_a_renewal_sync(proxy: FaultProxy, admin: redis.Redis, namespace: str) -> None:
    """N2 (heartbeat). Expected: a RENEWED reply that arrives after its own deadline (send time +
    renew_deadline) is not a success: heartbeat() raises LeaseLostError("deadline"), on_lost
    fires once with "deadline", ensure_held() raises and the lease stays invalid, although the
    server did apply the renewal."""
    client = owner_client(proxy, "off")
    owner = Registry(client, namespace=namespace, **TIMING)
    keys = Keys(namespace, "1")
    lost: Lost = []
    try:
        lease = owner.claim(1, "Binance", on_lost=recorder(lost))
        wait_for_beat(admin, keys.status)
        time.sleep(0.05)
        proxy.delay_down(DEADLINE + 0.3)
        renewed = admin.hget(keys.status, "lastHeartbeat")
        sent = time.monotonic()
        with pytest.raises(LeaseLostError) as info:
            lease.heartbeat()
        assert time.monotonic() - sent >= DEADLINE + 0.25, "the reply was not delayed as arranged"
        assert info.value.reason == "deadline"
        assert admin.hget(keys.status, "lastHeartbeat") != renewed, "the late heartbeat did not run on the server"
        assert not lease.is_valid
        assert lease.lost_reason == "deadline"
        with pytest.raises(LeaseLostError):
            lease.ensure_held()
        assert [reason for _, reason in lost] == ["deadline"]
        proxy.pass_through()
        lease.release()  # token-checked: removes the record it may still hold
        assert admin.exists(keys.status) == 0
    finally:
        owner.close()
        client.close()


async def test_n2_late_heartbeat_reply_is_not_a_renewal_async(
    proxy: FaultProxy, aadmin: aredis.Redis, namespace: str
) -> None:
    """N2 (heartbeat, asyncio). Expected: as in the sync test: a late RENEWED is a loss ("deadline")."""
    client = async_owner_client(proxy, "off")
    owner = AsyncRegistry(client, namespace=namespace, **TIMING)
    keys = Keys(namespace, "1")
    lost: Lost = []
    try:
        lease = await owner.claim(1, "Binance", on_lost=recorder(lost))
        await await_beat(aadmin, keys.status)
        await asyncio.sleep(0.05)
        proxy.delay_down(DEADLINE + 0.3)
        sent = time.monotonic()
        with pytest.raises(LeaseLostError) as info:
            await lease.heartbeat()
        assert time.monotonic() - sent >= DEADLINE + 0.25, "the reply was not delayed as arranged"
        assert info.value.reason == "deadline"
        assert not lease.is_valid
        with pytest.raises(LeaseLostError):
            lease.ensure_held()
        assert [reason for _, reason in lost] == ["deadline"]
        proxy.pass_through()
        await lease.release()
        assert await aadmin.exists(keys.status) == 0
    finally:
        await owner.close()
        await client.aclose()


# past-ttl: the contender must claim between the record's expiry and the owner's late reply; the
# 1.5 s between them leave a slow test thread plenty of time.
@pytest.mark.parametrize("delay", [DEADLINE + 0.25, TTL + 1.5], ids=["past-deadline", "past-ttl"])
def test_n2_p4_late_claim_reply_never_yields_a_valid_lease(
    proxy: FaultProxy, direct: redis.Redis, admin: redis.Redis, namespace: str, delay: float
) -> None:
    """N2 (claim) = P4, Kleppmann's delayed reply. Expected: a CLAIMED reply that arrives after
    the claim's send time + renew_deadline never yields a valid lease: claim() either raises or
    returns a lease that is already invalid (ensure_held raises LeaseLostError "deadline") and
    whose loss is reported through on_lost. In the past-ttl case a contender claims while the
    reply is in flight; the old owner's calls and release leave its record byte-identical."""
    client = owner_client(proxy, "off")
    owner = Registry(client, namespace=namespace, **TIMING)
    contender = Registry(direct, namespace=namespace, **QUIET)
    keys = Keys(namespace, "1")
    lost: Lost = []
    out: dict[str, Any] = {}

    def claim() -> None:
        out["sent"] = time.monotonic()
        try:
            lease = owner.claim(1, "Binance", on_lost=recorder(lost))
            out["valid"] = lease.is_valid  # at the moment the caller gets the lease
            out["lease"] = lease
        except Exception as exc:
            out["error"] = exc
        out["returned"] = time.monotonic()

    thread = threading.Thread(target=claim)
    new: Lease | None = None
    try:
        assert owner.claim(99, "Warmup").release() is True  # connection, server check and script cache
        proxy.delay_down(delay)
        thread.start()
        # The claim's log entry (it outlives the record, which may expire before a slow poll sees it).
        applied = wait_until(lambda: admin.xlen(keys.log) == 1, 10.0)
        assert applied, "the owner's claim did not reach the server"
        if delay > TTL:
            end = time.monotonic() + delay + 10.0
            while new is None and thread.is_alive() and time.monotonic() < end:
                try:
                    new = contender.claim(1, "Kraken")
                except ClaimConflictError:
                    time.sleep(0.01)
            assert new is not None, "the contender did not get the resource"
            assert thread.is_alive(), "the contender claimed only after the owner's reply came back"
        thread.join(delay + 5)
        assert not thread.is_alive()
        assert out["returned"] - out["sent"] >= delay - 0.05, "the claim's reply was not delayed as arranged"
        proxy.pass_through()
        if "error" in out:
            assert isinstance(out["error"], LeaseLostError | RedisError), out["error"]
        else:
            lease: Lease = out["lease"]
            assert out["valid"] is False, "a claim acknowledged after its deadline was reported valid"
            assert not lease.is_valid
            with pytest.raises(LeaseLostError) as info:
                lease.ensure_held()
            assert info.value.reason == "deadline"
            assert wait_until(lambda: lost, 10.0), "on_lost never fired for the late claim"
            assert [reason for _, reason in lost] == ["deadline"]
            if new is not None:
                dump = admin.dump(keys.status)
                with pytest.raises(LeaseLostError):
                    lease.transition("starting")
                assert lease.release() is False
                assert admin.dump(keys.status) == dump
            else:
                lease.release()
        if new is not None:
            assert admin.hget(keys.status, "fencingToken") == str(new.fencing_token).encode()
            assert new.release() is True
        assert admin.exists(keys.status) == 0
    finally:
        if thread.ident is not None:
            thread.join(10)
        owner.close()
        contender.close()
        client.close()


# -- N3: request delayed beyond the TTL -----------------------------------------------------------------


@pytest.mark.parametrize("op", ["transition", "heartbeat"])
def test_n3_request_delayed_past_ttl_is_refused(
    proxy: FaultProxy, direct: redis.Redis, admin: redis.Redis, namespace: str, op: str
) -> None:
    """N3. Expected: an owner request (transition or heartbeat) held in the network past the TTL
    reaches Redis after a contender's claim and is refused by the token check (TAKEN): the
    contender's record stays byte-identical (DUMP), its TTL is not cut, no log entry is added;
    the owner's call raises LeaseLostError and on_lost fires exactly once."""
    client = owner_client(proxy, "off")
    clock = OwnerClock()
    owner = Registry(client, namespace=namespace, clock=clock, **TIMING)
    contender = Registry(direct, namespace=namespace, **QUIET)
    keys = Keys(namespace, "1")
    lost: Lost = []
    out: dict[str, Any] = {}
    hold = TTL + 2.0  # the contender claims between the record's expiry and the request's arrival: 2 s

    def act() -> None:
        lease = out["lease"]
        try:
            out["result"] = lease.transition("starting") if op == "transition" else lease.heartbeat()
        except Exception as exc:
            out["error"] = exc
        out["returned"] = time.monotonic()

    thread = threading.Thread(target=act)
    new: Lease | None = None
    try:
        lease = out["lease"] = owner.claim(1, "Binance", on_lost=recorder(lost))
        wait_for_credited_beat(admin, keys.status, lease, clock)  # the request goes out well before the deadline
        proxy.delay_up(hold)
        cut = time.monotonic()
        thread.start()
        while new is None and time.monotonic() < cut + hold - 0.1:
            try:
                new = contender.claim(1, "Kraken")
            except ClaimConflictError:
                time.sleep(0.01)
        assert new is not None, "the contender could not claim before the delayed request arrived"
        assert thread.is_alive(), "the owner's request was not held back"
        dump, xlen = admin.dump(keys.status), admin.xlen(keys.log)
        thread.join(hold + 5)
        assert not thread.is_alive()
        assert out["returned"] >= cut + hold - 0.05
        error = out.get("error")
        assert isinstance(error, LeaseLostError), f"the delayed {op} returned {out.get('result')!r}"
        assert error.reason == "taken"
        # Background heartbeats sent before the deadline were held as long: stop the heartbeat
        # (nothing more is sent once close() returns), then let everything the proxy holds land.
        owner.close()
        assert wait_until(proxy.delivered, hold + 10.0), "the proxy never delivered what it held"
        assert admin.dump(keys.status) == dump, "the delayed request changed the contender's record"
        assert admin.xlen(keys.log) == xlen
        assert admin.pttl(keys.status) > 60_000, "a delayed heartbeat cut the contender's TTL"
        assert len(lost) == 1
        assert lost[0][1] in ("deadline", "taken")
        # Within one bounded heartbeat attempt of the deadline (+ one interval of scheduling allowance).
        assert lost[0][0] <= cut + DEADLINE + BEAT_TIMEOUT + HB
        assert not lease.is_valid
        status = contender.get(1)
        assert status is not None
        assert status.fencing_token == new.fencing_token
        assert status.connection_state == State.IDLE
        assert new.release() is True
    finally:
        if thread.ident is not None:
            thread.join(10)
        owner.close()
        contender.close()
        client.close()


# -- N4: connection reset after the request reached the server (result unknown) ----------------------------


def count(entries: list[dict[str, str]], event: str) -> int:
    return sum(e["event"] == event for e in entries)


@pytest.mark.parametrize("policy", ["three", "default"])
def test_n4_reset_after_request_with_retries_applies_once(
    proxy: FaultProxy, admin: redis.Redis, markers: dict[str, bytes], namespace: str, policy: str
) -> None:
    """N4 with the client's retries on. Expected: when the connection is reset after a
    transition, record_error or deregister reached Redis, redis-py re-sends the same EVALSHA
    (the same seq; a deregister the same fencing token) and the script answers REPLAYED, which
    the library takes as the call's success: each call succeeds, the final state equals one
    application, and the log holds exactly one entry per call."""
    client = owner_client(proxy, policy)
    owner = Registry(client, namespace=namespace, **{**TIMING, "ttl": 6.0, "renew_deadline": 4.0})
    keys = Keys(namespace, "1")
    try:
        lease = owner.claim(1, "Binance")

        proxy.reset_after_request(markers["transition"])
        assert lease.transition("starting") == State.STARTING
        assert proxy.resets == 1, "the fault did not fire"
        assert admin.hget(keys.status, "connectionState") == b"starting"
        entries = events(admin.xrange(keys.log))
        assert count(entries, "state_transition") == 1
        assert lease.state == State.STARTING

        proxy.reset_after_request(markers["record_error"])
        lease.record_error("feed dropped")
        assert proxy.resets == 2
        assert admin.hget(keys.status, "lastError") == b"feed dropped"
        assert count(events(admin.xrange(keys.log)), "error") == 1

        proxy.reset_after_request(markers["deregister"])
        assert lease.release() is True
        assert proxy.resets == 3
        assert admin.exists(keys.status) == 0
        entries = events(admin.xrange(keys.log))
        assert [e["event"] for e in entries] == ["claim", "state_transition", "error", "deregister"]
        assert entries[-1]["state"] == "starting"
    finally:
        owner.close()
        client.close()


def test_n4_reset_after_request_without_retries_is_unknown_but_applied_once(
    proxy: FaultProxy, admin: redis.Redis, markers: dict[str, bytes], namespace: str
) -> None:
    """N4 with retries off. Expected: the caller sees a ConnectionError (the result is unknown)
    although the operation applied exactly once; the library's next call then behaves correctly:
    the caller's new transition to the same state is decided by Redis (applied once, or refused
    as BAD_TRANSITION because the record is already there), never logged twice, and the lease and
    the record agree; a release whose reply was lost leaves the record gone, and a second release
    is answered REPLAYED (contract v2: this lease's release was already applied, not TAKEN or
    EXPIRED), so it returns True without logging again."""
    client = owner_client(proxy, "off")
    owner = Registry(client, namespace=namespace, **{**TIMING, "ttl": 6.0, "renew_deadline": 4.0})
    keys = Keys(namespace, "1")
    try:
        lease = owner.claim(1, "Binance")

        proxy.reset_after_request(markers["transition"])
        with pytest.raises(redis.ConnectionError):
            lease.transition("starting")
        assert proxy.resets == 1
        assert admin.hget(keys.status, "connectionState") == b"starting", "the request did not run"
        try:
            outcome = lease.transition("starting")  # the caller's own retry, a new logical call
        except InvalidTransitionError as exc:
            outcome = State(exc.current)  # BAD_TRANSITION: the record is already there
        assert outcome == State.STARTING
        assert lease.state == State.STARTING
        assert count(events(admin.xrange(keys.log)), "state_transition") == 1
        assert lease.transition("warming") == State.WARMING
        assert lease.status().connection_state == State.WARMING == lease.state

        proxy.reset_after_request(markers["record_error"])
        with pytest.raises(redis.ConnectionError):
            lease.record_error("feed dropped")
        assert admin.hget(keys.status, "lastError") == b"feed dropped"
        assert count(events(admin.xrange(keys.log)), "error") == 1
        lease.set_symbol_count(42)
        status = lease.status()
        assert (status.last_error, status.symbol_count) == ("feed dropped", 42)

        proxy.reset_after_request(markers["deregister"])
        with pytest.raises(redis.ConnectionError):
            lease.release()
        assert proxy.resets == 3
        assert admin.exists(keys.status) == 0
        again = lease._core.release_call()  # what a second release sends: the same token and fencing token
        assert again is not None
        assert admin.evalsha(markers["deregister"].decode(), len(again.keys), *again.keys, *again.args) == [
            b"REPLAYED",
            b"warming",
        ]
        assert lease.release() is True, "the first attempt deleted the record: a retry is REPLAYED"
        with pytest.raises(LeaseLostError):
            lease.ensure_held()
        entries = events(admin.xrange(keys.log))
        assert [e["event"] for e in entries] == ["claim", "state_transition", "state_transition", "error", "deregister"]
    finally:
        owner.close()
        client.close()


# -- N5: slow link during connection setup -----------------------------------------------------------------


@pytest.mark.parametrize("setup", ["no-retry", "from_url"])
def test_n5_slow_connection_setup_fails_in_bounded_time(
    proxy: FaultProxy, admin: redis.Redis, namespace: str, setup: str
) -> None:
    """N5. Expected: with every reply slower than socket_timeout / socket_connect_timeout, the
    connection handshake times out and a fresh registry's claim fails with a redis error in
    bounded time (no hang), and nothing is written. The bound is the client's own retry policy:
    the claim makes two commands (the eviction-policy check, then the claim), each of at most
    1 + retries attempts of one socket timeout plus the backoff between them (the library's
    from_url policy: 2 retries, backoff capped at 0.5 s)."""
    timeout, backoff_cap = 0.3, 0.5
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    proxy.delay_down(1.0)
    if setup == "no-retry":
        client = owner_client(proxy, "off", **timeouts)
        registry = Registry(client, namespace=namespace, **TIMING)
    else:  # the library's own client defaults, with short socket timeouts
        registry = Registry.from_url(proxy.url, client_options=timeouts, namespace=namespace, **TIMING)
        client = registry.client
    retries = client.get_retry().get_retries()
    keys = Keys(namespace, "1")
    try:
        started = time.monotonic()
        with pytest.raises(RedisError):
            registry.claim(1, "Binance")
        elapsed = time.monotonic() - started
        connections = proxy.accepted
        # The alternative is a hang, or redis-py's default of 10 retries: 1 s of allowance for a
        # loaded machine still tells them apart.
        bound = 2 * ((1 + retries) * timeout + retries * backoff_cap) + 1.0
        assert elapsed < bound, (
            f"claim took {elapsed:.2f} s (bound {bound:.2f} s for {retries} retries) over {connections} connections"
        )
        assert connections <= 2 * (1 + retries), f"{connections} connection attempts for 2 commands"
        assert wait_until(proxy.delivered, 10.0), "the proxy never delivered what it held"
        assert admin.exists(keys.status, keys.log, keys.fence) == 0, "a failed connection setup wrote something"
    finally:
        registry.close()
        client.close()


# -- P6: task cancelled while a command is in flight (asyncio) -----------------------------------------------


async def test_p6_cancel_in_flight_keeps_replies_matched(
    proxy: FaultProxy, adirect: aredis.Redis, aadmin: aredis.Redis, namespace: str
) -> None:
    """P6. Expected: cancelling transition() and set_symbol_count() while their replies are in
    flight (the server already applied them) leaves no reply behind for a later call: every
    later call gets the reply to its own request (status() returns this lease's record, get()
    of another resource returns that one, a transition returns its own new state), and the
    lease's local state is not corrupted: after the cancelled transition the next one is
    decided by Redis (no wrong local InvalidTransitionError), and lease and record agree."""
    # No heartbeat comes due during the test (the first after 5 s), however slowly it runs.
    timing = {"ttl": 15.0, "heartbeat_interval": 5.0, "renew_deadline": 10.0}
    client = async_owner_client(proxy, "off")
    owner = AsyncRegistry(client, namespace=namespace, **timing)
    other_registry = AsyncRegistry(adirect, namespace=namespace, **QUIET)
    keys = Keys(namespace, "1")
    try:
        other = await other_registry.claim(2, "Other")
        await other.set_symbol_count(777)
        lease = await owner.claim(1, "Binance")
        # The reply is held 1 s: the time the test has to see the request applied and cancel the
        # call while its reply is still in flight.
        proxy.delay_down(1.0)

        async def cancel_when(call: Awaitable[Any], field: str, value: bytes) -> None:
            task = asyncio.ensure_future(call)

            async def applied() -> bool:
                return await aadmin.hget(keys.status, field) == value

            assert await await_until(applied, 10.0), f"the request for {field}={value!r} never ran"
            assert not task.done(), "the reply was not in flight"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        async def landed() -> bool:
            return proxy.delivered()

        await cancel_when(lease.transition("starting"), "connectionState", b"starting")
        await cancel_when(lease.set_symbol_count(11), "symbolCount", b"11")
        # The cancelled calls' replies reach the client side now, if anywhere.
        assert await await_until(landed, 10.0), "the proxy never delivered what it held"
        proxy.pass_through()

        got = await owner.get(2)
        assert got is not None
        assert (got.exchange_id, got.exchange_name, got.symbol_count) == (2, "Other", 777)
        assert got.fencing_token == other.fencing_token
        assert await lease.transition("warming") == State.WARMING  # Redis decides: starting -> warming
        status = await lease.status()
        assert (status.exchange_id, status.fencing_token) == (1, lease.fencing_token)
        assert (status.connection_state, status.symbol_count) == (State.WARMING, 11)
        assert lease.state == State.WARMING
        await lease.set_symbol_count(12)
        assert (await lease.status()).symbol_count == 12
        activity = await owner.activity(1)
        assert [(e.event, e.from_state, e.to_state) for e in reversed(activity)] == [
            ("claim", None, None),
            ("state_transition", "idle", "starting"),
            ("state_transition", "starting", "warming"),
        ]
        assert await lease.release() is True
        assert await other.release() is True
    finally:
        await owner.close()
        await other_registry.close()
        await client.aclose()


async def test_p6_cancel_at_many_points_never_shifts_replies(
    proxy: FaultProxy, adirect: aredis.Redis, namespace: str
) -> None:
    """P6, cancellation at several points of a call through a link that delays both ways (the
    request may or may not have run). Expected: after each cancellation, once the held bytes
    have landed, every later reply matches its own request: status() shows this lease's record
    with either the cancelled value or the previous one, get() of another resource returns
    that resource, and a fresh update is read back exactly."""
    timing = {"ttl": 15.0, "heartbeat_interval": 5.0, "renew_deadline": 10.0}  # no beat during the test
    client = async_owner_client(proxy, "off")
    owner = AsyncRegistry(client, namespace=namespace, **timing)
    other_registry = AsyncRegistry(adirect, namespace=namespace, **QUIET)

    async def landed() -> bool:
        return proxy.delivered()

    try:
        other = await other_registry.claim(2, "Other")
        lease = await owner.claim(1, "Binance")
        previous = 0
        # Where each cancellation lands depends on the scheduler; what is checked holds wherever it does.
        for i, wait in enumerate([0.0, 0.03, 0.1, 0.16, 0.22, 0.3], start=1):
            proxy.delay_up(0.1)
            proxy.delay_down(0.1)
            task = asyncio.ensure_future(lease.set_symbol_count(i))
            await asyncio.sleep(wait)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert await await_until(landed, 10.0), "the proxy never delivered what it held"
            proxy.pass_through()
            status = await lease.status()
            assert (status.exchange_id, status.fencing_token) == (1, lease.fencing_token)
            assert status.symbol_count in (previous, i), f"round {i}: symbol count {status.symbol_count}"
            got = await owner.get(2)
            assert got is not None
            assert (got.exchange_id, got.exchange_name, got.symbol_count) == (2, "Other", 0)
            await lease.set_symbol_count(1000 + i)
            assert (await lease.status()).symbol_count == 1000 + i
            previous = 1000 + i
        assert lease.is_valid
        assert await lease.release() is True
        assert await other.release() is True
    finally:
        await owner.close()
        await other_registry.close()
        await client.aclose()
