"""All of pylivermore's benchmarks in one run, on one private redis-server, side by side:

1. per operation (``bench_ops.py``): each operation next to the raw command of the same shape;
2. contention (``bench_contention.py``): pylivermore, a port of the seed's original logic, an
   optimistic WATCH/MULTI/EXEC implementation and redis-py's ``Lock`` + plain status writes,
   on the grid W workers x R resources, same workload, same retry pacing;
3. many leases (``bench_many.py``): renewing and listing 10,000 leases held by one process;
4. locks (``bench_locks.py``): the locks people use today (redis-py's ``Lock``,
   python-redis-lock, raw ``SET NX PX``) next to pylivermore's claim + release on one connection
   and in a bare contention loop of W sync worker processes, overlaps checked for every
   implementation; and a failed claim's server cost next to a failed ``SET NX``;
5. waiting (``bench_wait.py``): ``claim(..., wait=...)`` next to redis-py's polling ``Lock`` and
   python-redis-lock's ``BLPOP``: handoff latency and fairness with W waiter processes on one
   resource, and the takeover delay after a holder is killed (``SIGKILL``).

Modes: ``--smoke`` (seconds; for CI; the lock contention with W = 4 and 8 processes, 4 waiters), the default
quick form (``make bench``, under 3 minutes on 2 cores; the contention grid without its
W = 1 R = 8 cell), ``--full`` (T = 20 s per contention run, the whole grid, more repetitions). Writes ``bench.json``,
``bench.md`` and, with matplotlib installed (``pip install -e '.[bench]'``), PNG plots into
``--out`` (default ``benchmarks/out``). Only ratios within one run mean anything: the machine
may be shared.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from typing import Any

import bench_locks
import bench_ops
import bench_wait
import redis
import report
from bench_contention import int_list, run_contention
from bench_many import run_many
from impls import DEFAULT_IMPLS, IMPLS

from pylivermore.server import RedisServer

MODES: dict[str, dict[str, Any]] = {
    "smoke": {
        "duration": 0.2,
        "rounds": 1,
        "leases": 1000,
        "repeats": 1,
        "interval": 1.0,
        "ops_seconds": 0.1,
        "server_calls": 200,
        "skip_cells": [],
        "locks_seconds": 0.05,
        "locks_duration": 0.3,
        "locks_rounds": 1,
        "locks_workers": [4, 8],
        "wait_waiters": 4,
        "wait_duration": 0.6,
        "wait_rounds": 1,
        "wait_reps": 1,
    },
    "quick": {
        "duration": 1.5,  # the lifecycle grid; with the lock and waiting parts, make bench stays < 3 min
        "rounds": 2,
        "leases": 10_000,
        "repeats": 3,
        "interval": 3.0,
        "ops_seconds": 1.0,
        "server_calls": 2000,
        "skip_cells": [(1, 8)],  # the same workload as W = 1 R = 1; --full runs it
        "locks_seconds": 1.0,
        "locks_duration": 3.0,
        "locks_rounds": 2,
        "locks_workers": [16, 64],
        "wait_waiters": 16,
        "wait_duration": 2.4,
        "wait_rounds": 2,
        "wait_reps": 3,
    },
    "full": {
        "duration": 20.0,
        "rounds": 4,
        "leases": 10_000,
        "repeats": 7,
        "interval": 5.0,
        "ops_seconds": 3.0,
        "server_calls": 5000,
        "skip_cells": [],
        "locks_seconds": 3.0,
        "locks_duration": 20.0,
        "locks_rounds": 4,
        "locks_workers": [16, 64],
        "wait_waiters": 16,
        "wait_duration": 20.0,
        "wait_rounds": 4,
        "wait_reps": 5,
    },
}
HERE = os.path.dirname(os.path.abspath(__file__))


def machine(server: RedisServer) -> str:
    try:
        import hiredis

        hiredis_version = hiredis.__version__
    except ImportError:
        hiredis_version = "none"
    server_version = ".".join(str(p) for p in server.version)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"redis-py {redis.__version__} + hiredis {hiredis_version}, {os.path.basename(server.binary)} "
        f"{server_version}; load average at start {load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="seconds, for CI")
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="the default (make bench)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="T = 20 s per contention run")
    parser.add_argument("--duration", type=float, help="seconds per implementation and grid cell (T)")
    parser.add_argument("--rounds", type=int, help="T is split into this many interleaved rounds")
    parser.add_argument("--workers", type=int_list, help="W values, comma-separated (default 1,8,64)")
    parser.add_argument("--resources", type=int_list, help="R values, comma-separated (default 1,8)")
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"comma-separated, from {', '.join(IMPLS)}")
    parser.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="worker processes at most")
    parser.add_argument("--pace-ms", type=float, default=2.0, help="sleep after a conflict (fixed part)")
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="sleep after a conflict (random part, uniform)")
    parser.add_argument("--leases", type=int, help="leases held by one process in the many-lease benchmark")
    parser.add_argument("--repeats", type=int, help="repetitions of each many-lease measurement (median)")
    parser.add_argument("--ops-seconds", type=float, help="seconds per per-operation measurement (0: skip)")
    parser.add_argument("--locks-seconds", type=float, help="locks: seconds per one-connection loop")
    parser.add_argument("--locks-duration", type=float, help="locks: contention seconds per implementation and W")
    parser.add_argument("--locks-rounds", type=int, help="locks: contention rounds")
    parser.add_argument("--locks-workers", type=int_list, help="locks: contention W values (one process each)")
    parser.add_argument(
        "--try-claim",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="locks: pylivermore's loops use registry.try_claim() (default), or claim() + except ClaimConflictError",
    )
    parser.add_argument("--wait-waiters", type=int, help="waiting: waiter processes on one resource")
    parser.add_argument("--wait-duration", type=float, help="waiting: handoff seconds per implementation")
    parser.add_argument("--wait-rounds", type=int, help="waiting: handoff rounds")
    parser.add_argument("--wait-reps", type=int, help="waiting: takeovers per implementation")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ops, locks, wait, contention, many")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="directory for JSON, Markdown, PNG")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    preset = MODES[args.mode or "quick"]
    duration = args.duration if args.duration is not None else preset["duration"]
    rounds = args.rounds if args.rounds is not None else preset["rounds"]
    leases = args.leases if args.leases is not None else preset["leases"]
    repeats = args.repeats if args.repeats is not None else preset["repeats"]
    ops_seconds = args.ops_seconds if args.ops_seconds is not None else preset["ops_seconds"]
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}; choose from {list(IMPLS)}")
    skip = {s for s in args.skip.split(",") if s}
    locks = {
        "seconds": args.locks_seconds if args.locks_seconds is not None else preset["locks_seconds"],
        "duration": args.locks_duration if args.locks_duration is not None else preset["locks_duration"],
        "rounds": args.locks_rounds if args.locks_rounds is not None else preset["locks_rounds"],
        "workers": args.locks_workers or preset["locks_workers"],
    }
    wait = {
        key: value if value is not None else preset[f"wait_{key}"]
        for key, value in (
            ("waiters", args.wait_waiters),
            ("duration", args.wait_duration),
            ("rounds", args.wait_rounds),
            ("reps", args.wait_reps),
        )
    }
    # The quick form leaves out some cells of the default grid (not of a grid given explicitly).
    explicit_grid = args.workers is not None or args.resources is not None
    skip_cells = [] if explicit_grid else [tuple(c) for c in preset["skip_cells"]]
    workers = args.workers or [1, 8, 64]
    resources = args.resources or [1, 8]

    # The baselines need commands a least-privilege test user lacks (WATCH, FLUSHALL, CONFIG):
    # this benchmark always runs its own plain server, whatever a test suite set for its servers.
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)
    started = time.monotonic()
    data: dict[str, Any] = {
        "mode": args.mode or "quick",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": duration,
            "rounds": rounds,
            "workers": workers,
            "resources": resources,
            "impls": impls,
            "procs": args.procs,
            "pace_ms": args.pace_ms,
            "jitter_ms": args.jitter_ms,
            "leases": leases,
            "repeats": repeats,
            "ops_seconds": ops_seconds,
            "skip_cells": skip_cells,
            "locks": {**locks, "try_claim": args.try_claim},
            "wait": wait,
        },
        "parts_seconds": {},
    }

    def part(name: str, since: float) -> None:
        data["parts_seconds"][name] = time.monotonic() - since
        print(f"   ({name}: {data['parts_seconds'][name]:.1f} s)", file=sys.stderr, flush=True)

    with RedisServer() as server:
        data["machine"] = machine(server)
        print(f"machine: {data['machine']}", file=sys.stderr)
        if ops_seconds > 0 and "ops" not in skip:
            print(f"-- per operation ({ops_seconds:g} s per measurement)", file=sys.stderr, flush=True)
            t = time.monotonic()
            data["ops"] = bench_ops.measure(server.url, ops_seconds, preset["server_calls"])
            part("ops", t)
        if "locks" not in skip:
            print(
                f"-- locks ({locks['seconds']:g} s per one-connection loop; contention W = "
                f"{', '.join(map(str, locks['workers']))}, T = {locks['duration']:g} s in {locks['rounds']} rounds)",
                file=sys.stderr,
                flush=True,
            )
            t = time.monotonic()
            data["locks"] = bench_locks.measure(
                server.url,
                seconds=locks["seconds"],
                duration=locks["duration"],
                rounds=locks["rounds"],
                calls=preset["server_calls"],
                workers=locks["workers"],
                try_claim=args.try_claim,
            )
            part("locks", t)
        if "wait" not in skip:
            print(
                f"-- waiting (handoff W = {wait['waiters']}, T = {wait['duration']:g} s in {wait['rounds']} rounds; "
                f"{wait['reps']} takeover(s) each)",
                file=sys.stderr,
                flush=True,
            )
            t = time.monotonic()
            data["wait"] = bench_wait.run_wait(
                server.url,
                waiters=wait["waiters"],
                duration=wait["duration"],
                rounds=wait["rounds"],
                reps=wait["reps"],
            )
            part("wait", t)
        if "contention" not in skip:
            print(f"-- contention (T = {duration:g} s per run, {rounds} rounds)", file=sys.stderr, flush=True)
            t = time.monotonic()
            data["contention"] = run_contention(
                server.url,
                impls=impls,
                workers=workers,
                resources=resources,
                duration=duration,
                rounds=rounds,
                procs=args.procs,
                pace=args.pace_ms / 1000,
                jitter=args.jitter_ms / 1000,
                skip_cells=skip_cells,
            )
            data["contention_ratios"] = report.contention_ratios(data["contention"])
            part("contention", t)
        if "many" not in skip:
            print(f"-- many leases ({leases:,})", file=sys.stderr, flush=True)
            t = time.monotonic()
            data["many"] = run_many(server.url, leases=leases, repeats=repeats, interval=preset["interval"])
            part("many", t)
    data["total_seconds"] = time.monotonic() - started

    json_path, md_path, pngs, note = report.write_reports(data, args.out, plots=not args.no_plots)
    print()
    print(report.markdown(data))
    print(f"total {data['total_seconds']:.1f} s; wrote {json_path}, {md_path}" + "".join(f", {p}" for p in pngs))
    if note:
        print(note)
    for line in bench_wait.headline(data.get("wait", {})):
        print(line)
    # A contention run that failed (a worker process crashed or hung, or a round did no work)
    # has no figures worth reporting: say which, and exit non-zero.
    failed = [r for r in data.get("contention", []) if r["failed"]]
    for r in failed:
        print(f"FAILED {r['impl']} W={r['workers']} R={r['resources']}: {'; '.join(r['failed'])}")
    failed_locks = bench_locks.failures(data.get("locks", {}))
    for line in failed_locks:
        print(f"FAILED {line}")
    failed_wait = bench_wait.failures(data.get("wait", {}))
    for line in failed_wait:
        print(f"FAILED {line}")
    return 1 if failed or failed_locks or failed_wait else 0


if __name__ == "__main__":
    sys.exit(main())
