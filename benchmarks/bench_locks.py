"""Baselines: the locks people use today, next to pylivermore, on their own loops.

Every comparison is a ratio of implementations run side by side, interleaved, in the same run on
the same private server (the machine is shared and noisy; absolute figures move, ratios much
less). Four implementations of "try to take a resource without blocking, then give it back":

* **pylivermore**: ``Registry(client, ...)`` (one per process), ``try_claim(...)`` (``None`` on a
  conflict; ``--no-try-claim``: ``claim(...)`` catching :class:`~pylivermore.ClaimConflictError`), then
  ``lease.release()`` (see :func:`livermore_try_acquire`);
* **redis-py Lock**: ``redis.lock.Lock(client, name, timeout=TTL, blocking=False)``,
  ``acquire(blocking=False)`` (``SET NX PX``), ``release()`` (its compare-and-delete script);
* **python-redis-lock**: ``redis_lock.Lock(client, name, expire=TTL)``, ``acquire(blocking=False)``
  (a ``GET`` of its own key, then ``SET NX EX``), ``release()`` (a script that also signals the
  waiters' list); skipped with a note when the package is not installed;
* **raw SET NX PX**: ``SET key token NX PX``, released by ``DEL`` (one connection) or by a
  compare-and-delete script (contention).

Each acquisition makes a new lock object (as ``with client.lock(name): ...`` does) and a new
token. The same client settings for all: retries off, 5 s socket timeouts, hiredis when
installed. python-redis-lock logs a warning for every failed non-blocking acquire; its
``redis_lock`` logger is set to ERROR here (without a handler Python would print each warning
to stderr), which only saves it that logging call's work.

1. **One connection** (one client, ``single_connection_client``): acquire + release in a loop on
   one resource that nobody else takes, per implementation; pylivermore also while its registry
   holds one other lease (its background heartbeat then has a schedule); ``lease.heartbeat()``
   next to a raw ``PEXPIRE`` of the same record through the same client. Loops run in slices, the
   order rotated every slice. Reported: operations per second and client CPU µs per operation
   (``time.process_time``: every thread of this process, the server is another process).
2. **Contention, bare loop**: W (16, 64) sync worker *processes* (``spawn``, one client each)
   over R = 8 resources; each worker picks a resource at random, tries to acquire it without
   blocking, on success holds it 2 ms (``time.sleep(0.002)``) and releases it, on failure sleeps
   uniform 1-5 ms, and picks again. Implementations run in rounds (the order rotated every
   round), T seconds per implementation and W, from a common start on ``CLOCK_MONOTONIC``.
   Reported: acquisitions per second, failed tries, client CPU per try, and **overlaps**: each
   worker records ``[time acquire returned, time just before the release was sent]``
   (``time.monotonic_ns``, system-wide); per resource no two of these intervals may overlap
   (pylivermore's fencing tokens must also increase in interval order).
3. **Failed claim, server side**: µs per call from ``INFO commandstats`` after ``CONFIG
   RESETSTAT``: a second registry's claim of a held resource (it conflicts), interleaved call
   by call with a ``SET key val NX PX`` that fails (the key exists), in the same window.

Run alone: ``python benchmarks/bench_locks.py [--seconds S] [--duration T] [--workers 16,64]``;
``benchmarks/bench.py`` runs it in all three modes (``--smoke``, quick, ``--full``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import math
import multiprocessing.connection
import os
import random
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions
import redis.lock
from bench_contention import ProcessPool, check_intervals, int_list, merge_checks
from impls.base import TTL, TTL_MS, sync_client

from pylivermore import ClaimConflictError, Lease, Registry

HAVE_PYTHON_REDIS_LOCK = importlib.util.find_spec("redis_lock") is not None
NO_PYTHON_REDIS_LOCK = (
    "python-redis-lock is not installed: its rows are skipped "
    "(pip install -e '.[bench]', or pip install 'python-redis-lock>=4.0')"
)

PYLIVERMORE = "pylivermore"
REDIS_PY = "redis-py Lock"
PYTHON_REDIS_LOCK = "python-redis-lock"
RAW = "raw SET NX PX"
NO_HISTORY = "pylivermore, no history"
FLOOR = "floor: claim + release writes"
#: Contention implementations by command-line name.
CONTENTION_IMPLS = {
    "pylivermore": PYLIVERMORE,
    "no-history": NO_HISTORY,
    "redis-py": REDIS_PY,
    "python-redis-lock": PYTHON_REDIS_LOCK,
    "raw": RAW,
    "floor": FLOOR,
}
IMPL_SLUGS = {impl: slug for slug, impl in CONTENTION_IMPLS.items()}  # valid in a namespace

#: Hold time after a successful acquire, and the sleep after a failed one (uniform), seconds.
HOLD = 0.002
RETRY_SLEEP = (0.001, 0.005)
#: Resource index used to warm a worker's implementation up (scripts loaded, server checked)
#: before the common start; never one of the measured resources.
WARMUP_RID = 10_000


# -- the implementations: try_acquire(rid) -> handle or None; release(handle) -> still held? -------------


def livermore_try_acquire(registry: Registry, exchange_id: int, name: str, *, try_claim: bool = True) -> Lease | None:
    """pylivermore's non-blocking acquire: the one place every pylivermore loop of this module
    goes through: ``registry.try_claim`` (``None`` on a conflict, what a retrying loop uses), or
    with ``--no-try-claim`` ``registry.claim`` and ``except ClaimConflictError``."""
    if try_claim:
        return registry.try_claim(exchange_id, name)
    try:
        return registry.claim(exchange_id, name)
    except ClaimConflictError:
        return None


def livermore_variant(try_claim: bool) -> str:
    return "registry.try_claim()" if try_claim else "registry.claim() + except ClaimConflictError"


class Livermore:
    name = PYLIVERMORE

    log_retention: float = 90 * 86400.0  # the library's default

    def __init__(self, client: redis.Redis, namespace: str, try_claim: bool = True) -> None:
        # The background heartbeat would renew every TTL / 3 s: holds here last 2 ms.
        self.registry = Registry(
            client,
            namespace=namespace,
            ttl=TTL,
            heartbeat_interval=TTL / 3,
            renew_deadline=TTL * 0.8,
            log_retention=self.log_retention,
        )
        self.try_claim = try_claim

    def try_acquire(self, rid: int) -> Lease | None:
        return livermore_try_acquire(self.registry, rid + 1, f"Exchange{rid + 1}", try_claim=self.try_claim)

    def release(self, lease: Lease) -> bool:
        return lease.release()

    @staticmethod
    def token(lease: Lease) -> int | None:
        return lease.fencing_token

    def close(self) -> None:
        self.registry.close()


class LivermoreNoHistory(Livermore):
    """pylivermore with leases without history (``log_retention=0``): no log entries but a release's."""

    name = NO_HISTORY
    log_retention = 0


