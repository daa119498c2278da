"""Waiting for a held resource: pylivermore's ``claim(..., wait=...)`` next to the locks that can wait.

Every figure is from implementations run side by side, interleaved, in the same run on the same
private server (the machine is shared and noisy: compare within a run). Three implementations of
"block until the resource is mine":

* **pylivermore**: ``Registry(client, ...)`` (one per process), ``registry.claim(1, "X", wait=LONG)``:
  blocked on the resource's activity log (``XREAD BLOCK``), a claim attempt after every new entry
  (a release) and at the holder's expiry; released by ``lease.release()``;
* **redis-py Lock**: ``client.lock(name, timeout=TTL, blocking=True, blocking_timeout=LONG)``,
  ``acquire()``: ``SET NX PX``, then a retry every ``sleep=0.1`` s (the default, what users get);
* **python-redis-lock**: ``redis_lock.Lock(client, name, expire=TTL)``, ``acquire(blocking=True)``:
  ``SET NX EX``, then ``BLPOP`` on the lock's signal list (one waiter woken per release; the
  ``BLPOP`` times out after ``expire`` s, then it retries); ``timeout=LONG`` is refused above
  ``expire`` (``TimeoutTooLarge``), so it waits without one. Skipped with a note when the package
  is not installed (``pip install -e '.[bench]'``).

The same client settings for all (retries off, hiredis when installed), except a 30 s socket
timeout (:data:`SOCKET_TIMEOUT`) so that no implementation's blocking call outlasts it.

1. **Handoff** with W waiters (16; one sync *process* each, ``spawn``) on one resource. Each loops:
   acquire (blocking, :data:`LONG` s at most), record ``t_acquired``, hold H ms (5), record
   ``t_release_sent``, release, pause uniform 0-2 ms, acquire again. Times are
   ``time.monotonic_ns()`` (``CLOCK_MONOTONIC``, one clock for every process). A **handoff** is
   two consecutive acquisitions (all workers' records merged in time order); its latency is the
   next holder's ``t_acquired`` minus the previous holder's ``t_release_sent``: the release's
   round trip, the wake-up, the new acquire's round trip (and, for a poller, its sleep).
   Reported: p50/p99/max handoff latency (also for handoffs to *another* waiter only), acquisitions
   per second, acquisitions per waiter (min/max/stdev, Jain's fairness index
   ``(Σx)² / (n·Σx²)``: 1 = all equal, 1/n = one waiter took everything), the share of handoffs
   back to the releasing waiter, the longest wait of any single acquire, and **overlaps**: the
   intervals ``[t_acquired, t_release_sent]`` of different workers must not overlap (0 expected;
   pylivermore's fencing tokens must also increase). Implementations run in rounds, the order
   rotated every round, T seconds per implementation from a common start; acquires that return
   after the end are released at once and only count for the overlap check and the longest wait.
   Target (pylivermore): p99 handoff ≤ 50 ms with 16 waiters.
2. **Takeover after a killed holder**: a holder process acquires and keeps it alive (pylivermore:
   ``ttl`` 1 s, heartbeat every 0.3 s; redis-py Lock: ``timeout`` 1 s, ``reacquire()`` every 0.3 s
   by a thread of the holder, as users add it; python-redis-lock: ``expire`` 1 s,
   ``auto_renewal=True``), a waiter process blocks in its acquire (for the blocking ones: seen
   blocked on the server in ``CLIENT LIST``; it starts uniform 0-0.3 s after the holder acquired, so
   that a poller's retries are not in phase with the renewals), and uniform 0-1 s later (any point of a renewal
   or retry cycle) the holder gets ``SIGKILL``. The
   record's expiry on the monotonic clock is ``t + PTTL``, ``t`` the midpoint of a ``PTTL`` read
   just before the kill and again right after it (the holder gone: no renewal can follow; that
   read is the one used). Reported: takeover delay = waiter's ``t_acquired`` - expiry (target
   ≤ 1 s), and kill → acquired, per repetition, the implementations interleaved.
3. **Standby** (not a measurement): :func:`standby` is a sketch of the warm-standby loop the
   README describes, built only on ``try_claim(..., wait=...)``.

Run alone: ``python benchmarks/bench_wait.py [--waiters 16] [--duration 6] [--rounds 2] [--reps 3]``;
``benchmarks/bench.py`` runs it in all three modes (``--smoke``, quick, ``--full``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import multiprocessing.connection
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions
import redis.lock
from bench_contention import ProcessPool, check_intervals, merge_checks, percentile
from bench_locks import (
    PYLIVERMORE,
    PYTHON_REDIS_LOCK,
    REDIS_PY,
    _table,
    available,
)
from impls.base import sync_client

from pylivermore import ClaimConflictError, Lease, Registry

IMPLS_BY_NAME = {"pylivermore": PYLIVERMORE, "redis-py": REDIS_PY, "python-redis-lock": PYTHON_REDIS_LOCK}

#: Longest a blocking acquire may wait (s); no acquire of a healthy run comes near it.
LONG = 60.0
#: Socket timeout of every client here (s): above every blocking call's own timeout.
SOCKET_TIMEOUT = 30.0
#: Lease / lock duration in the handoff part (s; python-redis-lock takes whole seconds).
TTL = 10
#: The takeover part's lease duration, and pylivermore's heartbeat settings for it
#: (``ttl > renew_deadline > 1.2 x heartbeat_interval``).
TAKEOVER_TTL = 1
TAKEOVER_HEARTBEAT = 0.3
TAKEOVER_DEADLINE = 0.8
#: Hold time, and the pause before the next acquire (uniform), seconds.
HOLD = 0.005
PAUSE = (0.0, 0.002)
#: Warm-up resource of worker i: WARMUP + i (scripts loaded, server checked before the start).
WARMUP = 1000


# -- the implementations: acquire(rid) blocks -> handle or None (timed out); release(handle) -> held? --


class Livermore:
    name = PYLIVERMORE

    def __init__(self, client: redis.Redis, namespace: str, ttl: float = TTL, **timing: float) -> None:
        timing = timing or {"heartbeat_interval": ttl / 3, "renew_deadline": ttl * 0.8}
        self.registry = Registry(client, namespace=namespace, ttl=ttl, **timing)
        self.namespace = namespace

    def acquire(self, rid: int, wait: float = LONG) -> Lease | None:
        try:
            return self.registry.claim(rid, "X", wait=wait)
        except ClaimConflictError:  # still held after *wait*
            return None

    def release(self, lease: Lease) -> bool:
        return lease.release()

    def key(self, rid: int) -> str:
        return f"{self.namespace}:{{{rid}}}:status"  # the key layout of lua/README.md

    @staticmethod
    def token(lease: Lease) -> int | None:
        return lease.fencing_token

    def close(self) -> None:
        self.registry.close()


class RedisPyLock:
    name = REDIS_PY

    def __init__(
        self, client: redis.Redis, namespace: str, ttl: float = TTL, renew: bool = False, **timing: float
    ) -> None:
        # renew: the token is shared with the holder's renewing thread (thread_local=False, as a user must)
        self.client, self.namespace, self.ttl, self.thread_local = client, namespace, ttl, not renew

    def acquire(self, rid: int, wait: float = LONG) -> redis.lock.Lock | None:
        lock = self.client.lock(
            self.key(rid), timeout=self.ttl, blocking=True, blocking_timeout=wait, thread_local=self.thread_local
        )
        return lock if lock.acquire() else None

    def release(self, lock: redis.lock.Lock) -> bool:
        try:
            lock.release()
        except redis.exceptions.LockNotOwnedError:
            return False
        return True

    def key(self, rid: int) -> str:
        return f"{self.namespace}:lock:{rid}"

    @staticmethod
    def token(lock: Any) -> int | None:
        return None

    def close(self) -> None:
        return None


class PythonRedisLock:
    name = PYTHON_REDIS_LOCK

    def __init__(
        self, client: redis.Redis, namespace: str, ttl: float = TTL, renew: bool = False, **timing: float
    ) -> None:
        import redis_lock

        logging.getLogger("redis_lock").setLevel(logging.ERROR)
        self.module, self.client, self.namespace, self.ttl, self.renew = redis_lock, client, namespace, ttl, renew

    def acquire(self, rid: int, wait: float = LONG) -> Any:
        # No timeout: above `expire` it raises TimeoutTooLarge; without one it blocks until acquired.
        lock = self.module.Lock(self.client, f"{self.namespace}:{rid}", expire=int(self.ttl), auto_renewal=self.renew)
        return lock if lock.acquire(blocking=True) else None

    def release(self, lock: Any) -> bool:
        try:
            lock.release()
        except self.module.NotAcquired:
            return False
        return True

    def key(self, rid: int) -> str:
        return f"lock:{self.namespace}:{rid}"  # python-redis-lock prefixes its keys with "lock:"

    @staticmethod
    def token(lock: Any) -> int | None:
        return None

    def close(self) -> None:
        return None


IMPL_CLASSES: dict[str, Callable[..., Any]] = {
    PYLIVERMORE: Livermore,
    REDIS_PY: RedisPyLock,
    PYTHON_REDIS_LOCK: PythonRedisLock,
}


def takeover_impl(name: str, client: redis.Redis, namespace: str) -> Any:
    """The implementation as the takeover part builds it (short TTL; the holder renews where it can)."""
    if name == PYLIVERMORE:
        return Livermore(
            client,
            namespace,
            ttl=TAKEOVER_TTL,
            heartbeat_interval=TAKEOVER_HEARTBEAT,
            renew_deadline=TAKEOVER_DEADLINE,
        )
    return IMPL_CLASSES[name](client, namespace, ttl=TAKEOVER_TTL, renew=True)


# -- worker processes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitJob:
    """One waiter's handoff loop (*kind* "handoff"), a takeover holder ("hold": acquire, say so,
    then sleep until killed) or a takeover waiter ("takeover": one acquire)."""

    kind: str
    impl: str
    url: str
    namespace: str
    worker: int = 0
    start_ns: int = 0  # time.monotonic_ns(): CLOCK_MONOTONIC, the same clock in every process
    duration: float = 0.0
    seed: int = 0
    hold: float = HOLD


_clients: dict[str, redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = sync_client(url, socket_timeout=SOCKET_TIMEOUT)
    return client


def run_handoff(job: WaitJob) -> dict[str, Any]:
    """One waiter's loop (see the module docstring, part 1), in its own process."""
    impl = IMPL_CLASSES[job.impl](_client(job.url), job.namespace)
    rng = random.Random(job.seed * 1_000_003 + job.worker)
    clock, sleep = time.monotonic_ns, time.sleep
    records: list[tuple[int, int, int, int | None]] = []  # (wait started, acquired, release sent, token)
    timeouts = lost = 0
    try:
        warm = impl.acquire(WARMUP + job.worker, wait=1.0)
        if warm is not None:
            impl.release(warm)
        late = clock() - job.start_ns
        if late < 0:
            sleep(-late / 1e9)
        end = job.start_ns + int(job.duration * 1e9)
        while True:
            t_wait = clock()
            if t_wait >= end:
                break
            handle = impl.acquire(1)
            t_acquired = clock()
            if handle is None:
                timeouts += 1
                continue
            if t_acquired < end:
                sleep(job.hold)
            t_release = clock()
            if not impl.release(handle):
                lost += 1
            records.append((t_wait, t_acquired, t_release, impl.token(handle)))
            sleep(rng.uniform(*PAUSE))
    finally:
        impl.close()
    return {
        "worker": job.worker,
        "records": records,
        "timeouts": timeouts,
        "lost": lost,
        "late_ms": max(0, late) / 1e6,
    }


