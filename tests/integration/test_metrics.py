"""``pylivermore.metrics.instrument``: a registry's claims, conflicts, losses by reason, heartbeat
rounds and leases held, in a Prometheus registry, read back through the text format (parsed with
``prometheus_client.parser``), sync and asyncio."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pylivermore import ClaimConflictError
from pylivermore.metrics import instrument
from tests.integration.conftest import Topology, io
from tests.support import await_until

FAST = {"ttl": 3.0, "heartbeat_interval": 0.2, "renew_deadline": 2.0}
GIVE_UP = 10.0


def scrape(target: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(target).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    wanted = dict(labels)
    for (sample, found), number in samples.items():
        if sample == name and all(dict(found).get(k) == v for k, v in wanted.items()):
            return number
    raise AssertionError(f"no sample {name} {labels}: {sorted(k for k in samples if k[0] == name)}")


@pytest.mark.parametrize("topology", ["standalone-sync", "standalone-async"], indirect=True)
async def test_claims_conflicts_losses_rounds_and_leases_held(topology: Topology, namespace: str) -> None:
    target = CollectorRegistry()
    owner = topology.registry(namespace=namespace, instance_id="owner", **FAST)
    rival = topology.registry(namespace=namespace, instance_id="rival", **FAST)
    instrument(owner, target)
    instrument(rival, target)
    mine = {"namespace": namespace, "instance_id": "owner"}
    theirs = {"namespace": namespace, "instance_id": "rival"}

    lease = await io(owner.claim(1, "Coinbase"))
    assert await io(rival.try_claim(1, "Coinbase")) is None
    with pytest.raises(ClaimConflictError):
        await io(rival.claim(1, "Coinbase"))
    samples = scrape(target)
    assert value(samples, "pylivermore_claims_total", outcome="claimed", **mine) == 1
    assert value(samples, "pylivermore_claims_total", outcome="conflict", **theirs) == 2
    assert value(samples, "pylivermore_leases_held", **mine) == 1
    assert value(samples, "pylivermore_leases_held", **theirs) == 0
    assert value(samples, "pylivermore_leases_lost_total", reason="expired", **mine) == 0

    # the background heartbeat renews every 0.2 s: its rounds are observed
    assert await await_until(
        lambda: value(scrape(target), "pylivermore_heartbeat_round_seconds_count", **mine) >= 2, GIVE_UP
    )
    # an operator removes the record: the next round finds it gone and the lease is lost (expired)
    await io(rival.force_release(1, "drain"))
    assert await await_until(lambda: not lease.is_valid, GIVE_UP)
    samples = scrape(target)
    assert value(samples, "pylivermore_leases_lost_total", reason="expired", **mine) == 1
    assert value(samples, "pylivermore_leases_held", **mine) == 0
    assert value(samples, "pylivermore_heartbeat_round_seconds_sum", **mine) > 0

    again = await io(owner.claim(1, "Coinbase"))
    await io(again.release())  # a release is not a loss
    samples = scrape(target)
    assert value(samples, "pylivermore_claims_total", outcome="claimed", **mine) == 2
    assert value(samples, "pylivermore_leases_lost_total", reason="expired", **mine) == 1
    assert value(samples, "pylivermore_leases_held", **mine) == 0


def test_instrument_takes_a_registry_only() -> None:
    with pytest.raises(TypeError, match="Registry or an AsyncRegistry"):
        instrument(object())  # type: ignore[arg-type]
