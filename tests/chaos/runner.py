"""A Jepsen-style chaos run: W worker processes contend over R resources while faults hit them.

Usage (from the repository root)::

    python -m tests.chaos.runner --duration 180 --workers 6 --resources 3 \\
        --impl pylivermore|seed --seed N --out history.jsonl [--schedule random|forced]

The runner starts one private ``redis-server`` for the registry (the one that gets faulted) and
one for the fenced store (never faulted), then W worker processes. Each worker loops until its
deadline: claim a resource (after a conflict, a short random pause, then the next resource),
walk idle -> starting -> warming -> active, add unique items to the fenced store under the lease
(pylivermore: only while ``ensure_held()`` passes; every write carries the lease's fencing
token; a random delay of up to 50 ms between the check and the write lets pauses land inside
the critical section), sometimes keep holding for a while, (pylivermore) sometimes re-send one
of its earlier transition calls unchanged (a late duplicate: the same token and seq), walk
stopping -> stopped, release (a worker whose write was fenced off releases at once). Every
operation is recorded as ``invoke`` then ``ok`` / ``fail`` / ``unknown`` with
``time.monotonic_ns()`` into the worker's own JSON-lines file (heartbeats too: pylivermore's are
recorded where the registry sends them, the seed port's through its heartbeat observer), and
each transition's ``seq`` and each deregister's fencing token in a ``send`` event as it goes out
(``checker.py`` identifies the calls in the activity log by them).

Faults, drawn with ``random.Random(--seed)`` (``--schedule forced`` starts with every kind in a
fixed order, ``random`` with every kind in a seeded order; both continue at random):

* ``owner_kill``: SIGKILL a worker (preferably a current holder), then start a new one;
* ``owner_pause``: SIGSTOP a worker (preferably a holder) for longer than the TTL, then SIGCONT
  (in the forced schedule both wait, for a while, until some worker holds a resource);
* ``script_flush``: ``SCRIPT FLUSH`` on the registry server;
* ``server_pause``: SIGSTOP the registry server for less (``short``) or more (``long``) than
  ``renew_deadline``, then SIGCONT;
* ``server_restart``: ``RedisServer.restart()`` (no persistence: records, fence keys, logs and
  the script cache are lost). The runner reads every resource's log right before it.

Timings: TTL 1.5 s, heartbeat 0.5 s, renew deadline 1.0 s. The runner reads the status records
and logs in one ``MULTI`` every ``SNAPSHOT_EVERY`` seconds, before each restart and at the end;
then it reads the store, writes everything into ``--out`` (JSON lines, see ``checker.py``), runs
the checker, prints a summary, writes ``<out>.check.json`` and exits 1 on violations (``--impl
pylivermore``; for ``--impl seed`` it prints the violations and exits 0), 2 on a harness error.

Bounds: workers get an absolute deadline (``CLOCK_MONOTONIC`` is system-wide) and their parent's
pid; a watchdog thread in each worker exits it when the parent is gone or the deadline plus
``WORKER_GRACE`` has passed. Workers and servers also get ``PR_SET_PDEATHSIG`` = SIGKILL (which
works on a SIGSTOPped process too). A reaper process started first kills (SIGCONT, SIGKILL) the
workers and servers listed in a pid file, and removes the temp dirs, if the runner dies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import msgspec
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from pylivermore import (
    ClaimConflictError,
    CorruptStatusError,
    InvalidTransitionError,
    Lease,
    LeaseLostError,
    LivermoreError,
    Registry,
    ScriptContractError,
)
from pylivermore._keys import Keys
from pylivermore._protocol import Call, split_renewals
from pylivermore.models import decode_entry, text_dict
from pylivermore.server import RedisServer

from . import checker
from .fenced_store import FencedStore
from .seed_port import SeedConflictError, SeedInvalidTransitionError, SeedLease, SeedNotHeldError, SeedRegistry

ROOT = Path(__file__).resolve().parents[2]
HOSTNAME = "chaos-host"  # every worker reports the same host, as processes on one machine do
NAMESPACE = "chaos"
#: The runner's own all-rights user on both servers (random password per run, passed to the
#: workers in their environment). Whatever ``$PYLIVERMORE_REDIS_ARGS`` makes of the ``default``
#: user (the test suite makes it the least-privilege worker of ``pylivermore.acl``) is what the
#: pylivermore workers use; the runner's inspection and faults, the fenced store and the seed
#: port (which never had an ACL) use this user.
ADMIN_USER = "chaos-admin"
ADMIN_ENV = "PYLIVERMORE_CHAOS_ADMIN_PASSWORD"
SNAPSHOT_EVERY = 2.0
REPLAY_P = 0.3  # a holder re-sends one of its earlier transition calls, unchanged, before stopping
WORKER_GRACE = 5.0  # a worker exits by itself at most this long after its deadline
FORCED: tuple[tuple[str, str | None], ...] = (
    ("owner_kill", None),
    ("script_flush", None),
    ("server_pause", "short"),
    ("owner_pause", None),
    ("server_pause", "long"),
    ("server_restart", None),
)
WEIGHTS: tuple[tuple[tuple[str, str | None], int], ...] = (
    (("owner_kill", None), 3),
    (("owner_pause", None), 3),
    (("script_flush", None), 2),
    (("server_pause", "short"), 2),
    (("server_pause", "long"), 2),
    (("server_restart", None), 2),
)


@dataclass
class Config:
    impl: str = "pylivermore"
    duration: float = 180.0
    workers: int = 6
    resources: int = 3
    seed: int = 1
    out: str = "history.jsonl"
    schedule: str = "random"
    ttl: float = 1.5
    heartbeat_interval: float = 0.5
    renew_deadline: float = 1.0
    quiet: bool = False


# =============================================================================================
# Worker side
# =============================================================================================


class Recorder:
    """Appends one JSON object per line (flushed at once, so a SIGKILL loses no completed line)."""

    def __init__(self, path: str, proc: str, pid: int) -> None:
        self._f: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()
        self._lock = threading.Lock()
        self._ops = itertools.count(1)
        self.proc = proc
        self.pid = pid

    def _write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, separators=(",", ":"), default=str)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def _rec(self, kind: str, f: str, op: int | None, t: int, where: dict[str, Any], value: dict[str, Any]) -> None:
        self._write(
            {"type": kind, "f": f, "op": op, "proc": self.proc, "pid": self.pid, "t": t, **where, "value": value}
        )

    def invoke(
        self, f: str, *, resource: str | None = None, lease: str | None = None, token: int | None = None, **value: Any
    ) -> int:
        op = next(self._ops)
        self._rec("invoke", f, op, time.monotonic_ns(), {"resource": resource, "lease": lease, "token": token}, value)
        return op

    def done(
        self,
        op: int,
        kind: str,
        f: str,
        *,
        resource: str | None = None,
        lease: str | None = None,
        token: int | None = None,
        **value: Any,
    ) -> None:
        self._rec(kind, f, op, time.monotonic_ns(), {"resource": resource, "lease": lease, "token": token}, value)

    def event(
        self,
        f: str,
        *,
        t: int | None = None,
        op: int | None = None,
        resource: str | None = None,
        lease: str | None = None,
        token: int | None = None,
        **value: Any,
    ) -> None:
        when = time.monotonic_ns() if t is None else t
        self._rec("event", f, op, when, {"resource": resource, "lease": lease, "token": token}, value)

    def close(self) -> None:
        with self._lock:
            self._f.close()


class CountingBackoff(ExponentialBackoff):
    """redis-py calls ``compute`` once per retry: count them per thread, so that a failure after
    a retry is recorded as ``unknown`` (an earlier attempt may have been applied)."""

    local = threading.local()

    def compute(self, failures: int) -> float:
        CountingBackoff.local.n = getattr(CountingBackoff.local, "n", 0) + 1
        return super().compute(failures)

    @classmethod
    def clear(cls) -> None:
        cls.local.n = 0

    @classmethod
    def retried(cls) -> bool:
        return bool(getattr(cls.local, "n", 0))


def admin_credentials() -> dict[str, Any]:
    password = os.environ.get(ADMIN_ENV)
    return {"username": ADMIN_USER, "password": password} if password else {}


def owner_client(url: str, **credentials: Any) -> redis.Redis:
    """Bounded owner calls: 1 s socket timeout, one retry (as a user would configure it)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=0.5,
        retry=Retry(CountingBackoff(cap=0.1, base=0.02), 1),
        **credentials,
    )


