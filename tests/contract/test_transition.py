"""transition-2.lua: the accepted (from, to) pairs are exactly the SPEC §2 table, or the custom
table the record was claimed with; junk target names are caller bugs; a refused transition writes
nothing; an applied one stamps the server time and records its seq."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import redis

import pylivermore
from pylivermore import Registry, State

from .conftest import Claim
from .helpers import (
    BAD_ARGS,
    COMMON_ENTRY_FIELDS,
    SPEC_EDGES,
    STATES,
    Owner,
    Resource,
    Scripts,
    Snapshot,
    assert_recent_iso,
    assert_unchanged,
    hgetall,
    last_entry,
    next_seq,
    server_now,
    transition_args,
)

OLD = "2000-01-01T00:00:00.000Z"  # a lastStateChange no transition could write

#: Syntactically invalid state names: wrong case, whitespace, empty, punctuation, too long, non-ASCII.
JUNK_TARGETS = [
    "Active",
    "IDLE",
    " idle",
    "idle ",
    "",
    "idle\n",
    "act ive",
    "stopped;",
    "starting>warming",
    "x" * 33,
    "act\u00edve",
]
#: Well-formed names ([a-z_]) that no table here contains: answered BAD_TRANSITION (header of transition-2.lua).
UNKNOWN_TARGETS = ["error", "connected", "unknown", "a" * 32]


@pytest.fixture
def in_state(claim: Claim, make_resource: Callable[[], Resource], admin: redis.Redis) -> Callable[[str], Owner]:
    """``in_state(state)``: a new resource claimed and put in *state* by direct HSET, with an old
    lastStateChange and no connectedAt, so that a transition's own writes can be told apart."""

    def make(state: str) -> Owner:
        o = claim(make_resource())
        admin.hset(o.res.status, mapping={"connectionState": state, "lastStateChange": OLD})
        admin.hdel(o.res.status, "connectedAt")
        return o

    return make


def test_package_table_is_the_spec_table() -> None:
    """pylivermore.TRANSITIONS holds exactly the 10 edges of SPEC §2 (guards the reference the
    script is compared with)."""
    table = {(a.value, b.value) for a, targets in pylivermore.TRANSITIONS.items() for b in targets}
    assert table == SPEC_EDGES
    assert len(table) == 10


