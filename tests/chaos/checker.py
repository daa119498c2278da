"""Jepsen-style checker of a chaos run's history (reliability notes §6).

Input (:class:`RunData`, one JSON-lines file written by ``runner.py``):

* ``op`` records: every client operation as ``invoke`` then ``ok`` / ``fail`` / ``unknown``
  (Jepsen's ``info``: it may have taken effect), plus ``event`` records (``lost``, ``send``,
  ``start``, ``exit``, ...). Times are ``time.monotonic_ns()``, system-wide on Linux, so the
  records of all processes compare. An invoke that never completed (its process was killed)
  counts as ``unknown``.
* ``fault`` records: what the runner injected, when (``t_start``/``t_end``), to whom.
* ``segment`` records: the server's activity log of one resource, one per *segment*: a restart
  without persistence wipes the log, so the runner reads it right before each restart and once
  at the end. ``snapshot`` records: the status record and the log's last entry id read in one
  ``MULTI`` (an atomic view).
* ``store`` records: the fenced store's final contents and its acceptance order.

Checks, per resource (each violation is a :class:`Violation` with ``kind``, ``resource`` and
``details``):

(a) ``fencing_order``: tokens of claims strictly increase in the server log (per segment, and
    each segment's above every earlier one), and in real time: a claim invoked after another
    claim was acknowledged carries a larger token.
(b) ``server_exclusion``: a claim entry appears only after the previous claim was deregistered
    or force-released, or had expired: its last renewal + TTL <= the new claim's server time.
    Heartbeats are not logged, so a renewal's time is bounded from below by the *invoke* time of
    each acknowledged heartbeat in the client history (the script ran after it); unacknowledged
    heartbeats are ignored. Both bounds are lower bounds of the true expiry, so a flagged claim
    surely came while the previous lease was live (up to ``clock_tolerance_ms``).
(c) ``belief_overlap``: believed-ownership intervals, from claim ``ok`` to the earliest of the
    local deadline (send time of the last acknowledged claim/heartbeat + renew_deadline, for an
    implementation with a local deadline), observed loss, release *invoke* (the owner stops
    acting when it starts releasing; the release's reply may legitimately arrive after the next
    owner's claim reply), or its process's death, do not overlap between workers. An overlap is
    excused only after a fault outside the timing model (a restart without persistence between
    the two claims, or the older owner paused for longer than TTL - renew_deadline) *and* if the
    stale owner's writes were fenced off: the store accepted none of them after accepting one of
    the newer owner's (``overlap_not_fenced``).
(c') ``acted_after_deadline``: ``ensure_held()`` never passes at or after the local deadline the
    history shows (send time of the last acknowledged claim/heartbeat + renew_deadline): no
    acting on an expired belief. It also proves that the heartbeats were all recorded.
(d) set-full on the fenced store: every add acknowledged as accepted is in the final set
    (``store_lost_item``), no add acknowledged as rejected is (``store_rejected_present``), the
    acceptance order never goes down in token (``store_token_order``) and never accepts a write
    of an owner whose claim preceded, in real time, the claim of an owner already accepted
    (``store_stale_accept``). The unfenced variant is measured the same way, as information,
    and so are writes sent after their owner's belief had ended (a pause or a delay between
    ``ensure_held()`` and the write): the fencing token, not the lease, must stop those.
(e) transitions and deregisters, each call identified as contract v2 identifies it: a transition
    by its lease (the resource, the lease's fencing token and instance id) and the ``seq`` it was
    sent with (the runner records it in a ``send`` event from the call that went out; a retry of
    the call re-sends the same seq), a deregister by its lease alone (one per lease; its entry
    carries no seq). Every acknowledged one is in the log exactly once (``transition_lost`` /
    ``transition_duplicate``: a replay applied twice shows as two entries of one call), a failed
    one never, nor a release acknowledged as "not released" while its lease's ``deregister``
    entry was among the 16 newest at the reply (``transition_failed_logged``), an unknown one at
    most once; every logged transition, error and deregister comes from a call in the history
    (``transition_phantom``) and a transition matches its target state
    (``transition_mismatch``); an acknowledged transition whose seq was not recorded is a harness
    gap (``transition_unidentified``); the calls of one lease carry strictly increasing seqs in
    the order they were invoked (``seq_not_increasing``: a reused seq would be answered REPLAYED,
    never applied). A ``replay`` (the runner re-sends one of a lease's earlier transition calls
    unchanged) is answered REPLAYED, or EXPIRED/TAKEN once the lease is gone, never applied
    (``replay_applied``), and adds no entry (``transition_duplicate`` of its call). Operations that
    completed between the last read of a segment and the restart that wiped it are skipped and
    counted in ``notes``.
(f) ``log_replay``: folding the log (claim -> idle with seq 0, transitions along allowed edges by
    the holder's token, each with a seq higher than the holder's last applied one, deregister ->
    nothing) gives the status record of every snapshot: token, state and, where the record has
    it, its last applied ``seq`` (a missing record is accepted: it may have expired, which the log
    cannot show).
(g) ``dead_token``: once a lease is dead (released by its owner, reported expired/taken by the
    server, wiped by a restart, or superseded by a claim invoked after its own claim was
    acknowledged), no operation of it invoked later succeeds.
(h) ``liveness``: after an owner is killed while it believes it holds a resource, another worker
    claims that resource within TTL + ``liveness_slack`` (2 s), extended by the duration of any
    server fault in that window, if any worker tries it by then; a claim attempt after that
    window may never conflict with the dead owner, and one of them must succeed (how promptly the
    workers run does not decide a violation); kills too close to the end are skipped and counted.

Besides the violations, :func:`shortfalls` says whether a run gave the checks enough material
(claims on every resource after the last restart, fenced writes of several owners per resource,
a lease kept past ``renew_deadline`` by its heartbeats, a killed holder): the minimum derives
from the run's own structure and events, not from how much a loaded machine let it do, and a run
in which the implementation did nothing falls short on every count.
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import itertools
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pylivermore import TRANSITIONS

from .fenced_store import StoreContents

EDGES = frozenset((a.value, b.value) for a, tos in TRANSITIONS.items() for b in tos)
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
LIVENESS_SLACK_S = 2.0
#: Heartbeat replies meaning "renewed" (pylivermore's word, the seed port's two outcomes).
RENEWED = frozenset({"RENEWED", "renewed", "recreated"})
#: Loss reasons the server confirmed (a "deadline" loss is local: the record may still be there).
SERVER_LOSS = frozenset({"expired", "taken"})
SERVER_FAULTS = frozenset({"server_pause", "server_restart"})


@dataclass(frozen=True)
class Violation:
    kind: str
    resource: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "resource": self.resource, "details": self.details}


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, resource: str | None, **details: Any) -> None:
        self.violations.append(Violation(kind, resource, details))

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(v.kind for v in self.violations).items()))

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        vs = self.violations if limit is None else self.violations[:limit]
        return {
            "violations_by_kind": self.by_kind(),
            "violation_count": len(self.violations),
            "violations": [v.to_json() for v in vs],
            "notes": dict(sorted(self.notes.items())),
            "stats": self.stats,
        }


@dataclass
class RunData:
    """Everything the runner recorded; see the module docstring."""

    meta: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    store: dict[str, StoreContents] = field(default_factory=dict)


def load(path: str | Path) -> RunData:
    """Read a history file; a truncated last line (a killed writer) is ignored."""
    data = RunData(meta={})
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = rec.pop("rec", "op")
            if kind == "meta":
                data.meta = rec
            elif kind == "op":
                data.records.append(rec)
            elif kind == "fault":
                data.faults.append(rec)
            elif kind == "segment":
                data.segments.append(rec)
            elif kind == "snapshot":
                data.snapshots.append(rec)
            elif kind == "store":
                data.store[str(rec["resource"])] = StoreContents.from_json(rec["contents"])
    return data


# -- the model: operations paired, leases and their belief intervals ----------------------------


@dataclass
class Op:
    proc: str
    pid: int
    op: int
    f: str
    resource: str | None
    lease: str | None
    token: int | None
    t_invoke: int
    t_done: int | None
    type: str  # ok | fail | unknown
    value: dict[str, Any]
    seq: int | None = None  # the seq a transition was sent with (its ``send`` event)
    fencing: int | None = None  # the fencing token a deregister was sent with (its ``send`` event)
    reply: str | None = None  # the script's status word for a transition or deregister (its ``reply`` event)


@dataclass
class Lease:
    id: str
    proc: str
    pid: int
    resource: str
    token: int
    instance: str
    claim_invoke: int
    claim_ok: int
    claim_sent: int = 0  # when the claim went out (after the library took its send time), else its invoke
    end: int = 0
    end_reason: str = ""
    heartbeats: list[Op] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    lost: list[tuple[int, str]] = field(default_factory=list)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _iso_ms(ts: str) -> int:
    return round(datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


class Model:
    def __init__(self, data: RunData) -> None:
        m = data.meta
        self.data = data
        self.impl = str(m.get("impl", "?"))
        self.ttl_ns = int(float(m["ttl"]) * NS_PER_S)
        self.rd_ns = int(float(m["renew_deadline"]) * NS_PER_S)
        self.has_local_deadline = bool(m.get("local_deadline", True))
        self.t_start = int(m.get("t_start", 0))
        self.t_end = int(m.get("t_end", 0))
        clock = m.get("clock") or [[0, 0]]
        self.clock: list[tuple[int, int]] = sorted((int(a), int(b)) for a, b in clock)
        offsets = [b for _, b in self.clock]
        self.tol_ms = 5 + (max(offsets) - min(offsets)) / NS_PER_MS
        self.resources = [str(r) for r in m.get("resources", [])]
        self.faults = sorted(data.faults, key=lambda f: int(f["t_start"]))
        self.restarts = [f for f in self.faults if f["kind"] == "server_restart"]
        self.ops: list[Op] = []
        self.events: list[dict[str, Any]] = []
        self._pair(data.records)
        self.proc_end = self._proc_ends(data.records)
        self.leases: dict[str, Lease] = {}
        self._build_leases()
        self.by_resource: dict[str, list[Lease]] = defaultdict(list)
        for lease in sorted(self.leases.values(), key=lambda x: x.claim_ok):
            self.by_resource[lease.resource].append(lease)
        self.item_lease: dict[str, str] = {}
        for op in self.ops:
            if op.f in ("store_add", "store_add_unfenced") and op.lease is not None:
                self.item_lease[str(op.value.get("item"))] = op.lease

    def mono_to_wall_ms(self, t: int) -> float:
        i = bisect.bisect_left(self.clock, (t, -(2**62)))
        near = min((self.clock[j] for j in (i - 1, i) if 0 <= j < len(self.clock)), key=lambda c: abs(c[0] - t))
        return (t + near[1]) / NS_PER_MS

    def _pair(self, records: list[dict[str, Any]]) -> None:
        invokes: dict[tuple[str, int], Op] = {}
        sends: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        replies: dict[tuple[str, int], str] = {}
        self.sent_at: dict[tuple[str, int], int] = {}
        for r in sorted(records, key=lambda r: int(r["t"])):
            kind = r.get("type")
            key = (str(r.get("proc")), int(r.get("op") or 0))
            if kind == "event":
                self.events.append(r)
                if r.get("f") == "send":
                    sends[key].append(dict(r.get("value") or {}))
                    self.sent_at.setdefault(key, int(r["t"]))
                elif r.get("f") == "reply":
                    replies[key] = str((r.get("value") or {}).get("word"))
                continue
            if kind == "invoke":
                op = Op(
                    proc=key[0],
                    pid=int(r.get("pid") or 0),
                    op=key[1],
                    f=str(r["f"]),
                    resource=None if r.get("resource") is None else str(r["resource"]),
                    lease=r.get("lease"),
                    token=r.get("token"),
                    t_invoke=int(r["t"]),
                    t_done=None,
                    type="unknown",
                    value=dict(r.get("value") or {}),
                )
                invokes[key] = op
                self.ops.append(op)
            elif key in invokes:
                op = invokes[key]
                op.type = str(kind)
                op.t_done = int(r["t"])
                op.value.update(r.get("value") or {})
                if r.get("lease") is not None:
                    op.lease = r["lease"]
                if r.get("token") is not None:
                    op.token = r["token"]
        self.multi_send: list[Op] = []  # one operation, several calls: the checker cannot tell them apart
        for key, sent in sends.items():
            sender = invokes.get(key)
            if sender is None:
                continue
            seqs = {int(v["seq"]) for v in sent if v.get("seq") is not None}
            fencing = {int(v["fencing"]) for v in sent if v.get("fencing") is not None}
            if len(seqs) > 1 or len(fencing) > 1:
                self.multi_send.append(sender)
            sender.seq = min(seqs) if seqs else None
            sender.fencing = min(fencing) if fencing else None
        for key, word in replies.items():
            if key in invokes:
                invokes[key].reply = word
        for op in self.ops:  # a history written without send events (hand-made) may carry them in the value
            if op.seq is None and op.value.get("seq") is not None:
                op.seq = int(op.value["seq"])

    def _proc_ends(self, records: list[dict[str, Any]]) -> dict[str, int]:
        end: dict[str, int] = {}
        for r in records:
            p = str(r.get("proc"))
            end[p] = max(end.get(p, 0), int(r["t"]))
        for r in records:
            if r.get("type") == "event" and r.get("f") == "exit":
                end[str(r["proc"])] = int(r["t"])
        for f in self.faults:
            if f["kind"] == "owner_kill" and f.get("target"):
                end[str(f["target"]["proc"])] = int(f["t_start"])  # it died then, whatever it last wrote
        return end

    def _build_leases(self) -> None:
        for op in self.ops:
            if op.f == "claim" and op.type == "ok" and op.lease and op.t_done is not None and op.resource:
                self.leases[op.lease] = Lease(
                    id=op.lease,
                    proc=op.proc,
                    pid=op.pid,
                    resource=op.resource,
                    token=int(op.token or 0),
                    instance=str(op.value.get("instance", "")),
                    claim_invoke=op.t_invoke,
                    claim_ok=op.t_done,
                    claim_sent=self.sent_at.get((op.proc, op.op), op.t_invoke),
                )
        for op in self.ops:
            lease = self.leases.get(op.lease or "")
            if lease is None or op.f == "claim":
                continue
            if op.f == "heartbeat":
                lease.heartbeats.append(op)
            lease.ops.append(op)
        for ev in self.events:
            lease = self.leases.get(ev.get("lease") or "")
            if lease is not None and ev.get("f") in ("lost", "held_check_failed"):
                lease.lost.append((int(ev["t"]), str(ev.get("value", {}).get("reason", ""))))
        for lease in self.leases.values():
            self._belief(lease)

    def local_deadline(self, lease: Lease) -> int:
        """Send time of the last acknowledged claim/heartbeat + renew_deadline, as the library
        counts it (an acknowledgement that came after its own deadline does not count)."""
        deadline = lease.claim_sent + self.rd_ns
        for hb in sorted(lease.heartbeats, key=lambda o: o.t_invoke):
            if hb.t_invoke >= deadline:
                break
            if hb.type == "ok" and hb.t_done is not None and hb.t_done < hb.t_invoke + self.rd_ns:
                deadline = max(deadline, hb.t_invoke + self.rd_ns)
        return deadline

    def _belief(self, lease: Lease) -> None:
        ends: list[tuple[int, str]] = [(self.proc_end.get(lease.proc, self.t_end), "process_end")]
        ends += [(t, f"lost:{why}") for t, why in lease.lost]
        for op in lease.ops:
            if op.f == "release":
                ends.append((op.t_invoke, "release"))
            elif op.type == "fail" and str(op.value.get("error", "")).startswith("lost") and op.t_done is not None:
                ends.append((op.t_done, "lost_reply"))
        if self.has_local_deadline:
            ends.append((self.local_deadline(lease), "deadline"))
        lease.end, lease.end_reason = min(ends)

    def acked_heartbeats(self, lease: Lease) -> list[int]:
        return [
            hb.t_invoke
            for hb in lease.heartbeats
            if hb.type == "ok" and str(hb.value.get("reply", "RENEWED")) in RENEWED
        ]

    def segment_of(self, t: int) -> int:
        return sum(1 for r in self.restarts if int(r["t_end"]) <= t)


# -- the checks ------------------------------------------------------------------------------


def check_fencing_order(m: Model, segs: dict[str, dict[int, dict[str, Any]]], rep: Report) -> None:
    """(a)"""
    for res in m.resources:
        earlier_max: int | None = None
        for k in sorted(segs.get(res, {})):
            tokens = [int(e["fencingToken"]) for e in segs[res][k]["entries"] if e.get("event") == "claim"]
            for prev, cur in itertools.pairwise(tokens):
                if cur <= prev:
                    rep.add("fencing_order", res, where="server_log", segment=k, previous=prev, token=cur)
            if tokens and earlier_max is not None and min(tokens) <= earlier_max:
                rep.add(
                    "fencing_order", res, where="across_restart", segment=k, earlier_max=earlier_max, token=min(tokens)
                )
            if tokens:
                earlier_max = max(tokens + ([earlier_max] if earlier_max is not None else []))
        leases = m.by_resource.get(res, [])
        by_ok = sorted(leases, key=lambda x: x.claim_ok)
        oks = [x.claim_ok for x in by_ok]
        prefix: list[Lease] = []
        for x in by_ok:
            prefix.append(x if not prefix or x.token > prefix[-1].token else prefix[-1])
        for lease in sorted(leases, key=lambda x: x.claim_invoke):
            i = bisect.bisect_left(oks, lease.claim_invoke)
            if i and prefix[i - 1].token >= lease.token:
                before = prefix[i - 1]
                rep.add(
                    "fencing_order",
                    res,
                    where="client_history",
                    earlier_lease=before.id,
                    earlier_token=before.token,
                    lease=lease.id,
                    token=lease.token,
                )


def check_server_exclusion(m: Model, segs: dict[str, dict[int, dict[str, Any]]], rep: Report) -> None:
    """(b)"""
    index = {(x.resource, x.token, x.instance): x for x in m.leases.values()}
    for res in m.resources:
        for k, seg in sorted(segs.get(res, {}).items()):
            holder: dict[str, Any] | None = None
            for e in seg["entries"]:
                ev = e.get("event")
                if ev == "claim":
                    t2 = _iso_ms(str(e["timestamp"]))
                    if holder is not None and not holder["released"]:
                        bound = holder["t"] + holder["ttl"]
                        why = "claim"
                        lease = index.get((res, holder["token"], holder["instance"]))
                        if lease is not None:
                            for hb in m.acked_heartbeats(lease):
                                b = m.mono_to_wall_ms(hb) + holder["ttl"]
                                if b > bound:
                                    bound, why = b, "heartbeat"
                        if t2 + 1 + m.tol_ms < bound:
                            rep.add(
                                "server_exclusion",
                                res,
                                segment=k,
                                previous_token=holder["token"],
                                previous_lease=lease.id if lease else None,
                                token=int(e["fencingToken"]),
                                claim_entry=e.get("id"),
                                live_until_ms_at_least=round(bound),
                                bound_from=why,
                                claim_at_ms=t2,
                                early_by_ms=round(bound - t2, 1),
                            )
                    holder = {
                        "token": int(e["fencingToken"]),
                        "instance": str(e.get("instanceId") or ""),
                        "t": t2,
                        "ttl": int(e.get("ttlMs") or m.ttl_ns // NS_PER_MS),
                        "released": False,
                    }
                elif ev in ("deregister", "force_release") and holder is not None:
                    holder["released"] |= ev == "force_release" or int(e.get("fencingToken") or 0) == holder["token"]


def _accepted_positions(m: Model, log: list[tuple[int, str]]) -> dict[str, list[int]]:
    pos: dict[str, list[int]] = defaultdict(list)
    for i, (_, item) in enumerate(log):
        lease = m.item_lease.get(item)
        if lease is not None:
            pos[lease].append(i)
    return pos


def check_belief_overlap(m: Model, rep: Report) -> None:
    """(c)"""
    margin = m.ttl_ns - m.rd_ns
    pauses = [f for f in m.faults if f["kind"] == "owner_pause" and f.get("target")]
    for res in m.resources:
        leases = m.by_resource.get(res, [])
        store = m.data.store.get(res)
        positions = _accepted_positions(m, store.fenced_log) if store else {}
        for i, a in enumerate(leases):
            for b in leases[i + 1 :]:
                if b.claim_ok >= a.end:
                    break
                if a.proc == b.proc or b.end <= b.claim_ok:
                    continue
                overlap_ms = (min(a.end, b.end) - b.claim_ok) / NS_PER_MS
                excuse = None
                for r in m.restarts:
                    if a.claim_invoke <= int(r["t_start"]) <= b.claim_ok:
                        excuse = "server_restart"
                for p in pauses:
                    long_pause = int(p["t_end"]) - int(p["t_start"]) > margin
                    if (
                        long_pause
                        and int(p["target"]["pid"]) == a.pid
                        and int(p["t_start"]) <= min(b.claim_ok, a.end)
                        and int(p["t_end"]) >= a.claim_ok
                    ):
                        excuse = excuse or "owner_pause"
                details = {
                    "older": a.id,
                    "older_token": a.token,
                    "older_belief_end": a.end_reason,
                    "newer": b.id,
                    "newer_token": b.token,
                    "overlap_ms": round(overlap_ms, 1),
                }
                if excuse is None:
                    rep.add("belief_overlap", res, **details)
                    continue
                rep.notes[f"overlap_excused_{excuse}"] += 1
                first_newer = min(positions.get(b.id, [10**12]))
                late = [p for p in positions.get(a.id, []) if p > first_newer]
                if late:
                    rep.add("overlap_not_fenced", res, excuse=excuse, stale_accepted_after_newer=len(late), **details)


def check_local_deadline(m: Model, rep: Report) -> None:
    """(c') for an implementation with a local deadline: ``ensure_held()`` never passed at or
    after the deadline the history shows (the ``held`` event's time is taken *before* the call)."""
    if not m.has_local_deadline:
        return
    for ev in m.events:
        lease = m.leases.get(ev.get("lease") or "")
        if ev.get("f") != "held" or lease is None:
            continue
        rep.notes["held_checks"] += 1
        deadline = m.local_deadline(lease)
        if int(ev["t"]) >= deadline:
            rep.add(
                "acted_after_deadline",
                lease.resource,
                lease=lease.id,
                held_at_ms_after_deadline=round((int(ev["t"]) - deadline) / NS_PER_MS, 1),
                acked_heartbeats=len(m.acked_heartbeats(lease)),
                recorded_heartbeats=len(lease.heartbeats),
            )


def _store_order(m: Model, log: list[tuple[int, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(token inversions, stale accepts) of one acceptance log."""
    inversions, stale = [], []
    max_token: int | None = None
    newest: Lease | None = None
    for i, (token, item) in enumerate(log):
        if max_token is not None and token < max_token:
            inversions.append({"position": i, "item": item, "token": token, "max_seen": max_token})
        max_token = token if max_token is None else max(max_token, token)
        lease = m.leases.get(m.item_lease.get(item, ""))
        if lease is None:
            continue
        if newest is not None and newest.id != lease.id and newest.claim_invoke > lease.claim_ok:
            stale.append({"position": i, "item": item, "lease": lease.id, "after_newer_lease": newest.id})
        if newest is None or lease.claim_invoke > newest.claim_invoke:
            newest = lease
    return inversions, stale


def check_store(m: Model, rep: Report) -> None:
    """(d)"""
    acked: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for op in m.ops:
        if op.f == "store_add" and op.resource is not None:
            item = str(op.value.get("item"))
            lease = m.leases.get(op.lease or "")
            if lease is not None and op.t_invoke > lease.end:  # a pause or a delay in the critical section
                rep.notes["store_writes_after_belief_end"] += 1
                rep.notes["store_writes_after_belief_end_accepted"] += int(bool(op.value.get("accepted")))
            if op.type == "ok":
                acked[op.resource]["accepted" if op.value.get("accepted") else "rejected"].append(item)
            elif op.type == "fail":
                acked[op.resource]["rejected"].append(item)
    for res in m.resources:
        store = m.data.store.get(res)
        if store is None:
            rep.add("store_missing", res, detail="the store's contents were not recorded")
            continue
        for item in acked[res]["accepted"]:
            if item not in store.fenced_members:
                rep.add("store_lost_item", res, item=item, lease=m.item_lease.get(item))
        for item in acked[res]["rejected"]:
            if item in store.fenced_members:
                rep.add("store_rejected_present", res, item=item, lease=m.item_lease.get(item))
        inversions, stale = _store_order(m, store.fenced_log)
        for x in inversions:
            rep.add("store_token_order", res, **x)
        for x in stale:
            rep.add("store_stale_accept", res, **x)
        u_inv, u_stale = _store_order(m, store.unfenced_log)
        rep.notes["unfenced_token_inversions"] += len(u_inv)
        rep.notes["unfenced_stale_accepts"] += len(u_stale)
        rep.notes["store_accepted"] += len(acked[res]["accepted"])
        rep.notes["store_rejected"] += len(acked[res]["rejected"])


def _loss_windows(m: Model, segs: dict[str, dict[int, dict[str, Any]]]) -> list[tuple[int, int]]:
    """Periods whose completed operations may be missing from the logs read (data loss)."""
    windows = []
    start = m.t_start
    for k, r in enumerate(m.restarts):
        reads = [int(s[k]["t_read"]) for s in segs.values() if k in s]
        windows.append((min(reads) if reads else start, int(r["t_end"])))
        start = int(r["t_end"])
    return windows


#: A deregister retried after it was applied answers REPLAYED while its entry is among this many
#: newest entries of the log (contract v2); further back it may answer TAKEN.
DEREGISTER_REPLAY_WINDOW = 16
#: What a late duplicate of an answered transition may get: never applied again.
REPLAY_ANSWERS = frozenset({"REPLAYED", "EXPIRED", "TAKEN"})


def _call_key(e: dict[str, Any]) -> tuple[Any, ...] | None:
    """The call a log entry records: (kind, resource, fencing token, instance id[, seq]), or None
    for an entry no owner call writes (claim, force_release)."""
    ev = e.get("event")
    lease = (str(e.get("exchangeId")), int(e.get("fencingToken") or 0), str(e.get("instanceId") or ""))
    if ev in ("state_transition", "error"):
        return ("call", *lease, None if e.get("seq") is None else int(e["seq"]))
    if ev == "deregister":
        return ("deregister", *lease)
    return None


def check_transitions(m: Model, segs: dict[str, dict[int, dict[str, Any]]], rep: Report) -> None:
    """(e)"""
    logged: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    position: dict[str, tuple[int, list[dict[str, Any]], int]] = {}  # entry id -> (segment, its entries, index)
    for res_segs in segs.values():
        for k, seg in res_segs.items():
            for i, e in enumerate(seg["entries"]):
                entry_key = _call_key(e)
                if entry_key is None:
                    continue
                if entry_key[0] == "call" and entry_key[-1] is None:
                    rep.add(
                        "transition_phantom",
                        str(e.get("exchangeId")),
                        problem="a logged call without a seq",
                        event=e.get("event"),
                        entry=e.get("id"),
                    )
                    continue
                logged[entry_key].append(e)
                position[str(e["id"])] = (k, seg["entries"], i)
    for op in m.multi_send:
        rep.add("transition_unidentified", op.resource, op=f"{op.proc}/{op.op}", f=op.f, problem="sent more than once")
    loss = _loss_windows(m, segs)
    slack = m.tol_ms + 1  # the entry's server time (whole ms) against the client's clock

    def during(op: Op, key: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The entries of *op*'s call written while it was in flight: from its invoke on, until its
        reply (an unanswered call may still be applied later, by a server that was paused)."""
        lo = m.mono_to_wall_ms(op.t_invoke) - slack
        answered = op.type in ("ok", "fail") and op.t_done is not None
        hi = m.mono_to_wall_ms(op.t_done or 0) + slack if answered else float("inf")
        return [e for e in logged.get(key, []) if lo <= _iso_ms(str(e["timestamp"])) <= hi]

    matched: set[str] = set()
    by_lease: dict[str, list[Op]] = defaultdict(list)
    for op in m.ops:
        if op.f not in ("transition", "release", "replay"):
            continue
        lease = m.leases.get(op.lease or "")
        what: dict[str, Any] = {"op": f"{op.proc}/{op.op}", "f": op.f, "lease": op.lease}
        acked = op.type == "ok" and (op.f == "transition" or bool(op.value.get("released")))
        if lease is None:
            rep.notes["transition_of_unknown_lease"] += 1
            continue
        ident = (lease.resource, lease.token, lease.instance)
        if op.f == "release":
            key: tuple[Any, ...] = ("deregister", *ident)
            if op.fencing is not None and op.fencing != lease.token:
                rep.add("transition_mismatch", op.resource, **what, sent_fencing=op.fencing, token=lease.token)
        else:
            if op.seq is None:
                if acked or (op.f == "replay" and op.type == "ok"):  # answered, but not seen going out
                    rep.add("transition_unidentified", op.resource, **what, problem="acknowledged without a seq")
                continue  # refused before it was sent (no seq taken) or never sent
            key = ("call", *ident, op.seq)
            what["seq"] = op.seq
        entries = during(op, key)
        matched.update(str(e["id"]) for e in entries)
        if op.f == "replay":
            rep.notes[f"replay_answered_{op.value.get('reply') or op.type}"] += 1
            if (op.type == "ok" and op.value.get("reply") not in REPLAY_ANSWERS) or entries:
                rep.add("replay_applied", op.resource, **what, reply=op.value.get("reply"), entries=len(entries))
            continue
        if op.f == "transition":
            by_lease[lease.id].append(op)
        rep.notes[f"{op.f}_logged_{min(len(entries), 2)}x"] += 1
        if op.reply == "REPLAYED":  # a retry of a call already applied: the entry of its first attempt
            rep.notes[f"{op.f}_answered_replayed"] += 1
        if len(entries) > 1:
            rep.add("transition_duplicate", op.resource, count=len(entries), **what)
        if acked and not entries:
            done = op.t_done or 0
            if any(lo <= done and op.t_invoke <= hi for lo, hi in loss):
                rep.notes["acked_in_data_loss_window"] += 1
            else:
                rep.add("transition_lost", op.resource, **what, to=op.value.get("to"))
        if op.type == "fail" and entries:
            rep.add("transition_failed_logged", op.resource, **what, error=op.value.get("error"))
        if op.f == "release" and op.type == "ok" and not op.value.get("released") and entries:
            # TAKEN/EXPIRED after the release was applied: only allowed once the entry had fallen
            # out of the window a REPLAYED answer looks in (or a restart wiped the log). Entries
            # logged after the reply (server time after it, with the clock tolerance) cannot have
            # pushed it out.
            k, seg_entries, i = position[str(entries[0]["id"])]
            reply_ms = m.mono_to_wall_ms(op.t_done or 0) + slack
            newer = sum(1 for e in seg_entries[i + 1 :] if _iso_ms(str(e["timestamp"])) <= reply_ms)
            if k != m.segment_of(op.t_done or 0):
                rep.notes["release_answered_after_restart"] += 1
            elif newer < DEREGISTER_REPLAY_WINDOW:
                rep.add(
                    "transition_failed_logged",
                    op.resource,
                    **what,
                    problem="answered not released, yet its deregister is logged",
                    newer_entries=newer,
                )
        for e in entries:
            if op.f == "transition" and e.get("toState") != op.value.get("to"):
                rep.add(
                    "transition_mismatch",
                    op.resource,
                    **what,
                    to=op.value.get("to"),
                    logged_to=e.get("toState"),
                    logged_event=e.get("event"),
                )
    for lease_id, ops in by_lease.items():
        ordered = sorted(ops, key=lambda o: (o.t_invoke, o.op))
        for prev, cur in itertools.pairwise(ordered):
            if cur.seq is not None and prev.seq is not None and cur.seq <= prev.seq:
                rep.add(
                    "seq_not_increasing",
                    cur.resource,
                    lease=lease_id,
                    op=f"{cur.proc}/{cur.op}",
                    seq=cur.seq,
                    previous_op=f"{prev.proc}/{prev.op}",
                    previous_seq=prev.seq,
                )
    for entries in logged.values():
        for e in entries:
            if str(e["id"]) not in matched:  # no call of the history, or applied outside its call's time
                rep.add(
                    "transition_phantom",
                    str(e.get("exchangeId")),
                    event=e.get("event"),
                    entry=e.get("id"),
                    token=e.get("fencingToken"),
                    instance=e.get("instanceId"),
                    seq=e.get("seq"),
                )


#: What folding the log says of the record: (fencing token, state, last applied seq).
Holder = tuple[int, str, int]


def check_replay(m: Model, segs: dict[str, dict[int, dict[str, Any]]], rep: Report) -> None:
    """(f)"""
    snaps: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for s in m.data.snapshots:
        snaps[(str(s["resource"]), int(s["segment"]))].append(s)
    for res in m.resources:
        for k, seg in sorted(segs.get(res, {}).items()):
            todo = sorted(
                snaps.get((res, k), []), key=lambda s: _stream_id(s["last_id"]) if s.get("last_id") else (0, 0)
            )
            holder: Holder | None = None
            entries = seg["entries"]
            i = 0
            for snap in todo:
                limit = _stream_id(snap["last_id"]) if snap.get("last_id") else (0, 0)
                while i < len(entries) and _stream_id(str(entries[i]["id"])) <= limit:
                    holder = _fold(res, k, holder, entries[i], rep)
                    i += 1
                if snap.get("last_id") and (i == 0 or _stream_id(str(entries[i - 1]["id"])) != limit):
                    rep.notes["snapshot_beyond_segment_log"] += 1
                    continue
                status = snap.get("status")
                rep.notes["replay_snapshots"] += 1
                if status is None:
                    if holder is not None:
                        rep.notes["replay_record_absent_expired_or_lost"] += 1
                    continue
                got: tuple[Any, ...] = (int(status.get("fencingToken") or 0), str(status.get("connectionState")))
                want: tuple[Any, ...] | None = holder[:2] if holder else None
                if status.get("seq") is not None:  # a record that keeps its last applied seq (contract v2)
                    got += (int(status["seq"]),)
                    want = holder
                if holder is None or got != want:
                    rep.add(
                        "log_replay",
                        res,
                        segment=k,
                        snapshot_at=snap.get("t"),
                        record=list(got),
                        replayed=list(want) if want else None,
                    )
            while i < len(entries):
                holder = _fold(res, k, holder, entries[i], rep)
                i += 1


def _fold(res: str, k: int, holder: Holder | None, e: dict[str, Any], rep: Report) -> Holder | None:
    ev = e.get("event")
    token = int(e.get("fencingToken") or 0)
    if ev == "claim":
        return (token, "idle", 0)
    if ev in ("state_transition", "error"):
        seq = None if e.get("seq") is None else int(e["seq"])
        frm, to = str(e.get("fromState")), str(e.get("toState"))
        problem = None
        if holder is None or holder[0] != token:
            problem = f"{ev} by a non-holder"
        elif ev == "state_transition" and (holder[1] != frm or (frm, to) not in EDGES):
            problem = "transition does not follow the holder's state"
        elif seq is not None and seq <= holder[2]:
            problem = "seq not higher than the holder's last applied seq: a replay was applied"
        if problem is not None:
            rep.add(
                "log_replay",
                res,
                segment=k,
                entry=e.get("id"),
                problem=problem,
                holder=list(holder) if holder else None,
                entry_token=token,
                entry_seq=seq,
                transition=f"{frm}>{to}" if ev == "state_transition" else None,
            )
        ours = holder is not None and holder[0] == token
        last = max(seq or 0, holder[2] if holder is not None and ours else 0)
        if ev == "error":  # changes no state
            return (holder[0], holder[1], last) if holder is not None and ours else holder
        return (token, to, last)
    if ev == "deregister":
        if holder is None or holder[0] != token:
            rep.add("log_replay", res, segment=k, entry=e.get("id"), problem="deregister by a non-holder", token=token)
        return None
    if ev == "force_release":
        return None
    return holder


def check_dead_tokens(m: Model, rep: Report) -> None:
    """(g)"""
    for res, leases in m.by_resource.items():
        for a in leases:
            dead: list[tuple[int, str]] = []
            for op in a.ops:
                if op.t_done is None:
                    continue
                if op.f == "release" and op.type == "ok" and op.value.get("released"):
                    dead.append((op.t_done, "released"))
                if op.type == "fail" and str(op.value.get("error", "")).split(":")[-1] in SERVER_LOSS:
                    dead.append((op.t_done, "server_said_lost"))
            dead += [(t, "server_said_lost") for t, why in a.lost if why in SERVER_LOSS]
            dead += [(int(r["t_end"]), "server_restart") for r in m.restarts if int(r["t_start"]) > a.claim_ok]
            dead += [(b.claim_ok, f"superseded_by:{b.id}") for b in leases if b.claim_invoke > a.claim_ok]
            if not dead:
                continue
            t_dead, why = min(dead)
            for op in a.ops:
                if op.t_invoke <= t_dead or op.type != "ok" or op.f not in ("transition", "heartbeat", "release"):
                    continue
                if op.f == "release" and not op.value.get("released"):
                    continue
                rep.add(
                    "dead_token",
                    res,
                    lease=a.id,
                    token=a.token,
                    op=f"{op.proc}/{op.op}",
                    f=op.f,
                    result=op.value.get("reply") or op.value.get("state") or op.value.get("released"),
                    dead_since=why,
                    after_ms=round((op.t_invoke - t_dead) / NS_PER_MS, 1),
                )


def check_liveness(m: Model, rep: Report) -> None:
    """(h) After an owner is killed while it believes it holds a resource, the dead owner's
    record stops blocking that resource once its TTL has run out: another worker's claim succeeds,
    within TTL + ``LIVENESS_SLACK_S`` of the kill (extended by any server fault in that window)
    when some worker tries it in time. What is a violation does not depend on how promptly the
    workers ran (CI machines are loaded): a claim attempt invoked after that window that still
    conflicts with the dead owner, or attempts after the window of which none ever succeeds. A
    takeover that came late only because nobody tried the resource in time is counted
    (``liveness_late_takeover``), not flagged."""
    base = m.ttl_ns + int(LIVENESS_SLACK_S * NS_PER_S)
    for kill in (f for f in m.faults if f["kind"] == "owner_kill" and f.get("target")):
        tk, pid = int(kill["t_start"]), int(kill["target"]["pid"])
        for a in (x for x in m.leases.values() if x.pid == pid and x.claim_ok <= tk <= x.end):
            window_end = tk + base
            for f in m.faults:
                if (
                    f is not kill
                    and f["kind"] in SERVER_FAULTS
                    and int(f["t_start"]) < window_end
                    and int(f["t_end"]) > tk
                ):
                    window_end += int(f["t_end"]) - int(f["t_start"]) + NS_PER_S // 2
            if window_end > m.t_end:
                rep.notes["liveness_skipped_near_end"] += 1
                continue
            rep.notes["liveness_checked"] += 1
            nxt = [b for b in m.by_resource.get(a.resource, []) if b.claim_ok > tk and b.proc != a.proc]
            first = min((b.claim_ok for b in nxt), default=None)
            if first is not None and first <= window_end:
                rep.notes["liveness_max_takeover_ms"] = max(
                    rep.notes["liveness_max_takeover_ms"], round((first - tk) / NS_PER_MS)
                )
                continue
            tries = [
                op
                for op in m.ops
                if op.f == "claim"
                and op.resource == a.resource
                and op.proc != a.proc
                and window_end <= op.t_invoke
                and (first is None or op.t_invoke < first)
            ]
            blocked = [op for op in tries if op.type == "fail" and op.value.get("holder") == a.instance]
            if blocked or (tries and first is None):
                rep.add(
                    "liveness",
                    a.resource,
                    killed=a.id,
                    kill_at=tk,
                    next_claim_after_ms=None if first is None else round((first - tk) / NS_PER_MS),
                    bound_ms=round((window_end - tk) / NS_PER_MS),
                    attempts_after_bound=len(tries),
                    still_blocked_by_dead_owner=len(blocked),
                )
            else:
                rep.notes["liveness_late_takeover"] += 1


def _segments(data: RunData) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for s in data.segments:
        res, k = str(s["resource"]), int(s["segment"])
        if k not in out[res] or int(s["t_read"]) >= int(out[res][k]["t_read"]):
            entries = sorted(s["entries"], key=lambda e: _stream_id(str(e["id"])))
            out[res][k] = {**s, "entries": entries}
    return out


def check(data: RunData) -> Report:
    """Run every check on *data*."""
    m = Model(data)
    rep = Report()
    segs = _segments(data)
    check_fencing_order(m, segs, rep)
    check_server_exclusion(m, segs, rep)
    check_belief_overlap(m, rep)
    check_local_deadline(m, rep)
    check_store(m, rep)
    check_transitions(m, segs, rep)
    check_replay(m, segs, rep)
    check_dead_tokens(m, rep)
    check_liveness(m, rep)
    for ev in m.events:
        if ev.get("f") == "crash":
            rep.notes["worker_crashes"] += 1
    rep.stats = stats(m)
    rep.stats["shortfalls"] = shortfalls(rep.stats, rep.notes)
    return rep


def stats(m: Model) -> dict[str, Any]:
    ops: Counter[str] = Counter(f"{op.f}:{op.type}" for op in m.ops)
    faults: Counter[str] = Counter(
        f["kind"] + (f":{f['details']['variant']}" if f.get("details", {}).get("variant") else "") for f in m.faults
    )
    ends: Counter[str] = Counter(x.end_reason.split(":")[0] for x in m.leases.values())
    return {
        "operations": len(m.ops),
        "operations_by_kind": dict(sorted(ops.items())),
        "faults_by_kind": dict(sorted(faults.items())),
        "leases": len(m.leases),
        "belief_ends": dict(sorted(ends.items())),
        "processes": len(m.proc_end),
        "clock_tolerance_ms": round(m.tol_ms, 2),
        "activity": activity(m),
    }


def activity(m: Model) -> dict[str, Any]:
    """What the run did that the checks need material from (see :func:`shortfalls`)."""
    last_restart = max((int(r["t_end"]) for r in m.restarts), default=m.t_start)
    writers: dict[str, set[str]] = defaultdict(set)
    for op in m.ops:
        if op.f == "store_add" and op.type == "ok" and op.value.get("accepted") and op.resource and op.lease:
            writers[op.resource].add(op.lease)
    kept: set[str] = set()
    for ev in m.events:
        lease = m.leases.get(ev.get("lease") or "")
        if ev.get("f") == "held" and lease is not None and int(ev["t"]) >= lease.claim_sent + m.rd_ns:
            kept.add(lease.id)
    return {
        "claims_after_last_restart": {
            res: sum(1 for x in m.by_resource.get(res, []) if x.claim_invoke >= last_restart) for res in m.resources
        },
        "leases_with_accepted_writes": {res: len(writers[res]) for res in m.resources},
        "leases_kept_past_renew_deadline": len(kept),
    }


def shortfalls(stats: dict[str, Any], notes: Counter[str] | dict[str, int]) -> list[str]:
    """Why a run did not give the checks enough material (empty: it did), from :func:`stats`
    and the report's notes.

    Each minimum derives from the run's own structure, not from how much work a loaded machine
    let the workers do: every resource is claimed again after the last server restart (workers
    whose records the restart wiped learn it at their next heartbeat; the faults stop
    TTL + liveness slack + 1.5 s before the end), the fenced store accepted writes of at least
    two owners on every resource (so fencing across owners was exercised), at least one lease
    was kept past ``renew_deadline`` by its heartbeats (``acted_after_deadline`` makes sure
    those were acknowledged renewals), and an owner was killed while it held a resource (the
    runner's forced schedule waits for a holder). An implementation that does nothing (claims
    that never succeed, heartbeats that never renew, a lease that is never held) fails all or
    some of them."""
    act = stats.get("activity", {})
    out = []
    for res, n in sorted(act.get("claims_after_last_restart", {}).items()):
        if n < 1:
            out.append(f"resource {res}: no claim after the last server restart")
    for res, n in sorted(act.get("leases_with_accepted_writes", {}).items()):
        if n < 2:
            out.append(f"resource {res}: the fenced store accepted writes of {n} owner(s), not 2 or more")
    if act.get("leases_kept_past_renew_deadline", 0) < 1:
        out.append("no lease was kept past renew_deadline by its heartbeats")
    if notes.get("liveness_checked", 0) < 1:
        out.append("no owner was killed while it held a resource: liveness unchecked")
    return out


def format_report(rep: Report, impl: str = "", limit: int = 10) -> str:
    lines = []
    s = rep.stats
    lines.append(f"operations: {s.get('operations', 0)} ({len(s.get('operations_by_kind', {}))} kinds)")
    for kind, n in s.get("operations_by_kind", {}).items():
        lines.append(f"  {kind:28} {n}")
    lines.append("faults: " + ", ".join(f"{k}={n}" for k, n in s.get("faults_by_kind", {}).items()))
    lines.append(f"leases: {s.get('leases', 0)}; belief ends: {s.get('belief_ends')}")
    lines.append(f"activity: {json.dumps(s.get('activity', {}), sort_keys=True)}")
    for short in s.get("shortfalls", []):
        lines.append(f"  shortfall: {short}")
    lines.append("notes: " + ", ".join(f"{k}={n}" for k, n in sorted(rep.notes.items())))
    by_kind = rep.by_kind()
    lines.append(f"violations{' (' + impl + ')' if impl else ''}: {len(rep.violations)}")
    for kind, n in by_kind.items():
        lines.append(f"  {kind:28} {n}")
    shown: Counter[str] = Counter()
    for v in rep.violations:
        if shown[v.kind] < limit:
            shown[v.kind] += 1
            lines.append(f"  - {v.kind} resource={v.resource} {json.dumps(v.details, sort_keys=True)}")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check a chaos run's history file.")
    p.add_argument("history")
    p.add_argument("--limit", type=int, default=10, help="violations shown per kind")
    args = p.parse_args(list(argv) if argv is not None else None)
    data = load(args.history)
    rep = check(data)
    print(format_report(rep, str(data.meta.get("impl", "")), args.limit))
    return 1 if rep.violations else 0


if __name__ == "__main__":
    sys.exit(main())
