"""Per-operation cost of pylivermore next to the raw command of the same shape.

Everything runs side by side in one process against one private redis-server, on one
connection with retries off, so the figures that matter are the ratios (this machine is
shared and noisy). Run: ``python benchmarks/bench_ops.py [--seconds S] [--json FILE]``; ``make bench``
runs it as part of ``benchmarks/bench.py``.

Client side: operations per second through the public API vs the raw command
(claim vs ``SET NX PX``, heartbeat vs ``PEXPIRE``, transition vs ``HSET``, status read vs
``HGETALL``), each pair measured in alternating slices so that load changes hit both alike.
Server side: microseconds per call from ``INFO commandstats`` (after ``CONFIG RESETSTAT``),
each script next to ``SET NX PX`` interleaved with it call by call, plus reference scripts
(floors: the least a script, a heartbeat's owner check and writes, and a claim's writes cost on
this server; the owner-check floors pass their check and write, which each window verifies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import ClaimConflictError, Registry, State
from pylivermore.server import RedisServer


def _run_for(fn: Callable[[int], object], seconds: float, first: int) -> tuple[int, float]:
    """Call fn(first), fn(first + 1), ... for about *seconds*; returns (calls, elapsed)."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(20):
            fn(first + n)
            n += 1
        now = time.perf_counter()
        if now >= end:
            return n, now - start


def paired_rates(
    a: Callable[[int], object], b: Callable[[int], object], seconds: float, slices: int = 10
) -> tuple[float, float]:
    """Calls per second of a(i) and of b(i), about *seconds* each, measured in alternating
    slices (a b, b a, a b, ...) so that a change in the machine's load hits both alike."""
    count = {a: 0, b: 0}
    spent = {a: 0.0, b: 0.0}
    for k in range(slices):
        for fn in (a, b) if k % 2 == 0 else (b, a):
            n, t = _run_for(fn, seconds / slices, count[fn])
            count[fn] += n
            spent[fn] += t
    return count[a] / spent[a], count[b] / spent[b]


def _conflict(registry: Registry, exchange_id: str) -> None:
    try:
        registry.claim(exchange_id, "Bench")
    except ClaimConflictError:
        return
    raise AssertionError(f"claiming {exchange_id} again did not conflict")


def usec_per_call(client: redis.Redis) -> dict[str, float]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["usec_per_call"] for k, v in stats.items()}


#: Reference scripts (not pylivermore operations): the least a script costs on this server, and
#: the least that the writes SPEC requires of a heartbeat and a claim cost without any checks.
#: The owner-check floors run on a copy of a live record whose ownerDigest is SHA-1 of a token
#: this benchmark holds, so the check passes and PEXPIRE and HSET really run (each call's reply
#: and the key's TTL and lastHeartbeat are checked). Until 2026-12 they ran with a token that
#: failed the check: they measured an early return (kept below as its own row, for comparison).
_ISO = "2026-11-29T12:00:00.000Z"
_FIELDS = "'exchangeId', 'x', 'exchangeName', 'Bench', 'hostname', 'h', 'instanceId', 'i', 'fencingToken', '1'"
_OWNER_CHECK = "local d = redis.call('HGET', KEYS[1], 'ownerDigest') if d ~= redis.sha1hex(ARGV[1]) then return 0 end "
EMPTY = "floor: empty script"
EARLY_RETURN = "floor: owner check that fails (early return)"
OWNER_PEXPIRE = "floor: owner check + PEXPIRE"
OWNER_PEXPIRE_HSET = "floor: same + TIME + HSET lastHeartbeat"
CLAIM_WRITES = "floor: a claim's writes only (new keys)"
FLOORS = {
    EMPTY: "return 1",
    OWNER_PEXPIRE: _OWNER_CHECK + "redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1",
    OWNER_PEXPIRE_HSET: (
        _OWNER_CHECK + "local t = redis.call('TIME') redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
        "redis.call('HSET', KEYS[1], 'lastHeartbeat', t[1]) return 1"
    ),
    CLAIM_WRITES: (
        f"redis.call('XADD', KEYS[2], 'MINID', '~', '0', '*', 'event', 'claim', 'timestamp', '{_ISO}', {_FIELDS}, "
        "'ip', '', 'ttlMs', '45000', 'how', 'new', 'replaced', '') "
        f"redis.call('HSET', KEYS[1], {_FIELDS}, 'connectionState', 'idle', 'symbolCount', '0', "
        f"'lastHeartbeat', '{_ISO}', 'lastStateChange', '{_ISO}', 'registeredAt', '{_ISO}', 'ownerDigest', 'd') "
        "redis.call('PEXPIRE', KEYS[1], 45000) return redis.call('SET', KEYS[3], '1')"
    ),
}
KEYS3 = ("status", "log", "fence")
#: The TTL a floor record is given before each window: a renewal (45 s) must bring it down.
_LONG_TTL_MS = 3_600_000
_NOT_YET = "not renewed"


