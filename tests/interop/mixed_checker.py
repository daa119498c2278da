"""The checks of a mixed-language contention run: Node.js workers (``tests/node/worker.mjs``) and
Python workers (``py_worker.py``) on the same resources, one history in the chaos runner's format
(``tests/chaos/runner.py``) and the server's activity logs.

Why not only ``tests/chaos/checker.py``: it finds a lease's local deadline from the heartbeats in
the history, and the Python workers use pylivermore's public API, whose heartbeats run out of the
history's sight. The Python workers report the library's deadline instead (``deadline`` events,
see ``py_worker.py``); this module reads both. The test runs the chaos checker on the same history
too, for the checks that do not need the heartbeats.

Violations (each a :class:`Violation`):

* ``owner_overlap``: two leases of a resource whose ownership intervals overlap. A lease's interval
  runs from its claim's ``ok`` to the earliest of its release's *invoke*, its local deadline, the
  first sign of its loss (a ``lost`` / ``held_check_failed`` event, an owner operation answered
  EXPIRED or TAKEN) and its process's last record. The local deadline: for a lease with heartbeats
  in the history, the send (invoke) time of the last acknowledged claim or heartbeat + renew
  deadline, an acknowledgement counting only if it came within renew deadline of its send and was
  sent before the deadline so far (as the chaos checker counts it); for a lease with ``deadline``
  events, the largest one (a lower bound of the library's final deadline); else claim invoke +
  renew deadline.
* ``acted_after_deadline``: a ``held`` event (the owner about to act) at or after that deadline.
* ``fencing_order``: fencing tokens of a resource's claim entries not strictly increasing in log
  order; or a claim invoked after another claim of the resource was acknowledged carrying a token
  that is not higher.
* ``log_order``: entry ids not strictly increasing; a ``state_transition`` that is not an edge of
  the default table (lua/README.md) or does not start from the holder's state; an entry of a lease
  before its claim, after its deregister, or while another lease holds the record; a deregister
  whose ``state`` is not the holder's.
* ``claim_unlogged`` / ``claim_phantom``: an acknowledged claim without its log entry (token and
  instance); a claim entry that no worker's claim can explain.
* ``transitions_mismatch`` / ``release_mismatch``: the acknowledged transitions of a lease (whose
  owner operations all got a reply) are not exactly its ``state_transition`` entries, in order; an
  acknowledged release without its ``deregister`` entry, or a failed one with it.

Numbers (:class:`Report`): leases per language, handoffs between languages (consecutive claims of
a resource in its log by workers of different languages), languages per resource, leases kept past
the renew deadline by their heartbeats (a ``held`` event after claim + renew deadline).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.contract.helpers import SPEC_EDGES

#: The default state table of lua/README.md ("Semantics that every caller must honour").
EDGES = SPEC_EDGES

#: The errors that end an interval: an owner operation answered EXPIRED or TAKEN (both languages record them so).
LOST_REPLIES = ("lost:expired", "lost:taken")


@dataclass(frozen=True)
class Violation:
    kind: str
    resource: str | None
    details: dict[str, Any]


@dataclass
class Lease:
    id: str
    proc: str
    lang: str
    resource: str
    token: int
    instance: str
    claim_invoke: int
    claim_ok: int
    heartbeats: list[tuple[int, int | None, str]] = field(default_factory=list)  # (invoke, done, type)
    deadline_samples: list[int] = field(default_factory=list)
    ends: list[tuple[int, str]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    transitions: list[tuple[str, str]] = field(default_factory=list)  # (type, to)
    release: str | None = None  # type of the release op
    released: bool | None = None
    deadline: int = 0
    end: int = 0
    end_reason: str = ""


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    leases: dict[str, int] = field(default_factory=dict)
    held_ms: dict[str, float] = field(default_factory=dict)
    handoffs: dict[str, dict[str, int]] = field(default_factory=dict)
    languages: dict[str, list[str]] = field(default_factory=dict)
    kept_past_deadline: dict[str, int] = field(default_factory=dict)
    notes: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, resource: str | None, **details: Any) -> None:
        self.violations.append(Violation(kind, resource, details))

    def by_kind(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))

    def summary(self, limit: int = 10) -> str:
        lines = [
            f"leases (intervals) per language: {self.leases}; held ms: {self.held_ms}",
            f"handoffs between languages per resource: {self.handoffs}",
            f"languages per resource: {self.languages}",
            f"leases kept past renew_deadline by heartbeats: {self.kept_past_deadline}",
            f"notes: {dict(self.notes)}",
            f"violations: {len(self.violations)} {self.by_kind()}",
        ]
        lines += [
            f"  - {v.kind} resource={v.resource} {json.dumps(v.details, default=str)}" for v in self.violations[:limit]
        ]
        return "\n".join(lines)


def read_history(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The records of the workers' history files, by time (a truncated last line is skipped)."""
    records = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    records.sort(key=lambda r: int(r["t"]))
    return records


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def check(records: list[dict[str, Any]], logs: Mapping[str, list[dict[str, Any]]], renew_deadline_ms: float) -> Report:
    """Check one run: *records* from :func:`read_history`, *logs* each resource's log entries oldest
    first (``{"id": ..., "event": ..., <fields>}``)."""
    rd = int(renew_deadline_ms * 1_000_000)
    rep = Report()
    lang_of_proc: dict[str, str] = {}
    proc_end: dict[str, int] = {}
    for r in records:
        proc = str(r["proc"])
        proc_end[proc] = max(proc_end.get(proc, 0), int(r["t"]))
        if r.get("type") == "event" and r.get("f") == "start":
            lang_of_proc[proc] = str(r["value"].get("impl"))

    # Pair invokes with their completions; build the leases from acknowledged claims.
    invokes: dict[tuple[str, int], dict[str, Any]] = {}
    ops: list[dict[str, Any]] = []
    for r in records:
        if r.get("type") == "event":
            continue
        key = (str(r["proc"]), int(r["op"]))
        if r["type"] == "invoke":
            op = {**r, "t_invoke": int(r["t"]), "t_done": None, "outcome": "unknown", "value": dict(r["value"])}
            invokes[key] = op
            ops.append(op)
        elif key in invokes:
            op = invokes[key]
            op.update(t_done=int(r["t"]), outcome=r["type"], lease=r.get("lease"), token=r.get("token"))
            op["value"].update(r.get("value") or {})
    leases: dict[str, Lease] = {}
    for op in ops:
        if op["f"] == "claim" and op["outcome"] == "ok":
            proc = str(op["proc"])
            leases[op["lease"]] = Lease(
                id=op["lease"],
                proc=proc,
                lang=lang_of_proc.get(proc, "?"),
                resource=str(op["resource"]),
                token=int(op["token"]),
                instance=str(op["value"].get("instance")),
                claim_invoke=op["t_invoke"],
                claim_ok=op["t_done"],
            )
    for op in ops:
        lease = leases.get(op.get("lease") or "")
        if lease is None or op["f"] == "claim":
            continue
        error = str(op["value"].get("error", ""))
        if op["f"] == "heartbeat":
            lease.heartbeats.append((op["t_invoke"], op["t_done"], op["outcome"]))
        elif op["f"] == "transition":
            lease.transitions.append((op["outcome"], str(op["value"].get("to"))))
        elif op["f"] == "release":
            lease.ends.append((op["t_invoke"], "release"))
            lease.release = op["outcome"]
            lease.released = bool(op["value"].get("released")) if op["outcome"] == "ok" else None
        if op["outcome"] == "fail" and error.startswith(LOST_REPLIES) and op["t_done"] is not None:
            lease.ends.append((op["t_done"], error))
    for r in records:
        lease = leases.get(r.get("lease") or "")
        if r.get("type") != "event" or lease is None:
            continue
        if r["f"] in ("lost", "held_check_failed"):
            lease.ends.append((int(r["t"]), f"{r['f']}:{r['value'].get('reason')}"))
        elif r["f"] == "held":
            lease.held.append(int(r["t"]))
        elif r["f"] == "deadline":
            lease.deadline_samples.append(int(r["value"]["deadline"]))

    for lease in leases.values():
        lease.deadline = _deadline(lease, rd)
        ends = [*lease.ends, (lease.deadline, "deadline"), (proc_end.get(lease.proc, lease.claim_ok), "process_end")]
        lease.end, lease.end_reason = min(ends)
        for t in lease.held:
            if t >= lease.deadline:
                rep.add(
                    "acted_after_deadline",
                    lease.resource,
                    lease=lease.id,
                    lang=lease.lang,
                    after_ms=round((t - lease.deadline) / 1e6, 3),
                )
        if any(t >= lease.claim_invoke + rd for t in lease.held):
            rep.kept_past_deadline[lease.lang] = rep.kept_past_deadline.get(lease.lang, 0) + 1

    by_resource: dict[str, list[Lease]] = defaultdict(list)
    for lease in sorted(leases.values(), key=lambda x: x.claim_ok):
        by_resource[lease.resource].append(lease)
    rep.leases = dict(Counter(x.lang for x in leases.values()))
    for x in leases.values():
        rep.held_ms[x.lang] = round(rep.held_ms.get(x.lang, 0.0) + max(0, x.end - x.claim_ok) / 1e6, 1)
    _check_overlap(by_resource, rep)
    _check_history_fencing(by_resource, rep)
    unknown_claims = Counter(
        (str(op["resource"]), str(op["proc"])) for op in ops if op["f"] == "claim" and op["outcome"] == "unknown"
    )
    for resource, entries in logs.items():
        _check_log(resource, entries, by_resource.get(resource, []), lang_of_proc, unknown_claims, rep)
    return rep


