"""redis-py's own ``Lock`` (``redis.asyncio.lock.Lock``, ``timeout=TTL``, ``blocking=False``)
for ownership, plus separate, unchecked status writes, as a quick do-it-yourself registry:

* **claim**: ``lock.acquire()`` (``SET lock token NX PX``); then ``HSET`` the status record;
* **heartbeat**: ``lock.extend(TTL, replace_ttl=True)`` (its Lua script checks the token); then
  ``HSET lastHeartbeat``;
* **transition**: validated in memory, then ``HSET connectionState …``: no ownership or state
  check in Redis, no activity log;
* **release**: ``DEL`` the status record, then ``lock.release()`` (its Lua script checks the token).

The lock's token is a random UUID, not a fencing token.
"""

from __future__ import annotations

import redis.asyncio as aredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError

from .base import TTL, Lost, check_edge, iso_now


class LockHandle:
    fencing_token: int | None = None

    def __init__(self, client: aredis.Redis, lock: Lock, status: str) -> None:
        self.client = client
        self.lock = lock
        self.status = status
        self.state = "idle"

    async def heartbeat(self) -> None:
        try:
            await self.lock.extend(TTL, replace_ttl=True)
        except LockNotOwnedError as exc:
            raise Lost("not owned") from exc
        await self.client.hset(self.status, "lastHeartbeat", iso_now())

    async def transition(self, to: str) -> None:
        check_edge(self.state, to)
        now = iso_now()
        fields = {"connectionState": to, "lastStateChange": now}
        if to == "active":
            fields["connectedAt"] = now
        await self.client.hset(self.status, mapping=fields)  # type: ignore[arg-type]
        self.state = to

    async def release(self) -> None:
        await self.client.delete(self.status)
        try:
            await self.lock.release()
        except LockNotOwnedError as exc:
            raise Lost("not owned") from exc


class RedisLock:
    name = "redis-lock"

    def __init__(self, client: aredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    async def claim(self, rid: int, worker: int) -> LockHandle | None:
        base = f"{self.namespace}:{{{rid + 1}}}:"
        lock = Lock(self.client, base + "lock", timeout=TTL, blocking=False, thread_local=False)
        if not await lock.acquire():
            return None
        now = iso_now()
        status = base + "status"
        record = {
            "exchangeId": rid + 1,
            "exchangeName": f"Exchange{rid + 1}",
            "hostname": "bench",
            "connectionState": "idle",
            "symbolCount": 0,
            "lastHeartbeat": now,
            "lastStateChange": now,
            "registeredAt": now,
        }
        await self.client.hset(status, mapping=record)  # type: ignore[arg-type]
        return LockHandle(self.client, lock, status)

    async def close(self) -> None:
        return None
