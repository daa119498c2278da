"""Helpers shared by the fault and heartbeat tests: bounded polling, heartbeat observation,
on_lost recording, background calls, an owner clock that can be asked about any instant, and
the expiry of a key. Every wait here is bounded.

On timing (CI machines are shared: two cores and other processes compete): no assertion may
depend on how promptly this process's threads are scheduled. A poll's timeout is a give-up
bound, not a measurement; bounds come from the injected clock (:class:`OwnerClock`), from
events (a write seen on the server, a PTTL read, a reply) and from the configured intervals.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from pylivermore import Lease

#: The short timings the fault tests use (same ratios as the defaults 45 / 15 / 30 s).
TTL, HB, DEADLINE = 1.5, 0.5, 1.0


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.005) -> bool:
    """Poll *predicate* until it is true (True) or *timeout* seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def await_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.005) -> bool:
    """Like :func:`wait_until`, letting the event loop (and a registry's heartbeat task) run;
    *predicate* may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def wait_for_beat(admin: redis.Redis, key: str, timeout: float = HB + 5.0) -> float:
    """Wait until *key*'s lastHeartbeat changes; return the monotonic time the change was seen.
    *admin* must be allowed HGET (the worker is not). *timeout* only bounds the wait: a heartbeat
    thread that a loaded machine runs late still counts."""
    first = admin.hget(key, "lastHeartbeat")
    assert first is not None, f"{key} does not exist"
    assert wait_until(lambda: admin.hget(key, "lastHeartbeat") not in (None, first), timeout), "no heartbeat seen"
    return time.monotonic()


def assert_lost_at_deadline(
    at: float, acked: float, *, silenced: float | None = None, entitled: float | None = None
) -> None:
    """A loss for "deadline" reported at *at* (monotonic) came when it should, given the last
    heartbeat write the test saw at *acked*: no earlier than renew_deadline after the last beat the
    owner *knows* was acknowledged, and by renew_deadline + heartbeat_interval after *silenced*,
    the instant by which the server had stopped answering (default: *acked*; a test that is slow
    to silence the server after seeing the write lets later beats be acknowledged, so it passes
    the instant it knows the server went quiet).

    "No earlier" is exact with *entitled*: the owner's deadline read through its injected clock
    right before the server was silenced (:meth:`OwnerClock.deadline_now`); the deadline can only
    move later after that. Without it, it is judged from *acked*: on a loaded machine the owner's
    read of the reply to the write the test saw can time out (its log then shows the failed
    beat), and its deadline counts from the beat before, one interval earlier."""
    quiet = acked if silenced is None else silenced
    if entitled is not None:
        assert at >= entitled, f"lost {entitled - at:.3f} s before the owner's deadline"
    else:
        assert at - acked >= DEADLINE - HB - 0.05, f"lost {at - acked:.3f} s after the last ack seen"
    assert at - quiet <= DEADLINE + HB + 0.15, f"lost {at - quiet:.3f} s after the server went quiet"


async def await_beat(admin: Any, key: str, timeout: float = HB + 5.0) -> float:
    """:func:`wait_for_beat` for asyncio tests; *admin* may be a sync or an asyncio client."""

    async def read() -> object:
        value = admin.hget(key, "lastHeartbeat")
        return await value if inspect.isawaitable(value) else value

    first = await read()
    assert first is not None, f"{key} does not exist"

    async def changed() -> bool:
        return (await read()) not in (None, first)

    assert await await_until(changed, timeout), "no heartbeat seen"
    return time.monotonic()


def iso_ms(text: bytes | str) -> int:
    """Milliseconds since the epoch of a record's ISO-8601 timestamp (``lastHeartbeat``, ...)."""
    value = text.decode() if isinstance(text, bytes) else text
    return round(datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


class OwnerClock:
    """An owner's monotonic clock (pass it as ``Registry(clock=...)``) that runs at *rate* x real
    time, and lets the test ask whether a lease is valid at a given real instant.

    ``is_valid`` reads only this clock and the lease's deadline, and the deadline changes only when
    a renewal is acknowledged. :meth:`valid_at` pins the clock, for the calling thread only (a
    heartbeat thread still reads the running clock), to the owner's reading at a real instant and
    reads ``is_valid``: whether the owner was entitled to act at instant *t*, exactly, however late
    the test's own thread runs. Polling ``is_valid`` instead measures the poll's lateness too.
    Ask about instants after the last renewal the lease could get (the registry closed, or the
    server unreachable), or the answer reflects a deadline extended later."""

    def __init__(self, rate: float = 1.0) -> None:
        self.rate = rate
        self.origin = time.monotonic()
        self._pinned = threading.local()

    def at(self, real: float) -> float:
        """The owner's reading at real monotonic instant *real*."""
        return self.origin + (real - self.origin) * self.rate

    def real(self, owner: float) -> float:
        """The real monotonic instant at which the owner's clock reads *owner*."""
        return self.origin + (owner - self.origin) / self.rate

    def __call__(self) -> float:
        pinned: float | None = getattr(self._pinned, "value", None)
        return self.at(time.monotonic()) if pinned is None else pinned

    def valid_at(self, lease: Lease | Any, real: float) -> bool:
        """``lease.is_valid`` as the owner would have computed it at real instant *real*."""
        self._pinned.value = self.at(real)
        try:
            return bool(lease.is_valid)
        finally:
            self._pinned.value = None

    def deadline_now(self, lease: Lease | Any, renew_deadline: float = DEADLINE) -> float:
        """The real instant at which *lease* would stop being valid if no renewal were
        acknowledged from now on: a lower bound of when it can be lost (an acknowledgement still
        in flight only moves it later). Read it while the lease is valid."""
        now = time.monotonic()
        return self.deadline(lease, now, now + renew_deadline / self.rate + 1.0)

    def deadline(self, lease: Lease | Any, valid: float, invalid: float) -> float:
        """The real instant at which *lease* stops being valid (to 1 µs), given a real instant
        *valid* at which it is valid and a later one, *invalid*, at which it is not."""
        assert self.valid_at(lease, valid), "the lease is not valid at the start of the search"
        assert not self.valid_at(lease, invalid), "the lease is still valid at the end of the search"
        while invalid - valid > 1e-6:
            middle = (valid + invalid) / 2
            if self.valid_at(lease, middle):
                valid = middle
            else:
                invalid = middle
        return invalid


def _credit_mark(admin: redis.Redis, key: str) -> float:
    earliest, _ = expiry_window(admin, key, reads=2)
    # The latest beat ran at about earliest - TTL. Acknowledged, it put the deadline renew_deadline
    # after its send (at most a few ms before it ran); if its reply was lost, the deadline is one
    # interval earlier. Half an interval between the two tells them apart.
    return earliest - (TTL - DEADLINE) - HB / 2


def wait_for_credited_beat(admin: redis.Redis, key: str, lease: Lease | Any, clock: OwnerClock) -> float:
    """Wait for a heartbeat that the owner of *lease* (on *clock*, with the shared timings TTL, HB,
    DEADLINE) has acknowledged, not only one the server applied (its reply can be slow, or lost
    to a fault injected right after the write was seen); return a real instant at which the
    lease is valid thanks to it. A fault injected after this returns cannot take that renewal
    back."""
    for _ in range(10):
        wait_for_beat(admin, key)
        mark = _credit_mark(admin, key)
        if wait_until(lambda mark=mark: clock.valid_at(lease, mark), HB):
            return mark
    raise AssertionError("no heartbeat was acknowledged by the owner in 10 intervals")


async def await_credited_beat(admin: redis.Redis, key: str, lease: Lease | Any, clock: OwnerClock) -> float:
    """:func:`wait_for_credited_beat` for asyncio owners (*admin* is a sync client: its short reads
    block the loop only briefly)."""
    for _ in range(10):
        await await_beat(admin, key)
        mark = _credit_mark(admin, key)
        if await await_until(lambda mark=mark: clock.valid_at(lease, mark), HB):
            return mark
    raise AssertionError("no heartbeat was acknowledged by the owner in 10 intervals")


def expiry_window(admin: redis.Redis, key: str, reads: int = 5) -> tuple[float, float]:
    """(earliest, latest) monotonic instant at which *key* expires, from *reads* PTTL reads.

    Each read brackets the expiry between (sent + PTTL) and (reply + PTTL + 1 ms): the server
    reads its clock in whole milliseconds somewhere between the two. The brackets of the reads
    are intersected, so a read that a loaded machine delayed only makes its own bracket wider.
    A renewal between two reads moves the expiry later: the brackets from then on are kept. (A
    renewal after the last read moves it later still: *earliest* stays a lower bound.)"""
    earliest, latest = float("-inf"), float("inf")
    for _ in range(reads):
        sent = time.monotonic()
        pttl = admin.pttl(key)
        replied = time.monotonic()
        assert pttl > 0, f"{key} has no TTL left ({pttl})"
        low, high = sent + pttl / 1000, replied + (pttl + 1) / 1000
        if low > latest:  # renewed since the reads before
            earliest, latest = low, high
        else:
            earliest, latest = max(earliest, low), min(latest, high)
    return earliest, latest


class RoundTrips:
    """Counts the connections a client takes from its pool: every command and every pipeline
    takes one, so an unchanged :attr:`count` proves a call made no round trip, however long a
    loaded machine made it take (timing a call cannot tell a local refusal from a loopback
    round trip). Works for ``redis.Redis`` and ``redis.asyncio.Redis`` clients (not
    ``single_connection_client``)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        pool = client.connection_pool
        original = pool.get_connection
        if inspect.iscoroutinefunction(original):

            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                self.count += 1
                return await original(*args, **kwargs)

            pool.get_connection = counted_async
        else:

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.count += 1
                return original(*args, **kwargs)

            pool.get_connection = counted


class LossLog:
    """An on_lost callback that records when it ran and with which reason."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    def __call__(self, lease: Lease | Any) -> None:
        self.calls.append((time.monotonic(), lease.lost_reason))

    @property
    def reasons(self) -> list[str | None]:
        return [reason for _, reason in self.calls]


class Background:
    """Run *fn* in a daemon thread; keep its result or exception and when it finished."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._run, name="chaos-background", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"background call still running after {timeout} s"
