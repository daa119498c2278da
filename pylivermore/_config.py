"""Registry configuration and the registry-level half of the protocol, without I/O."""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from redis.backoff import ExponentialBackoff

from . import _protocol as proto
from ._keys import Keys, check_id, check_namespace, check_text, python_id, status_pattern
from ._lease import LeaseCore, LeaseSettings
from ._states import State, build_table
from .errors import ClaimConflictError, CorruptStatusError, NotReplicatedError
from .models import ActivityEntry, InstanceStatus, decode_entry, decode_status, text_dict

logger = logging.getLogger("pylivermore.registry")

#: ``maxmemory-policy`` values under which Redis never evicts a lease key.
SAFE_POLICIES = frozenset({"noeviction"})
DAY = 86400.0


def client_options(retry_class: Callable[..., Any]) -> dict[str, Any]:
    """What ``from_url`` passes to redis-py unless told otherwise: bounded socket timeouts and a
    short retry policy (redis-py's default, 10 retries of 5 s timeouts, outlasts any lease)."""
    return {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        # No health_check_interval: its PING is retried inside each command's retries, which
        # multiplies the attempts (and the time a call can block on a slow link).
        "retry": retry_class(ExponentialBackoff(cap=0.5, base=0.05), 2),
    }


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class PendingClaim:
    wire_id: str
    exchange_name: str
    keys: Keys
    token: str
    call: proto.Call


