"""An owner process that stops gracefully on SIGTERM, for the chaos test of P2.

Run as ``python owner_signals.py --url URL --namespace NS --id ID --mode sync|async``. It claims the
resource, and inside ``with lease:`` (``async with`` in asyncio mode) walks idle -> starting ->
warming -> active and waits. Its SIGTERM handler only records the time and sets a flag; the wait
then ends and the block exits normally, so the lease's ``__exit__`` walks to stopping and stopped
and deregisters (a token-checked delete). After the block it calls ``release()`` a second time,
which must be a no-op, and exits with status 0.

Every report is one JSON object on one line of stdout, flushed at once, with this process's
``time.monotonic()`` (system-wide on Linux) in ``t``:

* ``{"event": "claimed", "fencing_token": N, "instance_id": S, "pid": P}``
* ``{"event": "transition", "state": S}`` for each step, then ``{"event": "ready"}``
* ``{"event": "sigterm", "received_at": T}`` once the handler has run and the block is about to end
* ``{"event": "exited", "lost_reason": R, "state": S, "is_valid": B}`` after the block
* ``{"event": "released_again", "result": B}``, then ``{"event": "done"}``
* ``{"event": "error", ...}`` on a crash; ``{"event": "timeout"}`` if no SIGTERM came in ``--max-life``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from pylivermore import AsyncRegistry, Registry

STEPS = ("starting", "warming", "active")


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--url", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--name", default="SignalOwner")
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


def run_sync(args: argparse.Namespace) -> None:
    received: list[float] = []
    stop = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        received.append(time.monotonic())
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    registry = Registry.from_url(args.url, **options(args))
    try:
        lease = registry.claim(args.id, args.name)
        emit("claimed", fencing_token=lease.fencing_token, instance_id=registry.instance_id, pid=os.getpid())
        with lease:
            for step in STEPS:
                emit("transition", state=lease.transition(step).value)
            emit("ready")
            end, parent = time.monotonic() + args.max_life, os.getppid()
            while not stop.wait(0.02):
                if time.monotonic() > end or os.getppid() != parent:
                    emit("timeout")
                    break
            if received:
                emit("sigterm", received_at=received[0])
        emit("exited", lost_reason=lease.lost_reason, state=lease.state.value, is_valid=lease.is_valid)
        emit("released_again", result=lease.release())
        emit("done")
    finally:
        registry.close()
        registry.client.close()


async def run_async(args: argparse.Namespace) -> None:
    received: list[float] = []
    stop = asyncio.Event()

    def on_sigterm() -> None:
        received.append(time.monotonic())
        stop.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    registry = AsyncRegistry.from_url(args.url, **options(args))
    try:
        lease = await registry.claim(args.id, args.name)
        emit("claimed", fencing_token=lease.fencing_token, instance_id=registry.instance_id, pid=os.getpid())
        async with lease:
            for step in STEPS:
                emit("transition", state=(await lease.transition(step)).value)
            emit("ready")
            end, parent = time.monotonic() + args.max_life, os.getppid()
            while not stop.is_set():
                if time.monotonic() > end or os.getppid() != parent:
                    emit("timeout")
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
            if received:
                emit("sigterm", received_at=received[0])
        emit("exited", lost_reason=lease.lost_reason, state=lease.state.value, is_valid=lease.is_valid)
        emit("released_again", result=await lease.release())
        emit("done")
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
