"""The findings of the audit of contract v1, each proven fixed in v2 by raw EVALSHA: every test
asserts the v2 behaviour (lua/README.md) and, where the answer is an error, that nothing was
written: every key of the test's namespace (the names below all carry it) is byte-identical
afterwards, with the same expiry, and no key appeared. Each of these tests fails on v1.

1. KEYS never checked against each other or against ``exchange_id``.
2. One resource, two ids (``{07}`` and ``{7}``).
3. Custom state tables passed per call instead of stored with the record.
4. One call could wipe the whole history (per-call retention of 1 ms and up).
5. Retries: request ids remembered only the last call; a retried release could read TAKEN.
6. CONFLICT leaked every field (the owner digest, request ids); a record without TTL read pttl -1.
7. Unstated rules: namespace pattern, UTF-8 and control characters, 16-character tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from .conftest import Claim
from .helpers import (
    BAD_ARGS,
    ONE_DAY_MS,
    PRIVATE_FIELDS,
    PUBLIC_FIELDS,
    RETENTION_MS,
    TTL_MS,
    Owner,
    Resource,
    Scripts,
    claim_args,
    deregister_args,
    expires_at,
    force_release_args,
    heartbeat_args,
    hgetall,
    last_entry,
    new_token,
    next_seq,
    record_error_args,
    text,
    transition_args,
    update_args,
    valid_args,
)

SCRIPTS = ("claim", "heartbeat", "transition", "update", "record_error", "deregister", "force_release")
OWNER_SCRIPTS = ("heartbeat", "transition", "update", "record_error", "deregister")
LOG_WRITERS = ("transition", "record_error", "deregister", "force_release")

KeyState = dict[str, tuple[bytes | None, int, int]]


@pytest.fixture
def world(admin: redis.Redis, namespace: str) -> Callable[[], KeyState]:
    """``world()``: every key whose name holds the test's namespace, with its DUMP and absolute
    expiry (and how far off that may be, see helpers.expires_at)."""

    def state() -> KeyState:
        keys = sorted(text(k) for k in admin.scan_iter(match=f"*{namespace}*", count=1000))
        return {k: (admin.dump(k), *expires_at(admin, k)) for k in keys}

    return state


def assert_nothing_written(before: KeyState, after: KeyState) -> None:
    assert sorted(after) == sorted(before), "a key appeared or vanished"
    for key, (dump, at, slack) in before.items():
        dump2, at2, slack2 = after[key]
        assert dump2 == dump, f"{key} changed"
        assert abs(at2 - at) <= max(slack, slack2), f"the expiry of {key} changed: {at} -> {at2}"


def refused(call: Callable[[], object], world: Callable[[], KeyState]) -> str:
    """*call* raises bad-args and writes nothing; the error text."""
    before = world()
    with pytest.raises(redis.ResponseError) as info:
        call()
    assert str(info.value).startswith(BAD_ARGS), str(info.value)
    assert_nothing_written(before, world())
    return str(info.value)


def answered(call: Callable[[], Any], world: Callable[[], KeyState]) -> Any:
    """*call*'s reply, asserting that it wrote nothing."""
    before = world()
    reply = call()
    assert_nothing_written(before, world())
    return reply


@pytest.fixture
def held(owner: Owner, admin: redis.Redis) -> Owner:
    """The owner's record with 30 s of its 60 s TTL left, so that a wrongful renewal shows."""
    admin.pexpire(owner.res.status, 30_000)
    return owner


def writing_args(script: str, o: Owner) -> list[str]:
    """Arguments that write on *o*'s healthy record (claim: a self-reclaim)."""
    if script == "claim":
        return claim_args(new_token(), exchange_id=o.res.id, instance_id=o.instance_id, reclaim="1")
    return valid_args(script, o.token, o.fencing_token)


# -- 1. keys and arguments checked against each other ----------------------------------------------


def test_claim_keys_of_another_id_are_bad_args(namespace: str, call: Scripts, world: Callable[[], KeyState]) -> None:
    """Keys of ``{71}`` with exchange_id 72: v1 wrote a record of 72 under the keys of 71."""
    keys = Resource(namespace, "71").all
    refused(lambda: call("claim", keys, claim_args(new_token(), exchange_id="72")), world)


