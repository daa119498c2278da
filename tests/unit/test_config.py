"""RegistryConfig: option validation, defaults (SPEC §3 "Defaults") and the registry-level protocol."""

from __future__ import annotations

import math
import os
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pylivermore import CorruptStatusError
from pylivermore._config import DAY, RegistryConfig

TIMING = ("ttl", "renew_deadline", "heartbeat_interval")


def config(**options: object) -> RegistryConfig:
    options.setdefault("hostname", "h")
    options.setdefault("instance_id", "i")
    return RegistryConfig(**options)  # type: ignore[arg-type]


def test_defaults() -> None:
    """Defaults are TTL 45 s, renew deadline 30 s, heartbeat 15 s, 90 days of log, namespace 'exchange'."""
    c = config()
    assert (c.ttl, c.renew_deadline, c.heartbeat_interval) == (45.0, 30.0, 15.0)
    assert c.namespace == "exchange"
    s = c.lease_settings
    assert s.ttl_ms == 45_000
    assert s.retention_ms == 90 * 86_400_000
    assert (s.heartbeat_interval, s.renew_deadline) == (15.0, 30.0)
    assert s.table_wire == ""


@pytest.mark.parametrize(
    ("ttl", "rd", "hb"),
    [
        (45, 30, 25),  # 30 > 1.2 * 25 = 30 fails
        (30, 30, 15),  # ttl must exceed renew_deadline
        (45, 18, 15),  # 18 == 1.2 * 15: not strictly greater
        (45, 50, 15),  # renew_deadline beyond ttl
        (10, 5, 6),  # heartbeat slower than the deadline
    ],
)
def test_timing_order_enforced(ttl: float, rd: float, hb: float) -> None:
    """ttl > renew_deadline > 1.2 * heartbeat_interval is required; the message states the rule and defaults."""
    with pytest.raises(ValueError, match=re.escape("ttl > renew_deadline > 1.2 * heartbeat_interval")) as info:
        config(ttl=ttl, renew_deadline=rd, heartbeat_interval=hb)
    assert "45, 30 and 15" in str(info.value)


@pytest.mark.parametrize(("ttl", "rd", "hb"), [(45, 18.01, 15), (1.5, 1.0, 0.5), (30, 10, 5), (0.05, 0.03, 0.02)])
def test_timing_order_accepted(ttl: float, rd: float, hb: float) -> None:
    """Configurations just inside the rule are accepted and kept as floats."""
    c = config(ttl=ttl, renew_deadline=rd, heartbeat_interval=hb)
    assert (c.ttl, c.renew_deadline, c.heartbeat_interval) == (float(ttl), float(rd), float(hb))
    assert c.lease_settings.ttl_ms == round(ttl * 1000)


@pytest.mark.parametrize("name", TIMING)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, 0, 0.0, -0.0])
def test_timing_rejects_non_positive_or_non_finite(name: str, bad: float) -> None:
    """nan, ±inf, zero and negatives are ValueErrors naming the option."""
    with pytest.raises(ValueError, match=name):
        config(**{name: bad})


@pytest.mark.parametrize("name", TIMING)
@pytest.mark.parametrize("bad", ["5", None, True, b"5"])
def test_timing_rejects_non_numbers(name: str, bad: object) -> None:
    """Strings, None and bools are TypeErrors naming the option."""
    with pytest.raises(TypeError, match=name):
        config(**{name: bad})


def test_ttl_bounds_match_the_scripts() -> None:
    """ttl must lie in 0.01 s .. 1 day, the range claim-3.lua/heartbeat-1.lua accept for ttl_ms."""
    with pytest.raises(ValueError, match="ttl must be between"):
        config(ttl=0.009, renew_deadline=0.008, heartbeat_interval=0.005)
    with pytest.raises(ValueError, match="ttl must be between"):
        config(ttl=DAY + 1, renew_deadline=60, heartbeat_interval=20)
    assert config(ttl=DAY, renew_deadline=60, heartbeat_interval=20).lease_settings.ttl_ms == 86_400_000


@given(
    hb=st.floats(min_value=0.01, max_value=3000, allow_nan=False),
    rd_factor=st.floats(min_value=1.2001, max_value=10),
    ttl_factor=st.floats(min_value=1.0001, max_value=10),
)
def test_valid_timing_gives_safe_heartbeat_bounds(hb: float, rd_factor: float, ttl_factor: float) -> None:
    """For every accepted timing, a heartbeat sent on schedule is cut off before the renew deadline, the
    TTL sent is within the scripts' 10..86400000 ms."""
    rd = hb * rd_factor
    ttl = rd * ttl_factor
    try:
        c = config(ttl=ttl, renew_deadline=rd, heartbeat_interval=hb)
    except ValueError:
        assert not 0.01 <= ttl <= DAY or not ttl > rd > 1.2 * hb
        return
    assert 0 < c.heartbeat_timeout <= c.heartbeat_interval / 2
    assert c.heartbeat_interval + c.heartbeat_timeout < c.renew_deadline
    assert 10 <= c.lease_settings.ttl_ms <= 86_400_000


