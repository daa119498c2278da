"""What every implementation of the contention benchmark shares: the interface, the client
settings, the lifecycle, the lease timings and the clock-based helpers.

An implementation is a class built once per worker process as ``Impl(client, namespace)`` on
one ``redis.asyncio.Redis`` client (a pool shared by the process's worker tasks). It offers::

    handle = await impl.claim(rid, worker)   # None: held by someone else (a conflict)
    await handle.transition("starting")      # ... the lifecycle
    await handle.heartbeat()
    await handle.release()
    handle.fencing_token                     # int, or None where the implementation has none
    await impl.close()

An owner operation raises :class:`Lost` when the implementation *notices* that the resource is
no longer held by the caller. Implementations that check nothing never raise it: that is what
the invariant check is for.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Protocol

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import TRANSITIONS

#: Lease duration in whole seconds (the seed's ``SET … EX`` takes whole seconds). Long enough
#: that no lease runs out during a healthy run: a loss would be a bug, not a timing artefact.
TTL = 10
TTL_MS = TTL * 1000
#: Log entries older than this are trimmed (``XADD … MINID ~``), as the seed's 90 days.
RETENTION_MS = 90 * 86400 * 1000

#: The lifecycle every worker walks once it holds a resource; ``HEARTBEATS`` renewals sit in
#: the middle, in ``active``.
UP = ("starting", "warming", "active")
DOWN = ("stopping", "stopped")
HEARTBEATS = 3

#: The seed's state table, as plain strings (for the implementations that validate in memory).
EDGES: dict[str, frozenset[str]] = {str(a): frozenset(str(b) for b in bs) for a, bs in TRANSITIONS.items()}

#: Same connection settings for every implementation: retries off (a retried non-idempotent
#: command would distort both the figures and the invariant), the same socket timeouts.
SOCKET_TIMEOUT = 5.0


class Lost(Exception):
    """The implementation noticed that the caller no longer holds the resource."""


class BadTransition(Exception):
    """A transition refused by the state table (never happens on the benchmark's lifecycle)."""


class Handle(Protocol):
    fencing_token: int | None

    async def transition(self, to: str) -> None: ...

    async def heartbeat(self) -> None: ...

    async def release(self) -> None: ...


class Impl(Protocol):
    name: str

    async def claim(self, rid: int, worker: int) -> Handle | None: ...

    async def close(self) -> None: ...


def client_options(retry: Any) -> dict[str, Any]:
    return {"retry": retry, "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT}


def async_client(url: str) -> aredis.Redis:
    return aredis.Redis.from_url(url, **client_options(AsyncRetry(NoBackoff(), 0)))


def sync_client(url: str, **extra: Any) -> redis.Redis:
    return redis.Redis.from_url(url, **{**client_options(Retry(NoBackoff(), 0)), **extra})


def iso_now() -> str:
    """This process's wall clock, ISO-8601 UTC with milliseconds (the seed's format)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def log_minid() -> str:
    """The ``MINID`` for ``XADD … MINID ~``: now minus the retention, in milliseconds."""
    return str(int(time.time() * 1000) - RETENTION_MS)


def check_edge(current: str, to: str) -> None:
    if to not in EDGES.get(current, frozenset()):
        raise BadTransition(f"{current} -> {to} is not an edge of the state table")