def _layouts(a: Resource, b: Resource, c: Resource, n: int) -> dict[str, list[str]]:
    """Bad KEYS for a script of *n* keys whose right keys are a's, by the way they are bad."""
    ns, suffixes = a.namespace, ("status", "log", "fence")[:n]
    cases = {
        "arbitrary-names": [f"foo.{ns}", f"bar.{ns}", f"baz.{ns}"][:n],
        "no-hash-tag": [f"{ns}:{a.id}:{s}" for s in suffixes],
        "wrong-suffix": [f"{ns}:{{{a.id}}}:record", *a.all[1:n]],
        "trailing-text": [a.status + ":x", *a.all[1:n]],
        "empty-id": [f"{ns}:{{}}:{s}" for s in suffixes],
    }
    if n == 1:
        cases["log-as-status"] = [a.log]
    else:
        cases["wrong-order"] = list(reversed(a.all[:n]))
        cases["mixed-resources"] = [a.status, *b.all[1:n]]
        cases["other-namespace"] = [a.status, *Resource(ns + "x", a.id).all[1:n]]
        cases["other-id-case"] = [a.status, *Resource(ns, a.id.upper()).all[1:n]]
    if n == 3:
        cases["three-resources"] = [a.status, b.log, c.fence]
    return cases


def _numkeys(script: str) -> int:
    return 3 if script == "claim" else 2 if script in LOG_WRITERS else 1


LAYOUT_CASES = [
    pytest.param(script, layout, id=f"{script}-{layout}")
    for script in SCRIPTS
    for layout in _layouts(Resource("n", "a"), Resource("n", "b"), Resource("n", "c"), _numkeys(script))
]


@pytest.mark.parametrize(("script", "layout"), LAYOUT_CASES)
def test_keys_of_a_bad_layout_or_of_several_resources_are_bad_args(
    script: str,
    layout: str,
    held: Owner,
    make_resource: Callable[[], Resource],
    scripts: Scripts,
    admin: redis.Redis,
    world: Callable[[], KeyState],
) -> None:
    """KEYS that are not ``<ns>:{<id>}:status|log|fence`` of ONE resource, in the header's order,
    are bad-args and nothing is written, although the arguments would write on the owner's record.
    The arbitrary names hold a copy of the owner's live record (its TTL too), so that v1, which
    never looked at the names, would renew, transition or delete it there."""
    a = held.res
    b, c = make_resource(), make_resource()
    keys = _layouts(a, b, c, _numkeys(script))[layout]
    if layout == "arbitrary-names":
        admin.copy(a.status, keys[0])
    args = writing_args(script, held)
    refused(lambda: scripts(script, keys, args), world)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_record_under_another_resources_key_is_corrupt(
    script: str,
    held: Owner,
    make_resource: Callable[[], Resource],
    scripts: Scripts,
    admin: redis.Redis,
    world: Callable[[], KeyState],
) -> None:
    """A's live record copied under B's status key (a valid layout: its exchangeId is A's) is
    CORRUPT for every script called on B's keys with A's token, and nothing is written (v1 would
    have renewed, transitioned, released or reclaimed it as B)."""
    b = make_resource()
    admin.copy(held.res.status, b.status)
    moved = Owner(b, held.token, held.fencing_token, held.instance_id)
    reply = answered(lambda: scripts(script, b.keys_for(script), writing_args(script, moved)), world)
    assert reply[0] == "CORRUPT", reply