def run_takeover_waiter(job: WaitJob, conn: multiprocessing.connection.Connection) -> dict[str, Any]:
    impl = takeover_impl(job.impl, _client(job.url), job.namespace)
    try:
        t_wait = time.monotonic_ns()
        conn.send({"waiting": t_wait})
        handle = impl.acquire(1)
        t_acquired = time.monotonic_ns()
        if handle is None:
            return {"failed": f"the waiter gave up after {LONG:g} s"}
        impl.release(handle)
        return {"t_wait": t_wait, "t_acquired": t_acquired, "token": impl.token(handle)}
    finally:
        impl.close()


def _reacquire_every(lock: redis.lock.Lock, interval: float) -> None:
    while True:
        time.sleep(interval)
        lock.reacquire()  # the TTL back to the lock's full timeout


def hold_until_killed(job: WaitJob, conn: multiprocessing.connection.Connection) -> None:
    impl = takeover_impl(job.impl, _client(job.url), job.namespace)
    handle = impl.acquire(1, wait=5.0)
    if handle is not None and job.impl == REDIS_PY:  # redis-py's Lock renews nothing itself: what users add
        threading.Thread(target=_reacquire_every, args=(handle, TAKEOVER_HEARTBEAT), daemon=True).start()
    conn.send({"held": handle is not None, "token": None if handle is None else impl.token(handle)})
    while True:  # the heartbeat (pylivermore) or the renewal thread (python-redis-lock) runs on
        time.sleep(3600)


