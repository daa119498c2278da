"""A full lifecycle through the public API, sync and asyncio, on a private server."""

from __future__ import annotations

import msgspec
import pytest
import redis
import redis.asyncio as aredis

from pylivermore import AsyncRegistry, ClaimConflictError, Registry, State


def test_full_lifecycle_sync(client: redis.Redis, namespace: str) -> None:
    """claim -> starting -> warming -> active -> (context exit) stopping -> stopped -> deregistered."""
    registry = Registry(client, namespace=namespace, ttl=1.5, heartbeat_interval=0.5, renew_deadline=1.0)
    with registry.claim(7, "Binance") as lease:
        assert lease.state is State.IDLE
        for step in ("starting", "warming", "active"):
            assert lease.transition(step) == State(step)
        lease.set_symbol_count(120)
        status = lease.status()
        assert status.connection_state is State.ACTIVE
        assert status.connected_at is not None
        assert status.symbol_count == 120
        doc = msgspec.json.decode(msgspec.json.encode(status))
        assert doc["exchangeId"] == 7
        assert doc["ipAddress"] is None
        with pytest.raises(ClaimConflictError):
            Registry(client, namespace=namespace).claim(7, "Binance")
    assert registry.get(7) is None
    events = [(e.event, e.to_state) for e in reversed(registry.activity(7))]
    assert events == [
        ("claim", None),
        ("state_transition", "starting"),
        ("state_transition", "warming"),
        ("state_transition", "active"),
        ("state_transition", "stopping"),
        ("state_transition", "stopped"),
        ("deregister", None),
    ]


async def test_full_lifecycle_async(aclient: aredis.Redis, namespace: str) -> None:
    """The same lifecycle through AsyncRegistry."""
    registry = AsyncRegistry(aclient, namespace=namespace, ttl=1.5, heartbeat_interval=0.5, renew_deadline=1.0)
    async with await registry.claim("kraken", "Kraken") as lease:
        for step in ("starting", "warming", "active"):
            await lease.transition(step)
        assert (await lease.status()).connection_state is State.ACTIVE
    assert await registry.get("kraken") is None
    assert [e.event for e in await registry.activity("kraken")][:3] == [
        "deregister",
        "state_transition",
        "state_transition",
    ]
