"""claim-3.lua: a claim creates the record, the fence and a log entry; a conflict costs one round
trip and carries the holder's record and remaining TTL; fencing tokens strictly increase."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pytest
import redis

from pylivermore import ClaimConflictError, InstanceStatus, Registry
from pylivermore.server import RedisServer
from tests.conftest import make_admin_client, make_client
from tests.support import iso_ms

from .conftest import Claim, claim_with
from .helpers import (
    PRIVATE_FIELDS,
    PUBLIC_FIELDS,
    RETENTION_MS,
    TTL_MS,
    Owner,
    Resource,
    Scripts,
    Snapshot,
    assert_recent_iso,
    assert_unchanged,
    claim_args,
    client_commands,
    deregister_args,
    expires_at,
    force_release_args,
    hgetall,
    last_entry,
    new_token,
    server_now,
    take_snapshot,
    transition_args,
    update_args,
)

#: Read commands a client would need for a claim-then-inspect conflict path.
READS = ("hgetall", "hmget", "hget", "get", "pttl", "ttl", "exists", "type")


def test_claim_creates_record_fence_and_log(res: Resource, call: Scripts, admin: redis.Redis) -> None:
    """A claim on a free resource answers CLAIMED/new with a fencing token; the record is an idle
    hash with server timestamps, the TTL asked for and sha1hex(token) as owner digest (the token
    itself is stored nowhere), seq 0, the retention asked for, contract 2 and no stateTable (the
    default table); the fence key holds the token and never expires; one claim entry."""
    token = new_token()
    since = server_now(admin)
    reply = call("claim", res.keys_for("claim"), claim_args(token, exchange_id=res.id))
    assert reply[0] == "CLAIMED"
    assert reply[2] == "new"
    fencing = reply[1]
    record = hgetall(admin, res.status)
    assert record["exchangeId"] == res.id
    assert record["connectionState"] == "idle"
    assert record["symbolCount"] == "0"
    assert record["fencingToken"] == fencing
    assert record["instanceId"] == "worker-a"
    assert record["ownerDigest"] == hashlib.sha1(token.encode()).hexdigest()
    assert (record["seq"], record["retentionMs"], record["contract"]) == ("0", RETENTION_MS, "2")
    assert "stateTable" not in record
    assert record["lastHeartbeat"] == record["lastStateChange"] == record["registeredAt"]
    assert_recent_iso(admin, record["registeredAt"], since)
    assert "connectedAt" not in record
    # The TTL asked for, counted from the claim's own server time (exact, however late this reads).
    at, slack = expires_at(admin, res.status)
    assert abs(at - iso_ms(record["registeredAt"]) - int(TTL_MS)) <= 2 + slack
    assert admin.get(res.fence) == fencing.encode()
    assert admin.pttl(res.fence) == -1
    assert admin.xlen(res.log) == 1
    entry = last_entry(admin, res.log)
    assert (entry["event"], entry["fencingToken"], entry["how"], entry["ttlMs"]) == ("claim", fencing, "new", TTL_MS)
    for key in res.all:
        assert token.encode() not in (admin.dump(key) or b""), f"the owner token is stored in clear in {key}"


def test_conflict_is_one_round_trip_with_holder_and_ttl(fresh_server: RedisServer, namespace: str) -> None:
    """A claim on a held resource is answered in ONE round trip: under CONFIG RESETSTAT + INFO
    commandstats there is exactly one EVALSHA, and every read command counted was run inside the
    script (MONITOR attributes it to lua), none by the client. The reply is CONFLICT, the holder's
    PTTL (close to its TTL) and the holder's public record fields, in the order of lua/README.md
    (never ownerDigest, seq or retentionMs); nothing is written."""
    c = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    watcher = make_admin_client(fresh_server)
    try:
        scripts = Scripts(c)
        res = Resource(namespace, "1")
        holder = claim_with(scripts)(res, instance_id="holder-1", hostname="host-h")
        before = take_snapshot(admin, res)
        admin.config_resetstat()
        replies: list[object] = []
        sent, inside = client_commands(
            watcher,
            lambda: replies.append(
                scripts("claim", res.keys_for("claim"), claim_args(new_token(), exchange_id=res.id, instance_id="b"))
            ),
        )
        stats = admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1
        assert not any(k in stats for k in ("cmdstat_eval", "cmdstat_script|load"))
        for name in READS:
            counted = stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            by_script = sum(1 for cmd in inside if cmd.split()[0].lower() == name)
            assert counted == by_script, f"{name}: {counted} calls, {by_script} of them inside the script"
        assert len(sent) == 1
        assert sent[0].startswith("EVALSHA ")
        reply = replies[0]
        assert isinstance(reply, list)
        assert reply[0] == "CONFLICT"
        assert int(TTL_MS) - 2000 < reply[1] <= int(TTL_MS)
        fields = dict(zip(reply[2::2], reply[3::2], strict=True))
        record = hgetall(admin, res.status)
        assert fields == {k: v for k, v in record.items() if k not in PRIVATE_FIELDS}
        assert list(fields) == [k for k in PUBLIC_FIELDS if k in record]
        assert fields["hostname"] == "host-h"
        assert fields["instanceId"] == "holder-1"
        assert fields["fencingToken"] == str(holder.fencing_token)
        assert holder.token not in fields.values()
        assert_unchanged(before, take_snapshot(admin, res))
    finally:
        c.close()
        admin.close()
        watcher.close()


def test_conflict_through_python_api(fresh_server: RedisServer, namespace: str) -> None:
    """Registry.claim on a held resource raises ClaimConflictError whose .holder is the holder's
    InstanceStatus (hostname, instance id, IP, connectedAt) and .ttl the seconds left (float);
    the message names hostname, IP, connected-at and the seconds remaining. The conflicting
    claim is a single EVALSHA from the client."""
    c = make_client(fresh_server)
    watcher = make_admin_client(fresh_server)
    registry = Registry(c, namespace=namespace, hostname="host-b", instance_id="worker-b")
    try:
        scripts = Scripts(c)
        res = Resource(namespace, "7")
        holder = claim_with(scripts)(res, hostname="host-h", instance_id="holder-1")
        assert scripts("update", [res.status], update_args(holder.token, "address", "203.0.113.7", "DE")) == ["OK"]
        for step in ("starting", "warming", "active"):
            assert scripts("transition", res.keys_for("transition"), transition_args(holder.token, step))[0] == "OK"
        connected_at = hgetall(c, res.status)["connectedAt"]
        with pytest.raises(ClaimConflictError):
            registry.claim(7, "Binance")  # the first claim also reads maxmemory-policy once
        errors: list[ClaimConflictError] = []

        def second_claim() -> None:
            try:
                registry.claim(7, "Binance")
            except ClaimConflictError as exc:
                errors.append(exc)

        sent, _ = client_commands(watcher, second_claim)
        assert [cmd.split()[0] for cmd in sent] == ["EVALSHA"]
        assert len(errors) == 1
        err = errors[0]
        assert isinstance(err.holder, InstanceStatus)
        assert err.holder.hostname == "host-h"
        assert err.holder.instance_id == "holder-1"
        assert err.holder.fencing_token == holder.fencing_token
        assert err.holder.ip_address == "203.0.113.7"
        assert err.holder.connected_at == connected_at
        assert isinstance(err.ttl, float)
        assert int(TTL_MS) / 1000 - 2 < err.ttl <= int(TTL_MS) / 1000
        message = str(err)
        for part in ("host-h", "203.0.113.7", connected_at, f"{err.ttl:.1f} s remaining"):
            assert part in message, f"{part!r} missing from {message!r}"
        assert hgetall(c, res.status)["instanceId"] == "holder-1"
    finally:
        registry.close()
        c.close()
        watcher.close()


# -- fencing tokens ----------------------------------------------------------------------------


# Each release gets the admin client for its own faults (SCRIPT FLUSH, DEL, DBSIZE); the scripts it
# returns are called by a worker client (``scripts.client``, or a new one after a restart).


def release_by_deregister(o: Owner, scripts: Scripts, admin: redis.Redis, server: RedisServer | None) -> Scripts:
    assert scripts("deregister", o.res.keys_for("deregister"), deregister_args(o.token, o.fencing_token))[0] == (
        "RELEASED"
    )
    return scripts


def release_by_force(o: Owner, scripts: Scripts, admin: redis.Redis, server: RedisServer | None) -> Scripts:
    assert scripts("force_release", o.res.keys_for("force_release"), force_release_args())[0] == "RELEASED"
    return scripts


def release_by_deleting_everything(
    o: Owner, scripts: Scripts, admin: redis.Redis, server: RedisServer | None
) -> Scripts:
    admin.delete(*o.res.all)  # the fence key is lost too (as after a failover to a stale replica)
    return scripts


def release_by_script_flush(o: Owner, scripts: Scripts, admin: redis.Redis, server: RedisServer | None) -> Scripts:
    assert scripts("deregister", o.res.keys_for("deregister"), deregister_args(o.token, o.fencing_token))[0] == (
        "RELEASED"
    )
    admin.script_flush()
    with pytest.raises(redis.exceptions.NoScriptError):
        scripts("heartbeat", [o.res.status], [o.token, TTL_MS])
    return Scripts(scripts.client)


def release_by_restart(o: Owner, scripts: Scripts, admin: redis.Redis, server: RedisServer | None) -> Scripts:
    assert server is not None
    server.restart()  # no persistence: every key and the script cache are gone
    with make_admin_client(server) as fresh_admin:
        assert fresh_admin.dbsize() == 0
    return Scripts(make_client(server))


@pytest.mark.parametrize(
    "release",
    [release_by_deregister, release_by_force, release_by_deleting_everything],
    ids=["deregister", "force_release", "del-fence-key"],
)
def test_fencing_token_increases_after_release(
    release: Callable[[Owner, Scripts, redis.Redis, RedisServer | None], Scripts],
    res: Resource,
    scripts: Scripts,
    claim: Claim,
    admin: redis.Redis,
) -> None:
    """After the holder is gone (deregister, force_release, or every key including the fence
    deleted), the next claim gets a strictly greater fencing token."""
    first = claim(res)
    again = release(first, scripts, admin, None)
    second = claim_with(again)(res)
    assert second.fencing_token > first.fencing_token


def test_fencing_token_increases_after_expiry(res: Resource, claim: Claim, admin: redis.Redis) -> None:
    """After a lease expires (TTL 50 ms), the next claim gets a strictly greater fencing token."""
    first = claim(res, ttl_ms="50")
    time.sleep(0.12)
    assert admin.exists(res.status) == 0
    assert claim(res).fencing_token > first.fencing_token


def test_fencing_token_increases_after_fence_key_deleted(
    res: Resource, owner: Owner, claim: Claim, call: Scripts, admin: redis.Redis
) -> None:
    """With the fence key deleted (and set back to a tiny value), the next claim's token is
    still above the previous one: the token is never below the server clock in microseconds."""
    assert call("deregister", res.keys_for("deregister"), deregister_args(owner.token, owner.fencing_token))[0] == (
        "RELEASED"
    )
    admin.delete(res.fence)
    second = claim(res)
    assert second.fencing_token > owner.fencing_token
    assert call("deregister", res.keys_for("deregister"), deregister_args(second.token, second.fencing_token))[0] == (
        "RELEASED"
    )
    admin.set(res.fence, "1")
    assert claim(res).fencing_token > second.fencing_token


def test_fencing_token_follows_a_high_fence(res: Resource, claim: Claim, admin: redis.Redis) -> None:
    """A fence above the clock is honoured: the next token is exactly fence + 1."""
    high = 9_000_000_000_000_000
    admin.set(res.fence, str(high))
    assert claim(res).fencing_token == high + 1


@pytest.mark.parametrize(
    "release", [release_by_script_flush, release_by_restart], ids=["script-flush", "restart-without-persistence"]
)
def test_fencing_token_increases_on_own_server(
    release: Callable[[Owner, Scripts, redis.Redis, RedisServer | None], Scripts],
    fresh_server: RedisServer,
    namespace: str,
) -> None:
    """After SCRIPT FLUSH (scripts reloaded) or a kill and restart of the server without
    persistence (all keys, the fence included, are lost), the next claim's token is higher."""
    c = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    try:
        scripts = Scripts(c)
        res = Resource(namespace, "1")
        first = claim_with(scripts)(res)
        again = release(first, scripts, admin, fresh_server)
        try:
            second = claim_with(again)(res)
        finally:
            if again.client is not c:
                again.client.close()
        assert second.fencing_token > first.fencing_token
    finally:
        c.close()
        admin.close()