def serve_wait(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: run jobs until told to stop, until the parent goes away, or until killed."""
    try:
        conn.send("ready")
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                for client in _clients.values():
                    client.close()
                conn.close()
                os._exit(0)
            try:
                if job.kind == "hold":
                    hold_until_killed(job, conn)
                result = run_handoff(job) if job.kind == "handoff" else run_takeover_waiter(job, conn)
            except Exception as exc:
                result = {"failed": f"{type(exc).__name__}: {exc}"}
            conn.send(result)
    except KeyboardInterrupt:
        return


def start_delay(workers: int) -> float:
    """Seconds from sending a round's jobs to its common start (each process builds and warms up)."""
    return 0.15 + 0.005 * workers


# -- 1. handoff --------------------------------------------------------------------------------------------


def jain(counts: Sequence[int]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one took everything."""
    total, squares = sum(counts), sum(c * c for c in counts)
    return total * total / (len(counts) * squares) if squares else math.nan


def summarize_handoff(impl: str, waiters: int, rounds: list[tuple[WaitJob, list[dict[str, Any]]]]) -> dict[str, Any]:
    """One implementation over its rounds: handoff latencies, fairness, overlaps."""
    failed = [r["failed"] for _, rs in rounds for r in rs if "failed" in r]
    latencies: list[float] = []
    to_other: list[float] = []
    waits: list[float] = []
    same = 0
    per_worker = dict.fromkeys(range(waiters), 0)
    checks = []
    seconds = 0.0
    for job, rs in rounds:
        end = job.start_ns + int(job.duration * 1e9)
        seconds += job.duration
        recs = sorted(
            (rec[1], rec[2], r["worker"], rec[0], rec[3]) for r in rs if "records" in r for rec in r["records"]
        )
        checks.append(check_intervals((0, a / 1e9, b / 1e9, w, tok) for a, b, w, _, tok in recs))
        waits += [(a - t_wait) / 1e6 for a, _, _, t_wait, _ in recs]
        for a, _, w, _, _ in recs:
            if a < end:
                per_worker[w] += 1
        for prev, nxt in itertools.pairwise(recs):
            if nxt[0] >= end:
                break
            ms = (nxt[0] - prev[1]) / 1e6
            latencies.append(ms)
            if nxt[2] == prev[2]:
                same += 1
            else:
                to_other.append(ms)
    latencies.sort()
    to_other.sort()
    counts = list(per_worker.values())
    acquisitions = sum(counts)
    if not failed and not latencies:
        failed.append("no handoff happened: nothing to measure")
    return {
        "impl": impl,
        "waiters": waiters,
        "seconds": seconds,
        "rounds": len(rounds),
        "acquisitions": acquisitions,
        "acquisitions_per_s": acquisitions / seconds if seconds else 0.0,
        "handoffs": len(latencies),
        "handoff_ms": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": latencies[-1] if latencies else math.nan,
        },
        "to_other_ms": {
            "count": len(to_other),
            "p50": percentile(to_other, 50),
            "p99": percentile(to_other, 99),
        },
        "same_waiter_share": same / len(latencies) if latencies else math.nan,
        "per_waiter": {
            "min": min(counts),
            "max": max(counts),
            "stdev": statistics.pstdev(counts),
            "jain": jain(counts),
        },
        "longest_wait_ms": max(waits, default=math.nan),
        "timeouts": sum(r.get("timeouts", 0) for _, rs in rounds for r in rs),
        "lost": sum(r.get("lost", 0) for _, rs in rounds for r in rs),
        "late_ms_max": max((r.get("late_ms", 0.0) for _, rs in rounds for r in rs), default=0.0),
        "invariant": merge_checks(checks),
        "failed": failed,
    }


def handoff(
    url: str,
    pool: ProcessPool,
    *,
    impls: Sequence[str],
    waiters: int,
    duration: float,
    rounds: int,
    hold: float = HOLD,
    seed: int = 1,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    admin = sync_client(url)
    parts: dict[str, list[tuple[WaitJob, list[dict[str, Any]]]]] = {i: [] for i in impls}
    try:
        for k in range(rounds):
            for impl in [impls[(k + i) % len(impls)] for i in range(len(impls))]:
                admin.flushall()
                base = WaitJob(
                    kind="handoff",
                    impl=impl,
                    url=url,
                    namespace=f"w{k}-{impl.split()[0]}",
                    start_ns=time.monotonic_ns() + int(start_delay(waiters) * 1e9),
                    duration=duration / rounds,
                    seed=seed + k,
                    hold=hold,
                )
                jobs = [WaitJob(**{**base.__dict__, "worker": i}) for i in range(waiters)]
                results = pool.run(jobs, timeout=start_delay(waiters) + duration / rounds + LONG + 10)
                parts[impl].append((base, results))
        admin.flushall()
    finally:
        admin.close()
    runs = []
    for impl in impls:
        run = summarize_handoff(impl, waiters, parts[impl])
        runs.append(run)
        h, pw = run["handoff_ms"], run["per_waiter"]
        log(
            f"   handoff W={waiters} {impl:<18} p50 {h['p50']:6.2f} ms  p99 {h['p99']:7.2f} ms  "
            f"max {h['max']:7.1f} ms  "
            f"{run['acquisitions_per_s']:6.1f} acq/s  per waiter {pw['min']}-{pw['max']} (Jain {pw['jain']:.3f})  "
            f"longest wait {run['longest_wait_ms']:.0f} ms  overlaps {run['invariant']['violations']}"
            + (f"  FAILED {run['failed']}" if run["failed"] else "")
        )
    return runs


# -- 2. takeover after a killed holder ---------------------------------------------------------------------


def _pttl_at(admin: redis.Redis, key: str) -> tuple[int, int]:
    """(monotonic ns at the middle of the round trip, PTTL ms) of *key*."""
    t0 = time.monotonic_ns()
    pttl = admin.pttl(key)
    t1 = time.monotonic_ns()
    return (t0 + t1) // 2, pttl


def _blocked(admin: redis.Redis, commands: set[str]) -> bool:
    return any(c.get("cmd") in commands and "b" in c.get("flags", "") for c in admin.client_list())


#: The command a blocked waiter sits in, per implementation (the poller never blocks).
BLOCKED_IN = {PYLIVERMORE: {"xread"}, PYTHON_REDIS_LOCK: {"blpop"}, REDIS_PY: set()}


def takeover_once(
    url: str, pool: ProcessPool, impl: str, waiter: int, holder: int, namespace: str, offset: float, kill_after: float
) -> dict[str, Any]:
    """One takeover: pool process *holder* acquires, *offset* seconds later pool process *waiter*
    starts waiting for it, and *kill_after* seconds after it is seen waiting the holder is killed."""
    admin = sync_client(url)
    key = takeover_impl(impl, admin, namespace).key(1)
    hconn, wconn = pool.conns[holder], pool.conns[waiter]
    try:
        hconn.send(WaitJob(kind="hold", impl=impl, url=url, namespace=namespace))
        if not hconn.poll(10):
            return {"failed": "the holder did not answer"}
        held = hconn.recv()
        if not held.get("held"):
            return {"failed": f"the holder did not acquire: {held}"}
        time.sleep(offset)  # the waiter's retry cycle out of phase with the holder's renewals
        wconn.send(WaitJob(kind="takeover", impl=impl, url=url, namespace=namespace))
        if not wconn.poll(10):
            return {"failed": "the waiter did not start"}
        wconn.recv()  # {"waiting": t}
        deadline = time.monotonic() + 2.0
        if BLOCKED_IN[impl]:
            while not _blocked(admin, BLOCKED_IN[impl]) and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            time.sleep(0.05)  # the poller: its first try failed, it sleeps between tries
        time.sleep(kill_after)
        before = _pttl_at(admin, key)
        t_kill = time.monotonic_ns()
        pool.procs[holder].kill()
        pool.procs[holder].join(5)
        after = _pttl_at(admin, key)
        if not wconn.poll(LONG + 10):
            return {"failed": "the waiter did not take over"}
        got = wconn.recv()
    finally:
        admin.close()
    if "failed" in got:
        return got
    t_pttl, pttl = after if after[1] >= 0 else before
    expiry = t_pttl + pttl * 1_000_000
    return {
        "impl": impl,
        "pttl_before_kill_ms": before[1],
        "renewed_after_read": after[1] >= 0 and abs((after[0] + after[1] * 1e6) - (before[0] + before[1] * 1e6)) > 5e6,
        "kill_to_expiry_ms": (expiry - t_kill) / 1e6,
        "takeover_delay_ms": (got["t_acquired"] - expiry) / 1e6,
        "kill_to_acquired_ms": (got["t_acquired"] - t_kill) / 1e6,
        "waited_ms": (got["t_acquired"] - got["t_wait"]) / 1e6,
    }


def takeover(
    url: str, pool: ProcessPool, *, impls: Sequence[str], reps: int, seed: int = 1, log: Callable[[str], None]
) -> dict[str, Any]:
    """*reps* takeovers per implementation, the order rotated every repetition; pool process 0 is
    the waiter, a new pool process the holder each time (it is killed)."""
    by_impl: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    spare = iter(range(1, len(pool.procs)))
    rng = random.Random(seed)
    for k in range(reps):
        for impl in [impls[(k + i) % len(impls)] for i in range(len(impls))]:
            kill_after = rng.uniform(0, TAKEOVER_TTL)  # the kill at any point of a renewal cycle
            offset = rng.uniform(0, TAKEOVER_HEARTBEAT)
            result = takeover_once(url, pool, impl, 0, next(spare), f"t{k}-{impl.split()[0]}", offset, kill_after)
            result["kill_after_s"] = kill_after
            by_impl[impl].append(result)
    runs = {}
    for impl, results in by_impl.items():
        ok = [r for r in results if "failed" not in r]
        delays = sorted(r["takeover_delay_ms"] for r in ok)
        runs[impl] = {
            "reps": results,
            "takeovers": len(ok),
            "delay_ms": {
                "median": statistics.median(delays) if delays else math.nan,
                "max": delays[-1] if delays else math.nan,
                "min": delays[0] if delays else math.nan,
            },
            "kill_to_acquired_ms_median": statistics.median(r["kill_to_acquired_ms"] for r in ok) if ok else math.nan,
            "failed": [r["failed"] for r in results if "failed" in r],
        }
        d = runs[impl]["delay_ms"]
        log(
            f"   takeover {impl:<18} delay after expiry: median {d['median']:7.1f} ms  max {d['max']:7.1f} ms  "
            f"({len(ok)}/{len(results)} took over)"
            + (f"  FAILED {runs[impl]['failed']}" if runs[impl]["failed"] else "")
        )
    return {
        "ttl_s": TAKEOVER_TTL,
        "heartbeat_interval_s": TAKEOVER_HEARTBEAT,
        "renew_deadline_s": TAKEOVER_DEADLINE,
        "runs": runs,
    }


# -- 3. standby: a sketch --------------------------------------------------------------------------------


def standby(
    registry: Registry,
    exchange_id: int,
    name: str,
    serve: Callable[[Lease], object],
    *,
    stop: threading.Event,
    wait: float = 60.0,
) -> None:
    """A warm standby (a sketch, not measured): hold nothing while another owner lives, take over
    within milliseconds of its release or once its record expires, serve, and wait again when the
    lease ends (released, lost, or *serve* returned); until *stop* is set. *serve* should return
    soon after ``stop`` is set or ``lease.ensure_held()`` raises."""
    while not stop.is_set():
        lease = registry.try_claim(exchange_id, name, wait=wait)  # None: still held after *wait*
        if lease is None:
            continue
        with lease:
            serve(lease)


# -- everything, and its report ---------------------------------------------------------------------------


def run_wait(
    url: str,
    *,
    waiters: int = 16,
    duration: float = 6.0,
    rounds: int = 2,
    reps: int = 3,
    hold: float = HOLD,
    impls: Sequence[str] = (PYLIVERMORE, REDIS_PY, PYTHON_REDIS_LOCK),
    skip: Sequence[str] = (),
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Both parts on the server at *url* (which must allow FLUSHALL). *duration*: seconds per
    implementation in the handoff part, in *rounds* interleaved rounds; *reps*: takeovers each."""
    impls, notes = available(impls)
    for note in notes:
        log(f"   NOTE: {note}")
    data: dict[str, Any] = {
        "impls": list(impls),
        "notes": notes,
        "waiters": waiters,
        "duration_s": duration,
        "rounds": rounds,
        "hold_ms": hold * 1000,
        "pause_ms": [x * 1000 for x in PAUSE],
        "reps": reps,
    }
    size = max(waiters if "handoff" not in skip else 1, 1 + (0 if "takeover" in skip else reps * len(impls)))
    t0 = time.monotonic()
    pool = ProcessPool(size, target=serve_wait)
    log(f"   {size} worker processes started in {time.monotonic() - t0:.1f} s")
    try:
        if "handoff" not in skip:
            data["handoff"] = handoff(
                url, pool, impls=impls, waiters=waiters, duration=duration, rounds=rounds, hold=hold, log=log
            )
        if "takeover" not in skip:
            data["takeover"] = takeover(url, pool, impls=impls, reps=reps, log=log)
    finally:
        pool.close()
        admin = sync_client(url)
        admin.flushall()
        admin.close()
    return data


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:,.0f}"


def markdown(data: dict[str, Any]) -> str:
    parts = [f"**Note:** {note}\n" for note in data.get("notes", [])]
    runs = data.get("handoff")
    if runs:
        rows = []
        for r in runs:
            inv = r["invariant"]
            overlaps = f"{inv['violations']:,}" + (
                f" (max {inv['max_overlap_ms']:.1f} ms)" if inv["violations"] else ""
            )
            if inv["fencing"] is not None:
                bad = inv["fencing"]["not_increasing"]
                overlaps += "; fencing increasing" if bad == 0 else f"; fencing {bad} out of order"
            h, o, pw = r["handoff_ms"], r["to_other_ms"], r["per_waiter"]
            rows.append(
                [
                    r["impl"] + (" FAILED" if r["failed"] else ""),
                    f"{r['handoffs']:,}",
                    f"{_ms(h['p50'])} / {_ms(h['p99'])} / {_ms(h['max'])}",
                    f"{_ms(o['p50'])} / {_ms(o['p99'])}",
                    f"{r['acquisitions_per_s']:,.0f}",
                    f"{pw['min']}-{pw['max']} (sd {pw['stdev']:.1f})",
                    f"{pw['jain']:.3f}",
                    f"{r['same_waiter_share'] * 100:.0f} %",
                    _ms(r["longest_wait_ms"]),
                    overlaps,
                ]
            )
        parts += [
            f"### Waiting: handoff with {data['waiters']} waiters on one resource (one sync process each; "
            f"hold {data['hold_ms']:g} ms, pause {data['pause_ms'][0]:g}-{data['pause_ms'][1]:g} ms; "
            f"T = {data['duration_s']:g} s per implementation in {data['rounds']} interleaved rounds)\n",
            _table(
                [
                    "implementation",
                    "handoffs",
                    "handoff ms p50 / p99 / max",
                    "to another waiter ms p50 / p99",
                    "acquisitions/s",
                    "per waiter min-max",
                    "Jain",
                    "back to the releaser",
                    "longest wait, ms",
                    "overlaps",
                ],
                rows,
            ),
            "\nHandoff = next holder's acquire returned - previous holder's release sent. "
            "pylivermore: `claim(wait=…)` (XREAD BLOCK on the log; target p99 ≤ 50 ms); "
            "redis-py Lock: retries every 0.1 s (its default); python-redis-lock: BLPOP, one waiter woken "
            "per release. Jain 1.0 = every waiter got the same share.\n",
        ]
    t = data.get("takeover")
    if t:
        rows = []
        for impl, r in t["runs"].items():
            reps = [x for x in r["reps"] if "failed" not in x]
            d = r["delay_ms"]
            rows.append(
                [
                    impl + (" FAILED" if r["failed"] else ""),
                    f"{r['takeovers']}/{len(r['reps'])}",
                    f"{_ms(d['median'])} / {_ms(d['max'])}",
                    ", ".join(_ms(x["takeover_delay_ms"]) for x in reps),
                    _ms(r["kill_to_acquired_ms_median"]),
                ]
            )
        parts += [
            f"### Waiting: takeover after a killed holder (SIGKILL; TTL {t['ttl_s']:g} s; pylivermore heartbeat "
            f"every {t['heartbeat_interval_s']:g} s, redis-py Lock reacquire() every {t['heartbeat_interval_s']:g} s, "
            "python-redis-lock auto-renewal; the kill 0-1 s after the waiter started waiting)\n",
            _table(
                [
                    "implementation",
                    "took over",
                    "delay after expiry ms, median / max",
                    "each repetition, ms",
                    "kill → acquired ms, median",
                ],
                rows,
            ),
            "\nExpiry = time of a PTTL read after the kill + PTTL. Target (pylivermore): ≤ 1,000 ms after expiry.\n",
        ]
    return "\n".join(parts)


def headline(data: dict[str, Any]) -> list[str]:
    """One line per implementation: handoff p50/p99, takeover delay."""
    lines = []
    take = data.get("takeover", {}).get("runs", {})
    for r in data.get("handoff", []):
        h = r["handoff_ms"]
        line = f"wait {r['impl']}: handoff p50 {_ms(h['p50'])} ms, p99 {_ms(h['p99'])} ms (W={r['waiters']})"
        if r["impl"] in take:
            line += f"; takeover {_ms(take[r['impl']]['delay_ms']['median'])} ms after expiry (median)"
        lines.append(line)
    return lines


def failures(data: dict[str, Any]) -> list[str]:
    """Runs without figures worth reporting (a worker crashed or hung, no handoff, no takeover).
    Overlaps are results: the tables report them."""
    out = [f"wait handoff {r['impl']}: {'; '.join(r['failed'])}" for r in data.get("handoff", []) if r["failed"]]
    for impl, r in data.get("takeover", {}).get("runs", {}).items():
        if r["failed"]:
            out.append(f"wait takeover {impl}: {'; '.join(r['failed'])}")
    return out


def main() -> int:
    from pylivermore.server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiters", type=int, default=16, help="handoff: waiter processes on one resource")
    parser.add_argument("--duration", type=float, default=6.0, help="handoff: seconds per implementation")
    parser.add_argument("--rounds", type=int, default=2, help="handoff: interleaved rounds")
    parser.add_argument("--hold-ms", type=float, default=HOLD * 1000, help="handoff: hold time")
    parser.add_argument("--reps", type=int, default=3, help="takeover: repetitions per implementation")
    parser.add_argument(
        "--impls", default=",".join(IMPLS_BY_NAME), help=f"comma-separated, from {', '.join(IMPLS_BY_NAME)}"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: handoff, takeover")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    names = [n for n in args.impls.split(",") if n]
    unknown = [n for n in names if n not in IMPLS_BY_NAME]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}; choose from {list(IMPLS_BY_NAME)}")
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server: FLUSHALL, CLIENT LIST
    with RedisServer() as server:
        data = run_wait(
            server.url,
            waiters=args.waiters,
            duration=args.duration,
            rounds=args.rounds,
            reps=args.reps,
            hold=args.hold_ms / 1000,
            impls=[IMPLS_BY_NAME[n] for n in names],
            skip=[s for s in args.skip.split(",") if s],
        )
    print(markdown(data))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(data, fh)
    bad = failures(data)
    for line in bad:
        print(f"FAILED {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
