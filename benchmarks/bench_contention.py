"""Contention: W workers race for R resources for T seconds, each looping

    claim -> starting -> warming -> active -> 3 heartbeats -> stopping -> stopped -> release

or, after a conflict, sleeping a fixed pace plus random jitter and trying again (a resource
picked at random each time). Workers are asyncio tasks spread over worker *processes*
(``spawn`` start method; ``min(W, procs)`` processes, one client pool per process). Every
implementation runs the same workload with the same pacing, one after the other on the same
private server (flushed before each run), T split into interleaved rounds whose order rotates
every round and every grid cell.

Reported per run: completed lifecycles per second, conflicts, p50/p99 latency per operation,
per-worker min/max of completed lifecycles (fairness), and an invariant check: every worker
records, per lifecycle, ``[time the claim returned, time the release was sent]`` on the
system-wide monotonic clock (or the send time of the operation that found the lease lost).
These intervals lie inside the real ownership, so for a correct implementation no two
intervals of one resource can overlap; every overlap is a violation (two owners at once).
Where the implementation has fencing tokens, they must increase in the order of the intervals.

Run on its own: ``python benchmarks/bench_contention.py [--duration S] [--workers 1,8,64] ...``;
``benchmarks/bench.py`` runs it with the many-lease benchmark and writes the reports.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from impls import DEFAULT_IMPLS, IMPLS
from impls.base import DOWN, HEARTBEATS, UP, Lost, async_client, sync_client

OPS = ("claim", "conflict", "transition", "heartbeat", "release")
#: Time between sending a run's jobs and its common start: enough for a worker process to open
#: its connections (one per worker task); a late process starts late within the same window.
START_DELAY = 0.15
#: Latency histogram bins: 20 per decade from 10 µs to 100 s (upper edges, in seconds).
HIST_EDGES = [10 ** (-5 + i / 20) for i in range(1, 141)]


@dataclass(frozen=True)
class Job:
    """What one worker process runs for one (implementation, grid cell)."""

    impl: str
    url: str
    namespace: str
    workers: tuple[int, ...]
    resources: int
    start_at: float  # time.monotonic(): CLOCK_MONOTONIC, the same clock in every process
    duration: float
    grace: float
    pace: float
    jitter: float
    seed: int


class WorkerStats:
    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.completed = 0
        self.conflicts = 0
        self.lost = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.lat: dict[str, list[float]] = {op: [] for op in OPS}
        self.intervals: list[tuple[int, float, float, int | None]] = []
        self.finished_at = 0.0
        self.sent = 0.0  # send time of the latest owner operation

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "sent"}


async def _lifecycle(handle: Any, s: WorkerStats) -> None:
    """Walk the lifecycle; ``s.sent`` is the send time of the latest operation."""
    clock, lat = time.monotonic, s.lat
    for state in UP:
        s.sent = clock()
        await handle.transition(state)
        lat["transition"].append(clock() - s.sent)
    for _ in range(HEARTBEATS):
        s.sent = clock()
        await handle.heartbeat()
        lat["heartbeat"].append(clock() - s.sent)
    for state in DOWN:
        s.sent = clock()
        await handle.transition(state)
        lat["transition"].append(clock() - s.sent)
    s.sent = clock()
    await handle.release()
    lat["release"].append(clock() - s.sent)


async def worker_loop(impl: Any, s: WorkerStats, job: Job, end: float) -> None:
    rng = random.Random(job.seed * 1_000_003 + s.worker)
    clock = time.monotonic

    async def pause() -> None:
        await asyncio.sleep(job.pace + rng.random() * job.jitter)

    try:
        # At least one attempt, however late this process got its job: on a loaded machine a
        # process may start after ``end`` (a smoke run's T is 0.2 s), and a cell in which no
        # worker even tried would measure nothing. Its elapsed time counts to ``finished_at``.
        attempts = 0
        while attempts == 0 or clock() < end:
            attempts += 1
            rid = rng.randrange(job.resources)
            sent = clock()
            try:
                handle = await impl.claim(rid, s.worker)
            except Exception as exc:
                s.error(exc)
                await pause()
                continue
            acquired = clock()
            if handle is None:
                s.conflicts += 1
                s.lat["conflict"].append(acquired - sent)
                await pause()
                continue
            s.lat["claim"].append(acquired - sent)
            # The worker believes it holds rid from `acquired` until it sends the release, or
            # the operation that finds the lease lost: that is the interval checked for overlaps.
            s.sent = acquired
            try:
                await _lifecycle(handle, s)
                s.completed += 1
            except Lost:
                s.lost += 1
            except Exception as exc:
                s.error(exc)
            finally:
                s.intervals.append((rid, acquired, s.sent, handle.fencing_token))
    finally:
        s.finished_at = clock()


async def run_job(job: Job) -> dict[str, Any]:
    client = async_client(job.url)
    impl = IMPLS[job.impl](client, job.namespace)
    stats = [WorkerStats(w) for w in job.workers]
    try:
        await asyncio.gather(*(client.ping() for _ in job.workers))  # one warm connection per task
        await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
        end = job.start_at + job.duration
        tasks = [asyncio.create_task(worker_loop(impl, s, job, end)) for s in stats]
        # The hard deadline counts from when this process could start, not from the common start:
        # a process that got its job late still has the grace for its one attempt per worker.
        stop_by = max(end, time.monotonic()) + job.grace
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_by - time.monotonic()))
        for task in pending:  # the hard deadline: cut whatever is still running
            task.cancel()
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.wait_for(impl.close(), 5)
    finally:
        await client.aclose()
    return {
        "workers": [s.as_dict() for s in stats],
        "cut": len(pending),
        "watch_errors": getattr(impl, "watch_errors", None),
    }


def serve(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: run jobs until told to stop or until the parent goes away."""
    try:
        conn.send("ready")
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            try:
                result: dict[str, Any] = asyncio.run(run_job(job))
            except Exception as exc:
                result = {"failed": f"{type(exc).__name__}: {exc}"}
            conn.send(result)
    except KeyboardInterrupt:
        return