@pytest.mark.parametrize("layout", ["log-key", "fence-key", "arbitrary-name", "no-hash-tag", "non-canonical-id"])
def test_renew_many_takes_status_keys_only(
    layout: str, held: Owner, scripts: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """renew_many with a key that is not a ``<ns>:{<id>}:status`` key beside a good one (the
    second holding a copy of the live record) is refused whole: the good key is not renewed."""
    a = held.res
    ns = a.namespace
    other = {
        "log-key": a.log,
        "fence-key": a.fence,
        "arbitrary-name": f"foo.{ns}",
        "no-hash-tag": f"{ns}:r9:status",
        "non-canonical-id": f"{ns}:{{07}}:status",
    }[layout]
    if layout in ("arbitrary-name", "no-hash-tag", "non-canonical-id"):
        admin.copy(a.status, other)
    error = refused(lambda: scripts("renew_many", [a.status, other], [TTL_MS, held.token, held.token]), world)
    assert "key 2 " in error


# -- 2. one resource, one id -------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("wire_id", ["07", "0", "00", "0" * 64])
def test_non_canonical_ids_are_refused(
    wire_id: str,
    script: str,
    namespace: str,
    claim: Claim,
    scripts: Scripts,
    admin: redis.Redis,
    world: Callable[[], KeyState],
) -> None:
    """Keys of ``{07}``, ``{0}`` (an all-digit id with a leading zero, or zero) are bad-args for
    every script, even with a consistent exchange_id, while 7 is held: on v1 ``{07}`` was a
    second resource beside ``{7}``, with a second holder. For the scripts other than claim, the
    ``{07}`` status key holds a copy of 7's live record, which v1 would have written to."""
    holder = claim(Resource(namespace, "7"))
    res = Resource(namespace, wire_id)
    if script == "claim":
        args = claim_args(new_token(), exchange_id=wire_id)
    else:
        admin.copy(holder.res.status, res.status)
        args = valid_args(script, holder.token, holder.fencing_token)
    refused(lambda: scripts(script, res.keys_for(script), args), world)


def test_renew_many_refuses_a_non_canonical_id(
    namespace: str, claim: Claim, scripts: Scripts, world: Callable[[], KeyState]
) -> None:
    holder = claim(Resource(namespace, "7"))
    keys = [holder.res.status, Resource(namespace, "07").status]
    refused(lambda: scripts("renew_many", keys, [TTL_MS, holder.token, holder.token]), world)


def test_claim_of_7_conflicts_with_the_holder_of_7(
    namespace: str, claim: Claim, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """With 7 held, a claim of "7" (keys ``{7}``) is a CONFLICT naming the holder; "07" is
    refused however it is spelt (keys ``{07}``, or keys ``{7}`` with exchange_id "07"); one
    record of the resource exists throughout."""
    seven = Resource(namespace, "7")
    holder = claim(seven)
    reply = answered(lambda: call("claim", seven.all, claim_args(new_token(), exchange_id="7")), world)
    assert reply[0] == "CONFLICT"
    assert dict(zip(reply[2::2], reply[3::2], strict=True))["fencingToken"] == str(holder.fencing_token)
    zero_seven = Resource(namespace, "07")
    refused(lambda: call("claim", zero_seven.all, claim_args(new_token(), exchange_id="07")), world)
    refused(lambda: call("claim", seven.all, claim_args(new_token(), exchange_id="07")), world)
    statuses = [text(k) for k in admin.scan_iter(match=f"{namespace}:*:status")]
    assert statuses == [seven.status]


# -- 3. custom state tables, stored with the record -------------------------------------------------

PAUSE_TABLE = "idle>paused paused>idle"


def test_custom_states_follow_the_table_of_the_claim(
    res: Resource, claim: Claim, call: Scripts, admin: redis.Redis
) -> None:
    """A claim with the table ``idle>paused paused>idle`` stores it (stateTable); transition to
    ``paused`` and back is applied and logged, with no table in the transition's arguments."""
    o = claim(res, table=PAUSE_TABLE)
    assert hgetall(admin, res.status)["stateTable"] == PAUSE_TABLE
    reply = call("transition", res.keys_for("transition"), transition_args(o.token, "paused"))
    assert reply[:2] == ["OK", "paused"]
    record = hgetall(admin, res.status)
    assert (record["connectionState"], record["stateTable"]) == ("paused", PAUSE_TABLE)
    entry = last_entry(admin, res.log)
    assert (entry["event"], entry["fromState"], entry["toState"]) == ("state_transition", "idle", "paused")
    assert call("transition", res.keys_for("transition"), transition_args(o.token, "idle"))[:2] == ["OK", "idle"]


def test_a_default_edge_outside_the_records_table_is_bad_transition(
    res: Resource, claim: Claim, call: Scripts, world: Callable[[], KeyState]
) -> None:
    """idle->starting, an edge of the default table, is BAD_TRANSITION on a record claimed with
    ``idle>paused paused>idle``, and nothing is written (v1 used whatever table the call sent)."""
    o = claim(res, table=PAUSE_TABLE)
    reply = answered(
        lambda: call("transition", res.keys_for("transition"), transition_args(o.token, "starting")), world
    )
    assert reply == ["BAD_TRANSITION", "idle"]


def test_a_transition_cannot_bring_its_own_table(
    res: Resource, claim: Claim, scripts: Scripts, world: Callable[[], KeyState]
) -> None:
    """The v1 transition arguments (a table and a retention after ``expected``) are bad-args:
    a caller can no longer replace the record's table for one call."""
    o = claim(res)
    args = [o.token, next_seq(), "paused", "", PAUSE_TABLE, RETENTION_MS]
    refused(lambda: scripts("transition", res.keys_for("transition"), args), world)


# -- 4. retention: one call cannot wipe the history ------------------------------------------------

OLD_ENTRIES = 100  # one full stream node (stream-node-max-entries): MINID ~ trims whole nodes only
DAY_AGO_MINUS_HOUR = ONE_DAY_MS - 3_600_000


def seed_log(admin: redis.Redis, res: Resource) -> tuple[list[str], list[str]]:
    """Replace *res*'s log by OLD_ENTRIES entries of 1970 (ids ``1000-i``) and three entries
    younger than a day (23 h, 1 h and 1 s ago). Returns (old ids, young ids)."""
    admin.delete(res.log)
    old = [f"1000-{i}" for i in range(OLD_ENTRIES)]
    for entry_id in old:
        admin.xadd(res.log, {"e": "old"}, id=entry_id)
    sec, usec = admin.time()
    now_ms = sec * 1000 + usec // 1000
    young = [f"{now_ms - age}-0" for age in (DAY_AGO_MINUS_HOUR, 3_600_000, 1000)]
    for entry_id in young:
        admin.xadd(res.log, {"e": "young"}, id=entry_id)
    return old, young


def log_ids(admin: redis.Redis, res: Resource) -> list[str]:
    return [text(entry_id) for entry_id, _ in admin.xrange(res.log)]


@pytest.mark.parametrize("retention", ["1000", "1", "86399999"])
def test_claim_with_a_retention_below_a_day_is_bad_args(
    retention: str, res: Resource, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """A claim asking for a retention below one day is refused and writes nothing: the log with
    its old and recent entries is untouched (v1 trimmed it to the last second)."""
    seed_log(admin, res)
    args = claim_args(new_token(), exchange_id=res.id, retention_ms=retention)
    refused(lambda: call("claim", res.keys_for("claim"), args), world)


@pytest.mark.parametrize("retention", ["1000", "86399999"])
def test_force_release_with_a_retention_below_a_day_is_bad_args(
    retention: str, held: Owner, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    seed_log(admin, held.res)
    args = force_release_args(retention_ms=retention)
    refused(lambda: call("force_release", held.res.keys_for("force_release"), args), world)


def test_a_claim_with_one_day_trims_older_entries_and_keeps_the_last_day(
    res: Resource, call: Scripts, admin: redis.Redis
) -> None:
    """With the smallest retention (one day), a claim trims the entries of 1970 and keeps every
    entry of the last day; the record stores the retention for the lease's later writes."""
    old, young = seed_log(admin, res)
    reply = call(
        "claim", res.keys_for("claim"), claim_args(new_token(), exchange_id=res.id, retention_ms=str(ONE_DAY_MS))
    )
    assert reply[0] == "CLAIMED"
    ids = log_ids(admin, res)
    assert not set(old) & set(ids), "entries older than the retention were kept"
    assert ids[:-1] == young
    assert last_entry(admin, res.log)["event"] == "claim"
    assert hgetall(admin, res.status)["retentionMs"] == str(ONE_DAY_MS)


@pytest.mark.parametrize("script", LOG_WRITERS)
def test_every_log_write_keeps_the_last_day(
    script: str, res: Resource, claim: Claim, call: Scripts, admin: redis.Redis
) -> None:
    """Every script that appends to the log, on a lease claimed with a retention of one day
    (force_release: given one day), trims the entries of 1970 and keeps those younger than a
    day: the retention comes from the record, not from the call."""
    o = claim(res, retention_ms=str(ONE_DAY_MS))
    old, young = seed_log(admin, res)
    args = force_release_args(retention_ms=str(ONE_DAY_MS)) if script == "force_release" else None
    reply = call(script, res.keys_for(script), args or valid_args(script, o.token, o.fencing_token))
    assert reply[0] in ("OK", "RELEASED"), reply
    ids = log_ids(admin, res)
    assert not set(old) & set(ids)
    assert ids[:-1] == young


def test_a_record_with_a_retention_below_a_day_cannot_trim(
    owner: Owner, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """A record whose retentionMs was set below a day (by hand: no script writes it) is CORRUPT
    for the scripts that would trim with it, and nothing is written."""
    admin.hset(owner.res.status, "retentionMs", "1000")
    seed_log(admin, owner.res)
    for script in ("transition", "record_error", "deregister"):
        args = valid_args(script, owner.token, owner.fencing_token)
        reply = answered(lambda s=script, a=args: call(s, owner.res.keys_for(s), a), world)
        assert reply[0] == "CORRUPT", (script, reply)


# -- 5. retries --------------------------------------------------------------------------------------


def log_length(admin: redis.Redis, res: Resource) -> int:
    return int(admin.xlen(res.log))


def test_transition_replays_of_any_earlier_seq(
    owner: Owner, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """seq 1 (idle->starting), seq 2 (starting->warming), then seq 1 again: REPLAYED with the
    applied seq 2 and the current state, no second entry; seq 2 again with another target
    (active, a valid edge from warming): REPLAYED, the state stays warming (v1 remembered only
    the last request id, so the first replay moved the record back)."""
    res, keys = owner.res, owner.res.keys_for("transition")
    assert call("transition", keys, transition_args(owner.token, "starting", seq=1))[:2] == ["OK", "starting"]
    assert call("transition", keys, transition_args(owner.token, "warming", seq=2))[:2] == ["OK", "warming"]
    length = log_length(admin, res)
    reply = answered(lambda: call("transition", keys, transition_args(owner.token, "starting", seq=1)), world)
    assert reply == ["REPLAYED", "2", "warming"]
    reply = answered(lambda: call("transition", keys, transition_args(owner.token, "active", seq=2)), world)
    assert reply == ["REPLAYED", "2", "warming"]
    record = hgetall(admin, res.status)
    assert (record["connectionState"], record["seq"]) == ("warming", "2")
    assert log_length(admin, res) == length
    assert [e[1][b"toState"] for e in admin.xrange(res.log) if e[1][b"event"] == b"state_transition"] == [
        b"starting",
        b"warming",
    ]


def test_one_seq_orders_every_owner_operation(
    owner: Owner, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """The seq is the lease's, not the operation's: after a transition with seq 5, a record_error
    and an update with seq 4 are replays, answered REPLAYED and never applied."""
    res = owner.res
    assert call("transition", res.keys_for("transition"), transition_args(owner.token, "starting", seq=5))[0] == "OK"
    reply = answered(
        lambda: call("record_error", res.keys_for("record_error"), record_error_args(owner.token, "late", seq=4)), world
    )
    assert reply == ["REPLAYED", "5", "starting"]
    reply = answered(lambda: call("update", [res.status], update_args(owner.token, "symbols", "7", seq=4)), world)
    assert reply == ["REPLAYED", "5", "starting"]
    assert "lastError" not in hgetall(admin, res.status)


def test_an_older_update_never_overwrites_a_newer_one(
    owner: Owner, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """update symbols=10 with seq 5, then the delayed retry of symbols=99 with seq 3: REPLAYED,
    the count stays 10 (v1 applied updates in arrival order)."""
    res = owner.res
    assert call("update", [res.status], update_args(owner.token, "symbols", "10", seq=5)) == ["OK"]
    reply = answered(lambda: call("update", [res.status], update_args(owner.token, "symbols", "99", seq=3)), world)
    assert reply == ["REPLAYED", "5", "idle"]
    assert hgetall(admin, res.status)["symbolCount"] == "10"


@pytest.mark.parametrize(
    "change",
    [
        {"instance_id": "worker-z"},
        {"name": "Kraken"},
        {"hostname": "host-z"},
        {"retention_ms": str(ONE_DAY_MS)},
        {"table": PAUSE_TABLE},
    ],
    ids=["instance-id", "exchange-name", "hostname", "retention", "table"],
)
def test_claim_retry_with_other_arguments_is_bad_args(
    change: dict[str, str], res: Resource, call: Scripts, world: Callable[[], KeyState]
) -> None:
    """The same token again with other arguments is bad-args, nothing written (a token is for
    one claim; v1 answered CLAIMED retry and kept the first call's arguments silently); the same
    token with the same arguments is a CLAIMED retry with the same fencing token, nothing
    written."""
    token = new_token()
    first = call("claim", res.keys_for("claim"), claim_args(token, exchange_id=res.id))
    assert first[0] == "CLAIMED"
    refused(lambda: call("claim", res.keys_for("claim"), claim_args(token, exchange_id=res.id, **change)), world)
    again = answered(lambda: call("claim", res.keys_for("claim"), claim_args(token, exchange_id=res.id)), world)
    assert again == ["CLAIMED", first[1], "retry"]


def test_applied_deregister_retried_after_another_claim_is_replayed(
    res: Resource, claim: Claim, call: Scripts, world: Callable[[], KeyState]
) -> None:
    """An owner's release applied, its reply lost, and another owner claims before the retry:
    the retry answers REPLAYED with the final state (v1: TAKEN, as if the lease had been lost
    before its release), and writes nothing."""
    first = claim(res)
    assert call("transition", res.keys_for("transition"), transition_args(first.token, "starting"))[0] == "OK"
    args = deregister_args(first.token, first.fencing_token)
    assert call("deregister", res.keys_for("deregister"), args) == ["RELEASED", "starting"]
    claim(res, instance_id="worker-b")
    assert answered(lambda: call("deregister", res.keys_for("deregister"), args), world) == ["REPLAYED", "starting"]


def test_a_lease_taken_before_its_release_is_taken(
    res: Resource, claim: Claim, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """A lease that ran out and was claimed by another before its owner released it: deregister
    answers TAKEN with the new holder's token (never REPLAYED), nothing written."""
    first = claim(res, ttl_ms="50")
    time.sleep(0.1)
    assert admin.exists(res.status) == 0
    second = claim(res, instance_id="worker-b")
    args = deregister_args(first.token, first.fencing_token)
    reply = answered(lambda: call("deregister", res.keys_for("deregister"), args), world)
    assert reply == ["TAKEN", str(second.fencing_token)]


@pytest.mark.parametrize(("newer", "expected"), [(15, "REPLAYED"), (16, "TAKEN")])
def test_a_release_is_found_among_the_newest_16_entries(
    newer: int, expected: str, res: Resource, claim: Claim, call: Scripts, world: Callable[[], KeyState]
) -> None:
    """The retried release is recognised while its entry is among the newest 16 of the log: with
    15 newer entries (the next owner's claim and 14 transitions) REPLAYED, with 16 TAKEN."""
    first = claim(res)
    args = deregister_args(first.token, first.fencing_token)
    assert call("deregister", res.keys_for("deregister"), args)[0] == "RELEASED"
    second = claim(res, instance_id="worker-b")
    table = ["starting", "idle"]
    for i in range(newer - 1):
        step = transition_args(second.token, table[i % 2])
        assert call("transition", res.keys_for("transition"), step)[0] == "OK"
    reply = answered(lambda: call("deregister", res.keys_for("deregister"), args), world)
    assert reply[0] == expected
    assert reply == (["REPLAYED", "idle"] if expected == "REPLAYED" else ["TAKEN", str(second.fencing_token)])


# -- 6. the CONFLICT reply -----------------------------------------------------------------------------


def test_conflict_carries_the_public_fields_only(
    res: Resource, claim: Claim, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """A holder with every optional field set (address, admin, error, connectedAt, a custom table)
    and, by hand, v1's request fields and a foreign field: the CONFLICT carries exactly the public
    fields it has, in the order of lua/README.md, never ownerDigest, seq, retentionMs,
    transitionRequest, errorRequest or anything else; pttl >= 0; nothing written."""
    o = claim(res, table="idle>starting starting>active active>idle")
    assert call("update", [res.status], update_args(o.token, "address", "203.0.113.7", "DE")) == ["OK"]
    assert call("update", [res.status], update_args(o.token, "admin", "ops@example.com", "Ops")) == ["OK"]
    assert call("record_error", res.keys_for("record_error"), record_error_args(o.token, "boom"))[0] == "OK"
    for step in ("starting", "active"):
        assert call("transition", res.keys_for("transition"), transition_args(o.token, step))[0] == "OK"
    admin.hset(res.status, mapping={"transitionRequest": "r1", "errorRequest": "r2", "secretNote": "x"})
    reply = answered(
        lambda: call("claim", res.keys_for("claim"), claim_args(new_token(), exchange_id=res.id, instance_id="b")),
        world,
    )
    assert reply[0] == "CONFLICT"
    assert isinstance(reply[1], int)
    assert 0 <= reply[1] <= int(TTL_MS)
    names = reply[2::2]
    assert names == list(PUBLIC_FIELDS), "every public field, in the stated order"
    fields = dict(zip(names, reply[3::2], strict=True))
    record = hgetall(admin, res.status)
    assert fields == {k: record[k] for k in PUBLIC_FIELDS}
    for private in (*PRIVATE_FIELDS, "transitionRequest", "errorRequest", "secretNote"):
        assert private not in names
    assert o.token not in reply
    assert record["ownerDigest"] not in reply


def test_conflict_of_a_minimal_record_has_its_fields_in_order(
    res: Resource, claim: Claim, call: Scripts, admin: redis.Redis
) -> None:
    """A fresh record (default table) carries no optional field: the CONFLICT lists exactly the
    fields present, in the stated order."""
    claim(res)
    reply = call("claim", res.keys_for("claim"), claim_args(new_token(), exchange_id=res.id, instance_id="b"))
    record = hgetall(admin, res.status)
    assert reply[0] == "CONFLICT"
    assert reply[2::2] == [k for k in PUBLIC_FIELDS if k in record]
    assert "stateTable" not in reply[2::2]


def test_a_status_record_without_ttl_is_corrupt_at_claim(
    owner: Owner, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """A status record without TTL (PERSIST: never written by a script, it would be held
    forever) is CORRUPT to a conflicting claim, not a CONFLICT with pttl -1, and nothing is
    written (the record keeps no TTL)."""
    admin.persist(owner.res.status)
    args = claim_args(new_token(), exchange_id=owner.res.id, instance_id="worker-b")
    reply = answered(lambda: call("claim", owner.res.keys_for("claim"), args), world)
    assert reply[0] == "CORRUPT"
    assert reply[1]
    assert admin.pttl(owner.res.status) == -1


# -- 7. rules now stated and enforced ----------------------------------------------------------------

BAD_NAMESPACES = {
    "space": "{ns} b",
    "space-colon": "{ns} b:c",
    "colon": "{ns}:c",
    "brace": "{ns}{{x",
    "dash-first": "-{ns}",
    "dot-first": ".{ns}",
    "underscore-first": "_{ns}",
    "non-ascii": "{ns}\u00e9",
    "65-chars": "{ns}" + "x" * 56,
}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("bad", list(BAD_NAMESPACES))
def test_bad_namespaces_are_bad_args(
    bad: str, script: str, namespace: str, scripts: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """A namespace outside 1-64 chars of [A-Za-z0-9._-] starting with a letter or digit is
    bad-args for every script (the keys hold a live record copied from a valid namespace, so v1
    would have written there)."""
    ns = BAD_NAMESPACES[bad].format(ns=namespace)
    if bad == "65-chars":
        assert len(ns) == 65
    res = Resource(ns, "1")
    good = Resource(namespace, "1")
    token = new_token()
    reply = scripts("claim", good.all, claim_args(token, exchange_id="1"))
    admin.copy(good.status, res.status)
    o = Owner(res, token, int(reply[1]), "worker-a")
    args = writing_args(script, o)
    refused(lambda: scripts(script, res.keys_for(script), args), world)


def test_a_64_char_namespace_is_accepted(call: Scripts, namespace: str) -> None:
    res = Resource(namespace + "x" * (64 - len(namespace)), "1")
    assert call("claim", res.all, claim_args(new_token(), exchange_id="1"))[0] == "CLAIMED"


BAD_UTF8 = {
    "ff": b"\xff",
    "lone-continuation": b"a\x80",
    "surrogate": b"\xed\xa0\x80",
    "overlong-slash": b"\xc0\xaf",
    "overlong-3-byte": b"\xe0\x80\xaf",
    "overlong-4-byte": b"\xf0\x80\x80\xaf",
    "above-u10ffff": b"\xf4\x90\x80\x80",
    "truncated": b"\xe2\x82",
    "5-byte": b"\xf8\x88\x80\x80\x80",
}
CONTROLS = {"nul": b"\x00", "soh": b"\x01", "esc": b"\x1b", "del": b"\x7f", "tab": b"\t", "lf": b"\n", "cr": b"\r"}
LINE_BREAKS = ("tab", "lf", "cr")
#: (script, ARGV index, field, whether tab, LF and CR are allowed)
TEXT_FIELDS = [
    ("claim", 3, "exchange_name", False),
    ("claim", 4, "hostname", False),
    ("claim", 5, "instance_id", False),
    ("update", 3, "admin_email", False),
    ("update", 4, "admin_name", False),
    ("record_error", 2, "message", True),
    ("force_release", 0, "reason", True),
    ("force_release", 1, "operator", False),
]


def text_args(script: str, o: Owner, index: int, value: bytes) -> list[str | bytes]:
    args: list[str | bytes] = list(
        update_args(o.token, "admin", "ops@example.com", "Ops") if script == "update" else writing_args(script, o)
    )
    args[index] = b"x" + value + b"y"
    return args


def _text_cases(allowed: bool) -> list[Any]:
    cases = []
    for script, index, name, lines in TEXT_FIELDS:
        values = {**{f"utf8-{k}": v for k, v in BAD_UTF8.items()}, **{f"control-{k}": v for k, v in CONTROLS.items()}}
        for label, value in values.items():
            ok = lines and label.removeprefix("control-") in LINE_BREAKS
            if ok == allowed:
                cases.append(pytest.param(script, index, value, id=f"{name}-{label}"))
    return cases


@pytest.mark.parametrize(("script", "index", "value"), _text_cases(allowed=False))
def test_invalid_utf8_and_control_characters_are_bad_args(
    script: str, index: int, value: bytes, held: Owner, scripts: Scripts, world: Callable[[], KeyState]
) -> None:
    """Invalid UTF-8 (a lone 0xFF, an encoded surrogate, overlong forms, beyond U+10FFFF, cut
    short) and control characters in a text field are bad-args, nothing written; only message
    and reason may hold tab, LF and CR."""
    args = text_args(script, held, index, value)
    refused(lambda: scripts(script, held.res.keys_for(script), args), world)


@pytest.mark.parametrize(("script", "index", "value"), _text_cases(allowed=True))
def test_message_and_reason_keep_tab_lf_and_cr(
    script: str, index: int, value: bytes, held: Owner, scripts: Scripts, admin: redis.Redis
) -> None:
    args = text_args(script, held, index, value)
    assert scripts(script, held.res.keys_for(script), args)[0] in ("OK", "RELEASED")
    entry = admin.xrevrange(held.res.log, count=1)[0][1]
    assert entry[b"error" if script == "record_error" else b"reason"] == b"x" + value + b"y"


@pytest.mark.parametrize(
    "value",
    ["caf\u00e9", "\u20ac 5", "\U0001f600", "\U0010ffff", "\u4e2d\u6587", "a\u00a0b"],
    ids=["2-byte", "3-byte", "4-byte", "max-code-point", "cjk", "nbsp"],
)
def test_valid_utf8_is_kept_byte_for_byte(value: str, res: Resource, call: Scripts, admin: redis.Redis) -> None:
    """Valid UTF-8 of every length (up to U+10FFFF) is accepted in every text field of a claim
    and stored as sent."""
    args = claim_args(new_token(), exchange_id=res.id, name=value, hostname=value, instance_id=value)
    assert call("claim", res.keys_for("claim"), args)[0] == "CLAIMED"
    record = admin.hgetall(res.status)
    for name in (b"exchangeName", b"hostname", b"instanceId"):
        assert record[name] == value.encode()


@pytest.mark.parametrize(("length", "ok"), [(16, False), (31, False), (32, True), (128, True), (129, False)])
def test_token_length(
    length: int, ok: bool, res: Resource, call: Scripts, admin: redis.Redis, world: Callable[[], KeyState]
) -> None:
    """Tokens are 32-128 characters: 16 (v1's minimum) and 31 are refused, nothing written; 32
    and 128 claim, and the same token then heartbeats."""
    token = ("0123456789abcdef" * 9)[:length]
    args = claim_args(token, exchange_id=res.id)
    if not ok:
        refused(lambda: call("claim", res.keys_for("claim"), args), world)
        return
    assert call("claim", res.keys_for("claim"), args)[0] == "CLAIMED"
    assert call("heartbeat", [res.status], heartbeat_args(token))[0] == "RENEWED"


# -- v1 callers ----------------------------------------------------------------------------------


def v1_args(script: str, o: Owner) -> list[str]:
    """*script*'s ARGV as a v1 client sent it (request ids, per-call retention, no table)."""
    rid = "req-" + next_seq()
    return {
        "claim": claim_args(o.token, exchange_id=o.res.id)[:8],
        "transition": [o.token, rid, "starting", "", "", RETENTION_MS],
        "update": [o.token, "symbols", "5", ""],
        "record_error": [o.token, rid, "boom", RETENTION_MS],
        "deregister": [o.token, rid, RETENTION_MS],
    }[script]


@pytest.mark.parametrize("script", ["claim", "transition", "update", "record_error", "deregister"])
def test_v1_argument_lists_are_bad_args(
    script: str, held: Owner, scripts: Scripts, world: Callable[[], KeyState]
) -> None:
    """A v1 client's call of a script whose arguments changed is refused (bad-args), never
    misread: the owner's record, log and fence are untouched."""
    args = v1_args(script, held)
    refused(lambda: scripts(script, held.res.keys_for(script), args), world)