class RegistryConfig:
    """Validated options of a registry plus everything it decides without I/O."""

    def __init__(
        self,
        *,
        namespace: str = "exchange",
        ttl: float = 45.0,
        heartbeat_interval: float = 15.0,
        renew_deadline: float = 30.0,
        log_retention: float = 90 * DAY,
        transitions: Mapping[State | str, Iterable[State | str]] | None = None,
        instance_id: str | None = None,
        hostname: str | None = None,
        transport: str = "scripts",
    ) -> None:
        self.namespace = check_namespace(namespace)
        if transport not in proto.TRANSPORTS:
            raise ValueError(
                "transport must be 'scripts' (EVALSHA, any supported server) or 'functions' "
                f"(FCALL of the pylivermore library, Redis >= 7.0 or Valkey), not {transport!r}"
            )
        #: ``scripts``: every call is an ``EVALSHA``; ``functions``: an ``FCALL`` (see :mod:`._library`).
        self.transport: proto.Transport = "functions" if transport == "functions" else "scripts"
        self.ttl = _seconds("ttl", ttl)
        self.heartbeat_interval = _seconds("heartbeat_interval", heartbeat_interval)
        self.renew_deadline = _seconds("renew_deadline", renew_deadline)
        if not self.ttl > self.renew_deadline > 1.2 * self.heartbeat_interval:
            raise ValueError(
                "need ttl > renew_deadline > 1.2 * heartbeat_interval (got "
                f"ttl={ttl}, renew_deadline={renew_deadline}, heartbeat_interval={heartbeat_interval}); "
                "the defaults are 45, 30 and 15 seconds"
            )
        if not 0.01 <= self.ttl <= DAY:
            raise ValueError(f"ttl must be between 0.01 and 86400 seconds, not {ttl}")
        retention = (
            0.0
            if log_retention == 0 and not isinstance(log_retention, bool)
            else _seconds("log_retention", log_retention)
        )
        # The contract's floor (lua/README.md): no call may trim history younger than a day; 0 keeps none.
        if retention != 0 and not DAY <= retention <= 3650 * DAY:
            raise ValueError(
                f"log_retention must be 0 (no history) or between 1 day (86400 s) and 3650 days, not {log_retention}"
            )
        table, table_wire = build_table(transitions)
        self.hostname = check_text(
            "hostname", hostname if hostname is not None else socket.gethostname() or "unknown", 1, 255
        )
        self.instance_id = check_text(
            "instance_id",
            instance_id if instance_id is not None else f"{self.hostname}:{os.getpid()}:{secrets.token_hex(3)}",
            1,
            255,
        )
        self.lease_settings = LeaseSettings(
            ttl_ms=round(self.ttl * 1000),
            heartbeat_interval=self.heartbeat_interval,
            renew_deadline=self.renew_deadline,
            retention_ms=round(retention * 1000),
            table=dict(table),
            table_wire=table_wire,
        )
        # Each heartbeat attempt is bounded so that a slow or unreachable server cannot hold
        # the loop past the deadline (a client's own retry policy is not used for heartbeats).
        # Bounded also by half the margin ttl - renew_deadline, so that a loss noticed at the end of
        # a blocked attempt is still reported before the server can expire the record.
        # The heartbeat loop renews, with each wake-up, the leases due within this much time too,
        # so that leases claimed close together share renewal calls instead of each waking it.
        self.renew_ahead = self.heartbeat_interval / 10
        self.heartbeat_timeout = min(
            self.heartbeat_interval / 2,
            (self.renew_deadline - self.heartbeat_interval) / 2,
            (self.ttl - self.renew_deadline) / 2,
        )

    def keys(self, exchange_id: int | str) -> tuple[str, Keys]:
        wire_id = check_id(exchange_id)
        return wire_id, Keys(self.namespace, wire_id)

    @property
    def status_pattern(self) -> str:
        return status_pattern(self.namespace)

    # -- claim -----------------------------------------------------------------------------

    def claim(self, exchange_id: int | str, exchange_name: str, reclaim: bool) -> PendingClaim:
        wire_id, keys = self.keys(exchange_id)
        check_text("exchange_name", exchange_name, 1, 128)
        if not isinstance(reclaim, bool):
            raise TypeError("reclaim must be a bool")
        token = secrets.token_hex(16)
        s = self.lease_settings
        call = proto.claim_call(
            keys,
            token,
            s.ttl_ms,
            wire_id,
            exchange_name,
            self.hostname,
            self.instance_id,
            reclaim,
            s.retention_ms,
            s.table_wire,
        )
        return PendingClaim(wire_id, exchange_name, keys, token, call)

    @staticmethod
    def durability(replicas: int, replica_timeout: float) -> tuple[int, int] | None:
        """``(replicas, timeout in ms)`` of a durable claim (``WAIT`` after the claim), ``None`` for a plain one."""
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise TypeError(f"replicas must be an int, not {type(replicas).__name__}")
        if not 0 <= replicas <= 64:
            raise ValueError(f"replicas must be from 0 (do not wait) to 64, not {replicas}")
        timeout = _seconds("replica_timeout", replica_timeout)
        if timeout > 600:
            raise ValueError(f"replica_timeout must be at most 600 seconds, not {replica_timeout}")
        return (replicas, max(1, round(timeout * 1000))) if replicas else None

    @staticmethod
    def replication_error(wire_id: str, acknowledged: object, durable: tuple[int, int]) -> NotReplicatedError | None:
        """The error of a durable claim that *acknowledged* (``WAIT``'s reply) does not satisfy."""
        replicas, timeout_ms = durable
        if isinstance(acknowledged, int) and not isinstance(acknowledged, bool) and acknowledged >= replicas:
            return None
        count = acknowledged if isinstance(acknowledged, int) and not isinstance(acknowledged, bool) else -1
        return NotReplicatedError(wire_id, replicas, count, timeout_ms / 1000)

    @overload
    def claimed(
        self, pending: PendingClaim, reply: object, sent_at: float, quiet: Literal[False] = False
    ) -> LeaseCore: ...
    @overload
    def claimed(self, pending: PendingClaim, reply: object, sent_at: float, quiet: bool) -> LeaseCore | None: ...
    def claimed(self, pending: PendingClaim, reply: object, sent_at: float, quiet: bool = False) -> LeaseCore | None:
        """The new lease's core; on conflict raises :class:`~pylivermore.ClaimConflictError`, or
        with *quiet* answers ``None``."""
        observer = self.lease_settings.observer
        try:
            claimed = proto.parse_claim(reply, pending.keys, pending.wire_id, quiet)
        except ClaimConflictError:
            if observer is not None:
                observer.conflict()
            raise
        if claimed is None:
            if observer is not None:
                observer.conflict()
            return None
        if observer is not None:
            observer.claimed()
        fencing_token, how = claimed
        logger.info("claimed exchange %s (fencing token %d, %s)", pending.wire_id, fencing_token, how)
        return LeaseCore(
            self.lease_settings,
            python_id(pending.wire_id),
            pending.exchange_name,
            pending.keys,
            pending.token,
            fencing_token,
            sent_at,
        )

    # -- readers -----------------------------------------------------------------------------

    def decode_status(self, raw: Mapping[bytes | str, bytes | str], keys: Keys) -> InstanceStatus | None:
        return decode_status(text_dict(raw), keys.status) if raw else None

    def decode_activity(self, raw: Iterable[tuple[object, object]] | None, keys: Keys) -> list[ActivityEntry]:
        out = []
        for entry_id, fields in raw or ():
            if not isinstance(entry_id, bytes | str) or not isinstance(fields, Mapping):
                raise CorruptStatusError(keys.log, f"unreadable log entry {entry_id!r}")
            out.append(decode_entry(entry_id, text_dict(fields), keys.log))
        return out

    def decode_listing(self, keys: Sequence[bytes | str], raws: Sequence[object]) -> list[InstanceStatus]:
        """Decode SCAN + HGETALL results; records that expired meanwhile are skipped, corrupt ones logged."""
        out: list[InstanceStatus] = []
        for key, raw in zip(keys, raws, strict=True):
            name = key.decode() if isinstance(key, bytes) else key
            if isinstance(raw, Exception) or not isinstance(raw, Mapping):
                logger.warning("skipping %s: %s", name, raw)
                continue
            try:
                status = decode_status(text_dict(raw), name) if raw else None
            except CorruptStatusError as exc:
                logger.warning("skipping corrupt record: %s", exc)
                continue
            if status is not None:
                out.append(status)
        out.sort(key=lambda s: str(s.exchange_id))
        return out

    @staticmethod
    def activity_count(count: int) -> int:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10000:
            raise ValueError(f"count must be an int from 1 to 10000, not {count!r}")
        return count

    def force_release(self, exchange_id: int | str, reason: str, operator: str | None) -> tuple[Keys, proto.Call]:
        _, keys = self.keys(exchange_id)
        check_text("reason", reason, 1, 1024, lines=True)
        who = check_text("operator", operator if operator is not None else self.instance_id, 1, 255)
        return keys, proto.force_release_call(keys, reason, who, self.lease_settings.retention_ms)

    def read_error(self, exc: Exception, key: str) -> Exception:
        """A WRONGTYPE from a plain read becomes a :class:`CorruptStatusError`; others pass."""
        if "WRONGTYPE" in str(exc):
            return CorruptStatusError(key, "the key holds a value of the wrong Redis type")
        return exc

    @staticmethod
    def eviction_warning(policy: str | None, server: str | None = None) -> str | None:
        if policy is None or policy in SAFE_POLICIES:
            return None
        where = f"the Redis server {server}" if server else "the Redis server"
        return (
            f"{where}'s maxmemory-policy is {policy!r}: under memory pressure it may evict "
            "lease keys (they carry a TTL) and let a second owner claim a live resource; "
            "set maxmemory-policy to noeviction"
        )

    @staticmethod
    def eviction_warnings(reply: Mapping[str, Any], per_node: bool) -> list[str]:
        """A warning for each server whose policy may evict lease keys, from ``INFO memory``
        (with *per_node*, a cluster's reply: one INFO per master, keyed by node name)."""
        infos: Mapping[str, Any] = reply if per_node else {"": reply}
        out = []
        for node, info in sorted(infos.items()):
            policy = info.get("maxmemory_policy") if isinstance(info, Mapping) else None
            text = policy.decode() if isinstance(policy, bytes) else policy
            warning = RegistryConfig.eviction_warning(text, node or None)
            if warning:
                out.append(warning)
        return out