#: The floor of a claim + release (not pylivermore): one script each that does the writes SPEC asks
#: of them and the owner check, and nothing else: no argument, key or record validation, no
#: conflict fields, no seq, no ISO timestamps. The claim: free? then fence INCR, the log entry
#: (XADD, trimmed by MINID), the record (the same 15 fields as a claim's), its TTL; the release: the
#: owner's digest compared, the log entry, DEL. Retention "0" leaves out the log entries.
FLOOR_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('TIME')
local fence = redis.call('INCR', KEYS[3])
if ARGV[5] ~= '0' then
  redis.call('XADD', KEYS[2], 'MINID', '~', t[1] * 1000 - ARGV[5], '*', 'event', 'claim', 'timestamp', t[1],
    'exchangeId', ARGV[3], 'exchangeName', ARGV[4], 'hostname', 'host', 'ip', '', 'fencingToken', fence,
    'instanceId', 'host:1', 'ttlMs', ARGV[2], 'how', 'new', 'replaced', '')
end
redis.call('HSET', KEYS[1], 'exchangeId', ARGV[3], 'exchangeName', ARGV[4], 'hostname', 'host',
  'connectionState', 'idle', 'symbolCount', '0', 'lastHeartbeat', t[1], 'lastStateChange', t[1],
  'registeredAt', t[1], 'fencingToken', fence, 'instanceId', 'host:1', 'ownerDigest', redis.sha1hex(ARGV[1]),
  'seq', '0', 'retentionMs', ARGV[5], 'contract', '2')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return fence
"""
FLOOR_RELEASE = """
local held = redis.call('HMGET', KEYS[1], 'ownerDigest', 'connectionState', 'retentionMs')
if held[1] ~= redis.sha1hex(ARGV[1]) then return 0 end
if held[3] ~= '0' then
  local t = redis.call('TIME')
  redis.call('XADD', KEYS[2], 'MINID', '~', t[1] * 1000 - held[3], '*', 'event', 'deregister', 'timestamp', t[1],
    'state', held[2], 'fencingToken', ARGV[2])
end
redis.call('DEL', KEYS[1])
return 1
"""


class FloorScripts:
    """The floor scripts above through the same client (``EVALSHA``), on pylivermore's key layout."""

    name = FLOOR
    retention = "7776000000"

    def __init__(self, client: redis.Redis, namespace: str, try_claim: bool = True) -> None:
        self.client = client
        self.keys = [
            (f"{namespace}:{{{i + 1}}}:status", f"{namespace}:{{{i + 1}}}:log", f"{namespace}:{{{i + 1}}}:fence")
            for i in range(WARMUP_RID + 1)
        ]
        self.claim_sha = client.script_load(FLOOR_CLAIM)
        self.release_sha = client.script_load(FLOOR_RELEASE)

    def try_acquire(self, rid: int) -> tuple[int, str, int] | None:
        token = secrets.token_urlsafe(24)
        fence = self.client.evalsha(
            self.claim_sha, 3, *self.keys[rid], token, TTL_MS, rid + 1, f"Exchange{rid + 1}", self.retention
        )
        return None if fence is None else (rid, token, int(fence))

    def release(self, handle: tuple[int, str, int]) -> bool:
        rid, token, fence = handle
        return bool(self.client.evalsha(self.release_sha, 2, *self.keys[rid][:2], token, fence))

    @staticmethod
    def token(handle: Any) -> int | None:
        return int(handle[2])

    def close(self) -> None:
        return None


#: The floor of a heartbeat (not pylivermore): the owner check and the writes SPEC asks of it
#: (TTL renewed, lastHeartbeat set from the server clock), nothing else.
FLOOR_HEARTBEAT = """
if redis.call('HGET', KEYS[1], 'ownerDigest') ~= redis.sha1hex(ARGV[1]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[1], 'lastHeartbeat', redis.call('TIME')[1])
return 1
"""


class FloorScriptsNoHistory(FloorScripts):
    name = "floor: claim + release writes, no history"
    retention = "0"


