"""Per-operation cost of pylivermore next to the raw command of the same shape.

Everything runs side by side in one process against one private redis-server, on one
connection with retries off, so the figures that matter are the ratios (this machine is
shared and noisy). Run: ``python benchmarks/bench_ops.py [--seconds S] [--json FILE]``; ``make bench``
runs it as part of ``benchmarks/bench.py``.

Client side: operations per second through the public API vs the raw command
(claim vs ``SET NX PX``, heartbeat vs ``PEXPIRE``, transition vs ``HSET``, status read vs
``HGETALL``), each pair measured in alternating slices so that load changes hit both alike.
Server side: microseconds per call from ``INFO commandstats`` (after ``CONFIG RESETSTAT``),
each script next to ``SET NX PX`` interleaved with it call by call, plus two reference scripts
(the floor of any script on this server).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import ClaimConflictError, Registry, State
from pylivermore.server import RedisServer


def _run_for(fn: Callable[[int], object], seconds: float, first: int) -> tuple[int, float]:
    """Call fn(first), fn(first + 1), ... for about *seconds*; returns (calls, elapsed)."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(20):
            fn(first + n)
            n += 1
        now = time.perf_counter()
        if now >= end:
            return n, now - start


def paired_rates(
    a: Callable[[int], object], b: Callable[[int], object], seconds: float, slices: int = 10
) -> tuple[float, float]:
    """Calls per second of a(i) and of b(i), about *seconds* each, measured in alternating
    slices (a b, b a, a b, ...) so that a change in the machine's load hits both alike."""
    count = {a: 0, b: 0}
    spent = {a: 0.0, b: 0.0}
    for k in range(slices):
        for fn in (a, b) if k % 2 == 0 else (b, a):
            n, t = _run_for(fn, seconds / slices, count[fn])
            count[fn] += n
            spent[fn] += t
    return count[a] / spent[a], count[b] / spent[b]


def _conflict(registry: Registry, exchange_id: str) -> None:
    try:
        registry.claim(exchange_id, "Bench")
    except ClaimConflictError:
        return
    raise AssertionError(f"claiming {exchange_id} again did not conflict")


def usec_per_call(client: redis.Redis) -> dict[str, float]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["usec_per_call"] for k, v in stats.items()}


#: Reference scripts (not pylivermore operations): the least a script costs on this server, and
#: the least that the writes SPEC requires of a heartbeat and a claim cost without any checks.
_ISO = "2026-11-29T12:00:00.000Z"
_FIELDS = "'exchangeId', 'x', 'exchangeName', 'Bench', 'hostname', 'h', 'instanceId', 'i', 'fencingToken', '1'"
FLOORS = {
    "floor: empty script": "return 1",
    "floor: owner check + PEXPIRE": (
        "local d = redis.call('HGET', KEYS[1], 'ownerDigest') "
        "if d ~= redis.sha1hex(ARGV[1]) then return 0 end "
        "return redis.call('PEXPIRE', KEYS[1], ARGV[2])"
    ),
    "floor: same + TIME + HSET lastHeartbeat": (
        "local d = redis.call('HGET', KEYS[1], 'ownerDigest') "
        "if d ~= redis.sha1hex(ARGV[1]) then return 0 end "
        "local t = redis.call('TIME') redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
        "return redis.call('HSET', KEYS[1], 'lastHeartbeat', t[1])"
    ),
    "floor: a claim's writes only (new keys)": (
        f"redis.call('XADD', KEYS[2], 'MINID', '~', '0', '*', 'event', 'claim', 'timestamp', '{_ISO}', {_FIELDS}, "
        "'ip', '', 'ttlMs', '45000', 'how', 'new', 'replaced', '') "
        f"redis.call('HSET', KEYS[1], {_FIELDS}, 'connectionState', 'idle', 'symbolCount', '0', "
        f"'lastHeartbeat', '{_ISO}', 'lastStateChange', '{_ISO}', 'registeredAt', '{_ISO}', 'ownerDigest', 'd') "
        "redis.call('PEXPIRE', KEYS[1], 45000) return redis.call('SET', KEYS[3], '1')"
    ),
}


def floor_ops(client: redis.Redis, status_key: str) -> list[tuple[str, Callable[[int], object]]]:
    """The FLOORS scripts as operations: on *status_key* (whose owner check fails: nothing is
    renewed), the claim's writes on new keys each time (as the claims measured next to them)."""
    ops: list[tuple[str, Callable[[int], object]]] = []
    for label, source in FLOORS.items():
        sha = client.script_load(source)
        if "claim" in label:
            ops.append((label, lambda i, sha=sha: client.evalsha(sha, 3, *(f"floor:{{{i}}}:{k}" for k in KEYS3))))
        else:
            ops.append((label, lambda i, sha=sha: client.evalsha(sha, 1, status_key, "x" * 32, "45000")))
    return ops


