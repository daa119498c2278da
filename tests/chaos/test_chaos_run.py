"""The chaos run, short CI form (``runner.py``, ``checker.py``; reliability notes §6).

* pylivermore: 6 workers over 3 resources for ~28 s, every fault kind forced at least once
  (``--schedule forced``: owner kill, SCRIPT FLUSH, short and long server pauses, owner pause
  longer than the TTL, server restart without persistence, then random ones); ZERO violations,
  and no shortfall of material for the checks (``checker.shortfalls``: claims after the last
  restart, fenced writes of several owners per resource, a lease kept alive by its heartbeats,
  a killed holder), however few operations a loaded machine let the run do.
* the seed port, same run: the checker must report violations (it can see what it checks for).
* the checker itself on small hand-made histories: an overlap, a non-increasing fencing token and
  a lost store item are flagged; so are, with calls identified as contract v2 does (the lease's
  fencing token and the call's seq), a call applied twice or after its reply, a reused seq, a
  replay that was applied, a phantom or unidentified call, a release answered "not released"
  whose deregister is logged, and a record whose seq disagrees with its log; a clean history
  passes; a run in which the implementation did nothing, or whose heartbeats never renewed,
  falls short of the minimum activity.

The full form is ``python -m tests.chaos.runner --duration 180 --workers 6 --resources 3 --impl …``.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pylivermore.server import find_server_binary

from .checker import Report, RunData, check
from .fenced_store import StoreContents

ROOT = Path(__file__).resolve().parents[2]
SHORT = 28.0
ALL_FAULTS = {
    "owner_kill",
    "owner_pause",
    "script_flush",
    "server_pause:short",
    "server_pause:long",
    "server_restart",
}


def _need_server() -> None:
    if find_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server on PATH")
        pytest.skip("no redis-server on PATH")


def run_chaos(impl: str, out: Path, seed: int) -> tuple[int, dict[str, Any], str]:
    """Run the runner as a subprocess (its own process tree, reaped if it dies); return its exit
    code, its ``.check.json`` summary and its output."""
    cmd = [sys.executable, "-m", "tests.chaos.runner", "--impl", impl, "--duration", str(SHORT)]
    cmd += ["--workers", "6", "--resources", "3", "--seed", str(seed), "--schedule", "forced", "--out", str(out)]
    # A give-up bound (the run takes ~40 s; a loaded machine stretches start-up, shutdown and the check).
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)
    output = proc.stdout + proc.stderr
    summary_path = out.with_suffix(".check.json")
    assert summary_path.exists(), f"the runner wrote no summary (exit {proc.returncode}):\n{output[-4000:]}"
    return proc.returncode, json.loads(summary_path.read_text()), output


@pytest.mark.chaos
@pytest.mark.timeout(170)
def test_pylivermore_survives_every_fault_kind(tmp_path: Path) -> None:
    _need_server()
    code, summary, output = run_chaos("pylivermore", tmp_path / "pylivermore.jsonl", seed=11)
    stats = summary["stats"]
    assert set(stats["faults_by_kind"]) >= ALL_FAULTS, output[-4000:]
    # Enough material for the checks, by the run's own structure (checker.shortfalls): not a
    # count of operations, which a loaded machine can cut by half, but at least one of each
    # thing the checks need; a run in which pylivermore did nothing falls short on every one
    # (test_shortfalls_* below).
    assert stats["shortfalls"] == [], (stats["shortfalls"], stats["activity"], stats["operations_by_kind"])
    assert summary["violation_count"] == 0, output[-6000:]
    assert code == 0, output[-4000:]
    assert not summary.get("stderr_tails"), summary.get("stderr_tails")


@pytest.mark.chaos
@pytest.mark.timeout(170)
def test_checker_catches_the_seed(tmp_path: Path) -> None:
    _need_server()
    code, summary, output = run_chaos("seed", tmp_path / "seed.jsonl", seed=11)
    assert code == 0, output[-4000:]
    assert set(summary["stats"]["faults_by_kind"]) >= ALL_FAULTS, output[-4000:]
    kinds = summary["violations_by_kind"]
    assert summary["violation_count"] > 0, output[-4000:]
    # Weakness #2 (self-reclaim by hostname) shows as overlaps, claims on live leases and stale
    # owners' operations succeeding; the naive INCR token goes back to 1 after the restart.
    for kind in ("belief_overlap", "server_exclusion", "dead_token", "fencing_order"):
        assert kinds.get(kind, 0) > 0, kinds


# -- the checker on hand-made histories ----------------------------------------------------------

MS = 1_000_000
WALL0_MS = 1_800_000_000_000  # wall clock (ms) at monotonic 0


class History:
    """A tiny builder of runner-shaped records (times in ms of monotonic time)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.faults: list[dict[str, Any]] = []
        self.ops = 0

    def op(
        self,
        proc: str,
        f: str,
        t0: float,
        t1: float | None,
        kind: str,
        lease: str | None,
        token: int | None,
        send: dict[str, Any] | None = None,
        **v: Any,
    ) -> None:
        """One operation; *send*: the ``send`` event the runner records as the call goes out
        (a transition's ``seq``, a deregister's ``fencing`` token)."""
        self.ops += 1
        base = {"f": f, "op": self.ops, "proc": proc, "pid": 100 + int(proc[1]), "resource": "1", "lease": lease}
        self.records.append({**base, "type": "invoke", "t": int(t0 * MS), "token": token, "value": v})
        if send is not None:
            event = {"type": "event", "f": "send", "op": self.ops, "proc": proc, "pid": base["pid"]}
            self.records.append({**event, "t": int(t0 * MS) + 1, "value": {"script": f, **send}})
        if t1 is not None:
            self.records.append({**base, "type": kind, "t": int(t1 * MS), "token": token, "value": v})

    def lease(
        self, proc: str, lease: str, token: int, t_claim: float, items: list[tuple[float, str]], t_rel: float | None
    ) -> None:
        """A lease's whole life (claim, walk to active with seqs 1, 2, 3, fenced writes, release
        at *t_rel*; ``None``: still held)."""
        who = {"instanceId": f"{proc}@1"}
        self.op(proc, "claim", t_claim, t_claim + 1, "ok", lease, token, instance=who["instanceId"])
        self.log(t_claim + 0.5, "claim", token, ttlMs=1500, **who)
        state = "idle"
        t = t_claim + 2
        for seq, to in enumerate(("starting", "warming", "active"), 1):
            self.op(proc, "transition", t, t + 1, "ok", lease, token, to=to, send={"seq": seq})
            self.log(t + 0.5, "state_transition", token, fromState=state, toState=to, seq=seq, **who)
            state, t = to, t + 2
        for t_item, item in items:
            self.op(proc, "store_add", t_item, t_item + 1, "ok", lease, token, item=item, accepted=True)
        if t_rel is None:
            return
        self.op(proc, "release", t_rel, t_rel + 1, "ok", lease, token, released=True, send={"fencing": token})
        self.log(t_rel + 0.5, "deregister", token, state=state, **who)

    def held(self, proc: str, lease: str, t: float) -> None:
        """An ``ensure_held()`` that passed at *t* (what the worker records before each write)."""
        self.records.append({"type": "event", "f": "held", "t": int(t * MS), "proc": proc, "lease": lease, "value": {}})

    def kill(self, proc: str, t: float) -> None:
        self.faults.append(
            {
                "kind": "owner_kill",
                "t_start": int(t * MS),
                "t_end": int((t + 1) * MS),
                "target": {"proc": proc, "pid": 100 + int(proc[1])},
                "details": {},
            }
        )

    def log(self, t_ms: float, event: str, token: int, **fields: Any) -> None:
        wall = WALL0_MS + t_ms
        stamp = datetime.datetime.fromtimestamp(wall / 1000, datetime.UTC).isoformat()[:23] + "Z"
        self.entries.append(
            {
                "id": f"{int(wall)}-{len(self.entries)}",
                "event": event,
                "timestamp": stamp,
                "exchangeId": 1,
                "fencingToken": token,
            }
            | fields
        )

    def data(self, store: StoreContents, status: dict[str, Any] | None = None) -> RunData:
        """The run's data; *status*: the record the final snapshot read (``None``: no record)."""
        meta = {
            "impl": "test",
            "ttl": 1.5,
            "heartbeat_interval": 0.5,
            "renew_deadline": 1.0,
            "resources": ["1"],
            "local_deadline": True,
            "t_start": 0,
            "t_end": 60_000 * MS,
            "clock": [[0, WALL0_MS * MS]],
        }
        last = self.entries[-1]["id"] if self.entries else None
        return RunData(
            meta=meta,
            records=self.records,
            faults=self.faults,
            segments=[{"resource": "1", "segment": 0, "t_read": 59_000 * MS, "entries": self.entries}],
            snapshots=[{"resource": "1", "segment": 0, "t": 59_000 * MS, "last_id": last, "status": status}],
            store={"1": store},
        )


