"""``claim(..., wait=seconds)`` / ``try_claim(..., wait=...)``: a waiter blocks on the resource's
activity log and takes the resource within moments of a release or ``force_release``, or once a
dead holder's record expires; when the wait runs out it fails as a plain claim does. On every
topology (standalone and cluster; sync and asyncio; scripts and functions).

Bounds come from events (the waiter seen blocked on the server, the record's PTTL), not from
wall time alone: each wait below is only a give-up.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from pylivermore import ClaimConflictError
from pylivermore._keys import Keys
from tests.integration.conftest import Topology, io
from tests.support import await_until

#: How long a wait for something that must happen goes on before giving up (not a bound on the library).
GIVE_UP = 10.0
#: A holder whose TTL is far beyond GIVE_UP: only a release can explain a waiter getting it in time.
LONG = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}
#: A holder that, once its heartbeat stops, expires soon.
SHORT = {"ttl": 1.5, "heartbeat_interval": 0.5, "renew_deadline": 1.0}
STANDALONE = ["standalone-sync", "standalone-async", "standalone-sync-functions"]
#: Leases with their activity log (the default) or without history (log_retention=0: no entries;
#: a release adds one and trims it at once, which still wakes a blocked waiter).
HISTORY = {"kept": {}, "none": {"log_retention": 0}}


async def empty_log(registry: Any) -> None:
    """A lease without history claimed and released: resource 1's log exists, empty, its last id > 0."""
    lease = await io(registry.claim(1, "Before"))
    await io(lease.release())


def start_claim(topology: Topology, registry: Any, method: str = "claim", **options: Any) -> asyncio.Task[Any]:
    """*registry*.claim(1, "Waiter", **options) running: a task (asyncio) or a thread (sync)."""
    call = getattr(registry, method)
    if topology.is_async:
        return asyncio.create_task(call(1, "Waiter", **options))
    return asyncio.create_task(asyncio.to_thread(call, 1, "Waiter", **options))


def blocked_on_log(topology: Topology, namespace: str) -> bool:
    """Whether a client is blocked in XREAD on the server holding the resource's log."""
    admin = topology.node_admin(Keys(namespace, "1").log)
    return any(c.get("cmd") == "xread" and "b" in c.get("flags", "") for c in admin.client_list())


async def waiting(topology: Topology, namespace: str, task: asyncio.Task[Any]) -> None:
    assert await await_until(lambda: blocked_on_log(topology, namespace) or task.done(), GIVE_UP)
    assert not task.done(), f"the waiter ended without waiting: {task.result()!r}"


def commandstats(topology: Topology) -> dict[str, int]:
    info = topology.masters()[0].info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


@pytest.mark.parametrize("history", list(HISTORY))
@pytest.mark.parametrize("how", ["release", "force_release"])
async def test_waiter_gets_the_lease_when_the_holder_lets_go(
    topology: Topology, namespace: str, how: str, history: str
) -> None:
    """A waiter blocked on a resource held for 30 s takes it right after `lease.release()` (which
    logs transitions, then `deregister`) or an operator's `force_release`, with a higher token;
    also when the leases keep no history (the release's entry is trimmed as it is added)."""
    holder_registry = topology.registry(namespace=namespace, **LONG, **HISTORY[history])
    waiter_registry = topology.registry(namespace=namespace, **LONG, **HISTORY[history])
    if history == "none":
        await empty_log(holder_registry)
    holder = await io(holder_registry.claim(1, "Holder"))
    task = start_claim(topology, waiter_registry, wait=GIVE_UP)
    await waiting(topology, namespace, task)
    if how == "release":
        await io(holder.release())
    else:
        await io(holder_registry.force_release(1, "test"))
    # GIVE_UP is a third of the holder's TTL: only the release lets the waiter in before it ends.
    lease = await asyncio.wait_for(task, GIVE_UP)
    assert lease.fencing_token > holder.fencing_token
    status = await io(waiter_registry.get(1))
    assert status is not None
    assert status.fencing_token == lease.fencing_token
    assert status.exchange_name == "Waiter"
    if history == "none":
        assert await io(waiter_registry.activity(1)) == []
    await io(lease.release())