def _deadline(lease: Lease, rd: int) -> int:
    if lease.deadline_samples:
        return max(lease.deadline_samples)
    deadline = lease.claim_invoke + rd
    for sent, done, outcome in sorted(lease.heartbeats):
        if sent >= deadline:
            break
        if outcome == "ok" and done is not None and done < sent + rd:
            deadline = max(deadline, sent + rd)
    return deadline


def _check_overlap(by_resource: Mapping[str, list[Lease]], rep: Report) -> None:
    for resource, leases in by_resource.items():
        for i, a in enumerate(leases):
            for b in leases[i + 1 :]:
                if b.claim_ok >= a.end:
                    break
                rep.add(
                    "owner_overlap",
                    resource,
                    older=a.id,
                    older_token=a.token,
                    older_end=a.end_reason,
                    newer=b.id,
                    newer_token=b.token,
                    overlap_ms=round((min(a.end, b.end) - b.claim_ok) / 1e6, 3),
                )


def _check_history_fencing(by_resource: Mapping[str, list[Lease]], rep: Report) -> None:
    for resource, leases in by_resource.items():
        for a in leases:
            for b in leases:
                if b.claim_invoke > a.claim_ok and b.token <= a.token:
                    rep.add(
                        "fencing_order", resource, where="history", earlier=a.id, later=b.id, tokens=[a.token, b.token]
                    )


