"""Leases without history (``log_retention=0``): every operation works as with a log, no call
writes an entry but a release's (added and trimmed at once, so that waiters wake), ``activity()``
is empty, and a resource costs at most 1.5 KiB of server memory (status and fence; the log an
empty stream after the first release). On every topology, sync and asyncio, scripts and functions.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pylivermore import ClaimConflictError
from pylivermore._keys import Keys
from tests.integration.conftest import Topology, io

#: The issue's bound on one resource's server memory (status + fence + log), bytes.
KIB_1_5 = 1536


def memory(topology: Topology, keys: Keys) -> dict[str, int]:
    """``MEMORY USAGE … SAMPLES 0`` of the resource's keys that exist."""
    admin = topology.node_admin(keys.status)
    found = {}
    for name, key in (("status", keys.status), ("log", keys.log), ("fence", keys.fence)):
        used = admin.memory_usage(key, samples=0)
        if used is not None:
            found[name] = int(used)
    return found


async def test_a_lease_without_history_writes_no_log(
    topology: Topology, namespace: str, report: Callable[[str], None]
) -> None:
    registry = topology.registry(namespace=namespace, log_retention=0)
    keys = Keys(namespace, "1")
    lease = await io(registry.claim(1, "Bare"))
    for state in ("starting", "warming", "active"):
        await io(lease.transition(state))
    await io(lease.set_symbol_count(42))
    await io(lease.record_error("feed lagging"))
    await io(lease.heartbeat())
    status = await io(registry.get(1))
    assert status is not None
    assert (status.connection_state, status.symbol_count, status.last_error) == ("active", 42, "feed lagging")
    assert status.fencing_token == lease.fencing_token
    admin = topology.node_admin(keys.status)
    assert admin.exists(keys.log) == 0, "no operation of a lease without history writes the log"
    assert await io(registry.activity(1)) == []
    with pytest.raises(ClaimConflictError):
        await io(topology.registry(namespace=namespace, log_retention=0).claim(1, "Other"))
    live = memory(topology, keys)
    assert set(live) == {"status", "fence"}
    assert sum(live.values()) <= KIB_1_5, live
    server = admin.info("server")
    where = f"{server.get('server_name', 'redis')} {server.get('valkey_version', server['redis_version'])}"
    first = f"no history, {topology.kind} {topology.transport}, {where}: MEMORY USAGE status + fence "
    first += f"{sum(live.values())} B"
    assert await io(lease.release())
    assert admin.exists(keys.status) == 0
    assert admin.xlen(keys.log) == 0, "the release's entry is trimmed as it is added"
    assert await io(registry.activity(1)) == []
    again = await io(registry.claim(1, "Bare"))
    assert again.fencing_token > lease.fencing_token
    live = memory(topology, keys)
    assert set(live) == {"status", "fence", "log"}
    assert sum(live.values()) <= KIB_1_5, live
    if not topology.is_async:
        report(f"{first}; after a release and a new claim, with the empty log {sum(live.values())} B (≤ {KIB_1_5})")
    assert await io(registry.force_release(1, "drain")) == again.fencing_token
    assert admin.xlen(keys.log) == 0


async def test_history_is_per_lease(topology: Topology, namespace: str) -> None:
    """A lease with history after one without: its own entries are logged; an operator's
    force_release follows the lease's mode, whatever the operator's registry keeps."""
    bare = topology.registry(namespace=namespace, log_retention=0)
    logged = topology.registry(namespace=namespace)
    assert await io((await io(bare.claim(1, "Bare"))).release())
    lease = await io(logged.claim(1, "Logged"))
    await io(lease.transition("starting"))
    assert await io(bare.force_release(1, "drain")) == lease.fencing_token
    events = [entry.event for entry in await io(logged.activity(1))]
    assert events == ["force_release", "state_transition", "claim"]