def _store(accepted: list[tuple[int, str]], members: set[str] | None = None) -> StoreContents:
    return StoreContents(
        fenced_members={i for _, i in accepted} if members is None else members, fenced_log=list(accepted)
    )


def _clean() -> History:
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1"), (20, "a2")], 500)
    h.lease("w2", "w2#1", 200, 2600, [(2610, "b1")], 3000)
    return h


def _kinds(rep: Report) -> set[str]:
    return {v.kind for v in rep.violations}


def test_checker_passes_a_clean_history() -> None:
    rep = check(_clean().data(_store([(100, "a1"), (100, "a2"), (200, "b1")])))
    assert rep.violations == [], [v.to_json() for v in rep.violations]
    assert rep.stats["leases"] == 2


def test_checker_flags_overlapping_owners() -> None:
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1")], 900)  # believes until its release at 900 ms
    h.lease("w2", "w2#1", 200, 300, [(310, "b1")], 600)  # claims at 300 ms: no fault excuses it
    h.entries.sort(key=lambda e: e["timestamp"])
    rep = check(h.data(_store([(100, "a1"), (200, "b1")])))
    kinds = _kinds(rep)
    assert "belief_overlap" in kinds
    assert "server_exclusion" in kinds  # the log shows a claim on a live, unreleased lease
    overlap = next(v for v in rep.violations if v.kind == "belief_overlap")
    assert overlap.details["older"] == "w1#1"
    assert overlap.details["newer"] == "w2#1"


