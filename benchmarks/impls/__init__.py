"""The implementations compared by the contention benchmark, one module each (see ``base``)."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aredis

from .base import Impl
from .livermore import Livermore
from .redis_lock import RedisLock
from .seed import Seed, SeedMultiHost
from .watch_multi import WatchMulti

#: name -> class. ``seed`` runs every worker under this machine's hostname (its same-hostname
#: self-reclaim then lets workers take each other's resources); ``seed-multihost`` gives each
#: worker its own hostname, as if each ran on its own machine: the seed's logic at its best.
IMPLS: dict[str, Callable[[aredis.Redis, str], Impl]] = {
    Livermore.name: Livermore,
    Seed.name: Seed,
    WatchMulti.name: WatchMulti,
    RedisLock.name: RedisLock,
    SeedMultiHost.name: SeedMultiHost,
}
DEFAULT_IMPLS = tuple(IMPLS)