def _word(reply: object) -> str:
    if isinstance(reply, list | tuple) and reply:
        first = reply[0]
        return first.decode() if isinstance(first, bytes) else str(first)
    return repr(reply)


class Handle(Protocol):
    lease_id: str
    resource: str
    token: int

    def transition(self, to: str, op: int) -> str: ...
    def ensure_held(self) -> None: ...
    def release(self, op: int) -> bool: ...
    def sent(self) -> list[str]: ...
    def replay(self, index: int, op: int) -> str: ...


class Owner(Protocol):
    def claim(self, resource: str, lease_id: str, op: int) -> Handle: ...
    def classify(self, exc: BaseException) -> tuple[str, str]: ...
    def close(self) -> None: ...


class RecordingRegistry(Registry):
    """A :class:`~pylivermore.Registry` that records what its background heartbeat does.

    Every script call goes out through ``Registry._run`` (one call) or ``Registry._run_batch`` (the
    heartbeat loop's ``renew_many`` calls, pipelined), so overriding both records each lease's
    heartbeat as invoke/ok/fail/unknown, and, in a ``send`` event right before it goes out, the
    ``seq`` of each transition (the lease numbers its calls itself) and the fencing token each
    deregister names: with the lease's fencing token they identify the call in the activity log.
    A retry of the same call (redis-py's, after a timeout or a reset) re-sends the same arguments
    inside one ``_run``, so it carries the same seq. The owner secret is only used as a dict key,
    never written.
    If the library ever sent heartbeats another way, the checker's ``acted_after_deadline`` check
    would flag it (a lease held past its claim's deadline with no recorded renewal).
    """

    def __init__(self, client: redis.Redis, *, recorder: Recorder, **options: Any) -> None:
        self.recorder = recorder
        self.leases: dict[str, tuple[str, int, str]] = {}  # owner secret -> (lease id, token, resource)
        self.ctx = threading.local()
        super().__init__(client, **options)

    def _beat_sent(self, secret: str) -> tuple[int, dict[str, Any]]:
        lease_id, token, resource = self.leases.get(secret, (None, None, None))
        where: dict[str, Any] = {"resource": resource, "lease": lease_id, "token": token}
        return self.recorder.invoke("heartbeat", **where), where

    def _beat_done(self, op: int, where: dict[str, Any], reply: object) -> None:
        if isinstance(reply, BaseException):
            self.recorder.done(op, "unknown", "heartbeat", **where, error=type(reply).__name__)
            return
        word = _word(reply)
        if word == "RENEWED":
            self.recorder.done(op, "ok", "heartbeat", **where, reply=word)
        else:
            self.recorder.done(op, "fail", "heartbeat", **where, reply=word, error=f"lost:{word.lower()}")

    def _beats_sent(self, call: Call) -> list[tuple[int, dict[str, Any]]]:
        # heartbeat: ARGV = token, ttl; renew_many: ARGV = ttl, then one token per key
        return [self._beat_sent(secret) for secret in (call.args[:1] if call.script == "heartbeat" else call.args[1:])]

    def _beats_done(self, call: Call, sent: list[tuple[int, dict[str, Any]]], reply: object) -> None:
        each: list[object] = [reply] * len(sent)
        if call.script == "renew_many" and not isinstance(reply, BaseException):
            with contextlib.suppress(ScriptContractError):
                each = split_renewals(reply, len(sent))
        for (op, where), one in zip(sent, each, strict=True):
            self._beat_done(op, where, one)

    def _run_batch(
        self,
        calls: list[Call],
        client: redis.Redis,
        asking: bool = False,
        tail: tuple[tuple[str | int, ...], ...] = (),
    ) -> list[Any]:
        # (A claim goes through here only on a cluster or as a durable claim, neither of which the
        # chaos run uses: its claims go through _run below.)
        sent = [self._beats_sent(call) if call.script in ("heartbeat", "renew_many") else None for call in calls]
        try:
            replies = super()._run_batch(calls, client, asking, tail)
        except BaseException as exc:
            for call, s in zip(calls, sent, strict=True):
                if s is not None:
                    self._beats_done(call, s, exc)
            raise
        for call, s, reply in zip(calls, sent, replies[: len(calls)], strict=True):  # then the tail's replies
            if s is not None:
                self._beats_done(call, s, reply)
        return replies

    def _run(self, call: Call, client: redis.Redis | None = None) -> Any:
        rec = self.recorder
        if call.script in ("heartbeat", "renew_many"):
            sent = self._beats_sent(call)
            try:
                reply = super()._run(call, client)
            except BaseException as exc:
                self._beats_done(call, sent, exc)
                raise
            self._beats_done(call, sent, reply)
            return reply
        if call.script == "transition":  # ARGV = token, seq, to, expected
            rec.event("send", op=getattr(self.ctx, "op", None), seq=int(call.args[1]), script=call.script)
            self.ctx.call = call
        elif call.script == "deregister":  # ARGV = token, fencing_token
            rec.event("send", op=getattr(self.ctx, "op", None), fencing=int(call.args[1]), script=call.script)
        elif call.script == "claim":  # right after the library took its send time
            rec.event("send", op=getattr(self.ctx, "op", None), script=call.script)
        reply = super()._run(call, client)
        if call.script == "claim" and _word(reply) == "CLAIMED":
            self.leases[call.args[0]] = (self.ctx.lease_id, int(reply[1]), call.args[2])
        elif call.script in ("transition", "deregister"):  # OK/RELEASED, or REPLAYED: a retry's answer
            rec.event("reply", op=getattr(self.ctx, "op", None), word=_word(reply), script=call.script)
        return reply