def test_checker_flags_a_token_that_does_not_increase() -> None:
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1")], 500)
    h.lease("w2", "w2#1", 100, 2600, [(2610, "b1")], 3000)  # the same token again
    rep = check(h.data(_store([(100, "a1"), (100, "b1")])))
    orders = [v for v in rep.violations if v.kind == "fencing_order"]
    assert {v.details["where"] for v in orders} == {"server_log", "client_history"}


def test_checker_flags_a_lost_store_item() -> None:
    rep = check(_clean().data(_store([(100, "a1"), (100, "a2"), (200, "b1")], members={"a1", "b1"})))
    lost = [v for v in rep.violations if v.kind == "store_lost_item"]
    assert [v.details["item"] for v in lost] == ["a2"]


def test_checker_flags_a_stale_write_accepted_after_a_newer_owner() -> None:
    h = _clean()
    h.op("w1", "store_add", 2700, 2701, "ok", "w1#1", 100, item="a3", accepted=True)  # after its release
    rep = check(h.data(_store([(100, "a1"), (100, "a2"), (200, "b1"), (100, "a3")])))
    assert {"store_token_order", "store_stale_accept"} <= _kinds(rep)


def test_checker_flags_acting_after_the_local_deadline() -> None:
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1"), (1500, "a2")], 1600)
    h.records.append({"type": "event", "f": "held", "t": 1490 * MS, "proc": "w1", "lease": "w1#1", "value": {}})
    rep = check(h.data(_store([(100, "a1"), (100, "a2")])))
    assert _kinds(rep) == {"acted_after_deadline"}  # no renewal was acknowledged: the deadline was at 1000 ms
    h.op("w1", "heartbeat", 400, 402, "ok", "w1#1", 100, reply="RENEWED")  # now it was, until 1400 ms
    assert _kinds(check(h.data(_store([(100, "a1"), (100, "a2")])))) == {"acted_after_deadline"}
    h.op("w1", "heartbeat", 900, 903, "ok", "w1#1", 100, reply="RENEWED")  # and until 1900 ms
    assert check(h.data(_store([(100, "a1"), (100, "a2")]))).violations == []


