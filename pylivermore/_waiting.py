"""``claim(..., wait=seconds)``: when to block on the activity log, for how long, and when to give up.

Pure decisions, shared by both drivers (they only send ``XREVRANGE`` / the claim / ``XREAD``).
A waiter reads the log's newest entry id *before* each claim attempt; on conflict it blocks
(``XREAD BLOCK <ms> STREAMS <log> <id>``) until a newer entry appears (a ``deregister`` or
``force_release`` among them) or the holder's record should have expired, then tries again.
An empty log (a lease without history: its release adds an entry and trims it at once) has no
newest entry: its last generated id (``XINFO STREAM``) takes that place, so that a release between
the attempt and the block still ends the block at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

#: Blocked this much past the holder's PTTL, so that the record is gone when the waiter retries.
EXPIRY_MARGIN_MS = 5

#: A block stays this far below the client's socket timeout (at most half of it), so that
#: redis-py never times out a read the server is still, rightly, blocking.
SOCKET_MARGIN_MS = 250

#: Longest pause between attempts when the holder should have expired but has not (a record
#: without TTL, a clock oddity): the pause doubles from :data:`EXPIRY_MARGIN_MS` up to this.
MAX_BACKOFF_MS = 1000

#: Where a log with no entries starts: any entry is newer.
NO_ENTRY = "0-0"

#: ``standby()`` waits in rounds of this many seconds (a waiting claim each), looking at its
#: *stop* event between rounds: a stop is seen within one round.
STANDBY_ROUND = 5.0


def wait_seconds(wait: float) -> float:
    """*wait* validated: a finite number of seconds, at least 0 (``0``: do not wait)."""
    if isinstance(wait, bool) or not isinstance(wait, int | float):
        raise TypeError(f"wait must be a number of seconds, not {type(wait).__name__}")
    if not math.isfinite(wait) or wait < 0:
        raise ValueError(f"wait must be a finite number of seconds, at least 0, not {wait!r}")
    return float(wait)


def standby_round(check_every: float) -> float:
    """*check_every* of ``standby()`` validated: a finite number of seconds above 0."""
    if isinstance(check_every, bool) or not isinstance(check_every, int | float):
        raise TypeError(f"check_every must be a number of seconds, not {type(check_every).__name__}")
    if not math.isfinite(check_every) or check_every <= 0:
        raise ValueError(f"check_every must be a finite number of seconds above 0, not {check_every!r}")
    return float(check_every)


def newest_id(reply: object) -> bytes | str:
    """The id of ``XREVRANGE <log> + - COUNT 1``'s entry, or :data:`NO_ENTRY` for an empty log."""
    if isinstance(reply, Sequence) and reply:
        entry = reply[0]
        if isinstance(entry, Sequence) and entry and isinstance(entry[0], bytes | str):
            return entry[0]
    return NO_ENTRY


def last_generated_id(reply: object) -> bytes | str:
    """The ``last-generated-id`` of redis-py's ``XINFO STREAM`` reply, or :data:`NO_ENTRY`."""
    if isinstance(reply, dict):
        for key in ("last-generated-id", b"last-generated-id"):
            value = reply.get(key)
            if isinstance(value, bytes | str):
                return value
    return NO_ENTRY


def got_entry(reply: object) -> bool:
    """Whether ``XREAD``'s reply holds an entry (``None`` / empty: the block timed out)."""
    return bool(reply)


def socket_timeout_of(connection_kwargs: object) -> float | None:
    """The ``socket_timeout`` in a client's connection options, if any."""
    if not isinstance(connection_kwargs, dict):
        return None
    timeout = connection_kwargs.get("socket_timeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and math.isfinite(timeout) and timeout > 0:
        return float(timeout)
    return None


class ClaimWait:
    """One ``claim(..., wait=...)``'s waiting: after each conflict, :meth:`block_ms` answers how
    many milliseconds to block on the log (``None``: the wait is over, give up); after each block
    :meth:`woke` says whether it ended with a new entry.

    *clock* is the registry's monotonic clock, *wait* the validated seconds, *socket_timeout*
    the client's (``None``: no limit on a block but the wait and the holder's TTL).
    """

    __slots__ = ("_backoff_ms", "_cap_ms", "_clock", "_deadline", "_expected_expiry")

    def __init__(self, clock: Callable[[], float], wait: float, socket_timeout: float | None) -> None:
        self._clock = clock
        self._deadline = clock() + wait
        self._cap_ms: int | None = None
        if socket_timeout is not None:
            timeout_ms = socket_timeout * 1000
            self._cap_ms = max(1, math.floor(timeout_ms - min(SOCKET_MARGIN_MS, timeout_ms / 2)))
        self._backoff_ms = EXPIRY_MARGIN_MS
        self._expected_expiry: bool = False

    def block_ms(self, holder_ttl: float) -> int | None:
        """After a conflict whose holder has *holder_ttl* seconds left: how long to block, or
        ``None`` when the wait is over."""
        left_ms = (self._deadline - self._clock()) * 1000
        if left_ms <= 0:
            return None
        ttl_ms = max(0.0, holder_ttl * 1000)
        if self._expected_expiry and ttl_ms <= EXPIRY_MARGIN_MS:
            # The last block outlasted the holder's TTL, yet it still holds with (nearly) none left:
            # back off rather than retry every few milliseconds.
            self._backoff_ms = min(self._backoff_ms * 2, MAX_BACKOFF_MS)
        else:
            self._backoff_ms = EXPIRY_MARGIN_MS
        until_expiry = max(ttl_ms + EXPIRY_MARGIN_MS, self._backoff_ms)
        ms = min(left_ms, until_expiry)
        if self._cap_ms is not None:
            ms = min(ms, self._cap_ms)
        self._expected_expiry = ms >= until_expiry
        return max(1, math.ceil(ms))

    def woke(self, entry: bool) -> None:
        """The block ended: with a new log entry (*entry*) or by its timeout."""
        if entry:
            self._expected_expiry = False
