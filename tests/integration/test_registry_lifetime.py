"""Registries are context managers that close what they opened: leaving ``with Registry.from_url(...)``
(``async with AsyncRegistry.from_url(...)``) closes the client ``from_url`` made, so no connection is
left open (no ``ResourceWarning: unclosed Connection``); a client passed in stays open for its owner.
Checked on the server: the connections the registry opened are gone from ``CLIENT LIST``."""

from __future__ import annotations

import redis

from pylivermore import AsyncRegistry, Registry
from pylivermore.server import RedisServer
from tests.support import await_until


def connections(admin: redis.Redis) -> set[str]:
    return {c["id"] for c in admin.client_list()}


def test_with_registry_from_url_closes_its_client(
    redis_server: RedisServer, admin: redis.Redis, namespace: str
) -> None:
    before = connections(admin)
    with Registry.from_url(redis_server.url, namespace=namespace) as registry:
        with registry.claim(1, "Coinbase") as lease:
            lease.transition("starting")
        opened = connections(admin) - before
        assert opened, "the registry's client should be connected here"
    assert not opened & connections(admin), "leaving the block left the client that from_url made open"


def test_with_registry_leaves_a_client_passed_in_open(client: redis.Redis, namespace: str) -> None:
    with Registry(client, namespace=namespace) as registry:
        registry.claim(1, "Coinbase").release()
    assert client.ping()


async def test_async_with_registry_from_url_closes_its_client(
    redis_server: RedisServer, admin: redis.Redis, namespace: str
) -> None:
    before = connections(admin)
    async with AsyncRegistry.from_url(redis_server.url, namespace=namespace) as registry:
        async with await registry.claim(1, "Coinbase") as lease:
            await lease.transition("starting")
        opened = connections(admin) - before
        assert opened, "the registry's client should be connected here"
    # aclose() disconnects at once; the server notices the closed socket on its next event loop turn.
    assert await await_until(lambda: not opened & connections(admin), 5.0), "the client from_url made is still open"