async def test_waiter_takes_over_after_a_dead_holder_expires(topology: Topology, namespace: str) -> None:
    """A holder that stops renewing writes nothing to the log: the waiter takes the resource
    when the record expires, not before (PTTL read after the heartbeat stopped) and not long after."""
    holder_registry = topology.registry(namespace=namespace, **SHORT)
    waiter_registry = topology.registry(namespace=namespace, **SHORT)
    holder = await io(holder_registry.claim(1, "Holder"))
    await io(holder_registry.close())  # the heartbeat stops: the record runs out its TTL
    status_key = Keys(namespace, "1").status
    before = time.monotonic()
    pttl = topology.admin.pttl(status_key)
    assert pttl > 0, "the record expired before the waiter started: the test proves nothing"
    topology.reset_stats()
    task = start_claim(topology, waiter_registry, wait=GIVE_UP)
    lease = await asyncio.wait_for(task, SHORT["ttl"] + GIVE_UP)
    got_at = time.monotonic()
    assert got_at >= before + pttl / 1000 - 0.002, "the waiter got the resource before the record expired"
    assert lease.fencing_token > holder.fencing_token
    if not topology.is_cluster:  # it slept through the TTL: a few calls, not a poll every few ms
        stats = commandstats(topology)
        assert stats.get("evalsha", 0) + stats.get("fcall", 0) <= 4, stats
        assert stats.get("xread", 0) <= 3, stats
    await io(lease.release())


async def test_wait_runs_out(topology: Topology, namespace: str) -> None:
    """When *wait* passes with the resource still held: claim raises ClaimConflictError (naming
    the holder), try_claim answers None, and neither returns before the wait is over."""
    holder_registry = topology.registry(namespace=namespace, **LONG)
    waiter_registry = topology.registry(namespace=namespace, **LONG)
    holder = await io(holder_registry.claim(1, "Holder"))
    started = time.monotonic()
    with pytest.raises(ClaimConflictError) as info:
        await io(waiter_registry.claim(1, "Waiter", wait=0.3))
    assert time.monotonic() - started >= 0.3
    assert info.value.holder is not None
    assert info.value.holder.exchange_name == "Holder"
    assert info.value.ttl > 0
    started = time.monotonic()
    assert await io(waiter_registry.try_claim(1, "Waiter", wait=0.3)) is None
    assert time.monotonic() - started >= 0.3
    await io(holder.release())


@pytest.mark.parametrize("history", list(HISTORY))
@pytest.mark.parametrize("topology", STANDALONE, indirect=True)
async def test_wait_makes_few_round_trips(topology: Topology, namespace: str, history: str) -> None:
    """Waiting 0.3 s twice on a held resource: a handful of claim attempts and XREADs, no polling;
    without history too, where the log is empty (an XREAD from 0-0 there would not block on Redis
    6.2: the waiter starts from the log's last generated id)."""
    holder_registry = topology.registry(namespace=namespace, **LONG, **HISTORY[history])
    waiter_registry = topology.registry(namespace=namespace, **LONG, **HISTORY[history])
    if history == "none":
        await empty_log(holder_registry)
    holder = await io(holder_registry.claim(1, "Holder"))
    await io(waiter_registry.get(1))  # the registry's first-use check is done
    topology.reset_stats()
    with pytest.raises(ClaimConflictError):
        await io(waiter_registry.claim(1, "Waiter", wait=0.3))
    assert await io(waiter_registry.try_claim(1, "Waiter", wait=0.3)) is None
    stats = commandstats(topology)
    attempts = stats.get("evalsha", 0) + stats.get("fcall", 0)
    assert 2 <= attempts <= 6, stats
    assert 1 <= stats.get("xread", 0) <= 4, stats
    assert stats.get("xrevrange", 0) <= 6, stats
    assert stats.get("xinfo|stream", stats.get("xinfo", 0)) <= (6 if history == "none" else 0), stats
    await io(holder.release())


@pytest.mark.parametrize(
    ("wait", "error"),
    [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError), (True, TypeError)],
)
@pytest.mark.parametrize("topology", STANDALONE, indirect=True)
async def test_bad_wait_is_refused_before_any_round_trip(
    topology: Topology, namespace: str, wait: Any, error: type[Exception]
) -> None:
    registry = topology.registry(namespace=namespace, **LONG)
    topology.reset_stats()
    for method in (registry.claim, registry.try_claim):
        with pytest.raises(error, match="wait must be"):
            await io(method(1, "Waiter", wait=wait))
    stats = commandstats(topology)
    sent = {name for name in stats if not name.startswith(("info", "config"))}
    assert not sent, f"a bad wait still sent {sorted(sent)}"
