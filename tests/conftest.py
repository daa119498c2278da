"""Test fixtures: private redis-server processes (never a shared server), clients with
retries off, and a random namespace per test so tests never see each other's keys."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import acl
from pylivermore.server import RedisServer, find_server_binary
from tests.topology import ClusterSet, SentinelSet

HERE = Path(__file__).parent

#: Every private server of the suite gets two users: ``default``, the least-privilege worker
#: (exactly ``pylivermore.acl.WORKER_COMMANDS``, on every key so that tests may pick their
#: namespace), which every client without credentials uses, the library's included; and
#: ``admin``, for the tests' own setup and inspection (DUMP, CONFIG, DEBUG, SCRIPT FLUSH ...).
#: Set PYLIVERMORE_TEST_ACL=0 to run without users.
ADMIN_USER, ADMIN_PASSWORD = "admin", "pylivermore-test-admin"
ACL_ARGS = " ".join(
    [
        "--user default on nopass resetkeys ~* resetchannels -@all",
        *(f"+{c}" for c in acl.WORKER_COMMANDS),
        f"--user {ADMIN_USER} on >{ADMIN_PASSWORD} ~* &* +@all",
    ]
)
ACL_MODE = os.environ.get("PYLIVERMORE_TEST_ACL", "1") != "0"
if ACL_MODE:
    os.environ["PYLIVERMORE_REDIS_ARGS"] = ACL_ARGS  # inherited by subprocesses that start servers
#: What replicas, MIGRATE and the Sentinel authenticate with (None: no users, no auth).
ADMIN_CREDENTIALS = (ADMIN_USER, ADMIN_PASSWORD) if ACL_MODE else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "unit" not in Path(str(item.fspath)).relative_to(HERE).parts:
            item.add_marker(pytest.mark.redis)


#: Lines the suite's long runs report (the mixed-language run's intervals and handoffs, the conformance
#: vectors' counts), shown after the test summary so that a passing CI run shows its numbers too.
_REPORTS: list[str] = []


@pytest.fixture
def report() -> Callable[[str], None]:
    """``report(line)``: show *line* in the terminal summary, whether the test passes or not."""
    return _REPORTS.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REPORTS:
        terminalreporter.section("pylivermore reports")
        for line in _REPORTS:
            terminalreporter.write_line(line)


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


def make_admin_client(server: RedisServer, **kwargs: object) -> redis.Redis:
    """A client with every right, for a test's own setup and inspection."""
    if ACL_MODE:
        kwargs = {"username": ADMIN_USER, "password": ADMIN_PASSWORD, **kwargs}
    return make_client(server, **kwargs)


def make_async_client(server: RedisServer, **kwargs: object) -> aredis.Redis:
    from redis.asyncio.retry import Retry as AsyncRetry

    options: dict[str, object] = {"socket_timeout": 5.0, "retry": AsyncRetry(NoBackoff(), 0)}
    options.update(kwargs)
    return aredis.Redis.from_url(server.url, **options)  # type: ignore[arg-type]


def make_async_admin_client(server: RedisServer, **kwargs: object) -> aredis.Redis:
    """An asyncio client with every right, for a test's own setup and inspection."""
    if ACL_MODE:
        kwargs = {"username": ADMIN_USER, "password": ADMIN_PASSWORD, **kwargs}
    return make_async_client(server, **kwargs)


@pytest.fixture
def namespace() -> str:
    return "t" + secrets.token_hex(4)


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = make_client(redis_server)
    yield c
    c.close()


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """An all-rights client on the session server, for setup and inspection."""
    c = make_admin_client(redis_server)
    yield c
    c.close()


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    c = make_async_client(redis_server)
    yield c
    await c.aclose()


@pytest.fixture
async def aadmin(redis_server: RedisServer) -> AsyncIterator[aredis.Redis]:
    """An all-rights asyncio client on the session server, for setup and inspection."""
    c = make_async_admin_client(redis_server)
    yield c
    await c.aclose()


# -- topologies (tests/topology) ------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterSet]:
    """A Redis Cluster of 3 masters and 3 replicas for the session (≈2 s to build); tests keep
    apart through their namespace and must leave its topology as they found it."""
    _require_binary()
    with ClusterSet(3, 1, admin=ADMIN_CREDENTIALS) as c:
        yield c


@pytest.fixture
def fresh_cluster() -> Iterator[ClusterSet]:
    """A 3+3 cluster of this test's own, for destructive tests (failover, resharding); its
    cluster-node-timeout of 1 s makes a failover take about 2 s."""
    _require_binary()
    with ClusterSet(3, 1, node_timeout=1000, admin=ADMIN_CREDENTIALS) as c:
        yield c


@pytest.fixture
def sentinel() -> Iterator[SentinelSet]:
    """A master, a replica and a Sentinel (down-after 300 ms) of this test's own."""
    _require_binary()
    with SentinelSet(down_after=300, admin=ADMIN_CREDENTIALS) as s:
        yield s


@pytest.fixture(scope="module")
def patient_cluster() -> Iterator[ClusterSet]:
    """3 masters, no replica, a node timeout far longer than any stall a test causes and no
    full-coverage rule: a stalled or starved master is never failed over, nor takes the other
    masters down with it (resharding and stall tests, which must not see a failover)."""
    _require_binary()
    args = ["--cluster-require-full-coverage", "no"]
    with ClusterSet(3, 0, node_timeout=60_000, admin=ADMIN_CREDENTIALS, extra_args=args) as c:
        yield c


@pytest.fixture
def steady_sentinel() -> Iterator[SentinelSet]:
    """Like ``sentinel``, but with down-after 10 s: on a loaded machine a starved master is not
    failed over behind a test that does not mean to fail it over."""
    _require_binary()
    with SentinelSet(down_after=10_000, admin=ADMIN_CREDENTIALS) as s:
        yield s
