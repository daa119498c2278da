"""Node.js and Python owners contend for the same resources on one server: 4 workers of
tests/node/worker.mjs (ioredis, written from lua/README.md alone) and 4 of py_worker.py
(pylivermore's public API) claim, heartbeat, walk the lifecycle and release 2 resources. Their
histories (one format, the chaos runner's) and the server's activity logs go through
mixed_checker.py and tests/chaos/checker.py: no two owners at once, fencing tokens increasing,
every log entry in order; and both languages held each resource, with handoffs between them.

How long it runs derives from events, not from the wall clock: the workers run until the server's
logs show, on each resource, claims by both languages and at least MIN_HANDOFFS handoffs between
them, and, for each language, a record that outlived its TTL through its owner's heartbeats (at
least MIN_SECONDS; giving up after GIVE_UP_SECONDS on a machine too loaded to get there), then
they get SIGTERM and finish their current lease."""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from pylivermore.server import RedisServer
from tests.chaos import checker as chaos_checker
from tests.conftest import make_admin_client
from tests.interop import mixed_checker
from tests.interop.test_node_conformance import NODE_DIR, require_node

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ("1", "2")
WORKERS_PER_LANGUAGE = 4
TTL_MS, HEARTBEAT_MS, DEADLINE_MS = 2000, 400, 1200
LONG_HOLD = 0.15  # the share of leases held longer than the TTL: only heartbeats keep those
MIN_SECONDS = 8.0
GIVE_UP_SECONDS = 150.0
MIN_HANDOFFS = 2  # per resource, between languages (either direction)
LANGS = ("node", "python")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def lang_of(instance: str) -> str:
    return "node" if instance.startswith("node-") else "python" if instance.startswith("py-") else "?"


def read_logs(admin: redis.Redis, namespace: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for res in RESOURCES:
        raw = admin.xrange(f"{namespace}:{{{res}}}:log", "-", "+")
        out[res] = [{"id": eid.decode(), **{k.decode(): v.decode() for k, v in fields.items()}} for eid, fields in raw]
    return out


def iso_ms(ts: str) -> int:
    return chaos_checker._iso_ms(ts)


def progress(logs: dict[str, list[dict[str, Any]]]) -> tuple[bool, dict[str, Any]]:
    """Whether the logs show enough (see the module docstring), and what they show."""
    langs: dict[str, set[str]] = {}
    handoffs: dict[str, int] = {}
    outlived: dict[str, set[str]] = {lang: set() for lang in LANGS}  # records renewed past their TTL
    for res, entries in logs.items():
        langs[res], handoffs[res] = set(), 0
        last, claims = None, {}
        for e in entries:
            token = e.get("fencingToken")
            if e["event"] == "claim":
                lang = lang_of(e.get("instanceId", ""))
                langs[res].add(lang)
                handoffs[res] += int(last is not None and last != lang)
                last = lang
                claims[token] = (lang, iso_ms(e["timestamp"]), int(e.get("ttlMs") or TTL_MS))
            elif token in claims:
                lang, at, ttl = claims.pop(token) if e["event"] == "deregister" else claims[token]
                if iso_ms(e["timestamp"]) > at + ttl:
                    outlived.setdefault(lang, set()).add(token)
    enough = all(langs[r] >= set(LANGS) and handoffs[r] >= MIN_HANDOFFS for r in RESOURCES) and all(
        outlived[lang] for lang in LANGS
    )
    shown = {
        "languages": {r: sorted(v) for r, v in langs.items()},
        "handoffs": handoffs,
        "outlived_ttl": {lang: len(tokens) for lang, tokens in outlived.items()},
    }
    return enough, shown


def chaos_history(
    path: Path, records: list[dict[str, Any]], logs: dict[str, list[dict[str, Any]]], clock: list[list[int]], t0: int
) -> Path:
    """The run as a history file of tests/chaos/runner.py, for tests/chaos/checker.py."""
    meta = {
        "impl": "node+python",
        "ttl": TTL_MS / 1000,
        "heartbeat_interval": HEARTBEAT_MS / 1000,
        "renew_deadline": DEADLINE_MS / 1000,
        "local_deadline": True,
        "resources": list(RESOURCES),
        "t_start": t0,
        "t_end": max(int(r["t"]) for r in records),
        "clock": clock,
    }
    t_read = time.monotonic_ns()
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"rec": "meta", **meta}) + "\n")
        f.writelines(json.dumps({"rec": "op", **r}) + "\n" for r in records)
        for res, entries in logs.items():
            f.write(json.dumps({"rec": "segment", "resource": res, "segment": 0, "t_read": t_read, "entries": entries}))
            f.write("\n")
            f.write(json.dumps({"rec": "store", "resource": res, "contents": {}}) + "\n")
    return path


