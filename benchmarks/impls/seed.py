"""A faithful asyncio port of the seed's original registry logic (SPEC §2), round trip by round
trip, as the TypeScript original did it on ioredis:

* the status key ``<ns>:<id>:status`` holds the whole JSON document with a TTL;
* **claim**: ``SET key doc EX ttl NX``; on failure ``GET`` then ``TTL`` (the conflict message
  names the holder and the remaining TTL); if the holder has the *same hostname*, overwrite the
  key (self-reclaim), otherwise it is a conflict;
* **heartbeat**: ``SET key doc EX ttl XX`` from the in-memory document (``lastHeartbeat`` =
  now); if the key had vanished, re-create it from memory (``SET key doc EX ttl``);
* **transition**: validated against the state table in memory only, then the whole document is
  rewritten with ``SET … KEEPTTL``; the activity-log ``XADD`` is fire-and-forget (an unawaited
  task, as the original's unawaited promise), separately from the change;
* **deregister**: ``DEL`` the key (whoever holds it);
* timestamps from this process's clock; no fencing token, no claim or deregister log entry.

Every worker process of a run is on this machine, so by default they all share one hostname,
as processes on one host do: the same-hostname self-reclaim then lets them all "own" the same
resource at once, and the invariant check counts it. ``SeedMultiHost`` gives each worker a
hostname of its own, as if each ran on its own machine (no self-reclaim between workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import redis.asyncio as aredis

from .base import TTL, check_edge, iso_now, log_minid


class SeedHandle:
    fencing_token: int | None = None  # the seed had none

    def __init__(self, impl: Seed, key: str, log: str, doc: dict[str, Any]) -> None:
        self.impl = impl
        self.key = key
        self.log = log
        self.doc = doc

    async def heartbeat(self) -> None:
        """``SET … XX`` from memory; re-create the key from memory if it vanished. Never raises
        a loss: the seed had no notion of it."""
        self.doc["lastHeartbeat"] = iso_now()
        payload = json.dumps(self.doc)
        client = self.impl.client
        if not await client.set(self.key, payload, ex=TTL, xx=True):
            await client.set(self.key, payload, ex=TTL)

    async def transition(self, to: str) -> None:
        current = self.doc["connectionState"]
        check_edge(current, to)
        now = iso_now()
        self.doc["connectionState"] = to
        self.doc["lastStateChange"] = now
        if to == "active":
            self.doc["connectedAt"] = now
        await self.impl.client.set(self.key, json.dumps(self.doc), keepttl=True)
        self.impl.fire_and_forget(
            self.log,
            {
                "event": "state_transition",
                "timestamp": now,
                "exchangeId": str(self.doc["exchangeId"]),
                "exchangeName": self.doc["exchangeName"],
                "hostname": self.doc["hostname"],
                "ip": self.doc["ipAddress"] or "",
                "fromState": current,
                "toState": to,
                "adminEmail": self.doc["adminEmail"] or "",
            },
        )

    async def release(self) -> None:
        await self.impl.client.delete(self.key)


class Seed:
    name = "seed"

    def __init__(self, client: aredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.hostname = socket.gethostname() or "localhost"
        self._pending: set[asyncio.Task[Any]] = set()

    def hostname_of(self, worker: int) -> str:
        return self.hostname

    async def claim(self, rid: int, worker: int) -> SeedHandle | None:
        exchange_id = rid + 1
        key = f"{self.namespace}:{exchange_id}:status"
        log = f"{self.namespace}:logs:network:exchange{exchange_id}"
        hostname = self.hostname_of(worker)
        now = iso_now()
        doc: dict[str, Any] = {
            "exchangeId": exchange_id,
            "exchangeName": f"Exchange{exchange_id}",
            "hostname": hostname,
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
        }
        payload = json.dumps(doc)
        if not await self.client.set(key, payload, ex=TTL, nx=True):
            raw = await self.client.get(key)
            await self.client.ttl(key)  # for the conflict message's "N s remaining"
            holder = json.loads(raw) if raw is not None else None
            if holder is None or holder.get("hostname") != hostname:
                return None
            await self.client.set(key, payload, ex=TTL)  # self-reclaim: same hostname
        return SeedHandle(self, key, log, doc)

    def fire_and_forget(self, stream: str, fields: dict[str, str]) -> None:
        task = asyncio.ensure_future(self._xadd(stream, fields))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _xadd(self, stream: str, fields: dict[str, str]) -> None:
        with contextlib.suppress(Exception):  # an unawaited promise: errors go nowhere
            await self.client.xadd(stream, fields, minid=log_minid(), approximate=True)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2)


class SeedMultiHost(Seed):
    """The seed with one hostname per worker, as if every worker ran on its own machine."""

    name = "seed-multihost"

    def hostname_of(self, worker: int) -> str:
        return f"{self.hostname}-w{worker}"
