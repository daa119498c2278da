"""Every mutating script, sent twice with identical arguments (as a client retry after a timeout
does), ends in the same state as sent once, with exactly one log entry for the operation: claims
answer ``retry``, owner operations are replay-safe by ``seq`` (the retry answers REPLAYED and is
never re-applied), and a deregister retried after it was applied answers REPLAYED."""

from __future__ import annotations

import redis

from .helpers import (
    Owner,
    Resource,
    Scripts,
    claim_args,
    deregister_args,
    force_release_args,
    heartbeat_args,
    hgetall,
    last_entry,
    new_token,
    next_seq,
    record_error_args,
    transition_args,
    update_args,
)


def log_events(admin: redis.Redis, res: Resource) -> list[str]:
    return [e[1][b"event"].decode() for e in admin.xrange(res.log)]


def test_claim_retry(res: Resource, call: Scripts, admin: redis.Redis) -> None:
    """A claim repeated with the same token answers CLAIMED with the SAME fencing token ("retry")
    and writes nothing: the record, the fence and the log are byte-identical, one claim entry."""
    args = claim_args(new_token(), exchange_id=res.id)
    first = call("claim", res.keys_for("claim"), args)
    dumps = [admin.dump(k) for k in res.all]
    second = call("claim", res.keys_for("claim"), args)
    assert first[:2] == second[:2]
    assert (first[2], second[2]) == ("new", "retry")
    assert [admin.dump(k) for k in res.all] == dumps
    assert log_events(admin, res) == ["claim"]


def test_transition_retry(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """A transition repeated with the same seq answers REPLAYED with the applied seq and the
    current state (not BAD_TRANSITION, although starting->starting is no edge) and writes
    nothing: one state_transition entry."""
    res = owner.res
    seq = next_seq()
    args = transition_args(owner.token, "starting", seq=seq)
    first = call("transition", res.keys_for("transition"), args)
    once = hgetall(admin, res.status)
    dumps = [admin.dump(k) for k in res.all]
    second = call("transition", res.keys_for("transition"), args)
    assert first[:2] == ["OK", "starting"]
    assert second == ["REPLAYED", seq, "starting"]
    assert once["seq"] == seq
    assert hgetall(admin, res.status) == once
    assert [admin.dump(k) for k in res.all] == dumps
    assert log_events(admin, res) == ["claim", "state_transition"]


def test_record_error_retry(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """record_error repeated with the same seq answers REPLAYED (the applied seq and the state)
    and writes nothing: lastErrorAt stays the first call's, one error entry."""
    res = owner.res
    seq = next_seq()
    args = record_error_args(owner.token, "feed disconnected", seq=seq)
    first = call("record_error", res.keys_for("record_error"), args)
    once = hgetall(admin, res.status)
    second = call("record_error", res.keys_for("record_error"), args)
    assert first[0] == "OK"
    assert second == ["REPLAYED", seq, "idle"]
    assert once["lastError"] == "feed disconnected"
    assert once["lastErrorAt"] == first[1]
    assert hgetall(admin, res.status) == once
    assert log_events(admin, res) == ["claim", "error"]


def test_deregister_retry(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """deregister repeated with the same arguments answers REPLAYED with the final state (found
    from its own log entry), not EXPIRED, and writes nothing: one deregister entry."""
    res = owner.res
    assert call("transition", res.keys_for("transition"), transition_args(owner.token, "starting"))[0] == "OK"
    args = deregister_args(owner.token, owner.fencing_token)
    first = call("deregister", res.keys_for("deregister"), args)
    dumps = [admin.dump(k) for k in res.all]
    second = call("deregister", res.keys_for("deregister"), args)
    assert first == ["RELEASED", "starting"]
    assert second == ["REPLAYED", "starting"]
    assert [admin.dump(k) for k in res.all] == dumps
    assert log_events(admin, res) == ["claim", "state_transition", "deregister"]
    # Another fencing token names another lease, which was not released by its owner: EXPIRED.
    other = deregister_args(owner.token, owner.fencing_token + 1)
    assert call("deregister", res.keys_for("deregister"), other) == ["EXPIRED"]
    assert [admin.dump(k) for k in res.all] == dumps


def test_update_retry(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """Each update group sent twice with the same seq is applied once: the retry answers REPLAYED
    and leaves the record as the first call left it (updates are not logged, so the log keeps
    only the claim)."""
    res = owner.res
    for args in (
        ["symbols", "120", ""],
        ["admin", "ops@example.com", "Ops Team"],
        ["address", "2001:db8::1", "NL"],
        ["admin", "", ""],
    ):
        seq = next_seq()
        full = update_args(owner.token, *args, seq=seq)
        assert call("update", [res.status], full) == ["OK"]
        once = hgetall(admin, res.status)
        assert once["seq"] == seq
        assert call("update", [res.status], full) == ["REPLAYED", seq, "idle"]
        assert hgetall(admin, res.status) == once
    record = hgetall(admin, res.status)
    assert (record["symbolCount"], record["ipAddress"], record["countryCode"]) == ("120", "2001:db8::1", "NL")
    assert "adminEmail" not in record
    assert "adminDisplayName" not in record
    assert log_events(admin, res) == ["claim"]


def test_heartbeat_twice(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """A heartbeat applied twice leaves the same record as once except lastHeartbeat, which each
    heartbeat refreshes to the server's "now" by design (and the TTL, renewed each time);
    heartbeats are not logged."""
    res = owner.res
    first = call("heartbeat", [res.status], heartbeat_args(owner.token))
    once = hgetall(admin, res.status)
    second = call("heartbeat", [res.status], heartbeat_args(owner.token))
    twice = hgetall(admin, res.status)
    assert first[0] == second[0] == "RENEWED"
    assert once["lastHeartbeat"] == first[1]
    assert twice["lastHeartbeat"] == second[1] >= first[1]
    assert {k: v for k, v in twice.items() if k != "lastHeartbeat"} == {
        k: v for k, v in once.items() if k != "lastHeartbeat"
    }
    assert log_events(admin, res) == ["claim"]


def test_force_release_twice(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """force_release sent twice: the first removes the holder, the second finds nothing (ABSENT)
    and writes nothing; one force_release entry, and the fence is kept."""
    res = owner.res
    args = force_release_args("stuck", "ops@example.com")
    assert call("force_release", res.keys_for("force_release"), args) == ["RELEASED", str(owner.fencing_token), "idle"]
    dumps = [admin.dump(k) for k in res.all]
    assert call("force_release", res.keys_for("force_release"), args) == ["ABSENT"]
    assert [admin.dump(k) for k in res.all] == dumps
    assert log_events(admin, res) == ["claim", "force_release"]
    assert last_entry(admin, res.log)["reason"] == "stuck"