class RedisPyLock:
    name = REDIS_PY

    def __init__(self, client: redis.Redis, namespace: str, try_claim: bool = True) -> None:
        self.client = client
        self.names = [f"{namespace}:lock:{i}" for i in range(WARMUP_RID + 1)]

    def try_acquire(self, rid: int) -> redis.lock.Lock | None:
        lock = redis.lock.Lock(self.client, self.names[rid], timeout=TTL, blocking=False)
        return lock if lock.acquire(blocking=False) else None

    def release(self, lock: redis.lock.Lock) -> bool:
        try:
            lock.release()
        except redis.exceptions.LockNotOwnedError:
            return False
        return True

    @staticmethod
    def token(lock: Any) -> int | None:
        return None

    def close(self) -> None:
        return None


class PythonRedisLock:
    name = PYTHON_REDIS_LOCK

    def __init__(self, client: redis.Redis, namespace: str, try_claim: bool = True) -> None:
        import redis_lock

        logging.getLogger("redis_lock").setLevel(logging.ERROR)  # see the module docstring
        self.module = redis_lock
        self.client = client
        self.names = [f"{namespace}:{i}" for i in range(WARMUP_RID + 1)]

    def try_acquire(self, rid: int) -> Any:
        lock = self.module.Lock(self.client, self.names[rid], expire=TTL)
        return lock if lock.acquire(blocking=False) else None

    def release(self, lock: Any) -> bool:
        try:
            lock.release()
        except self.module.NotAcquired:
            return False
        return True

    @staticmethod
    def token(lock: Any) -> int | None:
        return None

    def close(self) -> None:
        return None


#: Compare-and-delete, the usual release of a ``SET NX PX`` lock (redis-py's ``Lock`` sends the same).
COMPARE_AND_DELETE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class RawSetNx:
    """``SET key token NX PX``; released by compare-and-delete (by plain ``DEL`` with *plain_del*)."""

    name = RAW

    def __init__(self, client: redis.Redis, namespace: str, try_claim: bool = True, plain_del: bool = False) -> None:
        self.client = client
        self.keys = [f"{namespace}:raw:{i}" for i in range(WARMUP_RID + 1)]
        self.plain_del = plain_del
        self.cad = client.register_script(COMPARE_AND_DELETE)

    def try_acquire(self, rid: int) -> tuple[str, bytes] | None:
        key, token = self.keys[rid], os.urandom(16)
        return (key, token) if self.client.set(key, token, nx=True, px=TTL_MS) else None

    def release(self, handle: tuple[str, bytes]) -> bool:
        if self.plain_del:
            return bool(self.client.delete(handle[0]))
        return bool(self.cad(keys=[handle[0]], args=[handle[1]]))

    @staticmethod
    def token(handle: Any) -> int | None:
        return None

    def close(self) -> None:
        return None


IMPL_CLASSES: dict[str, Callable[..., Any]] = {
    PYLIVERMORE: Livermore,
    NO_HISTORY: LivermoreNoHistory,
    REDIS_PY: RedisPyLock,
    PYTHON_REDIS_LOCK: PythonRedisLock,
    RAW: RawSetNx,
    FLOOR: FloorScripts,
}