@pytest.mark.parametrize("bad", [0.5, 1.0, 3600.0, DAY - 0.001, 3650 * DAY + 1, math.nan, -0.5])
def test_log_retention_bounds(bad: float) -> None:
    """log_retention must be 0 or 1 day .. 3650 days: the contract's floor (no call may trim history younger than a
    day, finding 4 of issue 9) and the scripts' retention_ms range."""
    with pytest.raises(ValueError, match="log_retention"):
        config(log_retention=bad)


@pytest.mark.parametrize("none", [0, 0.0])
def test_log_retention_0_is_a_lease_without_history(none: float) -> None:
    """0 (not False, not "0") asks for leases without history: retention_ms "0" goes with the claim."""
    assert config(log_retention=none).claim(1, "X", reclaim=False).call.args[7] == "0"
    with pytest.raises(TypeError, match="log_retention"):
        config(log_retention=False)
    with pytest.raises(TypeError, match="log_retention"):
        config(log_retention="0")  # type: ignore[arg-type]


def test_log_retention_of_a_day_is_sent_with_the_claim() -> None:
    """The floor itself is accepted and goes with the claim (the record keeps it for the lease's later writes)."""
    c = config(log_retention=DAY)
    assert c.claim(1, "X", reclaim=False).call.args[7] == "86400000"


# -- hostname / instance id ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hostname", "instance_id"])
def test_identity_text_bounds(name: str) -> None:
    """hostname and instance_id are 1-255 bytes of UTF-8 without NUL; non-str is a TypeError."""
    assert getattr(config(**{name: "x" * 255}), name) == "x" * 255
    assert getattr(config(**{name: "é" * 127}), name) == "é" * 127  # 254 bytes
    for bad in ["", "x" * 256, "é" * 128, "a\x00b"]:
        with pytest.raises(ValueError, match=name):
            config(**{name: bad})
    with pytest.raises(TypeError, match=name):
        config(**{name: 42})


def test_default_identity() -> None:
    """By default the hostname is the OS's and the instance id embeds it and the process id, differing per config."""
    a = RegistryConfig()
    b = RegistryConfig()
    assert a.hostname == (socket.gethostname() or "unknown")
    assert a.instance_id.startswith(f"{a.hostname}:{os.getpid()}:")
    assert a.instance_id != b.instance_id


# -- eviction policy -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["noeviction", None])
def test_no_eviction_warning_when_safe(policy: str | None) -> None:
    """noeviction (or an unknown policy) gives no warning."""
    assert RegistryConfig.eviction_warning(policy) is None


@pytest.mark.parametrize(
    "policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-ttl"]
)
def test_eviction_warning_for_evicting_policies(policy: str) -> None:
    """Every allkeys-*/volatile-* policy can evict lease keys: the warning names it and the fix."""
    warning = RegistryConfig.eviction_warning(policy)
    assert warning is not None
    assert repr(policy) in warning
    assert "noeviction" in warning


def test_eviction_warnings_name_each_evicting_cluster_node() -> None:
    """A cluster's INFO (one per master) gives a warning per evicting master, naming it; a
    standalone reply gives at most one, naming no node."""
    reply = {
        "10.0.0.2:7001": {"maxmemory_policy": "noeviction"},
        "10.0.0.1:7000": {"maxmemory_policy": "allkeys-lru"},
        "10.0.0.3:7002": {"maxmemory_policy": b"volatile-ttl"},
    }
    warnings = RegistryConfig.eviction_warnings(reply, per_node=True)
    assert len(warnings) == 2
    assert "10.0.0.1:7000's maxmemory-policy is 'allkeys-lru'" in warnings[0]
    assert "10.0.0.3:7002's maxmemory-policy is 'volatile-ttl'" in warnings[1]
    assert RegistryConfig.eviction_warnings({"maxmemory_policy": "noeviction"}, per_node=False) == []
    (single,) = RegistryConfig.eviction_warnings({"maxmemory_policy": "allkeys-lfu"}, per_node=False)
    assert single.startswith("the Redis server's maxmemory-policy is 'allkeys-lfu'")


# -- registry-level protocol -----------------------------------------------------------------


def test_claim_call_encoding() -> None:
    """claim() validates its inputs and builds a claim call with a fresh random owner token each time."""
    c = config(namespace="ns1", ttl=1.5, renew_deadline=1.0, heartbeat_interval=0.5)
    a = c.claim(7, "Binance", reclaim=True)
    b = c.claim(7, "Binance", reclaim=False)
    assert a.wire_id == "7"
    assert a.keys.status == "ns1:{7}:status"
    assert a.call.args[1:] == ("1500", "7", "Binance", "h", "i", "1", str(90 * 86_400_000), "")
    assert b.call.args[6] == "0"
    assert a.token != b.token
    assert a.call.args[0] == a.token
    assert re.fullmatch(r"[0-9a-f]{32}", a.token)  # claim-3.lua ARGV[1]: 128 random bits


