"""Helpers shared by the fault and heartbeat tests: bounded polling, heartbeat observation,
on_lost recording and background calls. Every wait here is bounded."""

from __future__ import annotations

import asyncio
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


def wait_for_beat(admin: redis.Redis, key: str, timeout: float = HB + 1.0) -> float:
    """Wait until *key*'s lastHeartbeat changes; return the monotonic time the change was seen.
    *admin* must be allowed HGET (the worker is not)."""
    first = admin.hget(key, "lastHeartbeat")
    assert first is not None, f"{key} does not exist"
    assert wait_until(lambda: admin.hget(key, "lastHeartbeat") not in (None, first), timeout), "no heartbeat seen"
    return time.monotonic()


def assert_lost_at_deadline(at: float, acked: float) -> None:
    """A loss for "deadline" reported at *at* (monotonic) came when it should, given the last
    heartbeat write the test saw at *acked*: by renew_deadline + heartbeat_interval after it, and
    no earlier than renew_deadline after the last beat the owner *knows* was acknowledged. On a
    loaded machine the owner's read of the reply to the write the test saw can time out (its log
    then shows the failed beat): its deadline counts from the beat before, one interval earlier."""
    assert DEADLINE - HB - 0.05 <= at - acked <= DEADLINE + HB + 0.15, f"lost {at - acked:.3f} s after the last ack"


async def await_beat(admin: Any, key: str, timeout: float = HB + 1.0) -> float:
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