def _check_log(
    resource: str,
    entries: list[dict[str, Any]],
    leases: list[Lease],
    lang_of_proc: Mapping[str, str],
    unknown_claims: Counter[tuple[str, str]],
    rep: Report,
) -> None:
    by_token = {x.token: x for x in leases}
    holder: tuple[int, str] | None = None  # (token, state)
    done: set[int] = set()
    claimed: set[int] = set()
    logged_transitions: dict[int, list[str]] = defaultdict(list)
    deregistered: Counter[int] = Counter()
    last_id: tuple[int, int] | None = None
    last_token: int | None = None
    last_lang: str | None = None
    handoffs: Counter[str] = Counter()
    langs: set[str] = set()
    for e in entries:
        eid = _stream_id(str(e["id"]))
        if last_id is not None and eid <= last_id:
            rep.add("log_order", resource, problem="entry ids not increasing", entry=e["id"])
        last_id = eid
        event, token = e.get("event"), int(e.get("fencingToken") or 0)
        if event == "claim":
            if last_token is not None and token <= last_token:
                rep.add("fencing_order", resource, where="log", previous=last_token, token=token, entry=e["id"])
            last_token = token
            if token in claimed:
                rep.add("log_order", resource, problem="token claimed twice", token=token)
            claimed.add(token)
            holder = (token, "idle")
            instance = str(e.get("instanceId"))
            proc = instance.split("@")[0]
            lang = lang_of_proc.get(proc, "?")
            langs.add(lang)
            if last_lang is not None and lang != last_lang:
                handoffs[f"{last_lang}->{lang}"] += 1
            last_lang = lang
            lease = by_token.get(token)
            if lease is None:
                if unknown_claims[(resource, proc)] > 0:
                    unknown_claims[(resource, proc)] -= 1
                    rep.notes["claim_logged_for_an_unknown_outcome"] += 1
                else:
                    rep.add("claim_phantom", resource, token=token, instance=instance, entry=e["id"])
            elif lease.instance != instance:
                rep.add("claim_phantom", resource, token=token, instance=instance, lease_instance=lease.instance)
            continue
        if token not in claimed or token in done:
            rep.add("log_order", resource, problem=f"{event} outside its lease", token=token, entry=e["id"])
            continue
        if holder is None or holder[0] != token:
            rep.add("log_order", resource, problem=f"{event} by a non-holder", token=token, entry=e["id"])
            continue
        if event == "state_transition":
            frm, to = str(e.get("fromState")), str(e.get("toState"))
            if frm != holder[1] or (frm, to) not in EDGES:
                rep.add(
                    "log_order",
                    resource,
                    problem="not an edge from the holder's state",
                    holder=holder[1],
                    transition=f"{frm}>{to}",
                )
            holder = (token, to)
            logged_transitions[token].append(to)
        elif event == "deregister":
            if str(e.get("state")) != holder[1]:
                rep.add(
                    "log_order",
                    resource,
                    problem="deregister state is not the holder's",
                    state=e.get("state"),
                    holder=holder[1],
                )
            holder = None
            done.add(token)
            deregistered[token] += 1
        elif event == "force_release":
            holder = None
            done.add(token)
        else:
            rep.add("log_order", resource, problem=f"unexpected event {event}", entry=e["id"])
    rep.handoffs[resource] = dict(handoffs)
    rep.languages[resource] = sorted(langs)

    for lease in leases:
        if lease.token not in claimed:
            rep.add("claim_unlogged", resource, lease=lease.id, token=lease.token)
            continue
        if all(outcome in ("ok", "fail") for outcome, _ in lease.transitions) and lease.release in ("ok", None):
            acked = [to for outcome, to in lease.transitions if outcome == "ok"]
            if acked != logged_transitions.get(lease.token, []):
                rep.add(
                    "transitions_mismatch",
                    resource,
                    lease=lease.id,
                    acked=acked,
                    logged=logged_transitions.get(lease.token),
                )
            rep.notes["leases_compared_with_log"] += 1
        else:
            rep.notes["leases_with_unknown_outcomes"] += 1
        if lease.release == "ok" and bool(lease.released) != (deregistered[lease.token] == 1):
            rep.add(
                "release_mismatch", resource, lease=lease.id, released=lease.released, logged=deregistered[lease.token]
            )
