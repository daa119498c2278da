"""An owner that lost its lease (expired, released, removed by an operator or taken over) gets
EXPIRED or TAKEN from every owner script (a deregister of a lease its owner already released:
REPLAYED), and nothing is written: no resurrected record, no ghost keys, no log entry, and the
new owner's record is left byte-identical."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from .conftest import Claim
from .helpers import (
    TTL_MS,
    Owner,
    Resource,
    Scripts,
    Snapshot,
    assert_unchanged,
    deregister_args,
    force_release_args,
    heartbeat_args,
    record_error_args,
    transition_args,
    update_args,
)

OWNER_CALLS: dict[str, Callable[[Owner], list[str]]] = {
    "heartbeat": lambda o: heartbeat_args(o.token),
    "transition": lambda o: transition_args(o.token, "starting"),
    "update": lambda o: update_args(o.token, "admin", "ops@example.com", "Ops"),
    "record_error": lambda o: record_error_args(o.token),
    "deregister": lambda o: deregister_args(o.token, o.fencing_token),
}


def expire(o: Owner, admin: redis.Redis) -> None:
    """Let the lease run out: its claim had a 50 ms TTL."""
    time.sleep(0.1)
    assert admin.exists(o.res.status) == 0


def delete(o: Owner, admin: redis.Redis) -> None:
    admin.delete(o.res.status)


def test_heartbeat_after_takeover_is_taken(
    res: Resource, claim: Claim, call: Scripts, admin: redis.Redis, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """A stalled owner whose lease expired and was claimed by another gets TAKEN with the new
    owner's fencing token; the new owner's record (fields and TTL) is left exactly as it was."""
    old = claim(res, ttl_ms="50")
    time.sleep(0.1)
    new = claim(res, instance_id="worker-b")
    admin.pexpire(res.status, 30_000)  # a TTL a wrongful renewal to 60 s would visibly change
    before = snapshot(res)
    assert call("heartbeat", [res.status], heartbeat_args(old.token)) == ["TAKEN", str(new.fencing_token)]
    assert_unchanged(before, snapshot(res))


@pytest.mark.parametrize("loss", [expire, delete], ids=["expired", "deleted"])
def test_heartbeat_after_expiry_creates_nothing(
    loss: Callable[[Owner, redis.Redis], None],
    res: Resource,
    claim: Claim,
    call: Scripts,
    admin: redis.Redis,
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """A heartbeat for a record that expired (50 ms TTL) or was deleted answers EXPIRED and
    never re-creates it: EXISTS is 0 afterwards and the log is untouched."""
    o = claim(res, ttl_ms="50")
    loss(o, admin)
    before = snapshot(res)
    assert call("heartbeat", [res.status], heartbeat_args(o.token, TTL_MS)) == ["EXPIRED"]
    assert admin.exists(res.status) == 0
    assert_unchanged(before, snapshot(res))


@pytest.mark.parametrize("script", sorted(OWNER_CALLS))
@pytest.mark.parametrize("loss", ["expired", "released", "force-released", "taken", "released-then-taken"])
def test_owner_script_on_lost_lease_writes_nothing(
    script: str,
    loss: str,
    res: Resource,
    claim: Claim,
    call: Scripts,
    admin: redis.Redis,
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """update, record_error, transition, deregister and heartbeat on a lost lease: EXPIRED when
    the record is gone (expired, deregistered by the owner, or removed by an operator), TAKEN
    with the new token when another owner holds it. The exception is deregister on a lease its
    owner released: REPLAYED with the final state, also after another owner claimed since (v2:
    a retried release is told apart from a lease lost before its release). No ghost key is
    created, no log entry added, and another owner's record stays byte-identical."""
    o = claim(res, ttl_ms="50")
    if loss.startswith("released"):
        assert call("deregister", res.keys_for("deregister"), deregister_args(o.token, o.fencing_token))[0] == (
            "RELEASED"
        )
    elif loss == "force-released":
        assert call("force_release", res.keys_for("force_release"), force_release_args())[0] == "RELEASED"
    else:
        time.sleep(0.1)
    expected = ["EXPIRED"]
    if loss.endswith("taken"):
        new = claim(res, instance_id="worker-b")
        expected = ["TAKEN", str(new.fencing_token)]
    if script == "deregister" and loss.startswith("released"):
        expected = ["REPLAYED", "idle"]
    before = snapshot(res)
    reply = call(script, res.keys_for(script), OWNER_CALLS[script](o))
    assert reply == expected
    assert admin.exists(res.status) == (1 if loss.endswith("taken") else 0)
    assert_unchanged(before, snapshot(res))
