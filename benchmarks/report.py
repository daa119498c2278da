"""Reports of a benchmark run: the JSON file, Markdown tables and PNG plots.

Plots need matplotlib (``pip install -e '.[bench]'``); without it they are skipped with a note.
Regenerate the tables and plots of a saved run: ``python benchmarks/report.py OUT/bench.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import bench_locks
import bench_wait
from bench_contention import HIST_EDGES

REFERENCE = "pylivermore"
LATENCY_OPS = ("claim", "conflict", "transition", "heartbeat", "release")


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(_clean(data), fh, indent=1, allow_nan=False)
        fh.write("\n")


def _n(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cells(runs: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    return sorted({(r["workers"], r["resources"]) for r in runs})


def _impls(runs: Sequence[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        if r["impl"] not in seen:
            seen.append(r["impl"])
    return sorted(seen, key=lambda name: name != REFERENCE)


def _index(runs: Sequence[dict[str, Any]]) -> dict[tuple[int, int, str], dict[str, Any]]:
    return {(r["workers"], r["resources"], r["impl"]): r for r in runs}


def _violations(run: dict[str, Any]) -> str:
    inv = run["invariant"]
    text = f"{inv['violations']:,}"
    if inv["violations"]:
        text += f" ({inv['resources_affected']} res., max {inv['max_overlap_ms']:.0f} ms)"
    return text


def _fencing(run: dict[str, Any]) -> str:
    f = run["invariant"]["fencing"]
    if f is None:
        return "n/a"
    return "increasing" if f["not_increasing"] == 0 else f"{f['not_increasing']:,} out of order"


def contention_ratios(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per grid cell, pylivermore's lifecycles/s over each other implementation's."""
    idx = _index(runs)
    out: dict[str, dict[str, float | None]] = {}
    for w, r in _cells(runs):
        ref = idx.get((w, r, REFERENCE))
        row: dict[str, float | None] = {}
        for impl in _impls(runs):
            other = idx.get((w, r, impl))
            if impl == REFERENCE or ref is None or other is None:
                continue
            row[impl] = ref["lifecycles_per_s"] / other["lifecycles_per_s"] if other["lifecycles_per_s"] else None
        out[f"W={w} R={r}"] = row
    return out


def contention_markdown(runs: Sequence[dict[str, Any]]) -> str:
    impls, idx = _impls(runs), _index(runs)
    others = [i for i in impls if i != REFERENCE]
    parts = ["### Completed lifecycles per second (higher is better)\n"]
    rows = []
    for w, r in _cells(runs):
        row = [str(w), str(r)]
        row += [_n(idx[(w, r, i)]["lifecycles_per_s"]) if (w, r, i) in idx else "-" for i in impls]
        ref = idx.get((w, r, REFERENCE))
        for o in others:
            other = idx.get((w, r, o))
            ok = ref is not None and other is not None and other["lifecycles_per_s"] > 0
            row.append(f"{ref['lifecycles_per_s'] / other['lifecycles_per_s']:.2f}" if ok else "-")  # type: ignore[index]
        rows.append(row)
    header = ["W", "R", *impls] + ([f"{REFERENCE} / {o}" for o in others] if REFERENCE in impls else [])
    parts.append(_table(header, rows))

    parts.append("\n### Invariant: overlapping owners (violations) and fencing-token order\n")
    rows = []
    for w, r in _cells(runs):
        row = [str(w), str(r)]
        for i in impls:
            run = idx.get((w, r, i))
            row.append("-" if run is None else f"{_violations(run)}; fencing {_fencing(run)}")
        rows.append(row)
    parts.append(_table(["W", "R", *impls], rows))

    parts.append("\n### Per run: conflicts, fairness, latency p50 / p99 in ms\n")
    rows = []
    for w, r in _cells(runs):
        for i in impls:
            run = idx.get((w, r, i))
            if run is None:
                continue
            lat = run["latency"]
            fair = run["fairness"]
            row = [
                str(w),
                str(r),
                i,
                _n(run["lifecycles"]),
                _n(run["conflicts"]),
                f"{run['lost']} / {run['errors']}" + (" FAILED" if run["failed"] else ""),
                f"{fair['min']}-{fair['max']}",
            ]
            row += [f"{_ms(lat[op]['p50_ms'])} / {_ms(lat[op]['p99_ms'])}" for op in LATENCY_OPS]
            rows.append(row)
    header = ["W", "R", "impl", "lifecycles", "conflicts", "lost / errors", "per-worker min-max", *LATENCY_OPS]
    parts.append(_table(header, rows))
    samples = sorted({f"{r['impl']}: {e}" for r in runs for e in r["error_samples"]})
    if samples:
        parts.append("\nError samples:\n\n" + "\n".join(f"- {s}" for s in samples[:10]))
    return "\n".join(parts) + "\n"