def test_checker_flags_a_lost_transition_and_a_dead_token() -> None:
    h = _clean()
    del h.entries[2]  # w1's "warming" entry: acknowledged, not in the log
    h.op("w1", "heartbeat", 2800, 2801, "ok", "w1#1", 100, reply="renewed")  # after w2's claim
    rep = check(h.data(_store([(100, "a1"), (100, "a2"), (200, "b1")])))
    kinds = _kinds(rep)
    assert "transition_lost" in kinds
    assert "log_replay" in kinds  # starting -> active is not an edge
    assert "dead_token" in kinds


# -- calls identified by (lease, seq): contract v2's replay protection, as the checker sees it -------------

CLEAN_STORE = [(100, "a1"), (100, "a2"), (200, "b1")]


def _entry(h: History, event: str, token: int, **fields: Any) -> dict[str, Any]:
    return next(
        e for e in h.entries if e["event"] == event and e["fencingToken"] == token and fields.items() <= e.items()
    )


def test_checker_flags_a_call_applied_twice() -> None:
    """A replay of w1's "warming" call (the same lease, the same seq) applied a second time: two
    entries of one call, and the second does not follow the holder's state."""
    h = _clean()
    again = {**_entry(h, "state_transition", 100, seq=2), "fromState": "warming"}
    h.entries.insert(3, {**again, "id": again["id"].split("-")[0] + "-99"})
    rep = check(h.data(_store(CLEAN_STORE)))
    by_kind = {v.kind: v for v in rep.violations}
    assert set(by_kind) == {"transition_duplicate", "log_replay"}, [v.to_json() for v in rep.violations]
    assert by_kind["transition_duplicate"].details["seq"] == 2
    assert by_kind["log_replay"].details["problem"].startswith("transition does not follow")


def test_checker_flags_a_reused_seq_and_a_replay_applied() -> None:
    """w1's third call goes out with seq 2 again (the lease must number its calls upwards) and the
    log shows it applied (a script must answer REPLAYED to a seq not higher than the last applied)."""
    h = _clean()
    third = next(r for r in h.records if r["f"] == "send" and r["value"].get("seq") == 3)
    third["value"]["seq"] = 2
    _entry(h, "state_transition", 100, seq=3)["seq"] = 2
    rep = check(h.data(_store(CLEAN_STORE)))
    kinds = _kinds(rep)
    assert {"seq_not_increasing", "log_replay"} <= kinds, kinds
    assert "transition_lost" not in kinds  # each call of seq 2 is logged, during its own call
    replay = next(v for v in rep.violations if v.kind == "log_replay")
    assert replay.details["problem"].startswith("seq not higher")


def test_checker_flags_a_replay_that_was_applied() -> None:
    """The runner re-sends w1's "starting" call (seq 1) after "active": REPLAYED passes; OK, with
    a second entry of the call logged while the replay was in flight, is a replay applied."""
    h = _clean()
    h.op("w1", "replay", 100, 101, "ok", "w1#1", 100, send={"seq": 1}, to="starting", reply="REPLAYED")
    rep = check(h.data(_store(CLEAN_STORE)))
    assert rep.violations == [], [v.to_json() for v in rep.violations]
    assert rep.notes["replay_answered_REPLAYED"] == 1
    h.records[-1]["value"]["reply"] = "OK"
    h.log(100.5, "state_transition", 100, fromState="active", toState="starting", seq=1, instanceId="w1@1")
    h.entries.sort(key=lambda e: e["timestamp"])
    kinds = _kinds(check(h.data(_store(CLEAN_STORE))))
    assert kinds == {"replay_applied", "log_replay"}, kinds