class PylivermoreHandle:
    def __init__(self, registry: RecordingRegistry, lease: Lease, lease_id: str, resource: str) -> None:
        self.registry = registry
        self.lease = lease
        self.lease_id = lease_id
        self.resource = resource
        self.token = lease.fencing_token

        self.calls: list[Call] = []  # this lease's transition calls, as they went out

    def transition(self, to: str, op: int) -> str:
        self.registry.ctx.op = op  # the lease picks the call's seq itself: recorded by _run
        self.registry.ctx.call = None
        try:
            return str(self.lease.transition(to))  # a State is a StrEnum: its value
        finally:
            if self.registry.ctx.call is not None:
                self.calls.append(self.registry.ctx.call)

    def ensure_held(self) -> None:
        self.lease.ensure_held()

    def release(self, op: int) -> bool:
        self.registry.ctx.op = op
        return self.lease.release()

    def sent(self) -> list[str]:
        return [call.args[2] for call in self.calls]

    def replay(self, index: int, op: int) -> str:
        """Send the *index*-th transition call of this lease again, byte for byte (its token and
        seq): a late duplicate of a call already answered. Its reply's status word."""
        self.registry.ctx.op = op
        return _word(self.registry._run(self.calls[index]))


class PylivermoreOwner:
    def __init__(self, spec: dict[str, Any], rec: Recorder) -> None:
        self.rec = rec
        self.client = owner_client(spec["url"])
        self.registry = RecordingRegistry(
            self.client,
            recorder=rec,
            namespace=spec["namespace"],
            ttl=spec["ttl"],
            heartbeat_interval=spec["heartbeat_interval"],
            renew_deadline=spec["renew_deadline"],
            instance_id=spec["instance"],
            hostname=HOSTNAME,
        )

    def claim(self, resource: str, lease_id: str, op: int) -> Handle:
        self.registry.ctx.lease_id = lease_id
        self.registry.ctx.op = op
        rec = self.rec

        def on_lost(lease: Lease) -> None:
            rec.event("lost", resource=resource, lease=lease_id, token=lease.fencing_token, reason=lease.lost_reason)

        lease = self.registry.claim(int(resource), f"Exchange{resource}", on_lost=on_lost)
        return PylivermoreHandle(self.registry, lease, lease_id, resource)

    def classify(self, exc: BaseException) -> tuple[str, str]:
        if isinstance(exc, ClaimConflictError):
            return "fail", "conflict"
        if isinstance(exc, LeaseLostError):
            return "fail", f"lost:{exc.reason}"
        if isinstance(exc, InvalidTransitionError):
            return "fail", "bad_transition"
        if isinstance(exc, CorruptStatusError):
            return "fail", f"corrupt:{exc}"
        if isinstance(exc, LivermoreError):
            return "unknown", f"{type(exc).__name__}:{exc}"
        return "unknown", type(exc).__name__

    def close(self) -> None:
        self.registry.close()
        self.client.close()


class SeedHandle:
    def __init__(self, lease: SeedLease, lease_id: str, resource: str, rec: Recorder) -> None:
        self.lease = lease
        self.lease_id = lease_id
        self.resource = resource
        self.token = lease.fencing_token
        self.rec = rec

    def transition(self, to: str, op: int) -> str:
        seq = self.lease.next_seq()  # the label of its log entry, recorded as pylivermore's are
        self.rec.event("send", op=op, seq=seq, script="transition")
        return self.lease.transition(to, seq=seq)

    def ensure_held(self) -> None:
        self.lease.ensure_held()

    def release(self, op: int) -> bool:
        self.rec.event("send", op=op, fencing=self.token, script="deregister")
        return self.lease.release()

    def sent(self) -> list[str]:
        return []  # the seed has no replay protection to probe

    def replay(self, index: int, op: int) -> str:
        raise NotImplementedError("the seed port sends no calls that could be replayed")