def available(impls: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the implementations that can run here, notes about those that cannot)."""
    if HAVE_PYTHON_REDIS_LOCK or PYTHON_REDIS_LOCK not in impls:
        return list(impls), []
    return [i for i in impls if i != PYTHON_REDIS_LOCK], [NO_PYTHON_REDIS_LOCK]


# -- 1. one connection ----------------------------------------------------------------------------------


def interleaved(
    loops: dict[str, Callable[[], object]], seconds: float, slices: int = 10
) -> dict[str, dict[str, float]]:
    """Run every loop for about *seconds* in total, in *slices* slices, the order rotated every
    slice (a b c, b c a, ...) so that a change of load hits all alike. Per loop: calls per second
    (wall clock) and client CPU µs per call (``time.process_time``)."""
    names = list(loops)
    calls = dict.fromkeys(names, 0)
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    per_slice = seconds / slices
    for k in range(slices):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            fn = loops[name]
            n = 0
            c0, t0 = time.process_time(), time.perf_counter()
            end = t0 + per_slice
            while True:
                for _ in range(10):
                    fn()
                n += 10
                t = time.perf_counter()
                if t >= end:
                    break
            cpu[name] += time.process_time() - c0
            wall[name] += t - t0
            calls[name] += n
    return {
        name: {
            "calls": calls[name],
            "ops_per_s": calls[name] / wall[name],
            "cpu_us_per_op": cpu[name] / calls[name] * 1e6,
        }
        for name in names
    }


def acquire_release(impl: Any, rid: int) -> Callable[[], None]:
    def loop() -> None:
        handle = impl.try_acquire(rid)
        if handle is None:
            raise AssertionError(f"{impl.name}: resource {rid} was not free on its own connection")
        if not impl.release(handle):
            raise AssertionError(f"{impl.name}: release found resource {rid} not held")

    return loop


def one_connection(url: str, seconds: float, impls: Sequence[str], try_claim: bool = True) -> dict[str, Any]:
    """Acquire + release loops and heartbeat vs ``PEXPIRE``, all on one connection, interleaved."""
    client = sync_client(url, single_connection_client=True)
    made = [IMPL_CLASSES[name](client, f"one-{i}", try_claim) for i, name in enumerate(impls) if name != RAW]
    raw = RawSetNx(client, "one-raw", plain_del=True)
    loops: dict[str, Callable[[], object]] = {}
    for impl in made:
        loops[f"{impl.name}: acquire + release"] = acquire_release(impl, 0)
    if RAW in impls:
        loops["raw SET NX PX + DEL"] = acquire_release(raw, 0)
    # pylivermore while its registry holds one other lease (its heartbeat has a schedule then)
    holding = Livermore(client, "one-holding", try_claim)
    held = holding.try_acquire(1)
    assert held is not None
    loops[f"{PYLIVERMORE}: acquire + release, registry holding 1 other lease"] = acquire_release(holding, 0)
    status_key = f"one-holding:{{{held.exchange_id}}}:status"  # the key layout of lua/README.md
    loops[f"{PYLIVERMORE}: lease.heartbeat()"] = held.heartbeat
    loops["raw PEXPIRE (same record, same client)"] = lambda: client.pexpire(status_key, TTL_MS)
    # The floors: scripts that do the work named and nothing more, through the same client.
    if FLOOR not in impls:
        loops[f"{FLOOR}: acquire + release"] = acquire_release(FloorScripts(client, "one-floor"), 0)
    loops[f"{FloorScriptsNoHistory.name}: acquire + release"] = acquire_release(
        FloorScriptsNoHistory(client, "one-floor-bare"), 0
    )
    heartbeat_sha = client.script_load(FLOOR_HEARTBEAT)
    token = held._core.token  # the benchmark reads the lease's secret so that the floor's owner check passes

    def floor_heartbeat() -> None:
        if client.evalsha(heartbeat_sha, 1, status_key, token, TTL_MS) != 1:
            raise AssertionError("the heartbeat floor's owner check failed: it would measure an early return")

    loops["floor: heartbeat (owner check + PEXPIRE + TIME + HSET lastHeartbeat)"] = floor_heartbeat
    for fn in loops.values():  # warm up: scripts loaded, the registry's server check done
        fn()
    rates = interleaved(loops, seconds)
    assert held.is_valid
    assert 0 < client.pttl(status_key) <= TTL_MS
    held.release()
    for impl in (*made, holding):
        impl.close()
    client.flushall()
    client.close()
    lock_key = f"{REDIS_PY}: acquire + release"
    claim_key = f"{PYLIVERMORE}: acquire + release"
    ratios = {}
    if lock_key in rates and claim_key in rates:
        ratios["claim + release / redis-py Lock acquire + release"] = (
            rates[claim_key]["ops_per_s"] / rates[lock_key]["ops_per_s"]
        )
    prl_key = f"{PYTHON_REDIS_LOCK}: acquire + release"
    if prl_key in rates and claim_key in rates:
        ratios["claim + release / python-redis-lock acquire + release"] = (
            rates[claim_key]["ops_per_s"] / rates[prl_key]["ops_per_s"]
        )
    pexpire = rates["raw PEXPIRE (same record, same client)"]["ops_per_s"]
    ratios["lease.heartbeat() / raw PEXPIRE"] = rates[f"{PYLIVERMORE}: lease.heartbeat()"]["ops_per_s"] / pexpire
    floors = {}  # what the work itself allows, next to the targets (rates of the same run)
    lock = rates.get(lock_key, {}).get("ops_per_s")
    for name in (
        f"{NO_HISTORY}: acquire + release",
        f"{FLOOR}: acquire + release",
        f"{FloorScriptsNoHistory.name}: acquire + release",
    ):
        if lock and name in rates:
            floors[f"{name.removesuffix(': acquire + release')} / redis-py Lock acquire + release"] = (
                rates[name]["ops_per_s"] / lock
            )
    floors["floor: heartbeat / raw PEXPIRE"] = (
        rates["floor: heartbeat (owner check + PEXPIRE + TIME + HSET lastHeartbeat)"]["ops_per_s"] / pexpire
    )
    return {
        "seconds_per_loop": seconds,
        "loops": rates,
        "ratios": ratios,
        "floors": floors,
        "variant": livermore_variant(try_claim),
    }


# -- 3. a failed claim's server cost -------------------------------------------------------------------


def failed_claim_server_cost(url: str, calls: int) -> dict[str, Any]:
    """A second registry's claim of a held resource (it conflicts) interleaved call by call with
    a ``SET NX PX`` that fails, after ``CONFIG RESETSTAT``; µs per call from ``INFO commandstats``.
    Whatever commands the conflicting claim sends count to it (today one ``EVALSHA``)."""
    client = sync_client(url, single_connection_client=True)
    holder = Registry(client, namespace="fail", ttl=TTL, heartbeat_interval=TTL / 3, renew_deadline=TTL * 0.8)
    other = Registry(client, namespace="fail", ttl=TTL, heartbeat_interval=TTL / 3, renew_deadline=TTL * 0.8)
    lease = holder.claim(1, "Held")
    client.set("fail:raw", "held", px=TTL_MS * 100)

    def conflict() -> None:
        if other.try_claim(1, "Other") is not None:
            raise AssertionError("the second registry's claim did not conflict")

    def failed_set() -> None:
        if client.set("fail:raw", "v", nx=True, px=TTL_MS) is not None:
            raise AssertionError("SET NX PX on a held key succeeded")

    conflict()  # warm up: the script cached, the registry's server check done
    failed_set()
    client.config_resetstat()
    for _ in range(calls):
        failed_set()
        conflict()
    stats = client.info("commandstats")
    floors = conflict_floors(client, lease, calls)
    assert lease.is_valid
    lease.release()
    holder.close()
    other.close()
    client.flushall()
    client.close()
    per_cmd = {k.removeprefix("cmdstat_"): v for k, v in stats.items()}
    setstat = per_cmd.pop("set")
    for admin in ("config|resetstat", "config", "info"):
        per_cmd.pop(admin, None)
    # A script's time includes the commands it runs (which commandstats also counts on their own):
    # the claim's cost is its script calls' time; any other command it sent would count to it too.
    entry = {k: v for k, v in per_cmd.items() if k in SCRIPT_COMMANDS}
    inner = {k: v for k, v in per_cmd.items() if k not in SCRIPT_COMMANDS}
    claim_usec = sum(v["usec"] for v in entry.values()) / calls
    set_usec = setstat["usec"] / setstat["calls"]
    return {
        "calls": calls,
        "claim_scripts": {k: v["calls"] / calls for k, v in entry.items()},
        "inside_scripts": {k: v["calls"] / calls for k, v in inner.items()},
        "claim_usec": claim_usec,
        "set_usec": set_usec,
        "set_calls": setstat["calls"],
        "ratio": claim_usec / set_usec,
        "floors": floors,
    }


#: Reference scripts for a failed claim (not pylivermore operations), called with the claim's own 3 keys
#: and 9 arguments: what any script that answers a conflict costs on this server at least.
CONFLICT_FLOORS = {
    "floor: empty script, the claim's keys and arguments": "return 1",
    "floor: HMGET of the holder's 21 fields + PTTL, a 2-element reply": (
        "local h = redis.call('HMGET', KEYS[1], 'ownerDigest', 'retentionMs', 'exchangeId', 'exchangeName', "
        "'hostname', 'ipAddress', 'countryCode', 'adminEmail', 'adminDisplayName', 'connectionState', "
        "'symbolCount', 'connectedAt', 'lastHeartbeat', 'lastStateChange', 'registeredAt', 'lastError', "
        "'lastErrorAt', 'fencingToken', 'instanceId', 'stateTable', 'contract') "
        "if not h[1] then return redis.error_reply('floor: the record is not held') end "
        "return {'CONFLICT', redis.call('PTTL', KEYS[1])}"
    ),
    "floor: HGETALL + PTTL, a 2-element reply": (
        "local h = redis.call('HGETALL', KEYS[1]) "
        "if #h == 0 then return redis.error_reply('floor: the record is not held') end "
        "return {'CONFLICT', redis.call('PTTL', KEYS[1])}"
    ),
    "floor: HMGET of 4 fields + PTTL, a 2-element reply": (
        "local h = redis.call('HMGET', KEYS[1], 'ownerDigest', 'instanceId', 'fencingToken', 'exchangeId') "
        "if not h[1] then return redis.error_reply('floor: the record is not held') end "
        "return {'CONFLICT', redis.call('PTTL', KEYS[1])}"
    ),
}


def conflict_floors(client: redis.Redis, lease: Lease, calls: int) -> dict[str, dict[str, float]]:
    """Each floor script interleaved call by call with the failing ``SET NX PX``, in its own window:
    µs per call of both and their ratio. The holder's record is live, so the HMGET floor reads it."""
    keys = [f"fail:{{{lease.exchange_id}}}:{suffix}" for suffix in ("status", "log", "fence")]
    args = ["b" * 32, str(TTL_MS), str(lease.exchange_id), "Other", "host", "host:1", "0", "86400000", ""]
    out: dict[str, dict[str, float]] = {}
    for name, source in CONFLICT_FLOORS.items():
        sha = client.script_load(source)
        client.evalsha(sha, 3, *keys, *args)
        client.config_resetstat()
        for _ in range(calls):
            client.set("fail:raw", "v", nx=True, px=TTL_MS)
            client.evalsha(sha, 3, *keys, *args)
        stats = client.info("commandstats")
        usec = stats["cmdstat_evalsha"]["usec_per_call"]
        set_usec = stats["cmdstat_set"]["usec_per_call"]
        out[name] = {"usec": usec, "set_usec": set_usec, "ratio": usec / set_usec}
    return out