class ProcessPool:
    """A fixed set of spawned worker processes, reused for every run (spawning costs ~0.3 s).
    Each runs *target* (default :func:`serve`): say "ready", then answer every job sent to it."""

    def __init__(
        self, size: int, target: Callable[[multiprocessing.connection.Connection], None] | None = None
    ) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.target = target or serve  # a module-level function: the child imports it by name
        self.procs: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        for _ in range(size):
            self._spawn()
        for conn in self.conns:
            if not conn.poll(60) or conn.recv() != "ready":
                raise RuntimeError("a benchmark worker process did not start")

    def _spawn(self, index: int | None = None) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=self.target, args=(child,), name="bench-worker", daemon=True)
        proc.start()
        child.close()
        if index is None:
            self.procs.append(proc)
            self.conns.append(parent)
        else:
            self.procs[index], self.conns[index] = proc, parent
            if not parent.poll(60) or parent.recv() != "ready":
                raise RuntimeError("a benchmark worker process did not restart")

    def run(self, jobs: Sequence[Any], timeout: float) -> list[dict[str, Any]]:
        for conn, job in zip(self.conns, jobs, strict=False):
            conn.send(job)
        deadline = time.monotonic() + timeout
        results: list[dict[str, Any]] = []
        for i in range(len(jobs)):
            conn = self.conns[i]
            if conn.poll(max(0.0, deadline - time.monotonic())):
                results.append(conn.recv())
            else:  # stuck: kill it and start a fresh one for the next runs
                self.procs[i].kill()
                self.procs[i].join(5)
                self._spawn(i)
                results.append({"failed": f"no result within {timeout:.0f} s; process killed"})
        return results

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


# -- analysis ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def histogram(values: Iterable[float]) -> list[int]:
    counts = [0] * len(HIST_EDGES)
    last = len(HIST_EDGES) - 1
    for v in values:
        counts[min(bisect.bisect_left(HIST_EDGES, v), last)] += 1
    return counts


