"""The registry's start-up check on a cluster reads every master's eviction policy: one evicting
master is enough to lose leases, whichever node redis-py would have asked by default."""

from __future__ import annotations

import logging

import pytest

from tests.integration.conftest import io, on_cluster
from tests.topology import ClusterSet

pytestmark = [pytest.mark.timeout(60)]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_an_evicting_master_is_named_in_a_warning(
    cluster: ClusterSet, namespace: str, is_async: bool, caplog: pytest.LogCaptureFixture
) -> None:
    masters = cluster.masters()
    evicting = masters[-1]
    t = on_cluster(cluster, is_async)
    evicting.admin.config_set("maxmemory-policy", "allkeys-lru")
    try:
        registry = t.registry(namespace=namespace)
        lease = await io(registry.claim(1, "Binance"))
        await io((await io(registry.claim(2, "Kraken"))).release())
        warnings = [r.getMessage() for r in caplog.records if r.name == "pylivermore.registry"]
        assert len(warnings) == 1, warnings  # once per registry, for the one evicting master
        assert f"127.0.0.1:{evicting.port}'s maxmemory-policy is 'allkeys-lru'" in warnings[0]
        assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "pylivermore.registry")
        await io(lease.release())
    finally:
        evicting.admin.config_set("maxmemory-policy", "noeviction")
        await t.close()