@pytest.mark.parametrize(("source", "target"), list(itertools.product(STATES, STATES)))
def test_transition_pair(
    source: str,
    target: str,
    in_state: Callable[[str], Owner],
    call: Scripts,
    admin: redis.Redis,
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """Each of the 36 (from, to) pairs is applied iff it is an edge of pylivermore.TRANSITIONS
    (same-state moves are refused). Applied: state, lastStateChange (server time, ISO with ms),
    connectedAt only on entering active, and one log entry. Refused: BAD_TRANSITION naming the
    current state, and byte-identical keys with no log entry."""
    allowed = {(a.value, b.value) for a, bs in pylivermore.TRANSITIONS.items() for b in bs}
    o = in_state(source)
    before = snapshot(o.res)
    seq = next_seq()
    since = server_now(admin)
    reply = call("transition", o.res.keys_for("transition"), transition_args(o.token, target, seq=seq))
    if (source, target) not in allowed:
        assert reply == ["BAD_TRANSITION", source]
        assert_unchanged(before, snapshot(o.res))
        return
    assert reply[:2] == ["OK", target]
    stamp = reply[2]
    assert_recent_iso(admin, stamp, since)
    record = hgetall(admin, o.res.status)
    assert record["connectionState"] == target
    assert record["lastStateChange"] == stamp
    assert record["seq"] == seq
    if target == "active":
        assert record["connectedAt"] == stamp
    else:
        assert "connectedAt" not in record
    assert admin.xlen(o.res.log) == before.xlen + 1
    entry = last_entry(admin, o.res.log)
    assert entry["event"] == "state_transition"
    assert (entry["fromState"], entry["toState"]) == (source, target)
    assert entry["timestamp"] == stamp
    assert entry["fencingToken"] == str(o.fencing_token)
    assert entry["seq"] == seq
    assert set(entry) == set(COMMON_ENTRY_FIELDS) | {"fromState", "toState", "adminEmail", "seq"}
    assert 0 < admin.pttl(o.res.status) <= before.pttl, "a transition must not renew the lease"


def test_accepted_set_is_exactly_the_table(in_state: Callable[[str], Owner], call: Scripts) -> None:
    """Driving all 36 pairs through the script accepts exactly the 10 edges of
    pylivermore.TRANSITIONS and of SPEC §2, nothing more and nothing less."""
    accepted = set()
    for source, target in itertools.product(STATES, STATES):
        o = in_state(source)
        reply = call("transition", o.res.keys_for("transition"), transition_args(o.token, target))
        assert reply[0] in {"OK", "BAD_TRANSITION"}, reply
        if reply[0] == "OK":
            accepted.add((source, target))
    expected = {(a.value, b.value) for a, bs in pylivermore.TRANSITIONS.items() for b in bs}
    assert accepted == expected == SPEC_EDGES


@pytest.mark.parametrize("source", STATES)
@pytest.mark.parametrize("junk", JUNK_TARGETS)
def test_junk_target_is_bad_args(
    junk: str, source: str, in_state: Callable[[str], Owner], call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """A target that is not a state name (wrong case, whitespace, empty, punctuation, >32 chars,
    non-ASCII) is rejected with "ERR pylivermore bad-args", from every state, writing nothing."""
    o = in_state(source)
    before = snapshot(o.res)
    with pytest.raises(redis.ResponseError) as info:
        call("transition", o.res.keys_for("transition"), transition_args(o.token, junk))
    assert str(info.value).startswith(BAD_ARGS)
    assert_unchanged(before, snapshot(o.res))


@pytest.mark.parametrize("source", STATES)
@pytest.mark.parametrize("unknown", UNKNOWN_TARGETS)
def test_unknown_state_name_is_refused(
    unknown: str, source: str, in_state: Callable[[str], Owner], call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """A well-formed but unknown state name (e.g. the legacy "error") is no edge of the table:
    BAD_TRANSITION naming the current state, nothing written. (The header allows any [a-z_]
    name as ARGV[3] because custom tables may name their own states.)"""
    o = in_state(source)
    before = snapshot(o.res)
    reply = call("transition", o.res.keys_for("transition"), transition_args(o.token, unknown))
    assert reply == ["BAD_TRANSITION", source]
    assert_unchanged(before, snapshot(o.res))


def test_python_api_rejects_unknown_state_before_any_round_trip(client: redis.Redis, namespace: str) -> None:
    """Lease.transition("error") / ("Active") raises ValueError before sending anything; the
    record stays idle."""
    registry = Registry(client, namespace=namespace)
    try:
        with registry.claim(1, "Binance") as lease:
            for name in ("error", "Active", " idle", ""):
                with pytest.raises(ValueError, match="state"):
                    lease.transition(name)
            assert lease.status().connection_state is State.IDLE
    finally:
        registry.close()


def test_expected_state_compare_and_set(
    owner: Owner, call: Scripts, admin: redis.Redis, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """ARGV[4] (expected) is a compare-and-set: a mismatch answers BAD_TRANSITION with the actual
    state and writes nothing, even for a valid edge; a match applies the transition."""
    keys = owner.res.keys_for("transition")
    before = snapshot(owner.res)
    reply = call("transition", keys, transition_args(owner.token, "starting", expected="warming"))
    assert reply == ["BAD_TRANSITION", "idle"]
    assert_unchanged(before, snapshot(owner.res))
    reply = call("transition", keys, transition_args(owner.token, "starting", expected="idle"))
    assert reply[:2] == ["OK", "starting"]
    assert hgetall(admin, owner.res.status)["connectionState"] == "starting"


def test_custom_table(
    claim: Claim,
    make_resource: Callable[[], Resource],
    call: Scripts,
    admin: redis.Redis,
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """The claim's ARGV[9] replaces the default table for the lease (stored as stateTable): with
    "idle>active active>idle", idle->active is applied (setting connectedAt) and active->idle too,
    while the default edge idle->starting is refused without writing. A record claimed with the
    default table refuses idle->active."""
    table = "idle>active active>idle"
    owner = claim(make_resource(), table=table)
    keys = owner.res.keys_for("transition")
    assert hgetall(admin, owner.res.status)["stateTable"] == table
    before = snapshot(owner.res)
    assert call("transition", keys, transition_args(owner.token, "starting")) == ["BAD_TRANSITION", "idle"]
    assert_unchanged(before, snapshot(owner.res))
    reply = call("transition", keys, transition_args(owner.token, "active"))
    assert reply[:2] == ["OK", "active"]
    assert hgetall(admin, owner.res.status)["connectedAt"] == reply[2]
    assert call("transition", keys, transition_args(owner.token, "idle"))[:2] == ["OK", "idle"]
    assert hgetall(admin, owner.res.status)["stateTable"] == table
    # On the default table, idle -> active is not an edge.
    default = claim(make_resource())
    before = snapshot(default.res)
    reply = call("transition", default.res.keys_for("transition"), transition_args(default.token, "active"))
    assert reply == ["BAD_TRANSITION", "idle"]
    assert_unchanged(before, snapshot(default.res))


def test_custom_table_of_2048_bytes_is_accepted(
    claim: Claim, make_resource: Callable[[], Resource], call: Scripts, admin: redis.Redis
) -> None:
    """The table limit is inclusive: a 2048-byte table is stored and used (2049 bytes is
    bad-args, see test_bad_input)."""
    head = "idle>starting"
    filler = " a>b" * ((2048 - len(head)) // 4)
    table = head + filler + "x" * (2048 - len(head) - len(filler))
    assert len(table) == 2048
    owner = claim(make_resource(), table=table)
    assert hgetall(admin, owner.res.status)["stateTable"] == table
    reply = call("transition", owner.res.keys_for("transition"), transition_args(owner.token, "starting"))
    assert reply[:2] == ["OK", "starting"]


def test_every_transition_sets_last_state_change(owner: Owner, call: Scripts, admin: redis.Redis) -> None:
    """Walking the whole happy path, each step rewrites lastStateChange with the server's time
    (monotonic along the walk); connectedAt is set once, on entering active, and kept after."""
    keys = owner.res.keys_for("transition")
    previous = hgetall(admin, owner.res.status)["lastStateChange"]
    connected_at = None
    for step in ("starting", "warming", "active", "stopping", "stopped", "idle"):
        admin.hset(owner.res.status, "lastStateChange", OLD)
        since = server_now(admin)
        reply = call("transition", keys, transition_args(owner.token, step))
        assert reply[:2] == ["OK", step]
        record = hgetall(admin, owner.res.status)
        assert record["lastStateChange"] == reply[2] >= previous
        assert_recent_iso(admin, reply[2], since)
        previous = reply[2]
        if step == "active":
            connected_at = reply[2]
        assert record.get("connectedAt") == connected_at