def many_markdown(many: dict[str, Any]) -> str:
    s = many["seconds"]
    rows = [[name, f"{v * 1000:,.1f}", f"{many['leases'] / v:,.0f}"] for name, v in s.items()]
    parts = [
        f"### {many['leases']:,} leases in one process (median of {many['repeats']})\n",
        _table(["operation", "ms", "records/s"], rows),
        "",
        _table(
            ["ratio (pylivermore speed / raw speed)", "value"],
            [[k, f"{v:.3f} (raw is {1 / v:.1f}x faster)" if v < 1 else f"{v:.3f}"] for k, v in many["ratios"].items()],
        ),
        f"\nClaiming the {many['leases']:,} leases one by one took {many['claim_all_s']:.2f} s. "
        + _background_note(many.get("background")),
    ]
    return "\n".join(parts) + "\n"


def _background_note(bg: dict[str, Any] | None) -> str:
    if not bg:
        return ""
    rounds = ", ".join(f"{t * 1000:.1f}" for t in bg.get("rounds_s", []))
    text = f"Background rounds ({rounds} ms; the median is shown; heartbeat interval {bg['interval_s']:g} s): "
    text += f"{bg['renewed']:,} records renewed in the last"
    if not bg["complete"]:
        text += " (INCOMPLETE: not every record was renewed)"
    if bg["longer_than_interval"]:
        text += " (the round took longer than the interval: it ran into the next one)"
    return text + "."


def ops_markdown(ops: dict[str, Any]) -> str:
    res = ops["ops_per_second"]
    rows = []
    for op, raw in (
        ("claim", "raw SET NX PX"),
        ("heartbeat", "raw PEXPIRE"),
        ("transition", "raw HSET"),
        ("status read", "raw HGETALL"),
    ):
        rows.append([op, _n(res[op]), raw, _n(res[raw]), f"{res[op] / res[raw]:.2f}"])
    server = ops["server_usec_per_call"]
    parts = [
        _table(["operation", "ops/s", "raw command", "ops/s", "ratio"], rows),
        "",
        _table(
            ["server side", "µs per call", "SET NX PX in the same window, µs", "ratio"],
            [
                [op, f"{c['usec']:.2f}", f"{c['set_usec']:.2f}", f"{c['usec'] / c['set_usec']:.1f}"]
                for op, c in server.items()
            ],
        ),
        f"\n`MEMORY USAGE` of one live record: {ops['record_bytes']} bytes.",
    ]
    return "\n".join(parts) + "\n"


def markdown(data: dict[str, Any]) -> str:
    parts = [f"## Benchmark run ({data.get('mode', '?')})\n", f"{data.get('machine', '')}\n"]
    if data.get("ops"):
        parts += [
            f"### Per operation, one connection ({data['ops']['seconds']:g} s per measurement)\n",
            ops_markdown(data["ops"]),
        ]
    if data.get("locks"):
        parts.append(bench_locks.markdown(data["locks"]))
    if data.get("wait"):
        parts.append(bench_wait.markdown(data["wait"]))
    if data.get("contention"):
        parts.append(contention_markdown(data["contention"]))
    if data.get("many"):
        parts.append(many_markdown(data["many"]))
    return "\n".join(parts)