#: The commands that run a script or function: their time includes the commands run inside.
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


# -- 2. contention: sync worker processes ----------------------------------------------------------------


@dataclass(frozen=True)
class LockJob:
    impl: str
    url: str
    namespace: str
    worker: int
    resources: int
    start_ns: int  # time.monotonic_ns(): CLOCK_MONOTONIC, the same clock in every process
    duration: float
    seed: int
    try_claim: bool


_clients: dict[str, redis.Redis] = {}


def run_lock_job(job: LockJob) -> dict[str, Any]:
    """One worker's loop (see the module docstring), in its own process."""
    client = _clients.get(job.url)
    if client is None:
        client = _clients[job.url] = sync_client(job.url)
    impl = IMPL_CLASSES[job.impl](client, job.namespace, job.try_claim)
    rng = random.Random(job.seed * 1_000_003 + job.worker)
    clock, sleep, uniform, randrange = time.monotonic_ns, time.sleep, rng.uniform, rng.randrange
    lo, hi = RETRY_SLEEP
    acquisitions = failures = errors = lost = 0
    samples: list[str] = []
    intervals: list[tuple[int, int, int, int | None]] = []
    try:
        handle = impl.try_acquire(WARMUP_RID)  # scripts loaded, server checked: before the start
        if handle is not None:
            impl.release(handle)
        late = clock() - job.start_ns
        if late < 0:
            sleep(-late / 1e9)
        end = job.start_ns + int(job.duration * 1e9)
        cpu0 = time.process_time()
        while clock() < end:
            rid = randrange(job.resources)
            try:
                handle = impl.try_acquire(rid)
            except Exception as exc:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"acquire: {type(exc).__name__}: {exc}"[:200])
                sleep(uniform(lo, hi))
                continue
            if handle is None:
                failures += 1
                sleep(uniform(lo, hi))
                continue
            acquired = clock()
            acquisitions += 1
            sleep(HOLD)
            before_release = clock()
            try:
                if not impl.release(handle):
                    lost += 1
            except Exception as exc:
                errors += 1
                if len(samples) < 3:
                    samples.append(f"release: {type(exc).__name__}: {exc}"[:200])
            intervals.append((rid, acquired, before_release, impl.token(handle)))
        cpu = time.process_time() - cpu0
    finally:
        impl.close()
    return {
        "worker": job.worker,
        "acquisitions": acquisitions,
        "failures": failures,
        "errors": errors,
        "error_samples": samples,
        "lost": lost,
        "late_ms": max(0, late) / 1e6,
        "cpu_s": cpu,
        "intervals": intervals,
    }