def clock_sample() -> list[int]:
    mono = time.monotonic_ns()
    return [mono, time.time_ns() - mono]


def test_node_and_python_owners_share_resources(
    fresh_server: RedisServer, tmp_path: Path, report: Callable[[str], None]
) -> None:
    node = require_node()
    namespace = "mix" + secrets.token_hex(3)
    admin = make_admin_client(fresh_server)
    common = ["--url", fresh_server.url, "--namespace", namespace, "--resources", ",".join(RESOURCES)]
    common += ["--seconds", str(GIVE_UP_SECONDS), "--ttl", str(TTL_MS), "--heartbeat", str(HEARTBEAT_MS)]
    common += ["--deadline", str(DEADLINE_MS), "--long-hold", str(LONG_HOLD)]
    commands = {}
    for i in range(1, WORKERS_PER_LANGUAGE + 1):
        commands[f"node-{i}"] = [node, str(NODE_DIR / "worker.mjs")]
        commands[f"py-{i}"] = [sys.executable, str(ROOT / "tests" / "interop" / "py_worker.py")]
    clock = [clock_sample()]
    t0 = time.monotonic_ns()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    outputs = {}
    try:
        for name, argv in commands.items():
            outputs[name] = open(tmp_path / f"{name}.out", "wb")  # noqa: SIM115 -- closed below
            history = str(tmp_path / f"{name}.jsonl")
            procs[name] = subprocess.Popen(
                [*argv, *common, "--history", history, "--name", name],
                cwd=ROOT,
                stdout=outputs[name],
                stderr=subprocess.STDOUT,
            )
        started = time.monotonic()
        shown: dict[str, Any] = {}
        while True:
            time.sleep(0.25)
            enough, shown = progress(read_logs(admin, namespace))
            elapsed = time.monotonic() - started
            exited = [n for n, p in procs.items() if p.poll() is not None]
            if (enough and elapsed >= MIN_SECONDS) or elapsed >= GIVE_UP_SECONDS or exited:
                break
        print(f"stopping after {elapsed:.1f} s: {shown}; exited early: {exited}")
    finally:
        for p in procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=30)  # a worker finishes its lease: at most a long hold and a walk
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for f in outputs.values():
            f.close()
    clock.append(clock_sample())
    for name, p in procs.items():
        out = (tmp_path / f"{name}.out").read_text(errors="replace")
        print(f"{name}: exit {p.returncode}: {out.strip()[-600:]}")
    logs = read_logs(admin, namespace)
    admin.close()
    records = mixed_checker.read_history(sorted(tmp_path.glob("*.jsonl")))

    result = mixed_checker.check(records, logs, DEADLINE_MS)
    print(result.summary(limit=20))
    cross = {res: sum(h.values()) for res, h in result.handoffs.items()}
    print(f"handoffs between languages: {cross} (total {sum(cross.values())})")

    chaos = chaos_checker.check(chaos_checker.load(chaos_history(tmp_path / "history.jsonl", records, logs, clock, t0)))
    # The chaos checker reads from the history what pylivermore's public API keeps out of its sight
    # (the Python workers use nothing else): the heartbeats, which date a lease's deadline (without
    # them it dates a Python lease's at claim + renew deadline, and flags its held checks after that),
    # and the seq each transition went out with, which identifies its log entry (without it the call
    # is "unidentified" and its entry a "phantom"). Those kinds, for Python leases, are what
    # mixed_checker checks instead (the deadline the library reports; transitions matched per lease
    # in order); every other violation counts, and every one of a Node lease.
    blind = {"acted_after_deadline", "transition_unidentified", "transition_phantom"}

    def python_lease(v: chaos_checker.Violation) -> bool:
        owner = str(v.details.get("lease") or v.details.get("instance") or "")
        return owner.startswith("py-")

    chaos_violations = [v for v in chaos.violations if not (v.kind in blind and python_lease(v))]
    print(chaos_checker.format_report(chaos, "node+python", limit=5))
    report(
        f"mixed Node.js/Python contention ({elapsed:.1f} s, {WORKERS_PER_LANGUAGE}+{WORKERS_PER_LANGUAGE} workers, "
        f"{len(RESOURCES)} resources): intervals {dict(result.leases)}, handoffs between languages {cross}, "
        f"violations {len(result.violations)} (mixed checker), {len(chaos_violations)} (chaos checker)"
    )

    assert all(p.returncode == 0 for p in procs.values()), {n: p.returncode for n, p in procs.items()}
    assert not result.violations, result.summary(limit=20)
    assert not chaos_violations, [v.to_json() for v in chaos_violations[:10]]
    for res in RESOURCES:
        assert result.languages[res] == sorted(LANGS), f"resource {res} held by {result.languages[res]} only"
        assert cross[res] >= MIN_HANDOFFS, f"resource {res}: {cross[res]} handoffs between languages"
    for lang in LANGS:
        assert result.leases.get(lang, 0) >= len(RESOURCES), result.leases
        assert result.kept_past_deadline.get(lang, 0) >= 1, f"no {lang} lease was kept past renew_deadline"