def _expect(reply: object, want: object, label: str) -> None:
    if reply != want:
        raise AssertionError(f"{label}: reply {reply!r}, expected {want!r}")


def floor_ops(
    client: redis.Redis, status_key: str
) -> tuple[list[tuple[str, Callable[[int], object]]], dict[str, tuple[Callable[[], object], Callable[[], object]]]]:
    """The FLOORS scripts as operations, and per label a (prepare, verify) pair run before and
    after its window (outside it). The owner-check floors run on ``floor:{hb}:status``, a copy
    of the live record at *status_key* whose ``ownerDigest`` is SHA-1 of a token held here: the
    check passes and the writes happen (verify: every reply, then TTL and ``lastHeartbeat``).
    The early-return row sends a wrong token to the same script (verify: nothing renewed). The
    claim's writes go to new keys each time (as the claims measured next to them)."""
    token = secrets.token_urlsafe(32)
    key = "floor:{hb}:status"
    record = client.hgetall(status_key)
    assert record, f"{status_key} holds no record to copy"
    record[b"ownerDigest"] = hashlib.sha1(token.encode()).hexdigest().encode()
    client.delete(key)
    client.hset(key, mapping=record)
    sha = {label: client.script_load(source) for label, source in FLOORS.items()}

    def prepare() -> None:
        client.pexpire(key, _LONG_TTL_MS)
        client.hset(key, "lastHeartbeat", _NOT_YET)

    def renewed(with_hset: bool) -> Callable[[], None]:
        def verify() -> None:
            ttl = client.pttl(key)
            assert 0 < ttl <= 45000, f"the floor did not renew {key}: PTTL {ttl}"
            beat = client.hget(key, "lastHeartbeat")
            assert (beat != _NOT_YET.encode()) == with_hset, f"{key} lastHeartbeat is {beat!r}"

        return verify

    def untouched() -> None:
        assert client.pttl(key) > 45000, f"a wrong token renewed {key}"
        assert client.hget(key, "lastHeartbeat") == _NOT_YET.encode()

    ops: list[tuple[str, Callable[[int], object]]] = [
        (EMPTY, lambda i: _expect(client.evalsha(sha[EMPTY], 0), 1, EMPTY)),
        (
            EARLY_RETURN,
            lambda i: _expect(client.evalsha(sha[OWNER_PEXPIRE], 1, key, "x" * 43, "45000"), 0, EARLY_RETURN),
        ),
        (
            OWNER_PEXPIRE,
            lambda i: _expect(client.evalsha(sha[OWNER_PEXPIRE], 1, key, token, "45000"), 1, OWNER_PEXPIRE),
        ),
        (
            OWNER_PEXPIRE_HSET,
            lambda i: _expect(client.evalsha(sha[OWNER_PEXPIRE_HSET], 1, key, token, "45000"), 1, OWNER_PEXPIRE_HSET),
        ),
        (
            CLAIM_WRITES,
            lambda i: _expect(
                client.evalsha(sha[CLAIM_WRITES], 3, *(f"floor:{{{i}}}:{k}" for k in KEYS3)), b"OK", CLAIM_WRITES
            ),
        ),
    ]
    hooks = {
        EARLY_RETURN: (prepare, untouched),
        OWNER_PEXPIRE: (prepare, renewed(with_hset=False)),
        OWNER_PEXPIRE_HSET: (prepare, renewed(with_hset=True)),
    }
    return ops, hooks


