"""A full lifecycle through the public API on every topology (standalone and cluster, sync and asyncio)."""

from __future__ import annotations

import msgspec
import pytest

from pylivermore import ClaimConflictError, State
from tests.integration.conftest import Topology, entered, io


@pytest.mark.parametrize("exchange_id", [7, "kraken"])
async def test_full_lifecycle(topology: Topology, namespace: str, exchange_id: int | str) -> None:
    """claim -> starting -> warming -> active -> (context exit) stopping -> stopped -> deregistered,
    for a numeric and a string id."""
    registry = topology.registry(namespace=namespace, ttl=1.5, heartbeat_interval=0.5, renew_deadline=1.0)
    async with entered(await io(registry.claim(exchange_id, "Binance"))) as lease:
        assert lease.state is State.IDLE
        for step in ("starting", "warming", "active"):
            assert await io(lease.transition(step)) == State(step)
        await io(lease.set_symbol_count(120))
        status = await io(lease.status())
        assert status.connection_state is State.ACTIVE
        assert status.connected_at is not None
        assert status.symbol_count == 120
        doc = msgspec.json.decode(msgspec.json.encode(status))
        assert doc["exchangeId"] == exchange_id
        assert doc["ipAddress"] is None
        with pytest.raises(ClaimConflictError):
            await io(topology.registry(namespace=namespace).claim(exchange_id, "Binance"))
    assert await io(registry.get(exchange_id)) is None
    events = [(e.event, e.to_state) for e in reversed(await io(registry.activity(exchange_id)))]
    assert events == [
        ("claim", None),
        ("state_transition", "starting"),
        ("state_transition", "warming"),
        ("state_transition", "active"),
        ("state_transition", "stopping"),
        ("state_transition", "stopped"),
        ("deregister", None),
    ]
