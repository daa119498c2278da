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
import gc
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
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
        self.background_reads: list[float] = []  # real times of the heartbeat thread's reads
        self._main = threading.main_thread()

    def __call__(self) -> float:
        real = time.monotonic()
        if threading.current_thread() is not self._main:
            self.background_reads.append(real)
        return self.frozen_at if self.frozen_at is not None else real + self.offset

    def freeze(self) -> None:
        self.frozen_at = time.monotonic() + self.offset

    def thaw(self) -> float:
        """Let time run again from where it stood; returns the real time at which it did."""
        assert self.frozen_at is not None
        real = time.monotonic()
        self.offset, self.frozen_at = self.frozen_at - real, None
        return real


def rounds_in(reads: Sequence[float], since: float, gap: float) -> list[tuple[float, float]]:
    """(first, last) real time of each burst of clock reads at or after *since*; bursts are
    separated by more than *gap* seconds without a read (the thread sleeping between rounds)."""
    bursts: list[tuple[float, float]] = []
    for t in reads:
        if t < since:
            continue
        if bursts and t - bursts[-1][1] <= gap:
            bursts[-1] = (bursts[-1][0], t)
        else:
            bursts.append((t, t))
    return bursts


def freeze_heap() -> None:
    """Move every object alive now (the 10,000 leases) out of the cyclic garbage collector's
    generations, as a long-running worker holding many leases would: otherwise a full collection
    over them (+25 ms here) lands at random in one timing or another, pylivermore's or raw."""
    gc.collect()
    gc.freeze()


def pexpire_pipelined(client: redis.Redis, keys: Sequence[str], ttl_ms: int) -> None:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pexpire(key, ttl_ms)
    assert all(pipe.execute()), "a status key was missing"


def count_renewed(client: redis.Redis, keys: Sequence[str], left_at_least: float) -> int:
    """Records renewed in the latest round: a renewed one has more than *left_at_least* seconds of
    TTL (ttl - time since the round began - interval / 2); one renewed a round earlier has an
    interval less."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
    return sum(1 for pttl in pipe.execute() if pttl > left_at_least * 1000)


def background_round(
    url: str, leases: int, interval: float, log: Callable[[str], None], rounds: int = 3
) -> dict[str, Any]:
    """*rounds* full renewal rounds by the registry's own background heartbeat (see the module
    doc): the first from the instant all leases come due to the thread's last clock read after
    it, the next ones from the thread's first to its last clock read of each round."""
    client = sync_client(url, socket_timeout=60.0)
    clock = SteppedClock()
    ttl, deadline = 6 * interval, 3 * interval  # nothing is lost even if a round is slow
    registry = Registry(
        client, namespace="bg", ttl=ttl, heartbeat_interval=interval, renew_deadline=deadline, clock=clock
    )
    try:
        clock.freeze()
        held = [registry.claim(i + 1, f"Exchange{i + 1}") for i in range(leases)]
        freeze_heap()
        due_at = clock.thaw() + interval  # every lease's first heartbeat comes due at this real instant
        keys = [f"bg:{{{lease.exchange_id}}}:status" for lease in held]
        quiet_for, gap = min(0.25, interval / 4), interval / 2
        raw: list[float] = []  # pipelined raw PEXPIRE of the same keys, right after each round
        renewed = 0
        while time.monotonic() < due_at + rounds * interval + 60 and len(raw) < rounds:
            time.sleep(0.01)
            bursts = rounds_in(clock.background_reads, due_at, gap)
            if len(bursts) > len(raw) and time.monotonic() - bursts[-1][1] >= quiet_for:
                if len(raw) == rounds - 1:
                    renewed = count_renewed(client, keys, ttl - (time.monotonic() - bursts[-1][0]) - interval / 2)
                raw.append(timed(lambda: pexpire_pipelined(client, keys, round(ttl * 1000))))
        bursts = rounds_in(clock.background_reads, due_at, gap)[:rounds]
        times = [last - (due_at if k == 0 else first) for k, (first, last) in enumerate(bursts)]
        seconds = statistics.median(times) if len(times) == rounds else math.nan
        log(
            f"background renewal rounds: {', '.join(f'{t * 1000:.1f}' for t in times)} ms, each followed by a "
            f"pipelined raw PEXPIRE: {', '.join(f'{t * 1000:.1f}' for t in raw)} ms; {renewed} of {leases} "
            "renewed in the last round"
        )
        return {
            "seconds": seconds,
            "raw_seconds": statistics.median(raw) if raw else math.nan,
            "rounds_s": times,
            "raw_s": raw,
            "renewed": renewed,
            "complete": renewed == leases and len(times) == rounds,
            "interval_s": interval,
            "longer_than_interval": max(times, default=math.inf) > interval,
        }
    finally:
        registry.close()
        client.flushall()
        client.close()
        gc.unfreeze()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_many(
    url: str,
    *,
    leases: int = 10_000,
    repeats: int = 3,
    interval: float = 3.0,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    background = background_round(url, leases, interval, log, repeats)
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
        freeze_heap()
        log(f"claimed {leases} leases in {claim_s:.2f} s")
        keys = [f"{NAMESPACE}:{{{lease.exchange_id}}}:status" for lease in held]  # lua/README.md key layout

        def raw_pexpire_pipelined() -> None:
            pexpire_pipelined(client, keys, ttl_ms)

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
        gc.unfreeze()

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
            # each background round next to the raw PEXPIRE run right after it, on the same keys
            "renewal: background heartbeat / pipelined PEXPIRE": background["raw_seconds"] / background["seconds"],
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
    parser.add_argument("--interval", type=float, default=3.0, help="heartbeat interval of the background round")
    args = parser.parse_args()
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server
    with RedisServer() as server:
        result = run_many(server.url, leases=args.leases, repeats=args.repeats, interval=args.interval)
    import report

    print(report.many_markdown(result))


if __name__ == "__main__":
    main()
