"""``livermore serve`` over HTTP against a live registry: ``/api/instances`` and ``/api/log/{id}``,
``/metrics`` (parsed with ``prometheus_client.parser``), the ``/events`` stream that follows a claim,
a transition and a release as they happen, and the proof that none of it writes: the server runs
as a read-only (dashboard) user, and ``ACL LOG`` shows nothing refused to it."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from pylivermore import Registry
from pylivermore.acl import dashboard_rules
from pylivermore.server import RedisServer
from tests.topology import ClusterSet
from tests.web.conftest import LIVERMORE

LONG = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}
GIVE_UP = 10.0  # seconds before a wait for something that must happen fails (not a bound on the page)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=GIVE_UP) as reply:
        body = reply.read()
        return json.loads(body) if reply.headers.get_content_type() == "application/json" else body.decode()


@pytest.fixture
def viewer(redis_server: RedisServer, admin: redis.Redis, namespace: str) -> Iterator[str]:
    """A URL as a read-only user of *namespace* (pylivermore.acl.dashboard_rules), ACL LOG reset."""
    user, password = f"viewer-{namespace}", "viewer-secret-password"
    admin.execute_command("ACL", "SETUSER", user, "reset", *dashboard_rules(namespace, password))
    admin.execute_command("ACL", "LOG", "RESET")
    yield redis_server.url.replace("redis://", f"redis://{user}:{password}@", 1)
    admin.execute_command("ACL", "DELUSER", user)


def refused_to(admin: redis.Redis, user: str) -> list[str]:
    return [str(e.get("object")) for e in admin.acl_log() if e.get("username") == user]


@pytest.fixture
def registry(redis_server: RedisServer, namespace: str) -> Iterator[Registry]:
    with Registry.from_url(redis_server.url, namespace=namespace, **LONG) as registry:
        yield registry


def test_api_and_metrics_read_a_live_registry_and_write_nothing(
    serve: Callable[..., str], viewer: str, admin: redis.Redis, namespace: str, registry: Registry
) -> None:
    lease = registry.claim(1, "Coinbase")
    lease.transition("starting")
    lease.set_symbol_count(42)
    registry.claim("kraken", "Kraken")
    base = serve(viewer, namespace)

    documents = get(f"{base}/api/instances")
    by_id = {d["exchangeId"]: d for d in documents}
    assert set(by_id) == {1, "kraken"}
    one = by_id[1]
    assert (one["exchangeName"], one["connectionState"], one["legacyState"], one["symbolCount"]) == (
        "Coinbase",
        "starting",
        "connecting",
        42,
    )
    assert one["fencingToken"] == lease.fencing_token
    assert 0 < one["ttlSeconds"] <= LONG["ttl"]
    assert 0 <= one["heartbeatAgeSeconds"] < LONG["heartbeat_interval"] + GIVE_UP

    log = get(f"{base}/api/log/1")
    assert [e["event"] for e in log] == ["state_transition", "claim"]
    with pytest.raises(urllib.error.HTTPError) as bad:
        get(f"{base}/api/log/07")
    assert bad.value.code == 400
    bad.value.close()

    text = get(f"{base}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("pylivermore_instance_state", (("exchange_id", "1"), ("state", "starting")))] == 1
    assert samples[("pylivermore_instance_fencing_token", (("exchange_id", "1"),))] == lease.fencing_token
    assert 0 < samples[("pylivermore_instance_ttl_seconds", (("exchange_id", "kraken"),))] <= LONG["ttl"]
    assert ("pylivermore_instance_heartbeat_age_seconds", (("exchange_id", "1"),)) in samples
    counts = {dict(k[1])["state"]: v for k, v in samples.items() if k[0] == "pylivermore_instances"}
    assert counts == {"idle": 1, "starting": 1, "warming": 0, "active": 0, "stopping": 0, "stopped": 0}

    page = get(base + "/")
    assert "pylivermore status" in page
    assert namespace in page
    user = viewer.split("//", 1)[1].split(":", 1)[0]
    assert refused_to(admin, user) == [], "the status page sent something a read-only user may not"


def test_events_follow_a_claim_a_transition_and_a_release(
    serve: Callable[..., str], viewer: str, admin: redis.Redis, namespace: str, registry: Registry
) -> None:
    base = serve(viewer, namespace, "--refresh", "30")  # updates here come from the logs, not the timer
    lease = registry.claim(1, "Coinbase")  # known before the stream opens: its log is watched
    with urllib.request.urlopen(f"{base}/events", timeout=GIVE_UP) as stream:

        def next_instances() -> list[dict[str, Any]]:
            while True:
                line = stream.readline().decode().strip()
                if line.startswith("data: "):
                    return list(json.loads(line[6:]))

        assert [d["connectionState"] for d in next_instances()] == ["idle"]
        lease.transition("starting")
        assert [d["connectionState"] for d in next_instances()] == ["starting"]
        lease.release()  # walks to stopping, stopped, then deregisters: the last event has no record
        for _ in range(5):
            if next_instances() == []:
                break
        else:
            pytest.fail("the release never showed on the stream")
    user = viewer.split("//", 1)[1].split(":", 1)[0]
    assert refused_to(admin, user) == []


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_serving_beyond_loopback_needs_public(redis_server: RedisServer, host: str) -> None:
    if not LIVERMORE.exists():
        pytest.skip("the livermore console script is not installed")
    proc = subprocess.run(
        [str(LIVERMORE), "--url", redis_server.url, "serve", "--host", host],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "add --public" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_on_a_cluster_the_page_reads_every_master(
    serve: Callable[..., str], cluster: ClusterSet, namespace: str
) -> None:
    """Served from one node's URL, the page reads the whole cluster (records of every master), and
    its stream refreshes on the timer (one XREAD may only name keys of one slot)."""
    client = cluster.client()
    try:
        with Registry(client, namespace=namespace, **LONG) as registry:
            for exchange_id in range(1, 10):
                registry.claim(exchange_id, f"Exchange{exchange_id}")
            base = serve(cluster.url, namespace, "--refresh", "0.2")
            assert sorted(d["exchangeId"] for d in get(f"{base}/api/instances")) == list(range(1, 10))
            with urllib.request.urlopen(f"{base}/events", timeout=GIVE_UP) as stream:
                seen = []
                while len(seen) < 2:
                    line = stream.readline().decode().strip()
                    if line.startswith("data: "):
                        seen.append(len(json.loads(line[6:])))
                assert seen == [9, 9]  # two timer refreshes
            counts = {
                s.labels["state"]: s.value
                for f in text_string_to_metric_families(get(f"{base}/metrics"))
                for s in f.samples
                if s.name == "pylivermore_instances"
            }
            assert counts["idle"] == 9
    finally:
        client.close()