# -- plots -----------------------------------------------------------------------------------------


def plot(data: dict[str, Any], out_dir: str) -> list[str]:
    """Write the PNG plots; returns their paths, or raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data.get("contention") or []
    if not runs:
        return []
    written = []
    impls, idx = _impls(runs), _index(runs)
    resources = sorted({r["resources"] for r in runs})
    workers = sorted({r["workers"] for r in runs})

    fig, axes = plt.subplots(1, len(resources), figsize=(5.5 * len(resources), 4.2), squeeze=False)
    for ax, r in zip(axes[0], resources, strict=True):
        for i in impls:
            xs = [w for w in workers if (w, r, i) in idx]
            bad = sum(idx[(w, r, i)]["invariant"]["violations"] for w in xs)
            label = f"{i} ({bad:,} violations)" if bad else i
            ax.plot(xs, [idx[(w, r, i)]["lifecycles_per_s"] for w in xs], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(workers, [str(w) for w in workers])
        ax.set_xlabel("workers (W)")
        ax.set_ylabel("completed lifecycles / s")
        ax.set_title(f"R = {r} resource{'s' if r > 1 else ''}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    rounds = runs[0].get("rounds", 1)
    fig.suptitle(
        f"Contention: completed lifecycles/s, T = {runs[0]['duration_s']:g} s per implementation and cell"
        f" ({rounds} interleaved round{'s' if rounds > 1 else ''}; same server, same pacing)"
    )
    fig.tight_layout()
    path = os.path.join(out_dir, "contention_throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    ops = ("claim", "transition", "heartbeat", "release")
    w_max = max(workers)
    fig, axes = plt.subplots(len(resources), len(ops), figsize=(4.2 * len(ops), 3.4 * len(resources)), squeeze=False)
    edges_ms = [e * 1000 for e in HIST_EDGES]
    for row, r in zip(axes, resources, strict=True):
        for ax, op in zip(row, ops, strict=True):
            for i in impls:
                run = idx.get((w_max, r, i))
                if run is None:
                    continue
                counts = run["histograms"][op]
                total = sum(counts)
                if not total:
                    continue
                acc, cdf = 0, []
                for c in counts:
                    acc += c
                    cdf.append(acc / total)
                ax.step(edges_ms, cdf, where="post", label=i)
            ax.set_xscale("log")
            ax.set_xlim(0.02, 2000)
            ax.set_ylim(0, 1.01)
            ax.set_title(f"{op}, W={w_max} R={r}", fontsize=10)
            ax.set_xlabel("latency (ms)")
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel("fraction of calls ≤ x")
        row[0].legend(fontsize=7)
    fig.suptitle("Latency distribution per operation (CDF)")
    fig.tight_layout()
    path = os.path.join(out_dir, "contention_latency.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_reports(data: dict[str, Any], out_dir: str, *, plots: bool = True) -> tuple[str, str, list[str], str]:
    """Write bench.json, bench.md and the plots into *out_dir*; returns (json, md, pngs, note)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "bench.json")
    md_path = os.path.join(out_dir, "bench.md")
    write_json(json_path, data)
    with open(md_path, "w") as fh:
        fh.write(markdown(data))
    pngs: list[str] = []
    note = ""
    if plots:
        try:
            pngs = plot(data, out_dir)
        except ImportError:
            note = "plots skipped: matplotlib is not installed (pip install -e '.[bench]')"
    else:
        note = "plots skipped (--no-plots)"
    return json_path, md_path, pngs, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json_file")
    parser.add_argument("--out", help="directory for the Markdown and plots (default: the JSON file's)")
    args = parser.parse_args()
    with open(args.json_file) as fh:
        data = json.load(fh)
    out = args.out or os.path.dirname(os.path.abspath(args.json_file))
    os.makedirs(out, exist_ok=True)
    print(markdown(data))
    try:
        for path in plot(data, out):
            print(f"wrote {path}")
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
