"""deregister-2.lua and force_release-2.lua: the record goes, the fence key stays (so the next
token is higher), and the log says who released it, in which state, and (for an operator) why."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from pylivermore import Registry

from .conftest import Claim
from .helpers import (
    COMMON_ENTRY_FIELDS,
    STATES,
    Owner,
    Resource,
    Scripts,
    Snapshot,
    assert_recent_iso,
    assert_unchanged,
    deregister_args,
    force_release_args,
    heartbeat_args,
    hgetall,
    last_entry,
    server_now,
    transition_args,
    update_args,
)


def test_deregister_deletes_record_keeps_fence_and_logs_final_state(
    owner: Owner, call: Scripts, admin: redis.Redis, claim: Claim
) -> None:
    """After idle -> starting -> stopping -> stopped, deregister answers RELEASED "stopped",
    deletes the record, keeps the fence key (no TTL, value = the released token) and logs a
    deregister entry with the final state, the token and the holder's identity: exactly the
    common fields and ``state`` (v2: no request id)."""
    res = owner.res
    for step in ("starting", "stopping", "stopped"):
        assert call("transition", res.keys_for("transition"), transition_args(owner.token, step))[0] == "OK"
    record = hgetall(admin, res.status)
    length = admin.xlen(res.log)
    since = server_now(admin)
    assert call("deregister", res.keys_for("deregister"), deregister_args(owner.token, owner.fencing_token)) == [
        "RELEASED",
        "stopped",
    ]
    assert admin.exists(res.status) == 0
    assert admin.get(res.fence) == str(owner.fencing_token).encode()
    assert admin.pttl(res.fence) == -1
    assert admin.xlen(res.log) == length + 1
    entry = last_entry(admin, res.log)
    assert entry["event"] == "deregister"
    assert entry["state"] == "stopped"
    assert entry["fencingToken"] == str(owner.fencing_token)
    assert set(entry) == set(COMMON_ENTRY_FIELDS) | {"state"}
    assert entry["ip"] == ""
    for field in ("exchangeId", "exchangeName", "hostname", "instanceId"):
        assert entry[field] == record[field]
    assert_recent_iso(admin, entry["timestamp"], since)
    assert claim(res).fencing_token > owner.fencing_token


@pytest.mark.parametrize("state", STATES)
def test_deregister_logs_the_state_it_was_in(state: str, owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """Deregister is allowed from every state (it is not a transition) and reports and logs
    that state as the final one."""
    admin.hset(owner.res.status, "connectionState", state)
    reply = call("deregister", owner.res.keys_for("deregister"), deregister_args(owner.token, owner.fencing_token))
    assert reply == ["RELEASED", state]
    assert last_entry(admin, owner.res.log)["state"] == state
    assert admin.exists(owner.res.status) == 0


def test_force_release_logs_reason_and_operator(
    owner: Owner, call: Scripts, admin: redis.Redis, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """force_release removes an active holder: RELEASED with the holder's token and state; the
    record is deleted, the fence kept, and the entry carries the reason and operator (UTF-8 kept
    as is), the state, the token and the holder's IP. The old holder then gets EXPIRED from
    heartbeat and deregister (its lease was removed, not released by its owner: not REPLAYED),
    and nothing is re-created."""
    res = owner.res
    assert call("update", [res.status], update_args(owner.token, "address", "198.51.100.4", "FR")) == ["OK"]
    for step in ("starting", "warming", "active"):
        assert call("transition", res.keys_for("transition"), transition_args(owner.token, step))[0] == "OK"
    reason = "stuck since 09:00 \u2014 feed frozen"
    since = server_now(admin)
    reply = call("force_release", res.keys_for("force_release"), force_release_args(reason, "alice@ops"))
    assert reply == ["RELEASED", str(owner.fencing_token), "active"]
    assert admin.exists(res.status) == 0
    assert admin.get(res.fence) == str(owner.fencing_token).encode()
    entry = last_entry(admin, res.log)
    assert entry["event"] == "force_release"
    assert (entry["reason"], entry["operator"]) == (reason, "alice@ops")
    assert (entry["state"], entry["fencingToken"], entry["ip"]) == ("active", str(owner.fencing_token), "198.51.100.4")
    assert entry["instanceId"] == owner.instance_id
    assert set(entry) == set(COMMON_ENTRY_FIELDS) | {"state", "reason", "operator"}
    assert_recent_iso(admin, entry["timestamp"], since)
    before = snapshot(res)
    assert call("heartbeat", [res.status], heartbeat_args(owner.token)) == ["EXPIRED"]
    assert call("deregister", res.keys_for("deregister"), deregister_args(owner.token, owner.fencing_token)) == [
        "EXPIRED"
    ]
    assert_unchanged(before, snapshot(res))


def test_force_release_of_a_free_resource_is_absent(
    owner: Owner, call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """force_release when nobody holds the resource answers ABSENT and writes nothing (no log
    entry, fence untouched)."""
    res = owner.res
    assert call("deregister", res.keys_for("deregister"), deregister_args(owner.token, owner.fencing_token))[0] == (
        "RELEASED"
    )
    before = snapshot(res)
    assert call("force_release", res.keys_for("force_release"), force_release_args()) == ["ABSENT"]
    assert_unchanged(before, snapshot(res))


def test_registry_force_release(owner: Owner, client: redis.Redis) -> None:
    """Registry.force_release returns the removed holder's fencing token, then None when the
    resource is free; the log names the operator."""
    registry = Registry(client, namespace=owner.res.namespace)
    try:
        assert registry.force_release(owner.res.id, "maintenance", operator="bob") == owner.fencing_token
        assert registry.force_release(owner.res.id, "maintenance", operator="bob") is None
    finally:
        registry.close()
    entry = last_entry(client, owner.res.log)
    assert (entry["event"], entry["reason"], entry["operator"]) == ("force_release", "maintenance", "bob")