@pytest.mark.parametrize(("name", "exc"), [("", ValueError), ("x" * 129, ValueError), (None, TypeError)])
def test_claim_rejects_bad_names(name: object, exc: type[Exception]) -> None:
    """exchange_name must be 1-128 bytes of text."""
    with pytest.raises(exc, match="exchange_name"):
        config().claim(1, name, reclaim=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("reclaim", [1, "yes", None])
def test_claim_rejects_non_bool_reclaim(reclaim: object) -> None:
    """reclaim must be a real bool: a truthy value is not silently accepted."""
    with pytest.raises(TypeError, match="reclaim"):
        config().claim(1, "X", reclaim=reclaim)  # type: ignore[arg-type]


def test_force_release_call() -> None:
    """force_release defaults the operator to the instance id and validates the reason."""
    c = config(instance_id="ops-1")
    keys, call = c.force_release(3, "stuck", None)
    assert call.script == "force_release"
    assert call.keys == (keys.status, keys.log)
    assert call.args[:2] == ("stuck", "ops-1")
    assert c.force_release(3, "stuck", "alice")[1].args[1] == "alice"
    with pytest.raises(ValueError, match="reason"):
        c.force_release(3, "", None)


@pytest.mark.parametrize("bad", [0, 10001, True, "5", 2.0])
def test_activity_count_bounds(bad: object) -> None:
    """activity count must be an int from 1 to 10000."""
    with pytest.raises(ValueError, match="count"):
        RegistryConfig.activity_count(bad)  # type: ignore[arg-type]


def test_read_error_maps_wrongtype() -> None:
    """A WRONGTYPE error from a plain read becomes CorruptStatusError; other errors pass through unchanged."""
    c = config()
    err = c.read_error(Exception("WRONGTYPE Operation against a key holding the wrong kind of value"), "k")
    assert isinstance(err, CorruptStatusError)
    assert err.key == "k"
    other = Exception("LOADING")
    assert c.read_error(other, "k") is other


def test_decode_listing_skips_gone_and_corrupt_records() -> None:
    """instances(): expired-meanwhile, failed and corrupt records are skipped; the rest sorted by id."""
    c = config()

    def rec(ident: str) -> dict[bytes, bytes]:
        fields = {
            "exchangeId": ident,
            "exchangeName": "X",
            "hostname": "h",
            "connectionState": "idle",
            "symbolCount": "0",
            "lastHeartbeat": "t",
            "lastStateChange": "t",
            "registeredAt": "t",
            "fencingToken": "5",
            "instanceId": "i",
        }
        return {k.encode(): v.encode() for k, v in fields.items()}

    keys = [b"exchange:{b}:status", b"exchange:{gone}:status", b"exchange:{a}:status", b"x", b"exchange:{c}:status"]
    raws = [rec("b"), {}, rec("a"), Exception("boom"), {**rec("c"), b"symbolCount": b"many"}]
    out = c.decode_listing(keys, raws)
    assert [s.exchange_id for s in out] == ["a", "b"]


# -- durable claims --------------------------------------------------------------------------


def test_durability_of_a_plain_and_a_durable_claim() -> None:
    """replicas=0 sends no WAIT; otherwise WAIT gets the count and the timeout in milliseconds."""
    assert RegistryConfig.durability(0, 1.0) is None
    assert RegistryConfig.durability(2, 0.25) == (2, 250)
    assert RegistryConfig.durability(1, 0.0001) == (1, 1)  # WAIT 0 would block forever


@pytest.mark.parametrize(
    ("replicas", "timeout", "error"),
    [
        (-1, 1.0, ValueError),
        (65, 1.0, ValueError),
        (True, 1.0, TypeError),
        ("1", 1.0, TypeError),
        (1.0, 1.0, TypeError),
        (1, 0, ValueError),
        (1, -1.0, ValueError),
        (1, math.nan, ValueError),
        (1, math.inf, ValueError),
        (1, 601, ValueError),
        (1, "1", TypeError),
    ],
)
def test_durability_rejects_bad_arguments(replicas: object, timeout: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="replica"):
        RegistryConfig.durability(replicas, timeout)  # type: ignore[arg-type]


def test_replication_error_only_when_short() -> None:
    """Enough acknowledgements: no error; fewer, or a WAIT that failed: an error with the count."""
    assert RegistryConfig.replication_error("7", 2, (2, 500)) is None
    assert RegistryConfig.replication_error("7", 3, (2, 500)) is None
    short = RegistryConfig.replication_error("7", 1, (2, 500))
    assert short is not None
    assert (short.exchange_id, short.replicas, short.acknowledged, short.timeout) == ("7", 2, 1, 0.5)
    failed = RegistryConfig.replication_error("7", ConnectionError("reset"), (1, 500))
    assert failed is not None
    assert failed.acknowledged == -1
    assert "an unknown number of 1 replica(s)" in str(failed)
