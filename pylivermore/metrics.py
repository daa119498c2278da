"""Client-side Prometheus metrics of a registry (``pip install 'pylivermore[metrics]'``).

::

    from prometheus_client import start_http_server
    from pylivermore import Registry
    from pylivermore.metrics import instrument

    registry = Registry.from_url("redis://localhost:6379/0")
    instrument(registry)              # into prometheus_client's default registry
    start_http_server(9108)           # scrape http://host:9108/metrics

Metrics, each labelled with the registry's ``namespace`` and ``instance_id`` (several registries in
one process stay apart):

- ``pylivermore_claims_total{outcome="claimed"|"conflict"}``: claim attempts and how they ended
  (every attempt of a waiting claim counts);
- ``pylivermore_leases_lost_total{reason="expired"|"taken"|"deadline"}``: leases lost (releases are
  not losses);
- ``pylivermore_heartbeat_round_seconds``: a histogram of the background heartbeat's rounds, from
  sending the round's renewals (one pipeline) to applying the replies;
- ``pylivermore_leases_held``: the leases the registry renews now.

The events come from the sans-IO core, so the sync and asyncio registries report the same.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the extra is installed wherever the tests run
    raise ImportError(
        f"pylivermore.metrics needs prometheus-client: pip install 'pylivermore[metrics]' ({exc})"
    ) from None

from ._async import AsyncRegistry
from ._sync import Registry

LABELS = ("namespace", "instance_id")
#: Heartbeat rounds take milliseconds; a round near the heartbeat timeout is trouble.
ROUND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Held(Collector):
    """``pylivermore_leases_held``, read from each instrumented registry at scrape time."""

    def __init__(self) -> None:
        self.registries: weakref.WeakSet[Any] = weakref.WeakSet()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        held = GaugeMetricFamily("pylivermore_leases_held", "Leases the registry renews now", labels=list(LABELS))
        for registry in list(self.registries):
            held.add_metric(_labels(registry), len(registry._heartbeat._schedule))
        return [held]


class _Families:
    """The metric families of one prometheus registry (made once: a second ``instrument`` shares them)."""

    def __init__(self, target: CollectorRegistry) -> None:
        self.claims = Counter("pylivermore_claims", "Claim attempts by outcome", [*LABELS, "outcome"], registry=target)
        self.lost = Counter("pylivermore_leases_lost", "Leases lost, by reason", [*LABELS, "reason"], registry=target)
        self.rounds = Histogram(
            "pylivermore_heartbeat_round_seconds",
            "Background heartbeat rounds: from sending the renewals to applying the replies",
            list(LABELS),
            buckets=ROUND_BUCKETS,
            registry=target,
        )
        self.held = _Held()
        target.register(self.held)


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _labels(registry: Registry | AsyncRegistry) -> list[str]:
    return [registry._config.namespace, registry.instance_id]


class RegistryMetrics:
    """The observer :func:`instrument` installs: it turns a registry's events into samples."""

    def __init__(self, families: _Families, labels: list[str]) -> None:
        self._claimed = families.claims.labels(*labels, "claimed")
        self._conflict = families.claims.labels(*labels, "conflict")
        self._lost = families.lost
        self._labels = labels
        self._round = families.rounds.labels(*labels)
        for reason in ("expired", "taken", "deadline"):  # every series exists from the start, at 0
            families.lost.labels(*labels, reason)

    def claimed(self) -> None:
        self._claimed.inc()

    def conflict(self) -> None:
        self._conflict.inc()

    def lost(self, reason: str) -> None:
        self._lost.labels(*self._labels, reason).inc()

    def heartbeat_round(self, seconds: float) -> None:
        self._round.observe(seconds)


def instrument(
    registry: Registry | AsyncRegistry, prometheus_registry: CollectorRegistry = REGISTRY
) -> RegistryMetrics:
    """Report *registry*'s claims, conflicts, losses, heartbeat rounds and leases held to
    *prometheus_registry* (default: prometheus_client's global one). Instrumenting a registry again
    replaces its observer; several registries share the metric families, told apart by labels."""
    if not isinstance(registry, Registry | AsyncRegistry):
        raise TypeError(f"instrument() takes a Registry or an AsyncRegistry, not {type(registry).__name__}")
    families = _FAMILIES.get(prometheus_registry)
    if families is None:
        families = _FAMILIES[prometheus_registry] = _Families(prometheus_registry)
    observer = RegistryMetrics(families, _labels(registry))
    registry._config.lease_settings.observer = observer
    families.held.registries.add(registry)
    return observer
