"""The decisions of ``claim(..., wait=...)`` (pylivermore._waiting), on an injected clock: no server."""

from __future__ import annotations

import itertools
import math

import pytest

from pylivermore._waiting import (
    EXPIRY_MARGIN_MS,
    MAX_BACKOFF_MS,
    NO_ENTRY,
    ClaimWait,
    got_entry,
    newest_id,
    socket_timeout_of,
    wait_seconds,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("value", [0, 0.0, 1, 2.5, 1e6])
def test_wait_accepts_finite_non_negative_numbers(value: float) -> None:
    assert wait_seconds(value) == float(value)


@pytest.mark.parametrize("value", [-0.001, -1, math.inf, -math.inf, math.nan])
def test_wait_refuses_negative_and_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="wait must be a finite number"):
        wait_seconds(value)


@pytest.mark.parametrize("value", [True, "1", None, [1]])
def test_wait_refuses_non_numbers(value: object) -> None:
    with pytest.raises(TypeError, match="wait must be a number of seconds"):
        wait_seconds(value)  # type: ignore[arg-type]


def test_block_until_holder_expiry_plus_margin() -> None:
    clock = Clock()
    waiter = ClaimWait(clock, 10.0, None)
    assert waiter.block_ms(1.5) == 1500 + EXPIRY_MARGIN_MS
    assert ClaimWait(clock, 10.0, None).block_ms(0.0004) == 1 + EXPIRY_MARGIN_MS  # rounded up


def test_block_bounded_by_time_left() -> None:
    clock = Clock()
    waiter = ClaimWait(clock, 2.0, None)
    assert waiter.block_ms(30.0) == 2000
    clock.now += 1.5
    assert waiter.block_ms(30.0) == 500
    clock.now += 0.4999
    assert waiter.block_ms(30.0) == 1  # at least 1 ms (0 would block forever)


def test_gives_up_when_the_wait_is_over() -> None:
    clock = Clock()
    waiter = ClaimWait(clock, 0.3, None)
    clock.now += 0.3
    assert waiter.block_ms(30.0) is None
    clock.now += 5
    assert waiter.block_ms(0.0) is None


def test_block_stays_below_the_socket_timeout() -> None:
    clock = Clock()
    assert ClaimWait(clock, 60.0, 5.0).block_ms(30.0) == 4750
    assert ClaimWait(clock, 60.0, 0.1).block_ms(30.0) == 50  # margin at most half the timeout
    assert ClaimWait(clock, 60.0, 0.001).block_ms(30.0) == 1
    assert ClaimWait(clock, 60.0, 5.0).block_ms(1.0) == 1000 + EXPIRY_MARGIN_MS


def test_timeout_before_expiry_keeps_waiting_without_backoff() -> None:
    """A block cut short by the socket timeout: the holder's TTL is not reached, wait again for it."""
    clock = Clock()
    waiter = ClaimWait(clock, 60.0, 1.0)
    assert waiter.block_ms(3.0) == 750
    clock.now += 0.75
    waiter.woke(False)
    assert waiter.block_ms(2.25) == 750
    clock.now += 0.75
    waiter.woke(False)
    assert waiter.block_ms(1.5) == 750
    clock.now += 0.75
    waiter.woke(False)
    assert waiter.block_ms(0.75) == 750  # 755 would pass the cap
    clock.now += 0.75
    waiter.woke(False)
    assert waiter.block_ms(0.0) == EXPIRY_MARGIN_MS  # not expired yet by a hair: a short block, no backoff


def test_never_spins_on_a_holder_that_does_not_expire() -> None:
    """A record whose TTL is reached but that still holds (no TTL, clock oddities): the pauses
    double up to MAX_BACKOFF_MS instead of retrying every few milliseconds."""
    clock = Clock()
    waiter = ClaimWait(clock, 600.0, None)
    blocks = []
    for _ in range(12):
        ms = waiter.block_ms(0.0)
        assert ms is not None
        blocks.append(ms)
        clock.now += ms / 1000
        waiter.woke(False)
    assert blocks[0] == EXPIRY_MARGIN_MS
    assert all(b >= a for a, b in itertools.pairwise(blocks))
    assert blocks[-1] == MAX_BACKOFF_MS
    assert sum(blocks) > 5000  # 12 attempts over more than 5 s, not 12 in 60 ms


def test_an_entry_resets_the_backoff() -> None:
    clock = Clock()
    waiter = ClaimWait(clock, 600.0, None)
    for _ in range(5):
        ms = waiter.block_ms(0.0)
        assert ms is not None
        waiter.woke(False)
    assert ms > EXPIRY_MARGIN_MS
    waiter.woke(True)  # a release (the holder came back and left): a fresh start
    assert waiter.block_ms(0.0) == EXPIRY_MARGIN_MS
    waiter.woke(False)
    assert waiter.block_ms(10.0) == 10000 + EXPIRY_MARGIN_MS  # a new, live holder: wait for it


def test_newest_id_and_got_entry() -> None:
    assert newest_id([]) == NO_ENTRY
    assert newest_id(None) == NO_ENTRY
    assert newest_id([(b"17-0", {b"type": b"claim"})]) == b"17-0"
    assert newest_id([["18-1", {"type": "claim"}]]) == "18-1"
    assert not got_entry(None)
    assert not got_entry([])
    assert not got_entry({})
    assert got_entry([[b"k", [(b"19-0", {})]]])
    assert got_entry({b"k": [[(b"19-0", {})]]})


def test_socket_timeout_of() -> None:
    assert socket_timeout_of({"socket_timeout": 5.0}) == 5.0
    assert socket_timeout_of({"socket_timeout": 2}) == 2.0
    assert socket_timeout_of({"socket_timeout": None}) is None
    assert socket_timeout_of({}) is None
    assert socket_timeout_of(None) is None
    assert socket_timeout_of({"socket_timeout": math.inf}) is None
