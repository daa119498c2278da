"""Least privilege: the documented ACL rules are enough for workers and dashboards, and no more.

A private server gets three users: ``worker`` and ``dashboard`` built from
:mod:`pylivermore.acl` for namespace ``exchange``, and ``admin`` for the test's own setup.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import NoPermissionError

from pylivermore import ClaimConflictError, Registry, acl
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer, find_server_binary

ADMIN = ("admin", "admin-secret")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    if find_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server on PATH")
        pytest.skip("no redis-server on PATH")
    users = [
        "--user", "default", "off",
        "--user", "admin", "on", f">{ADMIN[1]}", "~*", "&*", "+@all",
        "--user", "worker", *acl.worker_rules("exchange", "w-secret"),
        "--user", "dashboard", *acl.dashboard_rules("exchange", "d-secret"),
    ]  # fmt: skip
    # This server has users of its own: the suite's (PYLIVERMORE_REDIS_ARGS, see tests/conftest.py)
    # would define ``default`` and ``admin`` a second time, so they are left out while it starts.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("PYLIVERMORE_REDIS_ARGS", raising=False)
        s = RedisServer(extra_args=users).start()
    try:
        yield s
    finally:
        s.close()


def connect(server: RedisServer, user: str, password: str) -> redis.Redis:
    return redis.Redis.from_url(server.url, username=user, password=password, retry=None, socket_timeout=5)


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    c = connect(server, *ADMIN)
    yield c
    c.close()


@pytest.fixture
def worker(server: RedisServer) -> Iterator[redis.Redis]:
    c = connect(server, "worker", "w-secret")
    yield c
    c.close()


def test_script_commands_match_the_lua_sources() -> None:
    """SCRIPT_COMMANDS lists exactly the commands the Lua scripts call (the ACL must allow them all)."""
    called = set()
    for spec in load_scripts().values():
        called |= {c.lower() for c in re.findall(r"(?:rcall|redis\.p?call)\('([A-Z]+)'", spec.source)}
    assert called == set(acl.SCRIPT_COMMANDS)


def test_worker_runs_the_whole_lifecycle(server: RedisServer, worker: redis.Redis, admin: redis.Redis) -> None:
    """Under the worker rules: claim, transitions, field updates, errors, heartbeat, reads, release,
    force_release, and recovery from SCRIPT FLUSH (SCRIPT LOAD is allowed) all work."""
    registry = Registry(worker, ttl=3, heartbeat_interval=1, renew_deadline=2)
    lease = registry.claim(1, "Coinbase")
    with pytest.raises(ClaimConflictError):
        Registry(worker).claim(1, "Coinbase")
    for step in ("starting", "warming", "active"):
        lease.transition(step)
    admin.script_flush()
    lease.set_symbol_count(5)
    lease.set_admin("ops@example.com", "Ops")
    lease.set_address("192.0.2.1", "DE")
    lease.record_error("boom")
    lease.heartbeat()
    assert lease.status().symbol_count == 5
    assert [s.exchange_id for s in registry.instances()] == [1]
    assert len(registry.activity(1)) == 5
    assert lease.release()
    second = registry.claim(1, "Coinbase")
    assert registry.force_release(1, "maintenance") == second.fencing_token
    registry.close()


def test_worker_is_refused_outside_its_namespace(worker: redis.Redis, admin: redis.Redis) -> None:
    """A worker of namespace "exchange" gets NOPERM for any other namespace, and nothing is written."""
    registry = Registry(worker, namespace="other")
    with pytest.raises(NoPermissionError):
        registry.claim(1, "X")
    assert admin.keys("other:*") == []
    with pytest.raises(NoPermissionError):
        worker.set("unrelated", "x")
    registry.close()


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "SET", "maxmemory", "1"),
        ("CONFIG", "GET", "requirepass"),
        ("FLUSHALL",),
        ("DEBUG", "SLEEP", "0"),
        ("SCRIPT", "FLUSH"),
        ("KEYS", "*"),
        ("CLIENT", "LIST"),
        ("EVAL", "return 1", "0"),
        ("ACL", "LIST"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_worker_is_refused_administrative_commands(worker: redis.Redis, command: tuple[str, ...]) -> None:
    """Administrative and free-form commands get NOPERM for a worker."""
    with pytest.raises(NoPermissionError):
        worker.execute_command(*command)


def test_dashboard_reads_but_cannot_write(server: RedisServer, worker: redis.Redis) -> None:
    """The dashboard rules allow get/instances/activity and refuse claims and direct writes."""
    owner = Registry(worker)
    lease = owner.claim(2, "Kraken")
    lease.transition("starting")
    dash_client = connect(server, "dashboard", "d-secret")
    dashboard = Registry(dash_client)
    status = dashboard.get(2)
    assert status is not None
    assert status.connection_state == "starting"
    assert 2 in [s.exchange_id for s in dashboard.instances()]
    assert [e.event for e in dashboard.activity(2)] == ["state_transition", "claim"]
    with pytest.raises(NoPermissionError):
        dashboard.claim(3, "X")
    with pytest.raises(NoPermissionError):
        dash_client.hset("exchange:{2}:status", "connectionState", "active")
    assert lease.release()
    owner.close()
    dashboard.close()
    dash_client.close()
