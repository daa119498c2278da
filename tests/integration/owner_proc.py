"""An owner process for the process-fault tests (``test_process_faults.py``).

Run as ``python owner_proc.py --url URL --namespace NS --id ID --mode sync|async``. It claims the
resource with pylivermore, walks idle -> starting -> warming -> active, then idles, looking every
0.1 s at whether ``on_lost`` has fired. When it has, it acts as a worker that still believes it
owns the resource: it tries ``transition("stopping")``, ``set_symbol_count``, ``record_error`` and
``heartbeat()``, then ``release()``, and reports what each one did.

Every report is one JSON object on one line of stdout, flushed at once, with the ``time.monotonic()``
of this process (the same system-wide clock as the test's on Linux) in ``t``:

* ``{"event": "claimed", "fencing_token": N, "instance_id": S, "pid": P}``
* ``{"event": "transition", "state": S}`` for each step, then ``{"event": "ready"}``
* ``{"event": "lost", "reason": R, "lost_at": T, "is_valid": B}`` once ``on_lost`` has fired
* ``{"event": "transition_refused", "error": "LeaseLostError", "reason": R}`` (or ``op_succeeded`` /
  ``op_failed`` if the transition was not refused with ``LeaseLostError``), and ``op_refused`` /
  ``op_succeeded`` / ``op_failed`` for the other operations
* ``{"event": "released", "result": B}`` (or ``release_failed``), then ``{"event": "done", "on_lost_calls": N}``
* ``{"event": "lost_again", ...}`` if ``on_lost`` fires a second time; ``{"event": "error", ...}`` on a crash

It exits after ``--max-life`` seconds or when its parent process goes away, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from pylivermore import AsyncRegistry, LeaseLostError, Registry

STEPS = ("starting", "warming", "active")


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--name", default="OwnerProc")
    p.add_argument("--mode", choices=("sync", "async"), required=True)
    p.add_argument("--ttl", type=float, default=1.5)
    p.add_argument("--hb", type=float, default=0.5)
    p.add_argument("--deadline", type=float, default=1.0)
    p.add_argument("--max-life", type=float, default=30.0)
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "namespace": args.namespace,
        "ttl": args.ttl,
        "heartbeat_interval": args.hb,
        "renew_deadline": args.deadline,
    }


class LossWatch:
    """What ``on_lost`` saw: the monotonic time of each call and the lease's reason then."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []
        self.fired = threading.Event()

    def __call__(self, lease: Any) -> None:
        self.calls.append((time.monotonic(), lease.lost_reason))
        self.fired.set()


def report(name: str, result: object = None, exc: Exception | None = None) -> None:
    """Report what one owner operation did after the loss: refused (the expected outcome) or not."""
    if isinstance(exc, LeaseLostError):
        emit(
            "transition_refused" if name == "transition" else "op_refused",
            op=name,
            error="LeaseLostError",
            reason=exc.reason,
        )
    elif exc is not None:
        emit("op_failed", op=name, error=type(exc).__name__, message=str(exc))
    else:
        emit("op_succeeded", op=name, result=repr(result))


def should_run(end: float, parent: int) -> bool:
    return time.monotonic() < end and os.getppid() == parent


def run_sync(args: argparse.Namespace) -> None:
    registry = Registry.from_url(args.url, **options(args))
    watch = LossWatch()
    try:
        lease = registry.claim(args.id, args.name, on_lost=watch)
        emit("claimed", fencing_token=lease.fencing_token, instance_id=registry.instance_id, pid=os.getpid())
        for step in STEPS:
            emit("transition", state=lease.transition(step).value)
        emit("ready")
        end, parent, reported = time.monotonic() + args.max_life, os.getppid(), 0
        while should_run(end, parent):
            if watch.fired.is_set() and reported == 0:
                at, reason = watch.calls[0]
                emit("lost", reason=reason, lost_at=at, is_valid=lease.is_valid)
                for name, op in (
                    ("transition", lambda: lease.transition("stopping")),
                    ("set_symbol_count", lambda: lease.set_symbol_count(1)),
                    ("record_error", lambda: lease.record_error("stale owner woke up")),
                    ("heartbeat", lease.heartbeat),
                ):
                    try:
                        report(name, op())
                    except Exception as exc:
                        report(name, exc=exc)
                try:
                    emit("released", result=lease.release())
                except Exception as exc:
                    emit("release_failed", error=type(exc).__name__, message=str(exc))
                reported = len(watch.calls)
                emit("done", on_lost_calls=reported)
            elif reported and len(watch.calls) > reported:
                reported = len(watch.calls)
                emit("lost_again", on_lost_calls=reported)
            time.sleep(0.1)
    finally:
        registry.close()
        registry.client.close()


async def run_async(args: argparse.Namespace) -> None:
    registry = AsyncRegistry.from_url(args.url, **options(args))
    watch = LossWatch()
    try:
        lease = await registry.claim(args.id, args.name, on_lost=watch)
        emit("claimed", fencing_token=lease.fencing_token, instance_id=registry.instance_id, pid=os.getpid())
        for step in STEPS:
            emit("transition", state=(await lease.transition(step)).value)
        emit("ready")
        end, parent, reported = time.monotonic() + args.max_life, os.getppid(), 0
        while should_run(end, parent):
            if watch.fired.is_set() and reported == 0:
                at, reason = watch.calls[0]
                emit("lost", reason=reason, lost_at=at, is_valid=lease.is_valid)
                for name, aop in (
                    ("transition", lambda: lease.transition("stopping")),
                    ("set_symbol_count", lambda: lease.set_symbol_count(1)),
                    ("record_error", lambda: lease.record_error("stale owner woke up")),
                    ("heartbeat", lease.heartbeat),
                ):
                    try:
                        report(name, await aop())
                    except Exception as exc:
                        report(name, exc=exc)
                try:
                    emit("released", result=await lease.release())
                except Exception as exc:
                    emit("release_failed", error=type(exc).__name__, message=str(exc))
                reported = len(watch.calls)
                emit("done", on_lost_calls=reported)
            elif reported and len(watch.calls) > reported:
                reported = len(watch.calls)
                emit("lost_again", on_lost_calls=reported)
            await asyncio.sleep(0.1)
    finally:
        await registry.close()
        await registry.client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.mode == "sync":
            run_sync(args)
        else:
            asyncio.run(run_async(args))
    except Exception as exc:
        emit("error", error=type(exc).__name__, message=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
