"""A faithful Python port of the seed's original registry logic (SPEC §2), for the chaos run.

It exists to prove that the chaos checker catches the seed's known weaknesses; do not use it
for anything else. What it does, round trip by round trip, as the original TypeScript did:

* status key ``seed:<id>:status`` holds the whole JSON document, with a TTL;
* **claim**: ``SET key doc PX ttl NX``; on failure ``GET`` + ``TTL``; if the holder has the same
  *hostname*, overwrite it (self-reclaim, weakness #2: every worker of a chaos run shares one
  hostname, as processes on one machine do), else raise a conflict (weakness #3: up to five
  round trips with races between them);
* **heartbeat** (a background thread, never raises): ``SET key doc PX ttl XX`` from the in-memory
  document; if the key vanished, re-create it from memory (weakness #1: no ownership check);
* **transitions** are validated in memory only, then the whole document is rewritten with
  ``SET … KEEPTTL`` (weakness #4);
* the **activity log** (``logs:network:<name>``) is written fire-and-forget by a background
  thread, separately from the change it describes (weakness #5); timestamps come from this
  process's clock (weakness #6);
* **deregister**: stop the heartbeat, ``DEL`` the key (whoever holds it);
* **fencing token**: the seed had none (weakness #7). For comparison, this port takes a naive
  ``INCR seed:<id>:fence`` per claim, which starts again at 1 when Redis loses its data.

Deviations, all for observability or scaled timings, none of them a fix: ``PX`` instead of ``EX``
(the chaos TTL is 1.5 s, ``EX`` takes whole seconds); the document carries ``fencingToken`` and
``instanceId``; besides the seed's ``state_transition`` and ``error`` events the log also gets
``claim`` and ``deregister`` events, and every entry carries ``fencingToken`` and ``instanceId``, a
transition or error entry also the lease's ``seq`` (a per-lease counter of this process, a label
only: nothing checks it), with the same field names as pylivermore's log (contract v2) so that one
checker reads both.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import queue
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis

#: The seed's lifecycle table (SPEC §2).
SEED_TRANSITIONS: dict[str, frozenset[str]] = {
    "idle": frozenset({"starting"}),
    "starting": frozenset({"warming", "stopping", "idle"}),
    "warming": frozenset({"active", "stopping", "idle"}),
    "active": frozenset({"stopping"}),
    "stopping": frozenset({"stopped"}),
    "stopped": frozenset({"idle"}),
}
NINETY_DAYS_MS = 90 * 86400 * 1000


class SeedConflictError(Exception):
    """Another host holds the resource (the seed's "Stop that instance first" error)."""

    def __init__(self, exchange_id: str, holder: dict[str, Any] | None, ttl: int) -> None:
        super().__init__(exchange_id, holder, ttl)
        self.exchange_id = exchange_id
        self.holder = holder
        self.ttl = ttl

    def __str__(self) -> str:
        host = (self.holder or {}).get("hostname", "another instance")
        return (
            f"exchange {self.exchange_id} is already claimed by {host}. Stop that instance first, "
            f"or wait for TTL to expire ({self.ttl} s remaining)."
        )


class SeedInvalidTransitionError(Exception):
    """The in-memory state does not allow the transition."""


class SeedNotHeldError(Exception):
    """The lease was released by this process (the seed's only notion of not holding)."""


def _iso_now() -> str:
    """This process's wall clock (weakness #6), ISO-8601 UTC with milliseconds, as the seed."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _wall_ms() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


class _LogWriter:
    """Fire-and-forget XADDs on a background thread: errors are swallowed, a full queue drops."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._queue: queue.Queue[tuple[str, dict[str, str]] | None] = queue.Queue(maxsize=10000)
        self._thread = threading.Thread(target=self._loop, name="seed-log", daemon=True)
        self._thread.start()

    def send(self, stream: str, fields: dict[str, str]) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((stream, fields))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stream, fields = item
            with contextlib.suppress(Exception):  # fire-and-forget, as the seed's unawaited promise
                self._client.xadd(stream, fields, minid=str(_wall_ms() - NINETY_DAYS_MS), approximate=True)  # type: ignore[arg-type]

    def close(self, timeout: float = 1.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)


def _default_observe(lease: SeedLease, beat: Callable[[], str]) -> object:
    return beat()


class SeedRegistry:
    """The seed's registry: claim resources, renew them from a background timer."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl: float = 45.0,
        heartbeat_interval: float = 15.0,
        hostname: str | None = None,
        instance_id: str | None = None,
        prefix: str = "seed",
        observe_heartbeat: Callable[[SeedLease, Callable[[], str]], object] = _default_observe,
    ) -> None:
        self.client = client
        self.ttl_ms = round(ttl * 1000)
        self.heartbeat_interval = heartbeat_interval
        self.hostname = hostname or socket.gethostname()
        self.instance_id = instance_id or f"{self.hostname}:{secrets.token_hex(3)}"
        self.prefix = prefix
        self._observe = observe_heartbeat
        self._log = _LogWriter(client)
        self._leases: list[SeedLease] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._heartbeat_loop, name="seed-heartbeat", daemon=True)
        self._timer.start()

    def status_key(self, exchange_id: str) -> str:
        return f"{self.prefix}:{exchange_id}:status"

    def fence_key(self, exchange_id: str) -> str:
        return f"{self.prefix}:{exchange_id}:fence"

    @staticmethod
    def log_key(exchange_name: str) -> str:
        return f"logs:network:{exchange_name.lower()}"

    def claim(self, exchange_id: str, exchange_name: str) -> SeedLease:
        key = self.status_key(exchange_id)
        token = int(self.client.incr(self.fence_key(exchange_id)))
        now = _iso_now()
        doc: dict[str, Any] = {
            "exchangeId": int(exchange_id) if exchange_id.isdigit() else exchange_id,
            "exchangeName": exchange_name,
            "hostname": self.hostname,
            "ipAddress": None,
            "countryCode": None,
            "adminEmail": None,
            "adminDisplayName": None,
            "connectionState": "idle",
            "symbolCount": 0,
            "connectedAt": None,
            "lastHeartbeat": now,
            "lastStateChange": now,
            "registeredAt": now,
            "lastError": None,
            "lastErrorAt": None,
            "fencingToken": token,
            "instanceId": self.instance_id,
        }
        how = "new"
        if not self.client.set(key, json.dumps(doc), px=self.ttl_ms, nx=True):
            raw = self.client.get(key)
            remaining = int(self.client.ttl(key))
            holder = json.loads(raw) if raw is not None else None
            if holder is None or holder.get("hostname") != self.hostname:
                raise SeedConflictError(exchange_id, holder, max(remaining, 0))
            self.client.set(key, json.dumps(doc), px=self.ttl_ms)  # self-reclaim: same hostname
            how = "reclaim"
        lease = SeedLease(self, exchange_id, exchange_name, doc, token)
        self.log(lease, "claim", ttlMs=str(self.ttl_ms), how=how)
        with self._lock:
            self._leases.append(lease)
        return lease

    def log(self, lease: SeedLease, event: str, **fields: str) -> None:
        doc = lease.doc
        entry = {
            "event": event,
            "timestamp": _iso_now(),
            "exchangeId": str(doc["exchangeId"]),
            "exchangeName": doc["exchangeName"],
            "hostname": doc["hostname"],
            "ip": doc["ipAddress"] or "",
            "fencingToken": str(lease.fencing_token),
            "instanceId": self.instance_id,
            **fields,
        }
        self._log.send(self.log_key(lease.exchange_name), entry)

    def discard(self, lease: SeedLease) -> None:
        with self._lock:
            if lease in self._leases:
                self._leases.remove(lease)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            with self._lock:
                leases = list(self._leases)
            for lease in leases:
                with contextlib.suppress(Exception):  # a heartbeat never throws
                    self._observe(lease, lease.heartbeat)

    def close(self) -> None:
        self._stop.set()
        self._timer.join(timeout=2)
        self._log.close()


class SeedLease:
    """What the seed's process keeps in memory about one resource it believes it holds."""

    def __init__(
        self, registry: SeedRegistry, exchange_id: str, exchange_name: str, doc: dict[str, Any], token: int
    ) -> None:
        self.registry = registry
        self.exchange_id = exchange_id
        self.exchange_name = exchange_name
        self.doc = doc
        self.fencing_token = token
        self._held = True
        self._seq = 0

    @property
    def state(self) -> str:
        return str(self.doc["connectionState"])

    @property
    def is_valid(self) -> bool:
        """The seed's only notion of validity: "I think I hold it" (until this process releases)."""
        return self._held

    def ensure_held(self) -> None:
        if not self._held:
            raise SeedNotHeldError(self.exchange_id)

    def _key(self) -> str:
        return self.registry.status_key(self.exchange_id)

    def next_seq(self) -> int:
        """The label of this lease's next transition or error entry (1, 2, ...)."""
        self._seq += 1
        return self._seq

    def heartbeat(self) -> str:
        """``SET … XX`` from memory; re-create the key from memory if it vanished."""
        self.doc["lastHeartbeat"] = _iso_now()
        payload = json.dumps(self.doc)
        if self.registry.client.set(self._key(), payload, px=self.registry.ttl_ms, xx=True):
            return "renewed"
        self.registry.client.set(self._key(), payload, px=self.registry.ttl_ms)
        return "recreated"

    def transition(self, to: str, *, seq: int | None = None) -> str:
        """Validate in memory, rewrite the whole document (``KEEPTTL``), log fire-and-forget."""
        current = self.state
        if to not in SEED_TRANSITIONS.get(current, frozenset()):
            raise SeedInvalidTransitionError(f"{self.exchange_id}: {current} -> {to} is not allowed")
        now = _iso_now()
        self.doc["connectionState"] = to
        self.doc["lastStateChange"] = now
        if to == "active":
            self.doc["connectedAt"] = now
        self.registry.client.set(self._key(), json.dumps(self.doc), keepttl=True)
        self.registry.log(
            self,
            "state_transition",
            fromState=current,
            toState=to,
            adminEmail=self.doc["adminEmail"] or "",
            seq=str(seq if seq is not None else self.next_seq()),
        )
        return to

    def record_error(self, message: str) -> None:
        """From memory; never creates a key for an instance that never registered."""
        if not self._held:
            return
        self.doc["lastError"] = message
        self.doc["lastErrorAt"] = _iso_now()
        self.registry.client.set(self._key(), json.dumps(self.doc), keepttl=True)
        self.registry.log(self, "error", error=message, state=self.state, seq=str(self.next_seq()))

    def release(self) -> bool:
        """Stop the heartbeat and ``DEL`` the key; True if a key was deleted (anyone's)."""
        self._held = False
        self.registry.discard(self)
        deleted = int(self.registry.client.delete(self._key())) > 0
        self.registry.log(self, "deregister", state=self.state)
        return deleted