KEYS3 = ("status", "log", "fence")


def server_costs(
    client: redis.Redis,
    ops: Iterable[tuple[str, Callable[[int], object]]],
    calls: int,
    before_each: Callable[[], object] = lambda: None,
) -> dict[str, dict[str, float]]:
    """Server-side µs per call of each operation's EVALSHA, from ``INFO commandstats`` after
    ``CONFIG RESETSTAT``, each next to ``SET NX PX`` measured in the same window, call by call
    interleaved (SET, op, SET, op, ...): both see the same load and cache state, so their
    ratio holds still while the absolute figures move 2-3x with this shared machine's mood."""
    out = {}
    for label, op in ops:
        before_each()
        client.config_resetstat()
        for i in range(calls):
            client.set(f"raw2:{{{label}:{i}}}", "v", nx=True, px=45000)
            op(i)
        stats = usec_per_call(client)
        out[label] = {"usec": stats["evalsha"], "set_usec": stats["set"]}
    return out


def measure(url: str, seconds: float = 1.0, server_calls: int = 2000) -> dict[str, Any]:
    """Every figure of this benchmark, on the server at *url* (which must allow CONFIG RESETSTAT)."""
    client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), single_connection_client=True)
    registry = Registry(client, namespace="bench", ttl=45, heartbeat_interval=15, renew_deadline=30)
    results: dict[str, float] = {}

    lease = registry.claim("hb", "Bench")
    steps = [State.STARTING, State.STOPPING, State.STOPPED, State.IDLE]
    status_key = f"bench:{{{lease.exchange_id}}}:status"  # the key layout of lua/README.md
    client.set("raw:{0}", "v")
    client.hset("raw:h", "connectionState", "x")
    for op, raw, op_fn, raw_fn in (
        (
            "claim",
            "raw SET NX PX",
            lambda i: registry.claim(i + 1, "Bench"),
            lambda i: client.set(f"raw:{{{i + 1}}}", "v", nx=True, px=45000),
        ),
        ("heartbeat", "raw PEXPIRE", lambda i: lease.heartbeat(), lambda i: client.pexpire("raw:{0}", 45000)),
        (
            "transition",
            "raw HSET",
            lambda i: lease.transition(steps[i % 4]),
            lambda i: client.hset("raw:h", "connectionState", steps[i % 4].value),
        ),
        ("status read", "raw HGETALL", lambda i: registry.get("hb"), lambda i: client.hgetall(status_key)),
    ):
        results[op], results[raw] = paired_rates(op_fn, raw_fn, seconds)
        # keep the background heartbeat out of the single-connection figures (nothing is due
        # within the measurement anyway: it renews every 15 s)
        registry.close()

    server_side = server_costs(
        client,
        (
            ("claim", lambda i: registry.claim(f"s{i}", "Bench")),
            ("claim, conflict", lambda i: _conflict(registry, "hb")),
            ("heartbeat", lambda i: lease.heartbeat()),
            ("transition", lambda i: lease.transition(steps[i % 4])),
            *floor_ops(client, status_key),
        ),
        server_calls,
        before_each=registry.close,
    )
    registry.close()
    memory = client.memory_usage(status_key) or 0
    client.flushall()
    client.close()
    return {"seconds": seconds, "ops_per_second": results, "server_usec_per_call": server_side, "record_bytes": memory}


def print_results(data: dict[str, Any]) -> None:
    results, server_side = data["ops_per_second"], data["server_usec_per_call"]
    print(f"{'operation':<12} {'ops/s':>9} {'raw':<14} {'ops/s':>9} {'ratio':>6}")
    for op, raw in (
        ("claim", "raw SET NX PX"),
        ("heartbeat", "raw PEXPIRE"),
        ("transition", "raw HSET"),
        ("status read", "raw HGETALL"),
    ):
        print(f"{op:<12} {results[op]:>9.0f} {raw:<14} {results[raw]:>9.0f} {results[op] / results[raw]:>6.2f}")
    print("\nserver side, usec per call; SET NX PX interleaved call by call in the same window")
    for op, cost in server_side.items():
        us, set_us = cost["usec"], cost["set_usec"]
        print(f"  {op:<30} {us:>6.2f} us  SET NX PX {set_us:>5.2f} us  {us / set_us:>5.1f}x")
    print(f"\nMEMORY USAGE of one live record: {data['record_bytes']} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server: CONFIG RESETSTAT, MEMORY USAGE
    with RedisServer() as server:
        data = measure(server.url, args.seconds)
    print_results(data)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(data, fh)


if __name__ == "__main__":
    main()