def server_costs(
    client: redis.Redis,
    ops: Iterable[tuple[str, Callable[[int], object]]],
    calls: int,
    before_each: Callable[[], object] = lambda: None,
    hooks: Mapping[str, tuple[Callable[[], object], Callable[[], object]]] | None = None,
) -> dict[str, dict[str, float]]:
    """Server-side µs per call of each operation's EVALSHA, from ``INFO commandstats`` after
    ``CONFIG RESETSTAT``, each next to ``SET NX PX`` measured in the same window, call by call
    interleaved (SET, op, SET, op, ...): both see the same load and cache state, so their
    ratio holds still while the absolute figures move 2-3x with this shared machine's mood.
    *hooks*: per label, (prepare, verify) called before and after its window, outside it."""
    out = {}
    for label, op in ops:
        prepare, verify = (hooks or {}).get(label, (lambda: None, lambda: None))
        before_each()
        prepare()
        client.config_resetstat()
        for i in range(calls):
            client.set(f"raw2:{{{label}:{i}}}", "v", nx=True, px=45000)
            op(i)
        stats = usec_per_call(client)
        verify()
        out[label] = {"usec": stats["evalsha"], "set_usec": stats["set"]}
    return out


def measure(url: str, seconds: float = 1.0, server_calls: int = 2000) -> dict[str, Any]:
    """Every figure of this benchmark, on the server at *url* (which must allow CONFIG RESETSTAT)."""
    client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), single_connection_client=True)
    registry = Registry(client, namespace="bench", ttl=45, heartbeat_interval=15, renew_deadline=30)
    results: dict[str, float] = {}

    lease = registry.claim("hb", "Bench")
    steps = [State.STARTING, State.STOPPING, State.STOPPED, State.IDLE]
    status_key = f"bench:{{{lease.exchange_id}}}:status"  # the key layout of lua/README.md
    client.set("raw:{0}", "v")
    client.hset("raw:h", "connectionState", "x")
    for op, raw, op_fn, raw_fn in (
        (
            "claim",
            "raw SET NX PX",
            lambda i: registry.claim(i + 1, "Bench"),
            lambda i: client.set(f"raw:{{{i + 1}}}", "v", nx=True, px=45000),
        ),
        ("heartbeat", "raw PEXPIRE", lambda i: lease.heartbeat(), lambda i: client.pexpire("raw:{0}", 45000)),
        (
            "transition",
            "raw HSET",
            lambda i: lease.transition(steps[i % 4]),
            lambda i: client.hset("raw:h", "connectionState", steps[i % 4].value),
        ),
        ("status read", "raw HGETALL", lambda i: registry.get("hb"), lambda i: client.hgetall(status_key)),
    ):
        results[op], results[raw] = paired_rates(op_fn, raw_fn, seconds)
        # keep the background heartbeat out of the single-connection figures (nothing is due
        # within the measurement anyway: it renews every 15 s)
        registry.close()

    floors, hooks = floor_ops(client, status_key)
    server_side = server_costs(
        client,
        (
            ("claim", lambda i: registry.claim(f"s{i}", "Bench")),
            ("claim, conflict", lambda i: _conflict(registry, "hb")),
            ("heartbeat", lambda i: lease.heartbeat()),
            ("transition", lambda i: lease.transition(steps[i % 4])),
            *floors,
        ),
        server_calls,
        before_each=registry.close,
        hooks=hooks,
    )
    registry.close()
    memory = client.memory_usage(status_key) or 0
    client.flushall()
    client.close()
    return {"seconds": seconds, "ops_per_second": results, "server_usec_per_call": server_side, "record_bytes": memory}


def print_results(data: dict[str, Any]) -> None:
    results, server_side = data["ops_per_second"], data["server_usec_per_call"]
    print(f"{'operation':<12} {'ops/s':>9} {'raw':<14} {'ops/s':>9} {'ratio':>6}")
    for op, raw in (
        ("claim", "raw SET NX PX"),
        ("heartbeat", "raw PEXPIRE"),
        ("transition", "raw HSET"),
        ("status read", "raw HGETALL"),
    ):
        print(f"{op:<12} {results[op]:>9.0f} {raw:<14} {results[raw]:>9.0f} {results[op] / results[raw]:>6.2f}")
    print("\nserver side, usec per call; SET NX PX interleaved call by call in the same window")
    for op, cost in server_side.items():
        us, set_us = cost["usec"], cost["set_usec"]
        print(f"  {op:<30} {us:>6.2f} us  SET NX PX {set_us:>5.2f} us  {us / set_us:>5.1f}x")
    print(f"\nMEMORY USAGE of one live record: {data['record_bytes']} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server: CONFIG RESETSTAT, MEMORY USAGE
    with RedisServer() as server:
        data = measure(server.url, args.seconds)
    print_results(data)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(data, fh)


if __name__ == "__main__":
    main()