class SeedOwner:
    def __init__(self, spec: dict[str, Any], rec: Recorder) -> None:
        self.rec = rec
        self.client = owner_client(spec["url"], **admin_credentials())  # the seed had no ACL user
        self.labels: dict[int, tuple[str, str]] = {}  # id(lease) -> (lease id, resource)
        self.registry = SeedRegistry(
            self.client,
            ttl=spec["ttl"],
            heartbeat_interval=spec["heartbeat_interval"],
            hostname=HOSTNAME,
            instance_id=spec["instance"],
            observe_heartbeat=self._observe,
        )

    def _observe(self, lease: SeedLease, beat: Callable[[], str]) -> object:
        lease_id, resource = self.labels.get(id(lease), (None, lease.exchange_id))
        where: dict[str, Any] = {"resource": resource, "lease": lease_id, "token": lease.fencing_token}
        op = self.rec.invoke("heartbeat", **where)
        try:
            outcome = beat()
        except BaseException as exc:
            self.rec.done(op, "unknown", "heartbeat", **where, error=type(exc).__name__)
            raise
        self.rec.done(op, "ok", "heartbeat", **where, reply=outcome)
        return outcome

    def claim(self, resource: str, lease_id: str, op: int) -> Handle:
        lease = self.registry.claim(resource, f"Exchange{resource}")
        self.labels[id(lease)] = (lease_id, resource)
        return SeedHandle(lease, lease_id, resource, self.rec)

    def classify(self, exc: BaseException) -> tuple[str, str]:
        if isinstance(exc, SeedConflictError):
            return "fail", "conflict"
        if isinstance(exc, SeedNotHeldError):
            return "fail", "lost:released"
        if isinstance(exc, SeedInvalidTransitionError):
            return "fail", "bad_transition"
        return "unknown", type(exc).__name__

    def close(self) -> None:
        self.registry.close()
        self.client.close()


