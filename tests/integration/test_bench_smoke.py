"""The benchmarks' smoke form (``benchmarks/bench.py --smoke``) runs to the end in a subprocess
and reports every implementation on every grid cell, with no violation for pylivermore."""

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
    assert (tmp_path / "bench.md").read_text().count("pylivermore") >= len(CELLS)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "contention_throughput.png").stat().st_size > 0
        assert (tmp_path / "contention_latency.png").stat().st_size > 0
    else:
        assert "plots skipped" in proc.stdout
