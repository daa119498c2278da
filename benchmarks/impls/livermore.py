"""pylivermore itself, through its public asyncio API only (one ``AsyncRegistry`` per worker
process, so one background heartbeat task per process, as a real worker process would have).

Whatever the library does inside (scripts, batching) is measured as it is: this module only
calls ``claim``, ``transition``, ``heartbeat`` and ``release``.
"""

from __future__ import annotations

import redis.asyncio as aredis

from pylivermore import AsyncLease, AsyncRegistry, ClaimConflictError, LeaseLostError

from .base import TTL, Lost


class LivermoreHandle:
    def __init__(self, lease: AsyncLease) -> None:
        self.lease = lease
        self.fencing_token: int | None = lease.fencing_token

    async def transition(self, to: str) -> None:
        try:
            await self.lease.transition(to)
        except LeaseLostError as exc:
            raise Lost(exc.reason) from exc

    async def heartbeat(self) -> None:
        try:
            await self.lease.heartbeat()
        except LeaseLostError as exc:
            raise Lost(exc.reason) from exc

    async def release(self) -> None:
        if not await self.lease.release():
            raise Lost(self.lease.lost_reason or "not released")


class Livermore:
    name = "pylivermore"

    def __init__(self, client: aredis.Redis, namespace: str) -> None:
        # The background heartbeat would renew every TTL / 3 s; the benchmark's lifecycles last
        # milliseconds and renew explicitly, as every implementation does.
        self.registry = AsyncRegistry(
            client, namespace=namespace, ttl=TTL, heartbeat_interval=TTL / 3, renew_deadline=TTL * 0.8
        )

    async def claim(self, rid: int, worker: int) -> LivermoreHandle | None:
        try:
            lease = await self.registry.claim(rid + 1, f"Exchange{rid + 1}")
        except ClaimConflictError:
            return None
        return LivermoreHandle(lease)

    async def close(self) -> None:
        await self.registry.close()
