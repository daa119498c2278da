"""``livermore doctor``'s assessments, from the facts a server reports (pure: no server needed)."""

from __future__ import annotations

import pytest

from pylivermore._doctor import (
    OPTIONAL,
    acl_finding,
    clock_finding,
    eviction_finding,
    layout_finding,
    persistence_finding,
    version_finding,
)


@pytest.mark.parametrize(
    ("server", "level", "says"),
    [
        ({"redis_version": "6.0.16"}, "fail", "need Redis >= 6.2"),
        ({"redis_version": "6.2.14"}, "info", "no Redis Functions"),
        ({"redis_version": "7.0.15"}, "ok", "Redis 7.0.15"),
        ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.1.2"}, "ok", "Valkey 9.1.2"),
    ],
)
def test_version(server: dict[str, str], level: str, says: str) -> None:
    finding = version_finding(server)
    assert (finding.level, says in finding.detail) == (level, True), finding


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "volatile-lru", "allkeys-random"])
def test_an_evicting_policy_fails_with_its_fix(policy: str) -> None:
    finding = eviction_finding({"maxmemory_policy": policy})
    assert finding.level == "fail"
    assert policy in finding.detail
    assert "noeviction" in finding.fix


def test_noeviction_is_ok() -> None:
    assert eviction_finding({"maxmemory_policy": "noeviction"}).level == "ok"


def test_persistence() -> None:
    assert persistence_finding({"aof_enabled": 1}, None).level == "ok"
    off = persistence_finding({"aof_enabled": 0}, "")
    assert off.level == "warn"
    assert "no RDB snapshots" in off.detail
    assert "appendonly yes" in off.fix
    assert "RDB snapshots only" in persistence_finding({"aof_enabled": 0}, "3600 1").detail


@pytest.mark.parametrize(
    ("server", "replication", "cluster", "level", "says"),
    [
        ({"redis_mode": "standalone"}, {"role": "slave"}, None, "fail", "is a slave"),
        ({"redis_mode": "standalone"}, {"role": "master", "connected_slaves": 0}, None, "info", "without replicas"),
        ({"redis_mode": "standalone"}, {"role": "master", "connected_slaves": 2}, None, "ok", "2 replica(s)"),
        ({"redis_mode": "cluster"}, {"role": "master", "connected_slaves": 1}, "ok", "ok", "Redis Cluster"),
        ({"redis_mode": "cluster"}, {"role": "master", "connected_slaves": 1}, "fail", "fail", "cluster state fail"),
        ({"redis_mode": "cluster"}, {"role": "master", "connected_slaves": 1}, "unknown", "info", "not readable"),
    ],
)
def test_layout(
    server: dict[str, object], replication: dict[str, object], cluster: str | None, level: str, says: str
) -> None:
    finding = layout_finding(server, replication, cluster)
    assert finding.level == level, finding
    assert says in finding.detail, finding


def test_clock() -> None:
    assert clock_finding(1000.2, 1000.0, 0.001).level == "ok"
    skewed = clock_finding(1003.0, 1000.0, 0.001)
    assert skewed.level == "warn"
    assert "+3.00 s" in skewed.detail
    assert "NTP" in skewed.fix
    assert clock_finding(1000.9, 1000.0, 0.5).level == "ok"  # within the tolerance plus the round trip


def test_permissions() -> None:
    assert acl_finding("worker", [], OPTIONAL).level == "ok"
    refused = acl_finding("viewer", ["evalsha", "xread", "wait"], OPTIONAL)
    assert refused.level == "fail"
    assert "evalsha, xread" in refused.detail
    assert "wait" not in refused.detail  # optional: durable claims only
    assert "worker_rules" in refused.fix
    optional = acl_finding("worker", ["wait"], OPTIONAL)
    assert optional.level == "info"
    assert "durable claims" in optional.detail