def test_fencing_tokens_strictly_increase_across_every_kind_of_loss(fresh_server: RedisServer, namespace: str) -> None:
    """One resource through claim -> deregister -> claim -> expiry -> claim -> force_release ->
    claim -> self-reclaim -> SCRIPT FLUSH -> claim -> DEL fence -> claim -> restart -> claim:
    the sequence of fencing tokens is strictly increasing."""
    c = make_client(fresh_server)
    admin = make_admin_client(fresh_server)
    clients = [c, admin]
    try:
        scripts = Scripts(c)
        res = Resource(namespace, "1")
        tokens = []
        o = claim_with(scripts)(res)
        tokens.append(o.fencing_token)
        assert scripts("deregister", res.keys_for("deregister"), deregister_args(o.token, o.fencing_token))[0] == (
            "RELEASED"
        )
        o = claim_with(scripts)(res, ttl_ms="30")
        tokens.append(o.fencing_token)
        time.sleep(0.08)
        o = claim_with(scripts)(res)
        tokens.append(o.fencing_token)
        scripts("force_release", res.keys_for("force_release"), force_release_args())
        o = claim_with(scripts)(res)
        tokens.append(o.fencing_token)
        o = claim_with(scripts)(res, reclaim="1")
        tokens.append(o.fencing_token)
        scripts = release_by_script_flush(o, scripts, admin, fresh_server)
        o = claim_with(scripts)(res)
        tokens.append(o.fencing_token)
        release_by_deleting_everything(o, scripts, admin, fresh_server)
        o = claim_with(scripts)(res)
        tokens.append(o.fencing_token)
        scripts = release_by_restart(o, scripts, admin, fresh_server)
        clients.append(scripts.client)
        tokens.append(claim_with(scripts)(res).fencing_token)
        assert tokens == sorted(set(tokens)), f"fencing tokens did not strictly increase: {tokens}"
    finally:
        for each in clients:
            each.close()


