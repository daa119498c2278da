"""Plain helpers shared by the contract tests: script calls by raw EVALSHA, argument builders
that follow the Lua headers (contract v2), key snapshots, and timestamp checks. Fixtures live in
conftest.py."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from pylivermore._keys import Keys
from pylivermore._scripts import ScriptSpec, load_scripts

TTL_MS = "60000"
RETENTION_MS = "7776000000"  # 90 days, the library's default
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BAD_ARGS = "pylivermore bad-args:"  # redis-py strips the leading "ERR " of an error reply
ONE_DAY_MS = 86_400_000  # the retention floor of contract v2

#: The holder's fields a CONFLICT may carry, in the order of lua/README.md; never the private ones.
PUBLIC_FIELDS = (
    "exchangeId",
    "exchangeName",
    "hostname",
    "ipAddress",
    "countryCode",
    "adminEmail",
    "adminDisplayName",
    "connectionState",
    "symbolCount",
    "connectedAt",
    "lastHeartbeat",
    "lastStateChange",
    "registeredAt",
    "lastError",
    "lastErrorAt",
    "fencingToken",
    "instanceId",
    "stateTable",
    "contract",
)
PRIVATE_FIELDS = ("ownerDigest", "seq", "retentionMs")
#: The fields of every activity-log entry (lua/README.md); each event adds its own.
COMMON_ENTRY_FIELDS = (
    "event",
    "timestamp",
    "exchangeId",
    "exchangeName",
    "hostname",
    "ip",
    "fencingToken",
    "instanceId",
)

#: The six lifecycle states and the edges of SPEC §2, written out independently of the package.
STATES = ("idle", "starting", "warming", "active", "stopping", "stopped")
SPEC_EDGES = frozenset(
    {
        ("idle", "starting"),
        ("starting", "warming"),
        ("starting", "stopping"),
        ("starting", "idle"),
        ("warming", "active"),
        ("warming", "stopping"),
        ("warming", "idle"),
        ("active", "stopping"),
        ("stopping", "stopped"),
        ("stopped", "idle"),
    }
)


def text(reply: Any) -> Any:
    """A script reply with every bulk string decoded (integers stay integers)."""
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "surrogateescape")
    if isinstance(reply, list | tuple):
        return [text(x) for x in reply]
    return reply


def new_token() -> str:
    return secrets.token_hex(16)


_SEQ = itertools.count(1)


def next_seq() -> str:
    """A fresh owner-operation ``seq``: higher than every one handed out before in this process,
    so that any lease accepts it as a new call (gaps are allowed, lua/README.md)."""
    return str(next(_SEQ))


class Scripts:
    """Every script loaded into one server, called by raw EVALSHA (no redis-py Script helper)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.specs: dict[str, ScriptSpec] = dict(load_scripts())
        self.load()

    def load(self) -> None:
        for spec in self.specs.values():
            sha = self.client.script_load(spec.source)
            assert sha == spec.sha1, f"{spec.name}: SCRIPT LOAD gave {sha}, ScriptSpec.sha1 is {spec.sha1}"

    def raw(self, name: str, numkeys: int, *words: str | bytes) -> Any:
        """EVALSHA with an explicit numkeys (for arity tests); bulk strings decoded."""
        return text(self.client.evalsha(self.specs[name].sha1, numkeys, *words))

    def __call__(self, name: str, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        return self.raw(name, len(keys), *keys, *args)


@dataclass(frozen=True)
class Resource:
    """One resource id in one namespace, and its three keys."""

    namespace: str
    id: str

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace, self.id)

    @property
    def status(self) -> str:
        return self.keys.status

    @property
    def log(self) -> str:
        return self.keys.log

    @property
    def fence(self) -> str:
        return self.keys.fence

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.status, self.log, self.fence)

    def keys_for(self, script: str) -> list[str]:
        """KEYS of *script* as its header declares them: status[, log[, fence]]."""
        return list(self.all[: load_scripts()[script].numkeys])


