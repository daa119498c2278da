"""Many leases: one process holds N (10,000) leases.

* **Renewal round**: the time to renew every lease once through pylivermore, next to pipelined
  raw ``PEXPIRE`` on the same N status keys (and, for scale, N sequential raw ``PEXPIRE``).
  pylivermore is measured two ways, through its public API only:

  - *background*: what the registry itself does. The leases are claimed while the registry's
    clock (the public ``clock=`` option) stands still, so all of them come due at one known
    instant; the round lasts from that instant until the heartbeat thread's last clock read
    after its last renewal reply (nothing else in the process reads that clock then). Redis
    confirms afterwards that every record was renewed (``PTTL``). This follows whatever the
    registry's heartbeat does (today: one ``renew_many`` script call per 256 leases);
  - *explicit*: one ``lease.heartbeat()`` per lease, sequentially (see :func:`renewal_round`).
* **Listing**: ``registry.instances()`` (every live record, decoded) next to a raw ``SCAN`` +
  pipelined ``HGETALL`` of the same keys with the same ``SCAN`` parameters (no decoding).

Each figure is the median of a few repetitions, pylivermore and raw interleaved. The ratio is
pylivermore's speed over the raw one's (raw time / pylivermore time): 1.0 = as fast.
Run on its own: ``python benchmarks/bench_many.py [--leases N] [--repeats K]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from impls.base import sync_client

from pylivermore import Lease, Registry

NAMESPACE = "many"
BACKGROUND = "renewal round (pylivermore, background heartbeat)"
EXPLICIT = "renewal round (pylivermore, explicit heartbeat() per lease)"
PIPELINED = "renewal round (raw PEXPIRE, pipelined)"
SEQUENTIAL = "renewal round (raw PEXPIRE, sequential)"
LISTING = "listing (pylivermore instances())"
RAW_LISTING = "listing (raw SCAN + pipelined HGETALL)"


def renewal_round(registry: Registry, leases: Sequence[Lease]) -> None:
    """One full renewal round through pylivermore's public API.

    The public API renews one lease per call (``lease.heartbeat()``); the registry's background
    heartbeat batches them (``renew_many``), which the *background* figure measures.
    """
    for lease in leases:
        lease.heartbeat()


class SteppedClock:
    """A monotonic clock for a registry that can stand still: leases claimed while it is frozen
    all start at the same instant, so their heartbeats all come due together. Records the real
    time of the latest read from a thread other than the main one (the heartbeat thread)."""

    def __init__(self) -> None:
        self.frozen_at: float | None = None
        self.offset = 0.0
        self.background_read = 0.0
        self._main = threading.main_thread()

    def __call__(self) -> float:
        real = time.monotonic()
        if threading.current_thread() is not self._main:
            self.background_read = real
        return self.frozen_at if self.frozen_at is not None else real + self.offset

    def freeze(self) -> None:
        self.frozen_at = time.monotonic() + self.offset

    def thaw(self) -> float:
        """Let time run again from where it stood; returns the real time at which it did."""
        assert self.frozen_at is not None
        real = time.monotonic()
        self.offset, self.frozen_at = self.frozen_at - real, None
        return real


def background_round(url: str, leases: int, interval: float, log: Callable[[str], None]) -> dict[str, Any]:
    """One full renewal round by the registry's own background heartbeat (see the module doc)."""
    client = sync_client(url, socket_timeout=60.0)
    clock = SteppedClock()
    ttl, deadline = 6 * interval, 3 * interval  # nothing is lost even if the round is slow
    registry = Registry(
        client, namespace="bg", ttl=ttl, heartbeat_interval=interval, renew_deadline=deadline, clock=clock
    )
    try:
        clock.freeze()
        held = [registry.claim(i + 1, f"Exchange{i + 1}") for i in range(leases)]
        due_at = clock.thaw() + interval  # every lease's first heartbeat comes due at this real instant
        while time.monotonic() < due_at + 60:
            time.sleep(0.01)
            quiet = time.monotonic() - clock.background_read
            if clock.background_read > due_at and quiet >= min(0.25, interval / 4):
                break
        end = clock.background_read
        # Renewed after due_at <=> PTTL above ttl - (now - due_at) - interval / 2; a record not
        # renewed since its claim has at most ttl - (now - due_at) - interval left.
        keys = [f"bg:{{{lease.exchange_id}}}:status" for lease in held]
        now = time.monotonic()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        threshold = (ttl - (now - due_at) - interval / 2) * 1000
        renewed = sum(1 for pttl in pipe.execute() if pttl > threshold)
        seconds = end - due_at if end > due_at else math.nan
        log(f"background renewal round: {seconds * 1000:.1f} ms, {renewed} of {leases} renewed")
        return {
            "seconds": seconds,
            "renewed": renewed,
            "complete": renewed == leases,
            "interval_s": interval,
            "longer_than_interval": seconds > interval,
        }
    finally:
        registry.close()
        client.flushall()
        client.close()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_many(
    url: str,
    *,
    leases: int = 10_000,
    repeats: int = 3,
    interval: float = 5.0,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    background = background_round(url, leases, interval, log)
    # A socket timeout that lets one pipeline of N commands through on a loaded machine.
    client = sync_client(url, socket_timeout=60.0)
    # Timings that keep the background heartbeat out of the measurement: nothing comes due.
    registry = Registry(client, namespace=NAMESPACE, ttl=3600, heartbeat_interval=900, renew_deadline=1800)
    ttl_ms = 3600 * 1000
    pattern = f"{NAMESPACE}:{{*}}:status"
    try:
        start = time.perf_counter()
        held = [registry.claim(i + 1, f"Exchange{i + 1}") for i in range(leases)]
        claim_s = time.perf_counter() - start
        log(f"claimed {leases} leases in {claim_s:.2f} s")
        keys = [f"{NAMESPACE}:{{{lease.exchange_id}}}:status" for lease in held]  # lua/README.md key layout

        def raw_pexpire_pipelined() -> None:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.pexpire(key, ttl_ms)
            replies = pipe.execute()
            assert all(replies), "a status key was missing"

        def raw_pexpire_sequential() -> None:
            for key in keys:
                client.pexpire(key, ttl_ms)

        def listing() -> None:
            found = registry.instances()
            assert len(found) == leases, f"instances() saw {len(found)} of {leases} records"

        def raw_listing() -> None:
            found = list(client.scan_iter(match=pattern, count=1000))
            pipe = client.pipeline(transaction=False)
            for key in found:
                pipe.hgetall(key)
            records = pipe.execute(raise_on_error=False)
            assert len(records) == leases, f"SCAN saw {len(records)} of {leases} records"

        cases: dict[str, Callable[[], None]] = {
            EXPLICIT: lambda: renewal_round(registry, held),
            PIPELINED: raw_pexpire_pipelined,
            SEQUENTIAL: raw_pexpire_sequential,
            LISTING: listing,
            RAW_LISTING: raw_listing,
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                samples[name].append(timed(fn))
        median = {name: statistics.median(v) for name, v in samples.items()}
        median = {BACKGROUND: background["seconds"], **median}
        for name, v in median.items():
            log(f"{name:<42} {v * 1000:>9.1f} ms")
        memory = client.info("memory").get("used_memory", 0)
    finally:
        registry.close()
        client.flushall()
        client.close()

    def ratio(pylivermore: str, raw: str) -> float:
        return median[raw] / median[pylivermore] if median[pylivermore] > 0 else math.nan

    return {
        "leases": leases,
        "repeats": repeats,
        "claim_all_s": claim_s,
        "seconds": median,
        "samples": samples,
        "background": background,
        "server_used_memory_bytes": memory,
        "ratios": {
            "renewal: background heartbeat / pipelined PEXPIRE": ratio(BACKGROUND, PIPELINED),
            "renewal: explicit heartbeat() / pipelined PEXPIRE": ratio(EXPLICIT, PIPELINED),
            "renewal: explicit heartbeat() / sequential PEXPIRE": ratio(EXPLICIT, SEQUENTIAL),
            "listing: instances() / raw SCAN + HGETALL": ratio(LISTING, RAW_LISTING),
        },
    }


def main() -> None:
    from pylivermore.server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval of the background round")
    args = parser.parse_args()
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server
    with RedisServer() as server:
        result = run_many(server.url, leases=args.leases, repeats=args.repeats, interval=args.interval)
    import report

    print(report.many_markdown(result))


if __name__ == "__main__":
    main()