def serve_locks(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: run lock jobs until told to stop or until the parent goes away."""
    try:
        conn.send("ready")
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                for client in _clients.values():
                    client.close()
                conn.close()
                os._exit(0)  # nothing to flush or tear down: skip the interpreter's teardown (64 processes)
            try:
                result = run_lock_job(job)
            except Exception as exc:
                result = {"failed": f"{type(exc).__name__}: {exc}"}
            conn.send(result)
    except KeyboardInterrupt:
        return


def start_delay(workers: int) -> float:
    """Seconds from sending a run's jobs to its common start: each worker process wakes up, builds
    its implementation and warms it up (one acquire + release) in that time."""
    return 0.1 + 0.003 * workers


def summarize_locks(impl: str, workers: int, parts: list[tuple[float, list[dict[str, Any]]]]) -> dict[str, Any]:
    """One implementation at one W, over its rounds (*parts*: round duration and worker results)."""
    failed = [r["failed"] for _, rs in parts for r in rs if "failed" in r]
    done = [r for _, rs in parts for r in rs if "failed" not in r]
    seconds = sum(d for d, _ in parts)
    per_worker: dict[int, int] = {}
    for r in done:
        per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + r["acquisitions"]
    checks = []  # every round on fresh keys: checked round by round
    for _, rs in parts:
        ivs = [
            (rid, a / 1e9, b / 1e9, r["worker"], tok)
            for r in rs
            if "intervals" in r
            for rid, a, b, tok in r["intervals"]
        ]
        checks.append(check_intervals(ivs))
    acquisitions = sum(r["acquisitions"] for r in done)
    failures = sum(r["failures"] for r in done)
    tries = acquisitions + failures
    if not failed and acquisitions == 0:
        failed.append("no acquisition succeeded: nothing to check")
    return {
        "impl": impl,
        "workers": workers,
        "seconds": seconds,
        "rounds": len(parts),
        "acquisitions": acquisitions,
        "acquisitions_per_s": acquisitions / seconds if seconds else 0.0,
        "failures": failures,
        "failures_per_s": failures / seconds if seconds else 0.0,
        "cpu_us_per_try": sum(r["cpu_s"] for r in done) / tries * 1e6 if tries else math.nan,
        "lost": sum(r["lost"] for r in done),
        "errors": sum(r["errors"] for r in done),
        "error_samples": sorted({e for r in done for e in r["error_samples"]})[:5],
        "late_ms_max": max((r["late_ms"] for r in done), default=0.0),
        "fairness": {"min": min(per_worker.values(), default=0), "max": max(per_worker.values(), default=0)},
        "invariant": merge_checks(checks),
        "failed": failed,
    }


def contention(
    url: str,
    *,
    impls: Sequence[str],
    workers: Sequence[int] = (16, 64),
    resources: int = 8,
    duration: float = 3.0,
    rounds: int = 2,
    seed: int = 1,
    try_claim: bool = True,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Every implementation at every W, *duration* seconds each in *rounds* interleaved rounds."""
    admin = sync_client(url)
    t0 = time.monotonic()
    pool = ProcessPool(max(workers), target=serve_locks)
    log(f"   {max(workers)} worker processes started in {time.monotonic() - t0:.1f} s")
    runs: list[dict[str, Any]] = []
    try:
        for wi, w in enumerate(workers):
            parts: dict[str, list[tuple[float, list[dict[str, Any]]]]] = {i: [] for i in impls}
            for k in range(rounds):
                shift = wi + k
                for impl in [impls[(shift + i) % len(impls)] for i in range(len(impls))]:
                    admin.flushall()
                    start_ns = time.monotonic_ns() + int(start_delay(w) * 1e9)
                    jobs = [
                        LockJob(
                            impl=impl,
                            url=url,
                            namespace=f"c{w}-{k}-{IMPL_SLUGS[impl]}",
                            worker=i,
                            resources=resources,
                            start_ns=start_ns,
                            duration=duration / rounds,
                            seed=seed + k,
                            try_claim=try_claim,
                        )
                        for i in range(w)
                    ]
                    results = pool.run(jobs, timeout=start_delay(w) + duration / rounds + 60)
                    parts[impl].append((duration / rounds, results))
            for impl in impls:
                run = summarize_locks(impl, w, parts[impl])
                run["resources"] = resources
                runs.append(run)
                inv = run["invariant"]
                log(
                    f"   W={w:<3} R={resources} {impl:<18} {run['acquisitions_per_s']:>8.1f} acquisitions/s  "
                    f"failed tries {run['failures']:>6}  overlaps {inv['violations']}  lost {run['lost']}  "
                    f"errors {run['errors']}" + (f"  FAILED {run['failed']}" if run["failed"] else "")
                )
        admin.flushall()
    finally:
        pool.close()
        admin.close()
    ratios: dict[str, dict[str, float | None]] = {}
    by = {(r["workers"], r["impl"]): r for r in runs}
    for w in workers:
        ref = by.get((w, PYLIVERMORE))
        row: dict[str, float | None] = {}
        for impl in impls:
            other = by.get((w, impl))
            if impl == PYLIVERMORE or ref is None or other is None:
                continue
            row[impl] = ref["acquisitions_per_s"] / other["acquisitions_per_s"] if other["acquisitions_per_s"] else None
        ratios[f"W={w}"] = row
    return {
        "workers": list(workers),
        "resources": resources,
        "duration_s": duration,
        "rounds": rounds,
        "hold_ms": HOLD * 1000,
        "retry_sleep_ms": [x * 1000 for x in RETRY_SLEEP],
        "variant": livermore_variant(try_claim),
        "runs": runs,
        "ratios": ratios,
    }


# -- everything, and its report -----------------------------------------------------------------------


def measure(
    url: str,
    *,
    seconds: float,
    duration: float,
    rounds: int,
    calls: int,
    workers: Sequence[int] = (16, 64),
    resources: int = 8,
    impls: Sequence[str] = (PYLIVERMORE, NO_HISTORY, REDIS_PY, PYTHON_REDIS_LOCK, RAW, FLOOR),
    try_claim: bool = True,
    skip: Sequence[str] = (),
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """The three parts on the server at *url* (which must allow CONFIG RESETSTAT and FLUSHALL)."""
    impls, notes = available(impls)
    for note in notes:
        log(f"   NOTE: {note}")
    data: dict[str, Any] = {"impls": list(impls), "notes": notes}
    if "one" not in skip:
        data["one_connection"] = one_connection(url, seconds, impls, try_claim)
        for name, value in data["one_connection"]["ratios"].items():
            log(f"   one connection: {name} = {value:.2f}")
    if "server" not in skip:
        data["failed_claim"] = failed_claim_server_cost(url, calls)
        fc = data["failed_claim"]
        log(f"   failed claim {fc['claim_usec']:.2f} us vs failed SET NX {fc['set_usec']:.2f} us: {fc['ratio']:.2f}x")
        for name, floor in fc["floors"].items():
            log(f"   {name}: {floor['usec']:.2f} us vs failed SET NX {floor['set_usec']:.2f} us: {floor['ratio']:.2f}x")
    if "contention" not in skip:
        data["contention"] = contention(
            url,
            impls=impls,
            workers=workers,
            resources=resources,
            duration=duration,
            rounds=rounds,
            try_claim=try_claim,
            log=log,
        )
    return data


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(data: dict[str, Any]) -> str:
    parts = []
    for note in data.get("notes", []):
        parts.append(f"**Note:** {note}\n")
    one = data.get("one_connection")
    if one:
        ref = one["loops"].get(f"{REDIS_PY}: acquire + release")
        rows = []
        for name, r in one["loops"].items():
            vs = f"{r['ops_per_s'] / ref['ops_per_s']:.2f}" if ref and "acquire + release" in name else ""
            rows.append([name, f"{r['ops_per_s']:,.0f}", f"{r['cpu_us_per_op']:.1f}", vs])
        parts += [
            f"### Locks, one connection ({one['seconds_per_loop']:g} s per loop, interleaved slices; "
            f"pylivermore: {one['variant']})\n",
            _table(["loop", "ops/s", "client CPU µs/op", "ops/s ÷ redis-py Lock"], rows),
            "",
            _table(
                ["ratio", "value", "target"],
                [
                    [k, f"{v:.2f}", "≥ 1.0" if "redis-py" in k else "≥ 0.9" if "heartbeat" in k else ""]
                    for k, v in one["ratios"].items()
                ],
            ),
            "",
        ]
        if one.get("floors"):
            parts += [
                "Next to the targets, what the work allows (same run): the no-history mode, and the floors "
                "(scripts that do only the owner check and the writes named, through the same client):\n",
                _table(["ratio", "value"], [[k, f"{v:.2f}"] for k, v in one["floors"].items()]),
                "",
            ]
    fc = data.get("failed_claim")
    if fc:
        cmds = ", ".join(f"{k} x {v:g}" for k, v in fc["claim_scripts"].items())
        inside = ", ".join(f"{k} x {v:g}" for k, v in sorted(fc["inside_scripts"].items()))
        if inside:
            cmds += f" (inside: {inside})"
        parts += [
            f"### A failed claim's server cost ({fc['calls']:,} calls each, interleaved call by call)\n",
            _table(
                ["failed call", "server µs per call", "commands per call"],
                [
                    ["pylivermore claim that conflicts (a second registry)", f"{fc['claim_usec']:.2f}", cmds],
                    ["`SET key val NX PX` that fails (key exists)", f"{fc['set_usec']:.2f}", "set x 1"],
                ],
            ),
            f"\nRatio claim / SET NX: **{fc['ratio']:.2f}** (target ≤ 4).\n",
            "The floors (reference scripts, not pylivermore operations, with the claim's 3 keys and 9 arguments), "
            "each interleaved call by call with the failing `SET NX PX` in its own window:\n",
            _table(
                ["floor", "server µs per call", "failed `SET NX PX` in the same window, µs", "ratio"],
                [[k, f"{v['usec']:.2f}", f"{v['set_usec']:.2f}", f"{v['ratio']:.1f}"] for k, v in fc["floors"].items()],
            ),
            "",
        ]
    c = data.get("contention")
    if c:
        impls = [i for i in data["impls"] if any(r["impl"] == i for r in c["runs"])]
        rows = []
        for r in c["runs"]:
            inv = r["invariant"]
            overlaps = f"{inv['violations']:,}" + (
                f" (max {inv['max_overlap_ms']:.1f} ms)" if inv["violations"] else ""
            )
            if inv["fencing"] is not None:
                bad = inv["fencing"]["not_increasing"]
                overlaps += "; fencing increasing" if bad == 0 else f"; fencing {bad} out of order"
            rows.append(
                [
                    str(r["workers"]),
                    r["impl"],
                    f"{r['acquisitions_per_s']:,.0f}",
                    f"{r['failures_per_s']:,.0f}",
                    f"{r['cpu_us_per_try']:.0f}",
                    overlaps,
                    f"{r['lost']} / {r['errors']}" + (" FAILED" if r["failed"] else ""),
                    f"{r['fairness']['min']}-{r['fairness']['max']}",
                    f"{r['late_ms_max']:.0f}",
                ]
            )
        parts += [
            f"### Locks under contention, bare loop (R = {c['resources']}, T = {c['duration_s']:g} s per "
            f"implementation and W in {c['rounds']} interleaved rounds; hold {c['hold_ms']:g} ms, "
            f"retry after {c['retry_sleep_ms'][0]:g}-{c['retry_sleep_ms'][1]:g} ms; one sync process per worker; "
            f"pylivermore: {c['variant']})\n",
            _table(
                [
                    "W",
                    "implementation",
                    "acquisitions/s",
                    "failed tries/s",
                    "client CPU µs/try",
                    "overlaps",
                    "lost / errors",
                    "per-worker min-max",
                    "latest start, ms",
                ],
                rows,
            ),
            "",
        ]
        others = [i for i in impls if i != PYLIVERMORE]
        ratio_rows = [[w] + [f"{row[o]:.2f}" if row.get(o) else "-" for o in others] for w, row in c["ratios"].items()]
        parts += [_table(["", *[f"pylivermore / {o}" for o in others]], ratio_rows), ""]
        by = {(r["workers"], r["impl"]): r["acquisitions_per_s"] for r in c["runs"]}
        shown = [i for i in (NO_HISTORY, FLOOR) if i in impls]
        locks = [i for i in (REDIS_PY, PYTHON_REDIS_LOCK) if i in impls]
        if shown and locks:
            rows = []
            for w in sorted({r["workers"] for r in c["runs"]}):
                rows.append(
                    [f"W={w}"]
                    + [
                        f"{by[(w, i)] / by[(w, lock)]:.2f}" if by.get((w, i)) and by.get((w, lock)) else "-"
                        for i in shown
                        for lock in locks
                    ]
                )
            header = ["", *[f"{i} / {lock}" for i in shown for lock in locks]]
            parts += [_table(header, rows), ""]
        samples = sorted({f"{r['impl']}: {e}" for r in c["runs"] for e in r["error_samples"]})
        if samples:
            parts.append("Error samples:\n\n" + "\n".join(f"- {s}" for s in samples[:10]) + "\n")
    return "\n".join(parts)


def failures(data: dict[str, Any]) -> list[str]:
    """Contention runs that have no figures worth reporting (a worker process crashed or hung, or
    no acquisition succeeded). Overlaps are results: the tables report them."""
    return [
        f"locks {r['impl']} W={r['workers']}: {'; '.join(r['failed'])}"
        for r in data.get("contention", {}).get("runs", [])
        if r["failed"]
    ]


def main() -> int:
    from pylivermore.server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per one-connection loop (interleaved)")
    parser.add_argument("--duration", type=float, default=3.0, help="contention: seconds per implementation and W")
    parser.add_argument("--rounds", type=int, default=2, help="contention: interleaved rounds")
    parser.add_argument("--workers", type=int_list, default=[16, 64], help="contention: W values (processes)")
    parser.add_argument("--resources", type=int, default=8, help="contention: resources")
    parser.add_argument("--calls", type=int, default=2000, help="failed-claim server cost: calls of each kind")
    parser.add_argument(
        "--impls", default=",".join(CONTENTION_IMPLS), help=f"comma-separated, from {', '.join(CONTENTION_IMPLS)}"
    )
    parser.add_argument(
        "--try-claim",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pylivermore's loops use registry.try_claim() (default), or claim() + except ClaimConflictError",
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: one, server, contention")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    names = [n for n in args.impls.split(",") if n]
    unknown = [n for n in names if n not in CONTENTION_IMPLS]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}; choose from {list(CONTENTION_IMPLS)}")
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server: CONFIG RESETSTAT, FLUSHALL
    with RedisServer() as server:
        data = measure(
            server.url,
            seconds=args.seconds,
            duration=args.duration,
            rounds=args.rounds,
            calls=args.calls,
            workers=args.workers,
            resources=args.resources,
            impls=[CONTENTION_IMPLS[n] for n in names],
            try_claim=args.try_claim,
            skip=[s for s in args.skip.split(",") if s],
        )
    print(markdown(data))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(data, fh)
    bad = failures(data)
    for line in bad:
        print(f"FAILED {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
