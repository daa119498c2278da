"""The "set-full" canary of the chaos run: a protected resource that checks fencing tokens.

Owners add unique items to one set per resource while they believe they hold its lease. The
store lives on its own private ``redis-server`` that is never faulted, so anything odd in it
comes from the owners, not from the store.

* **Fenced** (:meth:`FencedStore.add`): one Lua script accepts the item only if the writer's
  token is ``>= max_seen`` of the resource, then sets ``max_seen = token`` (Kleppmann's rule,
  etcd's ``contrib/lock`` demo). Accepted adds are appended to an acceptance log in the same
  script, so the checker sees the order in which the store accepted them.
* **Unfenced** (:meth:`FencedStore.add_unfenced`): a plain ``SADD`` (plus the same acceptance
  log, in one ``MULTI``) that accepts everything; the comparison shows what fencing prevents.

Tokens are compared as decimal strings (length first), so values beyond 2**53 stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

#: KEYS: max_seen, members, log. ARGV: token (decimal, no sign or leading zero), item.
#: Reply: {1, previous max_seen or ""} accepted (or already accepted: a retry), {0, max_seen} rejected.
FENCED_ADD = """
local tok, item = ARGV[1], ARGV[2]
if not string.find(tok, '^[1-9]%d*$') and tok ~= '0' then
  return redis.error_reply('ERR fenced-store: the token must be a decimal integer')
end
if redis.call('SISMEMBER', KEYS[2], item) == 1 then return {1, 'retry'} end
local max = redis.call('GET', KEYS[1])
if max and (#tok < #max or (#tok == #max and tok < max)) then return {0, max} end
redis.call('SET', KEYS[1], tok)
redis.call('SADD', KEYS[2], item)
redis.call('RPUSH', KEYS[3], tok .. ' ' .. item)
return {1, max or ''}
"""


@dataclass
class StoreContents:
    """What the store holds for one resource at the end of a run."""

    fenced_members: set[str] = field(default_factory=set)
    #: ``(token, item)`` in the order the fenced script accepted them.
    fenced_log: list[tuple[int, str]] = field(default_factory=list)
    fenced_max_seen: int | None = None
    unfenced_members: set[str] = field(default_factory=set)
    unfenced_log: list[tuple[int, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "fenced_members": sorted(self.fenced_members),
            "fenced_log": [list(x) for x in self.fenced_log],
            "fenced_max_seen": self.fenced_max_seen,
            "unfenced_members": sorted(self.unfenced_members),
            "unfenced_log": [list(x) for x in self.unfenced_log],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> StoreContents:
        def log(name: str) -> list[tuple[int, str]]:
            raw = data.get(name) or []
            assert isinstance(raw, list)
            return [(int(t), str(i)) for t, i in raw]

        fenced = data.get("fenced_members") or []
        unfenced = data.get("unfenced_members") or []
        max_seen = data.get("fenced_max_seen")
        assert isinstance(fenced, list)
        assert isinstance(unfenced, list)
        return cls(
            fenced_members={str(x) for x in fenced},
            fenced_log=log("fenced_log"),
            fenced_max_seen=int(str(max_seen)) if max_seen is not None else None,
            unfenced_members={str(x) for x in unfenced},
            unfenced_log=log("unfenced_log"),
        )


def _parse_log(raw: list[bytes]) -> list[tuple[int, str]]:
    out = []
    for line in raw:
        token, item = line.decode().split(" ", 1)
        out.append((int(token), item))
    return out


class FencedStore:
    """A client of the store server (one per worker process, and one for the runner)."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "store",
        socket_timeout: float = 1.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = redis.Redis.from_url(
            url,
            username=username,
            password=password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1),
        )
        self.namespace = namespace
        self._add = self.client.register_script(FENCED_ADD)

    def _keys(self, variant: str, resource: str) -> tuple[str, str, str]:
        base = f"{self.namespace}:{variant}:{{{resource}}}:"
        return base + "max", base + "members", base + "log"

    def add(self, resource: str, item: str, token: int) -> bool:
        """Add *item* under fencing *token*; True if accepted, False if fenced off.

        Raises ``redis.RedisError`` when the outcome is unknown (the add may have been applied).
        """
        reply = self._add(keys=self._keys("fenced", resource), args=[str(token), item])
        return int(reply[0]) == 1

    def add_unfenced(self, resource: str, item: str, token: int) -> None:
        """Add *item* with no token check (the token is only recorded in the acceptance log)."""
        _, members, log = self._keys("unfenced", resource)
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(members, item)
        pipe.rpush(log, f"{token} {item}")
        pipe.execute()

    def contents(self, resource: str) -> StoreContents:
        fmax, fmembers, flog = self._keys("fenced", resource)
        _, umembers, ulog = self._keys("unfenced", resource)
        pipe = self.client.pipeline(transaction=True)
        pipe.smembers(fmembers)
        pipe.lrange(flog, 0, -1)
        pipe.get(fmax)
        pipe.smembers(umembers)
        pipe.lrange(ulog, 0, -1)
        fm, fl, mx, um, ul = pipe.execute()
        return StoreContents(
            fenced_members={x.decode() for x in fm},
            fenced_log=_parse_log(fl),
            fenced_max_seen=int(mx) if mx is not None else None,
            unfenced_members={x.decode() for x in um},
            unfenced_log=_parse_log(ul),
        )

    def close(self) -> None:
        self.client.close()
