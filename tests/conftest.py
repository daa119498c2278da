"""Test fixtures: private redis-server processes (never a shared server), clients with
retries off, and a random namespace per test so tests never see each other's keys."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore.server import RedisServer, find_server_binary

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "unit" not in Path(str(item.fspath)).relative_to(HERE).parts:
            item.add_marker(pytest.mark.redis)


def _require_binary() -> None:
    if find_server_binary() is None:
        message = "no redis-server on PATH (install redis-server or set PYLIVERMORE_REDIS_SERVER)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must never go green by skipping
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private server for the session; tests keep apart through their namespace."""
    _require_binary()
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_server() -> Iterator[RedisServer]:
    """A private server of this test's own, for tests that kill, pause or reconfigure it."""
    _require_binary()
    with RedisServer() as server:
        yield server


def make_client(server: RedisServer, **kwargs: object) -> redis.Redis:
    """A client with retries off, so that a test sees exactly the calls it makes."""
    options: dict[str, object] = {"socket_timeout": 5.0, "retry": Retry(NoBackoff(), 0)}
    options.update(kwargs)
    return redis.Redis.from_url(server.url, **options)  # type: ignore[arg-type]


def make_async_client(server: RedisServer, **kwargs: object) -> aredis.Redis:
    from redis.asyncio.retry import Retry as AsyncRetry

    options: dict[str, object] = {"socket_timeout": 5.0, "retry": AsyncRetry(NoBackoff(), 0)}
    options.update(kwargs)
    return aredis.Redis.from_url(server.url, **options)  # type: ignore[arg-type]


@pytest.fixture
def namespace() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = make_client(redis_server)
    yield c
    c.close()


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = make_async_client(redis_server)
    yield c
    await c.aclose()
