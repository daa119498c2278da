"""Per-operation cost of pylivermore next to the raw command of the same shape.

Everything runs side by side in one process against one private redis-server, on one
connection with retries off, so the figures that matter are the ratios (this machine is
shared and noisy). Run: ``make bench`` or ``python benchmarks/bench_ops.py [--seconds S]``.

Client side: operations per second through the public API vs the raw command
(claim vs ``SET NX PX``, heartbeat vs ``PEXPIRE``, transition vs ``HSET``, status read vs
``HGETALL``). Server side: microseconds per call from ``INFO commandstats`` (after
``CONFIG RESETSTAT``), each script next to ``SET NX PX``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import Registry, State
from pylivermore.server import RedisServer


def rate(fn: Callable[[int], object], seconds: float) -> float:
    """Calls per second of fn(i), measured for about *seconds*."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(100):
            fn(n)
            n += 1
        now = time.perf_counter()
        if now >= end:
            return n / (now - start)


def usec_per_call(client: redis.Redis) -> dict[str, float]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["usec_per_call"] for k, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, retry=Retry(NoBackoff(), 0), single_connection_client=True)
        registry = Registry(client, namespace="bench", ttl=45, heartbeat_interval=15, renew_deadline=30)
        results: dict[str, float] = {}

        results["raw SET NX PX"] = rate(lambda i: client.set(f"raw:{{{i}}}", "v", nx=True, px=45000), args.seconds)
        results["claim"] = rate(lambda i: registry.claim(i + 1, "Bench"), args.seconds)
        registry.close()  # keep the background heartbeat out of the single-connection figures
        lease = registry.claim("hb", "Bench")
        registry.close()
        results["raw PEXPIRE"] = rate(lambda i: client.pexpire("raw:{0}", 45000), args.seconds)
        results["heartbeat"] = rate(lambda i: lease.heartbeat(), args.seconds)
        results["raw HSET"] = rate(lambda i: client.hset("raw:h", "connectionState", "x"), args.seconds)
        steps = [State.STARTING, State.STOPPING, State.STOPPED, State.IDLE]
        results["transition"] = rate(lambda i: lease.transition(steps[i % 4]), args.seconds)
        results["raw HGETALL"] = rate(lambda i: client.hgetall(lease._core.keys.status), args.seconds)
        results["status read"] = rate(lambda i: registry.get("hb"), args.seconds)

        client.config_resetstat()
        for i in range(2000):
            client.set(f"raw2:{{{i}}}", "v", nx=True, px=45000)
        usec_set = usec_per_call(client)["set"]
        server_side: dict[str, float] = {"SET NX PX": usec_set}
        for label, op in (
            ("claim", lambda i: registry.claim(f"s{i}", "Bench")),
            ("heartbeat", lambda i: lease.heartbeat()),
            ("transition", lambda i: lease.transition(steps[i % 4])),
        ):
            registry.close()
            client.config_resetstat()
            for i in range(2000):
                op(i)
            server_side[label] = usec_per_call(client)["evalsha"]
        registry.close()
        memory = client.memory_usage(lease._core.keys.status) or 0
        client.close()

    print(f"{'operation':<12} {'ops/s':>9} {'raw':<14} {'ops/s':>9} {'ratio':>6}")
    for op, raw in (
        ("claim", "raw SET NX PX"),
        ("heartbeat", "raw PEXPIRE"),
        ("transition", "raw HSET"),
        ("status read", "raw HGETALL"),
    ):
        print(f"{op:<12} {results[op]:>9.0f} {raw:<14} {results[raw]:>9.0f} {results[op] / results[raw]:>6.2f}")
    print(f"\nserver side, usec per call (ratio to SET NX PX = {usec_set:.2f} us)")
    for op, us in server_side.items():
        print(f"  {op:<12} {us:>6.2f} us  {us / usec_set:>5.1f}x")
    print(f"\nMEMORY USAGE of one live record: {memory} bytes")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"ops_per_second": results, "server_usec_per_call": server_side, "record_bytes": memory}, fh)


if __name__ == "__main__":
    main()