class Worker:
    """One worker process's loop (see the module docstring)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.proc = str(spec["proc"])
        self.deadline = float(spec["deadline"])
        self.parent = int(spec["parent"])
        self.rng = random.Random(f"{spec['seed']}/{self.proc}")
        self.rec = Recorder(spec["history"], self.proc, os.getpid())
        self.resources: list[str] = list(spec["resources"])
        self.items = itertools.count(1)
        self.owner: Owner = (
            PylivermoreOwner(spec, self.rec) if spec["impl"] == "pylivermore" else SeedOwner(spec, self.rec)
        )
        self.store = FencedStore(spec["store_url"], **admin_credentials())

    def alive(self) -> bool:
        return time.monotonic() < self.deadline and os.getppid() == self.parent

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def _outcome(self, exc: BaseException) -> tuple[str, str]:
        kind, error = self.owner.classify(exc)
        if kind == "fail" and CountingBackoff.retried():
            return "unknown", f"{error} (after a retry)"
        return kind, error

    def run(self) -> None:
        self.rec.event("start", instance=self.spec["instance"], impl=self.spec["impl"], deadline=self.deadline)
        i = self.rng.randrange(len(self.resources))
        while self.alive():
            resource = self.resources[i % len(self.resources)]
            i += 1
            handle = self.claim(resource)
            if handle is None:
                self.sleep(self.rng.uniform(0.03, 0.15))
                continue
            self.hold(handle)
            i = self.rng.randrange(len(self.resources))
            self.sleep(self.rng.uniform(0.0, 0.2))

    def claim(self, resource: str) -> Handle | None:
        op = self.rec.invoke("claim", resource=resource)
        lease_id = f"{self.proc}#{op}"
        CountingBackoff.clear()
        try:
            handle = self.owner.claim(resource, lease_id, op)
        except (LivermoreError, RedisError, SeedConflictError) as exc:
            kind, error = self._outcome(exc)
            holder = getattr(exc, "holder", None)
            who = getattr(holder, "instance_id", None) or (
                holder.get("instanceId") if isinstance(holder, dict) else None
            )
            self.rec.done(op, kind, "claim", resource=resource, lease=lease_id, error=error, holder=who)
            return None
        self.rec.done(
            op,
            "ok",
            "claim",
            resource=resource,
            lease=lease_id,
            token=handle.token,
            instance=self.spec["instance"],
        )
        return handle

    def step(self, h: Handle, to: str) -> bool:
        where: dict[str, Any] = {"resource": h.resource, "lease": h.lease_id, "token": h.token}
        op = self.rec.invoke("transition", **where, to=to)
        CountingBackoff.clear()
        try:
            state = h.transition(to, op)
        except (LivermoreError, RedisError, SeedNotHeldError, SeedInvalidTransitionError) as exc:
            kind, error = self._outcome(exc)
            self.rec.done(op, kind, "transition", **where, error=error)
            return False
        self.rec.done(op, "ok", "transition", **where, state=state)
        return True

    def write(self, h: Handle) -> bool:
        where: dict[str, Any] = {"resource": h.resource, "lease": h.lease_id, "token": h.token}
        before = time.monotonic_ns()  # ensure_held reads its clock after this
        try:
            h.ensure_held()
        except (LeaseLostError, SeedNotHeldError) as exc:
            self.rec.event("held_check_failed", **where, reason=getattr(exc, "reason", "released"))
            return False
        self.rec.event("held", t=before, **where)
        item = f"{self.proc}:{next(self.items)}"
        time.sleep(self.rng.uniform(0.0, 0.05))  # a delay inside the critical section, as Jepsen's set test
        op = self.rec.invoke("store_add", **where, item=item)
        accepted = False
        try:
            accepted = self.store.add(h.resource, item, h.token)
        except RedisError as exc:
            self.rec.done(op, "unknown", "store_add", **where, item=item, error=type(exc).__name__)
        else:
            self.rec.done(op, "ok" if accepted else "fail", "store_add", **where, item=item, accepted=accepted)
        op = self.rec.invoke("store_add_unfenced", **where, item=item)
        try:
            self.store.add_unfenced(h.resource, item, h.token)
        except RedisError as exc:
            self.rec.done(op, "unknown", "store_add_unfenced", **where, item=item, error=type(exc).__name__)
        else:
            self.rec.done(op, "ok", "store_add_unfenced", **where, item=item)
        return accepted  # fenced off: a newer owner exists, stop acting as the owner

    def hold(self, h: Handle) -> None:
        ok = True
        for to in ("starting", "warming", "active"):
            if not self.alive() or not self.step(h, to):
                ok = False
                break
        if ok:
            writes = self.rng.randint(3, 10)
            longer = time.monotonic() + (self.rng.uniform(1.0, 3.0) if self.rng.random() < 0.25 else 0.0)
            done = 0
            while self.alive() and (done < writes or time.monotonic() < longer):
                if not self.write(h):
                    ok = False
                    break
                done += 1
                self.sleep(self.rng.uniform(0.03, 0.15))
        if ok and self.alive() and self.rng.random() < REPLAY_P:
            self.replay(h)
        if ok and self.alive():
            for to in ("stopping", "stopped"):
                if not self.step(h, to):
                    break
        self.release(h)

    def replay(self, h: Handle) -> None:
        """Send one of the lease's earlier transition calls again, unchanged (the checker expects
        REPLAYED, or the loss of the lease, and never a second log entry of that call)."""
        sent = h.sent()
        if not sent:
            return
        where: dict[str, Any] = {"resource": h.resource, "lease": h.lease_id, "token": h.token}
        index = self.rng.randrange(len(sent))
        op = self.rec.invoke("replay", **where, to=sent[index])
        CountingBackoff.clear()
        try:
            word = h.replay(index, op)
        except (LivermoreError, RedisError) as exc:
            self.rec.done(op, "unknown", "replay", **where, error=self._outcome(exc)[1])
            return
        self.rec.done(op, "ok", "replay", **where, reply=word)

    def release(self, h: Handle) -> None:
        where: dict[str, Any] = {"resource": h.resource, "lease": h.lease_id, "token": h.token}
        op = self.rec.invoke("release", **where)
        CountingBackoff.clear()
        try:
            released = h.release(op)
        except (LivermoreError, RedisError) as exc:
            _, error = self._outcome(exc)
            self.rec.done(op, "unknown", "release", **where, error=error)
            return
        self.rec.done(op, "ok", "release", **where, released=released)

    def close(self) -> None:
        for close in (self.owner.close, self.store.close):
            with contextlib.suppress(Exception):
                close()
        self.rec.event("exit")
        self.rec.close()


def _watchdog(parent: int, hard_deadline: float) -> None:
    while True:
        time.sleep(0.2)
        if os.getppid() != parent or time.monotonic() > hard_deadline:
            os._exit(3)


def worker_main(spec: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    threading.Thread(
        target=_watchdog, args=(int(spec["parent"]), float(spec["deadline"]) + WORKER_GRACE), daemon=True
    ).start()
    spec["instance"] = f"{spec['proc']}@{os.getpid()}"  # names the process: whom to fault
    worker = Worker(spec)
    try:
        worker.run()
    except Exception:
        worker.rec.event("crash", error=traceback.format_exc(limit=8))
        return 1
    finally:
        worker.close()
    return 0


def reaper_main(spec: dict[str, Any]) -> int:
    """Runs beside the runner; if the runner dies, kill what it listed and remove its dirs."""
    parent, hard = int(spec["parent"]), float(spec["hard_deadline"])
    pidfile = Path(spec["pidfile"])
    while os.getppid() == parent and time.monotonic() < hard:
        if not pidfile.exists():
            return 0  # the runner cleaned up
        time.sleep(0.2)
    try:
        listed = json.loads(pidfile.read_text())
    except (OSError, ValueError):
        return 0
    for pid, markers in listed.get("pids", []):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if not all(m.encode() in cmdline for m in markers):
                continue
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    for d in listed.get("dirs", []):
        shutil.rmtree(d, ignore_errors=True)
    return 0


# =============================================================================================
# Runner side
# =============================================================================================


def _die_with_parent() -> None:
    """``preexec_fn`` of the workers: SIGKILL when the runner dies (even while SIGSTOPped)."""
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ChaosRedisServer(RedisServer):
    """A :class:`RedisServer` that is SIGKILLed if the runner dies (``setpriv --pdeathsig``,
    kept across exec), so that not even a paused server outlives an interrupted run."""

    def command(self) -> list[str]:
        setpriv = shutil.which("setpriv")
        return ([setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []) + super().command()


@dataclass
class WorkerProc:
    idx: int
    inc: int
    proc: str
    popen: subprocess.Popen[bytes]
    history: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


class Runner:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.run_id = secrets.token_hex(4)
        self.tmp = Path(tempfile.mkdtemp(prefix="pylivermore-chaos-"))
        self.pidfile = self.tmp / "pids.json"
        self.admin_password = secrets.token_hex(16)
        self.server: RedisServer | None = None
        self.store_server: RedisServer | None = None
        self.admin: redis.Redis | None = None
        self.reaper: subprocess.Popen[bytes] | None = None
        self.workers: dict[int, WorkerProc] = {}
        self.all_workers: list[WorkerProc] = []
        self.faults: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []
        self.segment_logs: dict[tuple[str, int], dict[str, Any]] = {}
        self.clock: list[list[int]] = []
        self.segment = 0
        self.resources = [str(i) for i in range(1, cfg.resources + 1)]
        self.notes: Counter[str] = Counter()
        self.t0 = 0.0
        self.deadline = 0.0

    # -- processes --------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env[ADMIN_ENV] = self.admin_password
        return env

    def new_server(self) -> ChaosRedisServer:
        admin = ["--user", ADMIN_USER, "on", f">{self.admin_password}", "~*", "&*", "+@all"]
        server = ChaosRedisServer(extra_args=admin)
        try:
            server.start()
        except BaseException:
            server.close()
            raise
        return server

    def update_pidfile(self) -> None:
        # Each pid with the strings its /proc/<pid>/cmdline must hold (redis-server rewrites its
        # title to "redis-server 127.0.0.1:<port>"), so that a reused pid is never killed.
        pids: list[tuple[int, list[str]]] = [(w.pid, [self.run_id]) for w in self.workers.values()]
        for srv in (self.server, self.store_server):
            if srv is not None and srv.process is not None:
                pids.append((srv.pid, ["redis-server", f"127.0.0.1:{srv.port}"]))
        dirs = [str(self.tmp)] + [s.dir for s in (self.server, self.store_server) if s is not None]
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pids": pids, "dirs": dirs}))
        tmp.replace(self.pidfile)

    def start_reaper(self) -> None:
        self.update_pidfile()
        spec = {"parent": os.getpid(), "pidfile": str(self.pidfile), "hard_deadline": time.monotonic() + 900}
        self.reaper = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.runner", "--reaper", json.dumps(spec)],
            cwd=ROOT,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    def spawn(self, idx: int, inc: int) -> WorkerProc:
        assert self.server is not None
        assert self.store_server is not None
        proc = f"w{idx}.{inc}"
        history = self.tmp / f"{proc}.jsonl"
        stderr = self.tmp / f"{proc}.err"
        spec = {
            "run": self.run_id,
            "proc": proc,
            "impl": self.cfg.impl,
            "url": self.server.url,
            "store_url": self.store_server.url,
            "namespace": NAMESPACE,
            "resources": self.resources,
            "ttl": self.cfg.ttl,
            "heartbeat_interval": self.cfg.heartbeat_interval,
            "renew_deadline": self.cfg.renew_deadline,
            "deadline": self.deadline,
            "parent": os.getpid(),
            "history": str(history),
            "seed": self.cfg.seed,
        }
        with open(stderr, "wb") as err:
            popen = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.runner", "--worker", json.dumps(spec)],
                cwd=ROOT,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,  # the runner starts workers from its one thread
            )
        w = WorkerProc(idx, inc, proc, popen, history, stderr)
        self.workers[idx] = w
        self.all_workers.append(w)
        self.update_pidfile()
        return w

    # -- reading the registry ---------------------------------------------------------------

    def keys(self, res: str) -> tuple[str, str, str]:
        """(status, log, fence) keys of *res*."""
        if self.cfg.impl == "pylivermore":
            k = Keys(NAMESPACE, res)
            return k.status, k.log, k.fence
        return f"seed:{res}:status", SeedRegistry.log_key(f"Exchange{res}"), f"seed:{res}:fence"

    def decode_entries(self, res: str, raw: list[tuple[bytes, dict[Any, Any]]]) -> list[dict[str, Any]]:
        out = []
        log_key = self.keys(res)[1]
        for entry_id, fields in raw:
            if self.cfg.impl == "pylivermore":
                out.append(msgspec.to_builtins(decode_entry(entry_id, text_dict(fields), log_key)))
            else:
                e: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
                e["id"] = entry_id.decode()
                for name in ("fencingToken", "ttlMs", "seq"):
                    if e.get(name):
                        e[name] = int(e[name])
                out.append(e)
        return out

    def decode_status(self, raw: Any) -> dict[str, Any] | None:
        if not raw:
            return None
        if self.cfg.impl == "pylivermore":
            d = text_dict(raw)
            return {
                "fencingToken": int(d.get("fencingToken", 0)),
                "connectionState": d.get("connectionState"),
                "instanceId": d.get("instanceId"),
                "seq": int(d["seq"]) if "seq" in d else None,  # the highest applied seq of the lease
            }
        doc = json.loads(raw)
        return {k: doc.get(k) for k in ("fencingToken", "connectionState", "instanceId")}

    def snapshot(self, why: str) -> bool:
        """Status records and logs of every resource, read in one MULTI (an atomic view)."""
        assert self.admin is not None
        t = time.monotonic_ns()
        self.clock.append([t, time.time_ns() - time.monotonic_ns()])
        pipe = self.admin.pipeline(transaction=True)
        for res in self.resources:
            status, log, fence = self.keys(res)
            pipe.xrange(log, "-", "+")
            if self.cfg.impl == "pylivermore":
                pipe.hgetall(status)
            else:
                pipe.get(status)
            pipe.get(fence)
        try:
            replies = pipe.execute()
        except RedisError as exc:
            self.notes[f"snapshot_failed:{type(exc).__name__}:{exc}"] += 1
            print(f"  snapshot ({why}) failed: {exc!r}", flush=True)
            return False
        for i, res in enumerate(self.resources):
            raw_log, raw_status, fence = replies[3 * i : 3 * i + 3]
            entries = self.decode_entries(res, raw_log)
            self.segment_logs[(res, self.segment)] = {
                "resource": res,
                "segment": self.segment,
                "t_read": t,
                "why": why,
                "entries": entries,
            }
            self.snapshots.append(
                {
                    "resource": res,
                    "segment": self.segment,
                    "t": t,
                    "why": why,
                    "last_id": entries[-1]["id"] if entries else None,
                    "status": self.decode_status(raw_status),
                    "fence": fence.decode() if fence else None,
                }
            )
        return True

    def holders(self) -> dict[str, str]:
        """proc name -> resource, for the workers that hold a record now."""
        assert self.admin is not None
        out: dict[str, str] = {}
        for res in self.resources:
            try:
                if self.cfg.impl == "pylivermore":
                    raw = self.admin.hget(self.keys(res)[0], "instanceId")
                    instance = raw.decode() if isinstance(raw, bytes) else raw
                else:
                    doc = self.admin.get(self.keys(res)[0])
                    instance = json.loads(doc).get("instanceId") if doc else None
            except (RedisError, ValueError):
                continue
            if instance:
                out[instance.split("@")[0]] = res
        return out

    def pick_worker(self) -> WorkerProc:
        live = [w for w in self.workers.values() if w.popen.poll() is None]
        holding = self.holders()
        preferred = [w for w in live if w.proc in holding]
        return self.rng.choice(preferred or live or list(self.workers.values()))

    # -- faults ---------------------------------------------------------------------------

    def plan(self) -> Iterator[tuple[str, str | None]]:
        first = list(FORCED)
        if self.cfg.schedule != "forced":
            self.rng.shuffle(first)
        yield from first
        kinds = [k for k, _ in WEIGHTS]
        weights = [w for _, w in WEIGHTS]
        while True:
            yield self.rng.choices(kinds, weights)[0]

    def record_fault(
        self, kind: str, t_start: int, target: dict[str, Any] | None = None, **details: Any
    ) -> dict[str, Any]:
        fault: dict[str, Any] = {
            "kind": kind,
            "t_start": t_start,
            "t_end": time.monotonic_ns(),
            "target": target,
            "details": details,
        }
        self.faults.append(fault)
        if not self.cfg.quiet:
            took = (fault["t_end"] - t_start) / 1e9
            at = t_start / 1e9 - self.t0
            print(f"  [{at:6.1f}s] {kind} {details.get('variant') or ''} {target or ''} ({took:.2f}s)", flush=True)
        return fault

    def inject(self, kind: str, variant: str | None) -> None:
        assert self.server is not None
        assert self.admin is not None
        cfg = self.cfg
        if kind == "owner_kill":
            w = self.pick_worker()
            holds = self.holders()
            t = time.monotonic_ns()
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
            w.popen.wait(timeout=10)
            self.record_fault(kind, t, {"proc": w.proc, "pid": w.pid}, held=holds.get(w.proc))
            self.spawn(w.idx, w.inc + 1)
        elif kind == "owner_pause":
            w = self.pick_worker()
            holds = self.holders()
            pause = cfg.ttl + self.rng.uniform(0.5, 1.2)
            t = time.monotonic_ns()
            try:
                os.kill(w.pid, signal.SIGSTOP)
                time.sleep(pause)
            except ProcessLookupError:
                pass
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGCONT)
            self.record_fault(kind, t, {"proc": w.proc, "pid": w.pid}, held=holds.get(w.proc), seconds=pause)
        elif kind == "script_flush":
            t = time.monotonic_ns()
            try:
                self.admin.script_flush()
                self.record_fault(kind, t)
            except RedisError as exc:
                self.notes[f"script_flush_failed:{type(exc).__name__}:{exc}"] += 1
                print(f"  script flush failed: {exc!r}", flush=True)
        elif kind == "server_pause":
            factor = self.rng.uniform(0.3, 0.8) if variant == "short" else self.rng.uniform(1.2, 2.2)
            pause = cfg.renew_deadline * factor
            t = time.monotonic_ns()
            self.server.pause()
            try:
                time.sleep(pause)
            finally:
                self.server.resume()
            self.record_fault(kind, t, variant=variant, seconds=pause)
        elif kind == "server_restart":
            read = self.snapshot("before_restart")
            t = time.monotonic_ns()
            self.server.restart()
            self.segment += 1
            self.update_pidfile()
            self.record_fault(kind, t, logs_read=read, new_pid=self.server.pid)
        else:
            raise ValueError(kind)

    # -- the run --------------------------------------------------------------------------

    def start(self) -> None:
        self.start_reaper()
        self.server = self.new_server()
        self.store_server = self.new_server()
        self.update_pidfile()
        self.admin = redis.Redis.from_url(
            self.server.url,
            username=ADMIN_USER,
            password=self.admin_password,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 2),
        )
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.cfg.duration
        self.clock.append([time.monotonic_ns(), time.time_ns() - time.monotonic_ns()])
        for idx in range(self.cfg.workers):
            self.spawn(idx, 1)

    def drive(self) -> None:
        cfg = self.cfg
        fault_until = self.deadline - (cfg.ttl + checker.LIVENESS_SLACK_S + 1.5)
        next_fault = self.t0 + 2.0
        next_snap = self.t0 + 1.0
        plan = self.plan()
        pending: tuple[str, str | None] | None = None
        # In the forced schedule an owner fault waits for a worker that holds a resource: on a
        # loaded machine the workers may take seconds to start and claim, and a kill of a
        # non-holder checks no liveness. After a third of the fault window it goes ahead anyway
        # (the checker's shortfalls then say the run checked no liveness).
        holder_wait_until = self.t0 + (fault_until - self.t0) / 3
        forced_left = len(FORCED) if cfg.schedule == "forced" else 0
        while time.monotonic() < self.deadline - 0.3:
            now = time.monotonic()
            if now >= next_snap:
                self.snapshot("periodic")
                next_snap = time.monotonic() + SNAPSHOT_EVERY
            if next_fault <= now < fault_until:
                kind, variant = pending = pending or next(plan)
                if not (
                    cfg.schedule == "forced"
                    and kind in ("owner_kill", "owner_pause")
                    and now < holder_wait_until
                    and not self.holders()
                ):
                    self.inject(kind, variant)
                    pending = None
                    if cfg.schedule == "forced":
                        # 1.5 s between faults, less if the forced ones left would not fit before
                        # fault_until otherwise (a loaded machine starts the workers late and
                        # stretches every fault): each may take up to ~2.6 s (a long pause).
                        forced_left = max(0, forced_left - 1)
                        budget = (fault_until - time.monotonic()) / forced_left if forced_left else 1e9
                        gap = min(1.5, max(0.2, budget - 2.6))
                    else:
                        gap = self.rng.uniform(1.0, 3.5)
                    next_fault = time.monotonic() + gap
            for w in list(self.workers.values()):
                code = w.popen.poll()
                if code is not None and time.monotonic() < self.deadline - 1.0:
                    self.notes[f"worker_exited_early:{code}"] += 1
                    self.spawn(w.idx, w.inc + 1)
            time.sleep(0.05)
        self.snapshot("end")

    def finish(self) -> Path:
        """Wait for the workers, read logs and store, write the history file; return its path."""
        assert self.store_server is not None
        assert self.admin is not None
        stop_by = self.deadline + WORKER_GRACE + 2.0
        for w in self.all_workers:
            try:
                w.popen.wait(timeout=max(0.1, stop_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.notes["worker_killed_at_end"] += 1
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGCONT)
                w.popen.kill()
                w.popen.wait(timeout=10)
        self.snapshot("final")
        if self.cfg.impl == "pylivermore":
            registry = Registry(
                self.admin, namespace=NAMESPACE, ttl=self.cfg.ttl, heartbeat_interval=0.5, renew_deadline=1.0
            )
            for res in self.resources:
                entries = [msgspec.to_builtins(e) for e in reversed(registry.activity(int(res), 10000))]
                seg = self.segment_logs[(res, self.segment)]
                if [e["id"] for e in entries] != [e["id"] for e in seg["entries"]]:
                    self.notes["activity_reader_disagrees_with_xrange"] += 1
                seg["entries"] = entries
            registry.close()
        store = FencedStore(self.store_server.url, username=ADMIN_USER, password=self.admin_password)
        contents = {res: store.contents(res) for res in self.resources}
        store.close()
        return self.write(contents)

    def write(self, contents: dict[str, Any]) -> Path:
        cfg = self.cfg
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        records: list[dict[str, Any]] = []
        for w in self.all_workers:
            if not w.history.exists():
                continue
            with open(w.history, encoding="utf-8") as f:
                for line in f:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        self.notes["truncated_history_line"] += 1
        records.sort(key=lambda r: int(r["t"]))
        meta = {
            **asdict(cfg),
            "resources": self.resources,
            "local_deadline": cfg.impl == "pylivermore",
            "t_start": int(self.t0 * 1e9),
            "t_end": int(self.deadline * 1e9),
            "clock": self.clock,
            "run_id": self.run_id,
            "redis_version": ".".join(map(str, self.server.version)) if self.server else None,
            "runner_notes": dict(self.notes),
            "exit_codes": {w.proc: w.popen.returncode for w in self.all_workers},
        }
        with open(out, "w", encoding="utf-8") as f:

            def put(kind: str, rec: dict[str, Any]) -> None:
                f.write(json.dumps({"rec": kind, **rec}, separators=(",", ":")) + "\n")

            put("meta", meta)
            for r in records:
                put("op", r)
            for fault in self.faults:
                put("fault", fault)
            for seg in self.segment_logs.values():
                put("segment", seg)
            for snap in self.snapshots:
                put("snapshot", snap)
            for res, c in contents.items():
                put("store", {"resource": res, "contents": c.to_json()})
        return out

    def stderr_tails(self) -> dict[str, str]:
        tails = {}
        for w in self.all_workers:
            if w.popen.returncode not in (0, -signal.SIGKILL) and w.stderr.exists():
                tails[w.proc] = w.stderr.read_text(errors="replace")[-3000:]
        return tails

    def cleanup(self) -> None:
        for w in self.all_workers:
            if w.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGCONT)
                w.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.popen.wait(timeout=10)
        if self.admin is not None:
            self.admin.close()
        for srv in (self.server, self.store_server):
            if srv is not None:
                with contextlib.suppress(Exception):
                    srv.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.reaper is not None:
            try:
                self.reaper.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.reaper.kill()
                self.reaper.wait(timeout=5)


def run(cfg: Config) -> tuple[checker.Report, Path, dict[str, Any]]:
    """Run the whole chaos run; return the checker's report, the history path and extras."""
    runner = Runner(cfg)
    extras: dict[str, Any] = {}
    try:
        if not cfg.quiet:
            print(
                f"chaos run: impl={cfg.impl} duration={cfg.duration}s workers={cfg.workers} "
                f"resources={cfg.resources} seed={cfg.seed} schedule={cfg.schedule}",
                flush=True,
            )
        runner.start()
        runner.drive()
        out = runner.finish()
        extras["stderr_tails"] = runner.stderr_tails()
        extras["runner_notes"] = dict(runner.notes)
    finally:
        runner.cleanup()
    report = checker.check(checker.load(out))
    return report, out, extras


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=180.0)
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--resources", type=int, default=3)
    p.add_argument("--impl", choices=("pylivermore", "seed"), default="pylivermore")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="history.jsonl")
    p.add_argument("--schedule", choices=("random", "forced"), default="random")
    p.add_argument("--ttl", type=float, default=1.5)
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument("--renew-deadline", type=float, default=1.0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--limit", type=int, default=5, help="violations printed per kind")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--reaper", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.reaper:
        return reaper_main(json.loads(args.reaper))
    cfg = Config(
        impl=args.impl,
        duration=args.duration,
        workers=args.workers,
        resources=args.resources,
        seed=args.seed,
        out=args.out,
        schedule=args.schedule,
        ttl=args.ttl,
        heartbeat_interval=args.heartbeat_interval,
        renew_deadline=args.renew_deadline,
        quiet=args.quiet,
    )
    started = time.monotonic()
    try:
        report, out, extras = run(cfg)
    except Exception:
        traceback.print_exc()
        return 2
    summary = {"impl": cfg.impl, "config": asdict(cfg), "seconds": round(time.monotonic() - started, 1)}
    summary.update(report.to_json(limit=200))
    summary.update(extras)
    out.with_suffix(".check.json").write_text(json.dumps(summary, indent=1, default=str))
    print(checker.format_report(report, cfg.impl, args.limit))
    print(f"history: {out}  check: {out.with_suffix('.check.json')}  ({summary['seconds']} s)")
    if extras.get("stderr_tails"):
        print("workers that exited abnormally:", ", ".join(extras["stderr_tails"]))
    if cfg.impl == "seed":
        return 0
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