def check_intervals(intervals: Iterable[tuple[int, float, float, int, int | None]]) -> dict[str, Any]:
    """Overlapping ownership intervals per resource, and fencing-token order.

    Each interval is (resource, start, end, worker, fencing token or None). An interval that
    starts before an earlier-starting interval of another worker on the same resource has
    ended is one violation. ``fencing`` is None when no interval carries a token: an
    implementation without fencing tokens (or no interval at all, which :func:`summarize`
    reports as a failed round).
    """
    by_rid: dict[int, list[tuple[float, float, int, int | None]]] = {}
    for rid, start, end, worker, token in intervals:
        by_rid.setdefault(rid, []).append((start, end, worker, token))
    violations = fencing_checked = fencing_bad = 0
    max_overlap = 0.0
    affected: set[int] = set()
    has_tokens = False
    for rid, ivs in by_rid.items():
        ivs.sort(key=lambda iv: iv[0])
        open_end, open_worker = -math.inf, -1
        prev_token: int | None = None
        for start, end, worker, token in ivs:
            if start < open_end and worker != open_worker:
                violations += 1
                affected.add(rid)
                max_overlap = max(max_overlap, min(end, open_end) - start)
            if end > open_end:
                open_end, open_worker = end, worker
            if token is not None:
                has_tokens = True
                if prev_token is not None:
                    fencing_checked += 1
                    fencing_bad += token <= prev_token
                prev_token = token
    return {
        "intervals": sum(len(v) for v in by_rid.values()),
        "violations": violations,
        "resources_affected": len(affected),
        "max_overlap_ms": max_overlap * 1000,
        "fencing": (
            {"checked": fencing_checked, "not_increasing": fencing_bad} if has_tokens else None
        ),  # None: the implementation has no fencing tokens
    }


