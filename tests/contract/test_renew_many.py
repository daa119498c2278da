"""``renew_many-n.lua`` by raw EVALSHA: many leases renewed in one call, each exactly as
``heartbeat-1.lua`` would renew it, and a bad call refused whole with nothing written."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis

from tests.support import iso_ms

from .conftest import Claim
from .helpers import (
    BAD_ARGS,
    TTL_MS,
    Owner,
    Resource,
    Snapshot,
    assert_recent_iso,
    assert_unchanged,
    expires_at,
    hgetall,
    new_token,
    server_now,
)

Scripts = Callable[[str, Sequence[str], Sequence[str]], Any]


def renew(call: Scripts, owners: Sequence[tuple[Resource, str]], ttl_ms: str = TTL_MS) -> list[list[str]]:
    """renew_many over (resource, token) pairs: KEYS = their status keys, ARGV = ttl, tokens.
    Returns its flat reply (word, data, word, data, ...) as one [word, data] pair per key."""
    reply = call("renew_many", [r.status for r, _ in owners], [ttl_ms, *(t for _, t in owners)])
    assert len(reply) == 2 * len(owners), reply
    return [reply[i : i + 2] for i in range(0, len(reply), 2)]


def test_each_key_gets_the_answer_heartbeat_would_give(
    call: Scripts,
    claim: Claim,
    make_resource: Callable[[], Resource],
    admin: redis.Redis,
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """One call over an owned record, a released one, one held by another owner, a damaged key
    and a second owned record: RENEWED (with the same fresh lastHeartbeat for both, and the TTL
    reset), EXPIRED (no key created), TAKEN (with the holder's fencing token) and CORRUPT, in
    the order of KEYS; the records that are not ours stay byte-identical."""
    mine1, gone, theirs, damaged, mine2 = (make_resource() for _ in range(5))
    a, b = claim(mine1), claim(mine2)
    other = claim(theirs)
    admin.set(damaged.status, "garbage")
    for r in (mine1, mine2):
        admin.pexpire(r.status, 5000)
    untouched = {r: snapshot(r) for r in (gone, theirs, damaged)}

    since = server_now(admin)
    reply = renew(
        call, [(mine1, a.token), (gone, new_token()), (theirs, new_token()), (damaged, new_token()), (mine2, b.token)]
    )

    assert [r[0] for r in reply] == ["RENEWED", "EXPIRED", "TAKEN", "CORRUPT", "RENEWED"]
    assert reply[1] == ["EXPIRED", ""]
    assert reply[2] == ["TAKEN", str(other.fencing_token)]
    assert reply[3][1]
    now = reply[0][1]
    assert_recent_iso(admin, now, since)
    assert reply[4][1] == now
    for r in (mine1, mine2):
        assert hgetall(admin, r.status)["lastHeartbeat"] == now
        at, slack = expires_at(admin, r.status)
        assert abs(at - iso_ms(now) - int(TTL_MS)) <= 2 + slack, "not renewed to the TTL"
    for r, before in untouched.items():
        assert_unchanged(before, snapshot(r))
    assert admin.exists(gone.status) == 0


def test_one_key_matches_heartbeat(call: Scripts, owner: Owner, admin: redis.Redis) -> None:
    """With one key, renew_many and heartbeat leave the same record (but lastHeartbeat) and answer alike."""
    by_heartbeat = call("heartbeat", [owner.res.status], [owner.token, TTL_MS])
    record = hgetall(admin, owner.res.status)
    (by_many,) = renew(call, [(owner.res, owner.token)])
    assert by_many[0] == by_heartbeat[0] == "RENEWED"
    again = hgetall(admin, owner.res.status)
    assert again["lastHeartbeat"] == by_many[1]
    assert {k: v for k, v in again.items() if k != "lastHeartbeat"} == {
        k: v for k, v in record.items() if k != "lastHeartbeat"
    }


BAD_TTLS = ["0", "-1", "9", "86400001", "inf", "nan", "1e3", "0x10", " 15", "15.5", ""]
BAD_TOKENS = ["short", "x" * 31, "x" * 129, "has space-in-it-1234567890abcdef", "tok/with/slash/0123456789abcdef0", ""]


@pytest.fixture
def two_owners(claim: Claim, make_resource: Callable[[], Resource], admin: redis.Redis) -> list[Owner]:
    """Two claimed resources whose TTL was cut to 5 s, so that a renewal would show."""
    owners = [claim(make_resource()) for _ in range(2)]
    for o in owners:
        admin.pexpire(o.res.status, 5000)
    return owners


def refused_whole(owners: Sequence[Owner], snapshot: Callable[[Resource], Snapshot], send: Callable[[], Any]) -> str:
    """*send* raises bad-args and leaves every owner's keys and TTL as they were; the error text."""
    before = [snapshot(o.res) for o in owners]
    with pytest.raises(redis.ResponseError, match=BAD_ARGS) as info:
        send()
    for o, snap in zip(owners, before, strict=True):
        assert_unchanged(snap, snapshot(o.res))
    return str(info.value)


@pytest.mark.parametrize("ttl_ms", BAD_TTLS)
def test_bad_ttl_refuses_the_whole_call(
    ttl_ms: str, call: Scripts, two_owners: list[Owner], snapshot: Callable[[Resource], Snapshot]
) -> None:
    """A TTL that is not an integer from 10 to 86400000 is bad-args; no record is touched."""
    refused_whole(two_owners, snapshot, lambda: renew(call, [(o.res, o.token) for o in two_owners], ttl_ms))


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_one_bad_token_refuses_the_whole_call(
    token: str,
    call: Scripts,
    two_owners: list[Owner],
    make_resource: Callable[[], Resource],
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """A malformed token anywhere in the call is bad-args naming its position; the valid owners
    before and after it are not renewed (every argument is checked before the first write)."""
    first, last = two_owners
    middle = make_resource()
    sent = [(first.res, first.token), (middle, token), (last.res, last.token)]
    assert "token 2 " in refused_whole(two_owners, snapshot, lambda: renew(call, sent))


@pytest.mark.parametrize(
    ("numkeys", "tokens"),
    [(0, 0), (1, 0), (1, 2), (2, 1)],
    ids=["no-keys", "no-token", "extra-token", "token-missing"],
)
def test_arity_is_checked(numkeys: int, tokens: int, scripts: Any, owner: Owner, admin: redis.Redis) -> None:
    """KEYS must be 1-1000 and ARGV exactly ttl_ms plus one token per key."""
    keys = [owner.res.status, f"{owner.res.namespace}:{{other}}:status"][:numkeys]
    admin.pexpire(owner.res.status, 5000)
    with pytest.raises(redis.ResponseError, match=BAD_ARGS):
        scripts.raw("renew_many", len(keys), *keys, TTL_MS, *([owner.token] * tokens))
    assert admin.pttl(owner.res.status) <= 5000


def test_more_than_1000_keys_is_refused(scripts: Any, owner: Owner, admin: redis.Redis) -> None:
    """A call over 1001 keys is bad-args (a script call must stay short: it blocks the server)."""
    keys = [owner.res.status] * 1001
    admin.pexpire(owner.res.status, 5000)
    with pytest.raises(redis.ResponseError, match=BAD_ARGS):
        scripts.raw("renew_many", len(keys), *keys, TTL_MS, *([owner.token] * 1001))
    assert admin.pttl(owner.res.status) <= 5000
