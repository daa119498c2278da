"""The benchmarks' smoke form (``benchmarks/bench.py --smoke``) runs to the end in a subprocess
and reports every implementation on every grid cell, with no violation for pylivermore, the
lock baselines (``bench_locks.py``): every ratio, and 0 overlaps for every lock implementation,
and the waiting part (``bench_wait.py``): handoffs with 0 overlaps and a takeover for each."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _require_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
IMPLS = ("pylivermore", "seed", "watch-multi", "redis-lock", "seed-multihost")
CELLS = {(w, r) for w in (1, 8, 64) for r in (1, 8)}


def test_bench_smoke(tmp_path: Path) -> None:
    _require_binary()
    # The benchmark starts its own plain server; the suite's least-privilege ACL must not reach it.
    env = {k: v for k, v in os.environ.items() if k != "PYLIVERMORE_REDIS_ARGS"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    results = tmp_path / "bench.json"
    assert results.exists(), f"the benchmark wrote no results (exit {proc.returncode}); {output}"

    data = json.loads(results.read_text())
    runs = data["contention"]
    # A cell that did no work (no claim succeeded, e.g. a worker process got its job late on a
    # loaded machine and made no attempt) is a failure the benchmark reports itself, by name.
    failed = {f"{r['impl']} W={r['workers']} R={r['resources']}": r["failed"] for r in runs if r["failed"]}
    assert not failed, failed
    assert proc.returncode == 0, output
    for impl in IMPLS:
        cells = {(r["workers"], r["resources"]) for r in runs if r["impl"] == impl}
        assert cells == CELLS, f"{impl}: missing grid cells {sorted(CELLS - cells)}"

    ours = [r for r in runs if r["impl"] == "pylivermore"]
    for run in ours:
        cell = f"W={run['workers']} R={run['resources']}"
        assert run["invariant"]["intervals"] > 0, f"{cell}: no ownership interval was recorded"
        assert run["invariant"]["violations"] == 0, cell
        fencing = run["invariant"]["fencing"]
        assert fencing is not None, f"{cell}: no interval carried a fencing token"
        assert fencing["not_increasing"] == 0, cell
        assert run["errors"] == 0, (cell, run["error_samples"])
        assert run["lost"] == 0, cell
    assert sum(r["lifecycles"] for r in ours) > 0
    # The checker is not vacuous: the seed's same-hostname self-reclaim does give two owners at once.
    assert sum(r["invariant"]["violations"] for r in runs if r["impl"] == "seed") > 0

    assert data["many"]["ratios"]
    assert all(v > 0 for v in data["many"]["ratios"].values())
    assert data["ops"]["ops_per_second"]["claim"] > 0
    # The floors pass their owner check and write (bench_ops verifies each window, or fails).
    floors = data["ops"]["server_usec_per_call"]
    assert {"floor: owner check + PEXPIRE", "floor: same + TIME + HSET lastHeartbeat"} <= set(floors)
    assert all(f["usec"] > 0 for f in floors.values())

    locks = data["locks"]
    lock_impls = [
        "pylivermore",
        "pylivermore, no history",
        "redis-py Lock",
        "raw SET NX PX",
        "floor: claim + release writes",
    ]
    if importlib.util.find_spec("redis_lock") is not None:
        lock_impls.append("python-redis-lock")
        assert not locks["notes"], locks["notes"]
    else:
        assert "python-redis-lock is not installed" in proc.stderr
    assert sorted(locks["impls"]) == sorted(lock_impls)
    one = locks["one_connection"]
    expected_ratios = {"claim + release / redis-py Lock acquire + release", "lease.heartbeat() / raw PEXPIRE"}
    assert expected_ratios <= set(one["ratios"])
    assert all(v > 0 for v in one["ratios"].values())
    expected_floors = {
        "pylivermore, no history / redis-py Lock acquire + release",
        "floor: claim + release writes / redis-py Lock acquire + release",
        "floor: claim + release writes, no history / redis-py Lock acquire + release",
        "floor: heartbeat / raw PEXPIRE",
    }
    assert set(one["floors"]) == expected_floors
    assert all(v > 0 for v in one["floors"].values())
    assert all(loop["ops_per_s"] > 0 and loop["cpu_us_per_op"] > 0 for loop in one["loops"].values())
    failed_claim = locks["failed_claim"]
    assert failed_claim["claim_usec"] > 0
    assert failed_claim["set_usec"] > 0
    assert failed_claim["set_calls"] == failed_claim["calls"]
    contention = locks["contention"]
    lock_workers = data["settings"]["locks"]["workers"]
    for impl in lock_impls:
        mine = {r["workers"]: r for r in contention["runs"] if r["impl"] == impl}
        assert sorted(mine) == sorted(lock_workers), impl
        for w, run in mine.items():
            cell = f"{impl} W={w}"
            assert not run["failed"], (cell, run["failed"])
            assert run["acquisitions"] > 0, cell
            assert run["invariant"]["intervals"] == run["acquisitions"], cell
            assert run["invariant"]["violations"] == 0, cell
            assert run["errors"] == 0, (cell, run["error_samples"])
            assert run["lost"] == 0, cell
            fencing = run["invariant"]["fencing"]
            if impl.startswith(("pylivermore", "floor")):
                assert fencing is not None, cell
                assert fencing["not_increasing"] == 0, cell
    for w in lock_workers:
        assert set(contention["ratios"][f"W={w}"]) == set(lock_impls) - {"pylivermore"}

    # Waiting (bench_wait.py): every implementation handed the resource over, with no overlap,
    # and every waiter took over from a killed holder. No latency bound: the machine may be loaded.
    wait = data["wait"]
    wait_impls = [i for i in lock_impls if i in ("pylivermore", "redis-py Lock", "python-redis-lock")]
    assert sorted(wait["impls"]) == sorted(wait_impls)
    handoffs = {r["impl"]: r for r in wait["handoff"]}
    assert sorted(handoffs) == sorted(wait_impls)
    for impl, run in handoffs.items():
        assert not run["failed"], (impl, run["failed"])
        assert run["handoffs"] > 0, impl
        assert run["invariant"]["intervals"] > run["handoffs"], impl
        assert run["invariant"]["violations"] == 0, impl
        assert run["lost"] == 0, impl
        assert run["timeouts"] == 0, impl
        assert run["waiters"] == data["settings"]["wait"]["waiters"], impl
    fencing = handoffs["pylivermore"]["invariant"]["fencing"]
    assert fencing is not None
    assert fencing["not_increasing"] == 0
    takeovers = wait["takeover"]["runs"]
    assert sorted(takeovers) == sorted(wait_impls)
    for impl, run in takeovers.items():
        assert not run["failed"], (impl, run["failed"])
        assert run["takeovers"] == len(run["reps"]) == data["settings"]["wait"]["reps"], impl

    markdown = (tmp_path / "bench.md").read_text()
    assert "Waiting: handoff with" in markdown
    assert "Waiting: takeover after a killed holder" in markdown
    assert "Locks, one connection" in markdown
    assert "A failed claim's server cost" in markdown
    assert "Locks under contention" in markdown
    assert markdown.count("pylivermore") >= len(CELLS)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "contention_throughput.png").stat().st_size > 0
        assert (tmp_path / "contention_latency.png").stat().st_size > 0
    else:
        assert "plots skipped" in proc.stdout