def test_checker_flags_a_call_applied_after_its_reply() -> None:
    """w1's "warming" call answered at 5 ms, and a second entry of it logged at 300 ms (a delayed
    duplicate applied late): that entry belongs to no call in flight then."""
    h = _clean()
    late = {**_entry(h, "state_transition", 100, seq=2), "fromState": "active"}
    h.log(300, "state_transition", 100, **{k: late[k] for k in ("fromState", "toState", "seq", "instanceId")})
    h.entries.sort(key=lambda e: e["timestamp"])
    by_kind = {v.kind: v for v in check(h.data(_store(CLEAN_STORE))).violations}
    assert set(by_kind) == {"transition_phantom", "log_replay"}, by_kind
    assert (by_kind["transition_phantom"].details["seq"], by_kind["transition_phantom"].details["token"]) == (2, 100)


def test_checker_flags_phantom_and_unidentified_calls() -> None:
    """An error entry no call of the history made (a seq nobody sent), a deregister of a lease that
    never released, and an acknowledged transition whose seq the runner did not record."""
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1")], 500)
    h.lease("w2", "w2#1", 200, 2600, [(2610, "b1")], None)
    h.log(2700, "error", 200, error="boom", state="active", seq=7, instanceId="w2@1")
    h.op("w2", "transition", 2800, 2801, "ok", "w2#1", 200, to="stopping")  # no send event
    h.log(2800.5, "state_transition", 200, fromState="active", toState="stopping", seq=4, instanceId="w2@1")
    h.log(2900, "deregister", 200, state="stopping", instanceId="w2@1")
    rep = check(h.data(_store([(100, "a1"), (200, "b1")])))
    phantoms = sorted((v.details["event"], v.details["seq"]) for v in rep.violations if v.kind == "transition_phantom")
    assert phantoms == [("deregister", None), ("error", 7), ("state_transition", 4)], [
        v.to_json() for v in rep.violations
    ]
    unidentified = [v for v in rep.violations if v.kind == "transition_unidentified"]
    assert [v.details["problem"] for v in unidentified] == ["acknowledged without a seq"]


def test_checker_flags_a_release_answered_not_released_but_logged() -> None:
    """w2's deregister is in the log, and next to nothing came after it, yet its release was
    answered "not released" (TAKEN/EXPIRED): a retry of an applied release must answer REPLAYED."""
    h = _clean()
    release = next(r for r in h.records if r["f"] == "release" and r["type"] == "ok" and r["lease"] == "w2#1")
    release["value"]["released"] = False
    rep = check(h.data(_store(CLEAN_STORE)))
    assert _kinds(rep) == {"transition_failed_logged"}, [v.to_json() for v in rep.violations]
    h = _clean()
    w2 = next(r for r in h.records if r["f"] == "release" and r["lease"] == "w2#1" and r["type"] == "invoke")
    h.records.append({**w2, "type": "fail", "t": w2["t"] + MS, "value": {"error": "lost:taken"}})
    h.records.remove(next(r for r in h.records if r["f"] == "release" and r["lease"] == "w2#1" and r["type"] == "ok"))
    assert "transition_failed_logged" in _kinds(check(h.data(_store(CLEAN_STORE))))


def test_checker_compares_the_records_seq_with_the_log() -> None:
    """A snapshot of a v2 record carries its last applied seq: folding the log must give it."""
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1")], 500)
    h.lease("w2", "w2#1", 200, 2600, [(2610, "b1")], None)
    store = _store([(100, "a1"), (200, "b1")])
    record = {"fencingToken": 200, "connectionState": "active", "instanceId": "w2@1"}
    assert check(h.data(store, {**record, "seq": 3})).violations == []
    assert check(h.data(store, record)).violations == []  # a record without seq (the seed's) compares the rest
    rep = check(h.data(store, {**record, "seq": 5}))
    assert [(v.kind, v.details["record"], v.details["replayed"]) for v in rep.violations] == [
        ("log_replay", [200, "active", 5], [200, "active", 3])
    ]


# -- the minimum activity (checker.shortfalls) on hand-made histories ---------------------------------