def test_node_hrtime_is_python_monotonic_clock() -> None:
    """The histories of both languages share one time axis: Node's process.hrtime.bigint() is libuv's
    uv_hrtime(), clock_gettime(CLOCK_MONOTONIC) on Linux, the clock of time.monotonic_ns(). Each
    reading of a Node process falls between two readings of this one (CLOCK_MONOTONIC_RAW, for one,
    drifts away from it by many milliseconds within hours of boot)."""
    node = require_node()
    if sys.platform != "linux":
        pytest.skip("CLOCK_MONOTONIC is system-wide on Linux; elsewhere the clocks are not compared")
    script = "for (let i = 0; i < 5; i++) console.log(String(process.hrtime.bigint()))"
    for _ in range(5):
        before = time.monotonic_ns()
        out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30, check=True).stdout
        after = time.monotonic_ns()
        readings = [int(x) for x in out.split()]
        assert len(readings) == 5
        assert all(before < t < after for t in readings), (before, readings, after)


def test_mixed_checker_catches_what_it_checks() -> None:
    """mixed_checker on a made-up run: an overlap, a non-edge, a token going down, a phantom claim."""
    ms = 1_000_000

    def rec(kind: str, f: str, proc: str, op: int, t: int, **extra: Any) -> dict[str, Any]:
        value = extra.pop("value", {})
        base = {"resource": "1", "lease": None, "token": None}
        return {"type": kind, "f": f, "op": op, "proc": proc, "pid": 1, "t": t * ms, **base, **extra, "value": value}

    records = [
        rec("event", "start", "node-1", 0, 0, value={"impl": "node"}),
        rec("event", "start", "py-1", 0, 0, value={"impl": "python"}),
        rec("invoke", "claim", "node-1", 1, 10),
        rec("ok", "claim", "node-1", 1, 12, lease="node-1#1", token=100, value={"instance": "node-1@1"}),
        # py-1 claims at 500 ms while node-1 (no heartbeat: deadline 10 + 1200 ms) still believes it holds
        rec("invoke", "claim", "py-1", 1, 498),
        rec("ok", "claim", "py-1", 1, 500, lease="py-1#1", token=90, value={"instance": "py-1@1"}),
        rec("invoke", "release", "node-1", 2, 900, lease="node-1#1", token=100),
        rec("ok", "release", "node-1", 2, 905, lease="node-1#1", token=100, value={"released": True}),
        rec("event", "exit", "node-1", 0, 2000),
        rec("event", "exit", "py-1", 0, 2000),
    ]
    logs = {
        "1": [
            {"id": "1-0", "event": "claim", "fencingToken": "100", "instanceId": "node-1@1"},
            {"id": "2-0", "event": "state_transition", "fencingToken": "100", "fromState": "idle", "toState": "active"},
            {"id": "3-0", "event": "deregister", "fencingToken": "100", "state": "active"},
            {"id": "4-0", "event": "claim", "fencingToken": "90", "instanceId": "py-1@1"},
            {"id": "5-0", "event": "claim", "fencingToken": "95", "instanceId": "stranger@1"},
        ]
    }
    result = mixed_checker.check(records, logs, DEADLINE_MS)
    kinds = result.by_kind()
    assert kinds.get("owner_overlap") == 1, result.summary()
    assert kinds.get("log_order") == 1, result.summary()  # idle>active is not an edge
    assert kinds.get("fencing_order", 0) >= 2, result.summary()  # 100 then 90 in the log and in the history
    assert kinds.get("claim_phantom") == 1, result.summary()
    assert kinds.get("transitions_mismatch") == 1, result.summary()  # a logged transition nobody acknowledged
    assert result.handoffs["1"] == {"node->python": 1, "python->?": 1}
