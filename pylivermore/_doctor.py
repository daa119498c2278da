"""``livermore doctor``: what about a server matters to pylivermore, each finding with a fix.

The assessments are pure (they read ``INFO`` sections, the clocks, the probes' outcomes) so that
each is tested on its own; :func:`run_checks` gathers the facts with commands that change nothing
(``INFO``, ``TIME``, and one harmless call of each command a worker sends, to learn whether this
user may send it) and assesses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from ._config import RegistryConfig
from ._keys import Keys
from ._scripts import load_scripts

#: The oldest server the scripts run on (contract v2), and the first with Redis Functions.
MIN_VERSION = (6, 2)
FUNCTIONS_VERSION = (7, 0)
#: The local and the server clock may differ by this much before it is worth a warning: timestamps
#: in records come from the server, lease deadlines from the local clock.
CLOCK_TOLERANCE = 0.5


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "info", "warn" or "fail"
    topic: str
    detail: str
    fix: str = ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def version_finding(server: Mapping[str, Any]) -> Finding:
    name = _text(server.get("server_name", "redis"))
    release = _text(server.get(f"{name}_version") or server.get("redis_version", "?"))
    compat = _version(_text(server.get("redis_version", release)))
    label = f"{name.capitalize()} {release}"
    if compat < MIN_VERSION:
        return Finding(
            "fail", "version", f"{label}: the scripts need Redis >= 6.2", "upgrade the server to 6.2 or newer"
        )
    if compat < FUNCTIONS_VERSION:
        return Finding(
            "info", "version", f"{label}: scripts (EVALSHA) work; no Redis Functions (transport='functions' needs 7.0)"
        )
    return Finding("ok", "version", f"{label}: scripts and Redis Functions both work")


def eviction_finding(memory: Mapping[str, Any]) -> Finding:
    policy = _text(memory.get("maxmemory_policy", "")) or None
    warning = RegistryConfig.eviction_warning(policy)
    if warning is None:
        return Finding("ok", "eviction", f"maxmemory-policy {policy}: lease keys are never evicted")
    return Finding("fail", "eviction", warning, "CONFIG SET maxmemory-policy noeviction (and in the config file)")


def persistence_finding(persistence: Mapping[str, Any], save: str | None) -> Finding:
    aof = _text(persistence.get("aof_enabled", "0")) == "1"
    if aof:
        return Finding("ok", "persistence", "append-only file on: a restart keeps records, logs and fence keys")
    snapshots = "no RDB snapshots" if save == "" else ("RDB snapshots only" if save else "AOF off")
    return Finding(
        "warn",
        "persistence",
        f"{snapshots}: a restart may forget live records (their owners learn it at the next heartbeat) and the "
        "history; fencing tokens still increase (their floor is the server clock)",
        "CONFIG SET appendonly yes (appendfsync everysec), or accept losing leases on a restart",
    )


def layout_finding(server: Mapping[str, Any], replication: Mapping[str, Any], cluster_state: str | None) -> Finding:
    mode = _text(server.get("redis_mode", "standalone"))
    role = _text(replication.get("role", "master"))
    replicas = int(_text(replication.get("connected_slaves", "0")) or 0)
    if role != "master":
        return Finding(
            "fail",
            "layout",
            f"this server is a {role}: scripts that write are refused here",
            "point --url (and your workers) at the master, or use Sentinel / cluster clients that find it",
        )
    if mode == "cluster":
        if cluster_state == "unknown":
            return Finding("info", "layout", "Redis Cluster; its state is not readable by this user (CLUSTER INFO)")
        if cluster_state != "ok":
            return Finding("fail", "layout", f"cluster state {cluster_state}", "fix the cluster (CLUSTER INFO)")
        return Finding("ok", "layout", f"Redis Cluster, state ok; this node has {replicas} replica(s)")
    if replicas == 0:
        return Finding(
            "info",
            "layout",
            f"{mode} master without replicas: it is a single point of failure",
            "add a replica and Sentinel for failover (durable claims: claim(..., replicas=1))",
        )
    return Finding("ok", "layout", f"{mode} master with {replicas} replica(s)")


def clock_finding(server_seconds: float, local_seconds: float, round_trip: float) -> Finding:
    skew = server_seconds - local_seconds
    if abs(skew) <= CLOCK_TOLERANCE + round_trip:
        return Finding("ok", "clock", f"server clock within {abs(skew) * 1000:.0f} ms of this machine's")
    return Finding(
        "warn",
        "clock",
        f"server clock {skew:+.2f} s from this machine's: record timestamps (server) and heartbeat ages will "
        "disagree with local logs (lease deadlines are local and unaffected)",
        "synchronise both clocks (NTP)",
    )


def acl_finding(user: str, refused: list[str], optional: Mapping[str, str]) -> Finding:
    needed = [c for c in refused if c not in optional]
    if needed:
        return Finding(
            "fail",
            "permissions",
            f"user {user!r} is refused {', '.join(needed)}: workers cannot run",
            "grant the rules of pylivermore.acl.worker_rules(namespace) (ACL SETUSER ...)",
        )
    notes = [f"{c} ({optional[c]})" for c in refused]
    if notes:
        return Finding("info", "permissions", f"user {user!r} may run what workers need; refused: {', '.join(notes)}")
    return Finding("ok", "permissions", f"user {user!r} may run every command a worker sends, on this namespace")


# -- gathering the facts (every command reads or is refused; none writes data) ---------------------------


def _probes(client: redis.Redis, namespace: str) -> dict[str, Callable[[], object]]:
    keys = Keys(namespace, "doctor-probe")  # a resource nobody uses: every probe finds nothing
    heartbeat = load_scripts()["heartbeat"]
    return {
        "evalsha": lambda: client.evalsha("0" * 40, 1, keys.status),  # NOSCRIPT: allowed, keys included
        "script|load": lambda: client.script_load(heartbeat.source),  # the script a worker loads anyway
        "hgetall": lambda: client.hgetall(keys.status),
        "scan": lambda: client.scan(0, match=f"{namespace}:{{*}}:status", count=10),
        "xrevrange": lambda: client.xrevrange(keys.log, count=1),
        "xread": lambda: client.xread({keys.log: "0-0"}, count=1),
        "xinfo|stream": lambda: client.xinfo_stream(keys.log),
        "wait": lambda: client.execute_command("WAIT", 0, 0),  # type: ignore[no-untyped-call]
        "info": lambda: client.info("server"),
    }


#: Commands a worker can do without, and what is lost.
OPTIONAL = {"wait": "durable claims", "xinfo|stream": "waiting claims on leases without history", "info": "checks"}


def _cluster_state(reply: object) -> str:
    """``cluster_state`` of a ``CLUSTER INFO`` reply, parsed by redis-py or raw text."""
    if isinstance(reply, Mapping):
        return _text(reply.get("cluster_state", "?"))
    for line in _text(reply).splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return "?"


def run_checks(client: redis.Redis, namespace: str) -> list[Finding]:
    refused = []
    for command, probe in _probes(client, namespace).items():
        try:
            probe()
        except redis.exceptions.NoPermissionError:
            refused.append(command)
        except redis.ResponseError:
            pass  # NOSCRIPT, no such key: the command was allowed
    try:
        user = _text(client.execute_command("ACL", "WHOAMI"))  # type: ignore[no-untyped-call]
    except redis.ResponseError:
        user = "default"
    findings = [acl_finding(user, refused, OPTIONAL)]
    if "info" in refused:
        findings.append(Finding("warn", "server", "INFO is refused: version, eviction, persistence and layout unknown"))
    else:
        server, memory = client.info("server"), client.info("memory")
        persistence, replication = client.info("persistence"), client.info("replication")
        cluster_state = None
        if _text(client.info("cluster").get("cluster_enabled", 0)) == "1":  # Valkey 9 names no redis_mode
            server = {**server, "redis_mode": "cluster"}
        if _text(server.get("redis_mode", "")) == "cluster":
            try:
                cluster_state = _cluster_state(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
            except redis.exceptions.NoPermissionError:
                cluster_state = "unknown"
        try:
            save: str | None = _text(client.config_get("save").get("save", ""))
        except redis.ResponseError:
            save = None
        findings += [
            version_finding(server),
            eviction_finding(memory),
            persistence_finding(persistence, save),
            layout_finding(server, replication, cluster_state),
        ]
    sent = time.time()
    sec, usec = client.time()
    received = time.time()
    findings.append(clock_finding(sec + usec / 1e6, (sent + received) / 2, received - sent))
    return findings