def _busy() -> tuple[History, StoreContents]:
    """Three workers on one resource: w1 holds past its renew_deadline thanks to two acknowledged
    heartbeats and releases; w2 claims, writes, and is killed while it holds; w3 takes over once
    w2's TTL has run out."""
    h = History()
    h.lease("w1", "w1#1", 100, 0, [(10, "a1"), (1500, "a2")], 1600)
    h.op("w1", "heartbeat", 400, 402, "ok", "w1#1", 100, reply="RENEWED")
    h.op("w1", "heartbeat", 900, 903, "ok", "w1#1", 100, reply="RENEWED")
    h.held("w1", "w1#1", 10)
    h.held("w1", "w1#1", 1490)  # 1490 ms after its claim was sent: its heartbeats kept it
    h.lease("w2", "w2#1", 200, 2600, [(2610, "b1")], None)
    h.held("w2", "w2#1", 2609)
    h.kill("w2", 2700)
    h.lease("w3", "w3#1", 300, 4500, [(4510, "c1")], 4600)
    h.held("w3", "w3#1", 4509)
    h.entries.sort(key=lambda e: e["timestamp"])
    return h, _store([(100, "a1"), (100, "a2"), (200, "b1"), (300, "c1")])


def test_checker_finds_no_shortfall_in_a_busy_history() -> None:
    h, store = _busy()
    rep = check(h.data(store))
    assert rep.violations == [], [v.to_json() for v in rep.violations]
    assert rep.notes["liveness_checked"] == 1
    assert rep.stats["shortfalls"] == []


def test_shortfalls_of_a_run_in_which_the_implementation_did_nothing() -> None:
    """Workers that ran and tried (every claim failed or hung) and a kill of a worker that held
    nothing: no violation at all, and a shortfall on every count."""
    h = History()
    for i in range(200):  # plenty of attempts: the workers had the time and the CPU
        proc = f"w{1 + i % 3}"
        h.op(proc, "claim", 10.0 * i, 10.0 * i + 5, "fail" if i % 2 else "unknown", None, None, error="conflict")
    h.op("w3", "claim", 2500, None, "unknown", None, None)  # hung until the kill
    h.kill("w3", 2700)
    rep = check(h.data(_store([])))
    assert rep.violations == []
    assert rep.stats["shortfalls"] == [
        "resource 1: no claim after the last server restart",
        "resource 1: the fenced store accepted writes of 0 owner(s), not 2 or more",
        "no lease was kept past renew_deadline by its heartbeats",
        "no owner was killed while it held a resource: liveness unchecked",
    ]


def test_shortfall_of_a_run_whose_heartbeats_never_renewed() -> None:
    """The busy history without w1's heartbeats and its act past the renew_deadline: leases that
    only ever lived on their claim fall short (and acting later would be a violation)."""
    h, store = _busy()
    h.records = [r for r in h.records if r["f"] != "heartbeat" and not (r["f"] == "held" and r["t"] == 1490 * MS)]
    rep = check(h.data(store))
    assert rep.violations == []
    assert rep.stats["shortfalls"] == ["no lease was kept past renew_deadline by its heartbeats"]


def test_checker_flags_a_dead_owner_that_still_blocks_after_its_ttl() -> None:
    """Liveness: w2 is killed at 2700 ms; a claim attempt at 6300 ms (after TTL + slack) that still
    conflicts with w2 is a violation, however late the takeover attempts came; an attempt that late
    that succeeds is only a late takeover."""
    h, store = _busy()
    h.records = [r for r in h.records if r.get("lease") != "w3#1"]
    h.entries = [e for e in h.entries if e["fencingToken"] != 300]
    h.op("w1", "claim", 6300, 6301, "fail", None, None, error="conflict", holder="w2@1")
    h.lease("w3", "w3#1", 300, 6500, [(6510, "c1")], 6600)
    h.entries.sort(key=lambda e: e["timestamp"])
    by_kind = {v.kind: v for v in check(h.data(store)).violations}
    assert set(by_kind) == {"liveness"}
    assert by_kind["liveness"].details["still_blocked_by_dead_owner"] == 1
    h.records = [r for r in h.records if not (r["f"] == "claim" and r.get("proc") == "w1" and r["t"] >= 6300 * MS)]
    rep = check(h.data(store))
    assert rep.violations == []
    assert rep.notes["liveness_late_takeover"] == 1