def merge_checks(checks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The invariant checks of several rounds as one."""
    fencing = [c["fencing"] for c in checks if c["fencing"] is not None]
    return {
        "intervals": sum(c["intervals"] for c in checks),
        "violations": sum(c["violations"] for c in checks),
        "resources_affected": max((c["resources_affected"] for c in checks), default=0),
        "max_overlap_ms": max((c["max_overlap_ms"] for c in checks), default=0.0),
        "fencing": (
            {"checked": sum(f["checked"] for f in fencing), "not_increasing": sum(f["not_increasing"] for f in fencing)}
            if fencing
            else None
        ),
    }


def summarize(
    impl: str, workers: int, resources: int, processes: int, parts: list[tuple[Job, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """One implementation on one grid cell, over every round it ran (*parts*: job and results)."""
    failed = [r["failed"] for _, results in parts for r in results if "failed" in r]
    results = [r for _, rs in parts for r in rs]
    lat: dict[str, list[float]] = {op: [] for op in OPS}
    per_worker: dict[int, int] = {}
    elapsed = 0.0
    stats = []
    for job, rs in parts:
        round_stats = [w for r in rs if "workers" in r for w in r["workers"]]
        finished = [w["finished_at"] for w in round_stats if w["finished_at"]]
        elapsed += (max(finished) - job.start_at) if finished else job.duration
        stats.extend(round_stats)
    for w in stats:
        for op in OPS:
            lat[op].extend(w["lat"][op])
        per_worker[w["worker"]] = per_worker.get(w["worker"], 0) + w["completed"]
    # Each round starts on an empty server (fence counters included): check rounds one by one.
    checks = []
    for k, (_, rs) in enumerate(parts):
        intervals = [
            (rid, a, b, w["worker"], tok)
            for r in rs
            if "workers" in r
            for w in r["workers"]
            for rid, a, b, tok in w["intervals"]
        ]
        checks.append(check_intervals(intervals))
        if not intervals and not any("failed" in r for r in rs):
            # Every worker makes at least one claim attempt on an empty server, so a round in
            # which none succeeded did no work: report it, do not pass it off as 0 violations.
            round_stats = [w for r in rs if "workers" in r for w in r["workers"]]
            conflicts, errors = sum(w["conflicts"] for w in round_stats), sum(w["errors"] for w in round_stats)
            samples = sorted({e for w in round_stats for e in w["error_samples"]})[:2]
            failed.append(
                f"round {k + 1}: no claim succeeded, so there is no ownership interval to check "
                f"({conflicts} conflicts, {errors} errors{''.join('; ' + e for e in samples)})"
            )
    completed = list(per_worker.values())
    latency: dict[str, dict[str, float]] = {}
    hist: dict[str, list[int]] = {}
    for op, values in lat.items():
        values.sort()
        latency[op] = {
            "n": len(values),
            "p50_ms": percentile(values, 50) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
            "max_ms": (values[-1] * 1000) if values else math.nan,
        }
        hist[op] = histogram(values)
    watch_errors = [r["watch_errors"] for r in results if r.get("watch_errors") is not None]
    return {
        "impl": impl,
        "workers": workers,
        "resources": resources,
        "processes": processes,
        "duration_s": sum(job.duration for job, _ in parts),
        "rounds": len(parts),
        "elapsed_s": elapsed,
        "lifecycles": sum(completed),
        "lifecycles_per_s": sum(completed) / elapsed if elapsed > 0 else 0.0,
        "conflicts": sum(w["conflicts"] for w in stats),
        "lost": sum(w["lost"] for w in stats),
        "errors": sum(w["errors"] for w in stats),
        "error_samples": sorted({e for w in stats for e in w["error_samples"]})[:5],
        "watch_retries": sum(watch_errors) if watch_errors else None,
        "cut_at_deadline": sum(r.get("cut", 0) for r in results),
        "failed": failed,
        "fairness": {
            "min": min(completed) if completed else 0,
            "max": max(completed) if completed else 0,
            "mean": sum(completed) / len(completed) if completed else 0.0,
        },
        "latency": latency,
        "histograms": hist,
        "invariant": merge_checks(checks),
    }


# -- the grid ------------------------------------------------------------------------------------


def run_contention(
    url: str,
    *,
    impls: Sequence[str] = DEFAULT_IMPLS,
    workers: Sequence[int] = (1, 8, 64),
    resources: Sequence[int] = (1, 8),
    duration: float = 3.0,
    rounds: int = 1,
    procs: int = 2,
    pace: float = 0.002,
    jitter: float = 0.002,
    grace: float = 5.0,
    seed: int = 1,
    skip_cells: Sequence[tuple[int, int]] = (),
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> list[dict[str, Any]]:
    """Every implementation on every (workers, resources) cell but *skip_cells*, *duration*
    seconds each, split into *rounds* interleaved rounds; returns one summary per
    (implementation, cell)."""
    admin = sync_client(url)
    pool = ProcessPool(min(procs, max(workers)))
    runs: list[dict[str, Any]] = []
    skipped = {tuple(c) for c in skip_cells}
    grid = [(w, r) for w in workers for r in resources if (w, r) not in skipped]
    total = len(grid) * len(impls)
    try:
        for cell, (w, r) in enumerate(grid):
            p = min(w, procs)
            parts: dict[str, list[tuple[Job, list[dict[str, Any]]]]] = {impl: [] for impl in impls}
            for k in range(rounds):
                # Same cell, implementations one after the other, the order rotated every
                # round and every cell: a change in the machine's load hits all of them.
                shift = cell + k
                for impl in [impls[(shift + i) % len(impls)] for i in range(len(impls))]:
                    admin.flushall()
                    start_at = time.monotonic() + START_DELAY
                    jobs = [
                        Job(
                            impl=impl,
                            url=url,
                            namespace=f"b{cell}-{k}-{impl}",
                            workers=tuple(range(i, w, p)),
                            resources=r,
                            start_at=start_at,
                            duration=duration / rounds,
                            grace=grace,
                            pace=pace,
                            jitter=jitter,
                            seed=seed + k,
                        )
                        for i in range(p)
                    ]
                    parts[impl].append((jobs[0], pool.run(jobs, timeout=START_DELAY + duration + grace + 30)))
            for impl in impls:
                run = summarize(impl, w, r, p, parts[impl])
                runs.append(run)
                inv = run["invariant"]
                log(
                    f"[{len(runs):>2}/{total}] W={w:<3} R={r:<2} {impl:<14} "
                    f"{run['lifecycles_per_s']:>8.1f} lifecycles/s  conflicts {run['conflicts']:>6}  "
                    f"violations {inv['violations']:>5}  lost {run['lost']}  errors {run['errors']}"
                    + (f"  FAILED {run['failed']}" if run["failed"] else "")
                )
        admin.flushall()
    finally:
        pool.close()
        admin.close()
    return runs


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    from pylivermore.server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per implementation and cell (T)")
    parser.add_argument("--rounds", type=int, default=2, help="T is split into this many interleaved rounds")
    parser.add_argument("--workers", type=int_list, default=[1, 8, 64])
    parser.add_argument("--resources", type=int_list, default=[1, 8])
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"from {', '.join(IMPLS)}")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="worker processes at most")
    args = parser.parse_args()
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server: the baselines need WATCH, FLUSHALL
    with RedisServer() as server:
        runs = run_contention(
            server.url,
            impls=args.impls.split(","),
            workers=args.workers,
            resources=args.resources,
            duration=args.duration,
            rounds=args.rounds,
            procs=args.procs,
        )
    import report

    print(report.contention_markdown(runs))


if __name__ == "__main__":
    main()
