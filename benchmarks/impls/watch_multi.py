"""The same operations as pylivermore, done the classic optimistic way: ``WATCH`` the keys, read
and check on the client, then write in ``MULTI``/``EXEC``; on ``WatchError`` (someone wrote a
watched key in between) start over. Same key layout and record as pylivermore (a hash with a
TTL, a stream log, a fence counter), same checks, same answers:

* **claim**: ``WATCH status fence``; ``HGETALL status`` -- if held, ``PTTL`` (the holder's
  record and remaining TTL, as pylivermore's conflict reply) and give up; else ``GET fence``,
  then ``MULTI`` ``HSET`` record, ``PEXPIRE``, ``SET fence last+1``, ``XADD`` claim ``EXEC``;
* **heartbeat**: ``WATCH status``; ``HGET owner`` (absent: expired; another: taken);
  ``MULTI PEXPIRE HSET lastHeartbeat EXEC``;
* **transition**: ``WATCH status``; ``HMGET owner connectionState``; check ownership and the
  edge; ``MULTI HSET state… XADD EXEC``;
* **release**: ``WATCH status``; ``HMGET owner connectionState``; check; ``MULTI DEL XADD EXEC``.

Timestamps come from this process's clock (one round trip fewer than asking the server), and
the owner token is stored as is; pylivermore stores a digest and uses the server's clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aredis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from .base import TTL_MS, Lost, check_edge, iso_now, log_minid

T = TypeVar("T")
#: A transaction that keeps losing the race gives up (never seen with the benchmark's loads).
MAX_ATTEMPTS = 100


class WatchHandle:
    def __init__(self, impl: WatchMulti, rid: int, token: str, fencing_token: int) -> None:
        self.impl = impl
        self.exchange_id = rid + 1
        self.status, self.log, _ = impl.keys(rid)
        self.token = token.encode()
        self.fencing_token: int | None = fencing_token

    def _check_owner(self, owner: bytes | None) -> None:
        if owner is None:
            raise Lost("expired")
        if owner != self.token:
            raise Lost("taken")

    def _entry(self, event: str, **fields: str) -> dict[str, str]:
        return {
            "event": event,
            "timestamp": iso_now(),
            "exchangeId": str(self.exchange_id),
            "fencingToken": str(self.fencing_token),
            **fields,
        }

    async def heartbeat(self) -> None:
        async def attempt(pipe: Pipeline) -> None:
            await pipe.watch(self.status)
            self._check_owner(await pipe.hget(self.status, "owner"))
            pipe.multi()
            pipe.pexpire(self.status, TTL_MS)
            pipe.hset(self.status, "lastHeartbeat", iso_now())
            await pipe.execute()

        await self.impl.optimistic(attempt)

    async def transition(self, to: str) -> None:
        async def attempt(pipe: Pipeline) -> None:
            await pipe.watch(self.status)
            owner, current = await pipe.hmget(self.status, ["owner", "connectionState"])
            self._check_owner(owner)
            check_edge(current.decode(), to)
            now = iso_now()
            fields = {"connectionState": to, "lastStateChange": now}
            if to == "active":
                fields["connectedAt"] = now
            pipe.multi()
            pipe.hset(self.status, mapping=fields)  # type: ignore[arg-type]
            entry = self._entry("state_transition", fromState=current.decode(), toState=to)
            pipe.xadd(self.log, entry, minid=log_minid(), approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

        await self.impl.optimistic(attempt)

    async def release(self) -> None:
        async def attempt(pipe: Pipeline) -> None:
            await pipe.watch(self.status)
            owner, current = await pipe.hmget(self.status, ["owner", "connectionState"])
            self._check_owner(owner)
            pipe.multi()
            pipe.delete(self.status)
            pipe.xadd(self.log, self._entry("deregister", state=current.decode()), minid=log_minid(), approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

        await self.impl.optimistic(attempt)


class WatchMulti:
    name = "watch-multi"

    def __init__(self, client: aredis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.watch_errors = 0

    def keys(self, rid: int) -> tuple[str, str, str]:
        base = f"{self.namespace}:{{{rid + 1}}}:"
        return base + "status", base + "log", base + "fence"

    async def optimistic(self, attempt: Callable[[Pipeline], Awaitable[T]]) -> T:
        """Run *attempt* in a fresh WATCH pipeline until no watched key changed under it."""
        async with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    return await attempt(pipe)
                except WatchError:
                    self.watch_errors += 1
                    await pipe.reset()
        raise RuntimeError(f"WATCH transaction lost the race {MAX_ATTEMPTS} times in a row")

    async def claim(self, rid: int, worker: int) -> WatchHandle | None:
        status, log, fence = self.keys(rid)
        token = secrets.token_hex(16)

        async def attempt(pipe: Pipeline) -> int | None:
            await pipe.watch(status, fence)
            if await pipe.hgetall(status):
                await pipe.pttl(status)  # the holder's record and remaining TTL, as a conflict reply
                return None
            last = await pipe.get(fence)
            fencing_token = int(last or 0) + 1
            now = iso_now()
            record: dict[str, Any] = {
                "exchangeId": rid + 1,
                "exchangeName": f"Exchange{rid + 1}",
                "hostname": "bench",
                "connectionState": "idle",
                "symbolCount": 0,
                "lastHeartbeat": now,
                "lastStateChange": now,
                "registeredAt": now,
                "fencingToken": fencing_token,
                "owner": token,
            }
            entry = {"event": "claim", "timestamp": now, "exchangeId": str(rid + 1), "fencingToken": str(fencing_token)}
            pipe.multi()
            pipe.hset(status, mapping=record)
            pipe.pexpire(status, TTL_MS)
            pipe.set(fence, fencing_token)
            pipe.xadd(log, entry, minid=log_minid(), approximate=True)  # type: ignore[arg-type]
            await pipe.execute()
            return fencing_token

        fencing_token = await self.optimistic(attempt)
        return None if fencing_token is None else WatchHandle(self, rid, token, fencing_token)

    async def close(self) -> None:
        return None