def expires_at(admin: redis.Redis, key: str) -> tuple[int, int]:
    """*key*'s absolute expiry in ms on the server's clock (-1 without a TTL, -2 without the key),
    and how far off it may be in ms: ``PEXPIRETIME`` where the server has it (Redis 7.0+: exact);
    on Redis 6.2, ``TIME`` and ``PTTL`` read in one ``MULTI`` (one millisecond of rounding each)."""
    try:
        return int(admin.pexpiretime(key)), 0
    except redis.ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise
    pipe = admin.pipeline(transaction=True)
    pipe.time()
    pipe.pttl(key)
    (sec, usec), pttl = pipe.execute()
    return (pttl, 0) if pttl < 0 else (sec * 1000 + usec // 1000 + pttl, 2)


@dataclass(frozen=True)
class Snapshot:
    """DUMP of status, log and fence (None for an absent key), XLEN of the log (None unless it is
    a stream), and the status key's PTTL and absolute expiry (:func:`expires_at`, with how far off
    it may be). Neither is part of equality: the PTTL runs down by itself, and the expiry is
    compared by :func:`assert_unchanged`."""

    dumps: tuple[bytes | None, ...]
    xlen: int | None
    pttl: int = field(compare=False)
    expires_at: int = field(compare=False)
    slack: int = field(compare=False, default=0)


def take_snapshot(admin: redis.Redis, res: Resource) -> Snapshot:
    """*admin* must be allowed DUMP and XLEN (the worker is not)."""
    dumps = tuple(admin.dump(k) for k in res.all)
    xlen = admin.xlen(res.log) if admin.type(res.log) == b"stream" else None
    at, slack = expires_at(admin, res.status)
    return Snapshot(dumps, xlen, admin.pttl(res.status), at, slack)


def assert_unchanged(before: Snapshot, after: Snapshot) -> None:
    """Byte-identical keys, no new log entry, and a TTL that was neither refreshed, changed nor
    removed: the same absolute expiry (however much time passed between the two snapshots)."""
    assert after.dumps == before.dumps, "a key of the resource changed"
    assert after.xlen == before.xlen, "the activity log changed"
    assert abs(after.expires_at - before.expires_at) <= max(before.slack, after.slack), (
        f"the lease TTL changed: expiry {before.expires_at} -> {after.expires_at} (PTTL {before.pttl} -> {after.pttl})"
    )


def hgetall(client: redis.Redis, key: str) -> dict[str, str]:
    return {text(k): text(v) for k, v in client.hgetall(key).items()}


def last_entry(client: redis.Redis, log: str) -> dict[str, str]:
    """The newest activity-log entry's fields."""
    entries = client.xrevrange(log, count=1)
    assert entries, "the activity log is empty"
    return {text(k): text(v) for k, v in entries[0][1].items()}


def server_now(client: redis.Redis) -> datetime:
    sec, usec = client.time()
    return datetime.fromtimestamp(sec + usec / 1e6, tz=UTC)


def assert_recent_iso(client: redis.Redis, value: str, since: datetime) -> None:
    """*value* is an ISO-8601 UTC timestamp with milliseconds, taken from the server's TIME
    while the call ran: no earlier than *since* (the server's TIME read before the call, cut to
    the millisecond) and no later than the server's TIME now. How long the call took on a loaded
    machine does not matter."""
    assert ISO.match(value), f"{value!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
    stamp = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    floor = since.replace(microsecond=since.microsecond // 1000 * 1000)
    now = server_now(client)
    assert floor <= stamp <= now, f"{value} is not between {since.isoformat()} and {now.isoformat()} (server TIME)"


# -- ARGV builders, in the order of the headers ---------------------------------------------


def claim_args(
    token: str,
    *,
    ttl_ms: str = TTL_MS,
    exchange_id: str = "1",
    name: str = "Binance",
    hostname: str = "host-a",
    instance_id: str = "worker-a",
    reclaim: str = "0",
    retention_ms: str = RETENTION_MS,
    table: str = "",
) -> list[str]:
    return [token, ttl_ms, exchange_id, name, hostname, instance_id, reclaim, retention_ms, table]


def heartbeat_args(token: str, ttl_ms: str = TTL_MS) -> list[str]:
    return [token, ttl_ms]


def transition_args(token: str, to: str, *, seq: int | str | None = None, expected: str = "") -> list[str]:
    """Without *seq*, a fresh one (:func:`next_seq`): a new call."""
    return [token, next_seq() if seq is None else str(seq), to, expected]


def update_args(
    token: str, group: str = "symbols", first: str = "42", second: str = "", *, seq: int | str | None = None
) -> list[str]:
    return [token, next_seq() if seq is None else str(seq), group, first, second]


def record_error_args(token: str, message: str = "socket closed", *, seq: int | str | None = None) -> list[str]:
    return [token, next_seq() if seq is None else str(seq), message]


def deregister_args(token: str, fencing_token: int | str) -> list[str]:
    return [token, str(fencing_token)]


def force_release_args(
    reason: str = "stuck worker", operator: str = "ops@example.com", retention_ms: str = RETENTION_MS
) -> list[str]:
    return [reason, operator, retention_ms]


def valid_args(script: str, token: str, fencing_token: int | str = 1) -> list[str]:
    """A well-formed ARGV for *script* that the owner of *token* (whose claim answered
    *fencing_token*) may send, on a record in ``idle``."""
    builders: dict[str, Callable[[], list[str]]] = {
        "claim": lambda: claim_args(token),
        "heartbeat": lambda: heartbeat_args(token),
        "transition": lambda: transition_args(token, "starting"),
        "update": lambda: update_args(token),
        "record_error": lambda: record_error_args(token),
        "deregister": lambda: deregister_args(token, fencing_token),
        "force_release": force_release_args,
    }
    return builders[script]()


@dataclass(frozen=True)
class Owner:
    """A claimed resource: the owner's secret token and the fencing token it got."""

    res: Resource
    token: str
    fencing_token: int
    instance_id: str


def client_commands(watcher: redis.Redis, action: Callable[[], object]) -> tuple[list[str], list[str]]:
    """Run *action* under MONITOR; return (commands sent by clients, commands run inside scripts).

    *watcher* must be a client of the same server that *action* does not use, allowed MONITOR (an
    admin): its own commands (the end marker, and a HELLO if it opens a connection) are left out.
    """
    marker = "contract-end-" + secrets.token_hex(4)
    seen: list[dict[str, Any]] = []
    with watcher.monitor() as monitor:
        action()
        watcher.echo(marker)
        while True:
            cmd = monitor.next_command()
            if cmd["client_type"] != "lua" and cmd["command"] == f"ECHO {marker}":
                watcher_port = cmd["client_port"]
                break
            seen.append(cmd)
    sent = [c["command"] for c in seen if c["client_type"] != "lua" and c["client_port"] != watcher_port]
    inside = [c["command"] for c in seen if c["client_type"] == "lua"]
    return sent, inside
