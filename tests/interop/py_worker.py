"""A contention worker on pylivermore's public API, the Python half of the mixed-language test
(``test_mixed_contention.py``); ``tests/node/worker.mjs`` is the Node.js half. Both loop the same way
and write the same history format (``tests/chaos/runner.py``'s ``Recorder``: JSON lines of
``invoke``/``ok``/``fail``/``unknown`` and ``event`` records with ``time.monotonic_ns()`` times).

    python tests/interop/py_worker.py --url redis://127.0.0.1:6380/0 --namespace ns --resources 1,2 \\
        --seconds 8 --history FILE --name py-1 [--ttl 2000] [--heartbeat 400] [--deadline 1200]

Loop: claim a random resource (``Registry.claim``; its background thread renews the lease), walk
idle -> starting -> warming -> active with ``lease.transition``, hold 20-200 ms (with ``--long-hold P``,
with probability P longer than the TTL, so that only heartbeats keep the lease), walk active ->
stopping -> stopped and leave the ``with lease:`` block, which deregisters. On a conflict, back off
briefly. SIGTERM / SIGINT: finish the current lease, then exit.

The library renews in the background, out of sight of the public API, so the history cannot show
its heartbeats. Instead the worker reports the lease's *local deadline* as the library holds it:
its registry runs on a clock that one thread can pin to any instant (``Registry(clock=...)``), and a
bisection on ``lease.is_valid`` at pinned instants finds the deadline to 1 µs (``deadline`` events,
sampled every 50 ms while a lease is held, right after each successful ``ensure_held`` and right
before the release). The deadline only moves later while the lease is valid, so the largest sample
is a lower bound of the lease's final deadline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from typing import IO, Any

from redis.exceptions import RedisError

from pylivermore import ClaimConflictError, Lease, LeaseLostError, LivermoreError, Registry

WALK_UP = ("starting", "warming", "active")
WALK_DOWN = ("stopping", "stopped")


class Recorder:
    """One JSON object per line, written and flushed at once (thread-safe)."""

    def __init__(self, path: str, proc: str) -> None:
        self._f: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()
        self._lock = threading.Lock()
        self._ops = itertools.count(1)
        self.proc = proc
        self.pid = os.getpid()

    def write(self, kind: str, f: str, op: int | None, t: int, where: dict[str, Any], value: dict[str, Any]) -> None:
        rec = {"type": kind, "f": f, "op": op, "proc": self.proc, "pid": self.pid, "t": t, **where, "value": value}
        line = json.dumps(rec, separators=(",", ":"), default=str)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def invoke(self, f: str, where: dict[str, Any], **value: Any) -> int:
        op = next(self._ops)
        self.write("invoke", f, op, time.monotonic_ns(), where, value)
        return op

    def done(self, op: int, kind: str, f: str, where: dict[str, Any], **value: Any) -> None:
        self.write(kind, f, op, time.monotonic_ns(), where, value)

    def event(self, f: str, where: dict[str, Any] | None = None, t: int | None = None, **value: Any) -> None:
        at = time.monotonic_ns() if t is None else t
        self.write("event", f, None, at, {"resource": None, "lease": None, "token": None, **(where or {})}, value)

    def close(self) -> None:
        with self._lock:
            self._f.close()


class PinnableClock:
    """``time.monotonic``, except in a thread that pinned it: there it reads the pinned instant."""

    def __init__(self) -> None:
        self._pin = threading.local()

    def __call__(self) -> float:
        pinned: float | None = getattr(self._pin, "value", None)
        return time.monotonic() if pinned is None else pinned

    def valid_at(self, lease: Lease, t: float) -> bool:
        self._pin.value = t
        try:
            return lease.is_valid
        finally:
            self._pin.value = None

    def deadline_ns(self, lease: Lease, horizon: float) -> int | None:
        """The lease's local deadline (monotonic ns), or None when it is not valid now."""
        lo = time.monotonic()
        hi = lo + horizon
        if not self.valid_at(lease, lo) or self.valid_at(lease, hi):
            return None
        while hi - lo > 1e-6:
            mid = (lo + hi) / 2
            if self.valid_at(lease, mid):
                lo = mid
            else:
                hi = mid
        return int(hi * 1e9)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rec = Recorder(args.history, args.name)
        self.instance = f"{args.name}@{os.getpid()}"
        self.clock = PinnableClock()
        self.registry = Registry.from_url(
            args.url,
            namespace=args.namespace,
            ttl=args.ttl / 1000,
            heartbeat_interval=args.heartbeat / 1000,
            renew_deadline=args.deadline / 1000,
            instance_id=self.instance,
            hostname=socket.gethostname() or "py-host",
            clock=self.clock,
        )
        self.horizon = args.deadline / 1000 + 1.0
        self.end = time.monotonic() + args.seconds
        self.stopping = False
        self.rng = random.Random()
        # errors: replies outside the contract (a protocol bug); unknown: no reply (a timeout, ...)
        self.stats = {"claims": 0, "conflicts": 0, "released": 0, "lost": 0, "errors": 0, "unknown": 0}
        self.current: tuple[Lease, dict[str, Any]] | None = None
        self.last_sample: dict[str, int] = {}
        self._sampler_lock = threading.Lock()

    def alive(self) -> bool:
        return not self.stopping and time.monotonic() < self.end

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    # -- deadline samples ----------------------------------------------------------------------

    def sample(self, lease: Lease, where: dict[str, Any]) -> None:
        with self._sampler_lock:
            deadline = self.clock.deadline_ns(lease, self.horizon)
            # A renewal moves the deadline by about a heartbeat interval; the bisection's 1 µs jitter is no news.
            if deadline is not None and deadline > self.last_sample.get(where["lease"], 0) + 10_000:
                self.last_sample[where["lease"]] = deadline
                self.rec.event("deadline", where, deadline=deadline)

    def sampler(self) -> None:
        while True:
            time.sleep(0.05)
            current = self.current
            if current is not None:
                self.sample(*current)

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        self.rec.event("start", instance=self.instance, impl="python", deadline=int(self.end * 1e9))
        threading.Thread(target=self.sampler, name="deadline-sampler", daemon=True).start()
        while self.alive():
            resource = self.rng.choice(self.args.resources)
            claimed = self.claim(resource)
            if claimed is None:
                self.sleep(self.rng.uniform(0.03, 0.15))  # a conflict: back off briefly
                continue
            self.hold(*claimed)
            self.sleep(self.rng.uniform(0.0, 0.2))
        self.rec.event("exit")

    def claim(self, resource: str) -> tuple[Lease, dict[str, Any]] | None:
        op = self.rec.invoke("claim", {"resource": resource, "lease": None, "token": None})
        lease_id = f"{self.args.name}#{op}"
        where: dict[str, Any] = {"resource": resource, "lease": lease_id, "token": None}

        def on_lost(lease: Lease) -> None:
            self.stats["lost"] += 1
            self.rec.event("lost", {**where, "token": lease.fencing_token}, reason=lease.lost_reason)

        exchange_id: int | str = int(resource) if resource.isdigit() else resource
        try:
            lease = self.registry.claim(exchange_id, f"Exchange{resource}", on_lost=on_lost)
        except ClaimConflictError as exc:
            holder = exc.holder.instance_id if exc.holder is not None else None
            self.rec.done(op, "fail", "claim", where, error="conflict", holder=holder)
            self.stats["conflicts"] += 1
            return None
        except LivermoreError as exc:
            self.rec.done(op, "fail", "claim", where, error=f"{type(exc).__name__}: {exc}")
            self.stats["errors"] += 1
            return None
        except RedisError as exc:
            self.rec.done(op, "unknown", "claim", where, error=f"{type(exc).__name__}: {exc}")
            self.stats["unknown"] += 1
            return None
        where["token"] = lease.fencing_token
        self.rec.done(op, "ok", "claim", where, instance=self.instance)
        self.stats["claims"] += 1
        return lease, where

    def held(self, lease: Lease, where: dict[str, Any]) -> bool:
        before = time.monotonic_ns()  # ensure_held reads its clock after this
        try:
            lease.ensure_held()
        except LeaseLostError as exc:
            self.rec.event("held_check_failed", where, reason=exc.reason)
            return False
        self.rec.event("held", where, t=before)
        self.sample(lease, where)
        return True

    def step(self, lease: Lease, where: dict[str, Any], to: str) -> bool:
        if not self.held(lease, where):
            return False
        op = self.rec.invoke("transition", where, to=to)
        try:
            state = lease.transition(to)
        except LeaseLostError as exc:
            self.rec.done(op, "fail", "transition", where, error=f"lost:{exc.reason}")
            return False
        except LivermoreError as exc:
            self.rec.done(op, "fail", "transition", where, error=f"{type(exc).__name__}: {exc}")
            self.stats["errors"] += 1
            return False
        except RedisError as exc:
            self.rec.done(op, "unknown", "transition", where, error=f"{type(exc).__name__}: {exc}")
            self.stats["unknown"] += 1
            return False
        self.rec.done(op, "ok", "transition", where, state=str(state.value if hasattr(state, "value") else state))
        return True

    def hold(self, lease: Lease, where: dict[str, Any]) -> None:
        self.current = (lease, where)
        op = None
        try:
            with lease:
                ok = all(self.step(lease, where, to) for to in WALK_UP)
                if ok and self.held(lease, where):
                    if self.rng.random() < self.args.long_hold:
                        self.sleep(self.rng.uniform(self.args.ttl, 1.5 * self.args.ttl) / 1000)
                    else:
                        self.sleep(self.rng.uniform(0.02, 0.2))
                    all(self.step(lease, where, to) for to in WALK_DOWN)
                self.sample(lease, where)
                # Leaving the block deregisters (after walking to stopped where the table allows).
                op = self.rec.invoke("release", where)
                self.current = None
        except (LivermoreError, RedisError) as exc:
            if op is not None:
                self.rec.done(op, "unknown", "release", where, error=f"{type(exc).__name__}: {exc}")
            self.stats["errors" if isinstance(exc, LivermoreError) else "unknown"] += 1
            return
        finally:
            self.current = None
        released = lease.lost_reason == "released"
        self.stats["released"] += int(released)
        assert op is not None
        self.rec.done(op, "ok", "release", where, released=released, lost=lease.lost_reason)

    def close(self) -> None:
        self.registry.close()
        self.rec.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", default="exchange")
    p.add_argument("--resources", required=True, type=lambda s: [r for r in s.split(",") if r])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--history", required=True)
    p.add_argument("--name", default=f"py-{os.getpid()}")
    p.add_argument("--ttl", type=int, default=2000, help="ms")
    p.add_argument("--heartbeat", type=int, default=400, help="ms")
    p.add_argument("--deadline", type=int, default=1200, help="renew deadline, ms")
    p.add_argument("--long-hold", type=float, default=0.0, help="probability of holding longer than the TTL")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    worker = Worker(parse_args(argv))

    def stop(signum: int, frame: object) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        worker.run()
    finally:
        worker.close()
    print(json.dumps({"name": worker.args.name, **worker.stats}), flush=True)
    return 1 if worker.stats["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