# -- self-reclaim ------------------------------------------------------------------------------


def test_self_reclaim_issues_a_higher_token(
    owner: Owner, call: Scripts, admin: redis.Redis, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """ARGV[7]="1" with the holder's own instance_id and a new token takes the record over:
    CLAIMED/reclaim with a higher token, a fresh idle record (stale fields of the old one gone,
    seq back to 0, the new claim's table), the old owner's token now answers TAKEN, and the log
    says what was replaced."""
    res = owner.res
    admin.hset(res.status, mapping={"connectionState": "active", "lastError": "boom", "connectedAt": "x", "seq": "9"})
    token = new_token()
    args = claim_args(token, exchange_id=res.id, reclaim="1", table="idle>active active>idle")
    reply = call("claim", res.keys_for("claim"), args)
    assert reply[0] == "CLAIMED"
    assert reply[2] == "reclaim"
    assert int(reply[1]) > owner.fencing_token
    record = hgetall(admin, res.status)
    assert record["connectionState"] == "idle"
    assert "lastError" not in record
    assert "connectedAt" not in record
    assert record["fencingToken"] == reply[1]
    assert (record["seq"], record["stateTable"]) == ("0", "idle>active active>idle")
    entry = last_entry(admin, res.log)
    assert (entry["how"], entry["replaced"], entry["fencingToken"]) == ("reclaim", str(owner.fencing_token), reply[1])
    before = snapshot(res)
    assert call("heartbeat", [res.status], [owner.token, TTL_MS]) == ["TAKEN", reply[1]]
    assert_unchanged(before, snapshot(res))


@pytest.mark.parametrize(
    ("instance_id", "reclaim"),
    [("worker-b", "1"), ("worker-a", "0"), ("worker-a ", "1"), ("WORKER-A", "1")],
    ids=["other-instance", "same-instance-no-reclaim", "trailing-space", "other-case"],
)
def test_reclaim_needs_the_same_instance_id(
    instance_id: str, reclaim: str, owner: Owner, call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """A claim with a new token is a CONFLICT (nothing written) unless ARGV[7] is "1" AND the
    instance_id is exactly the holder's."""
    before = snapshot(owner.res)
    args = claim_args(new_token(), exchange_id=owner.res.id, instance_id=instance_id, reclaim=reclaim)
    reply = call("claim", owner.res.keys_for("claim"), args)
    assert reply[0] == "CONFLICT"
    assert dict(zip(reply[2::2], reply[3::2], strict=True))["instanceId"] == "worker-a"
    assert_unchanged(before, snapshot(owner.res))
