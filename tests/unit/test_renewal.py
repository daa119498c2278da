"""The heartbeat loop's renewal plan (sans-IO): which leases one ``renew_many`` call renews, and
how its reply is applied to each lease."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import AskError, MovedError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from pylivermore._config import RegistryConfig
from pylivermore._lease import LeaseCore
from pylivermore._protocol import pipeline_commands, pipeline_replies
from pylivermore._renewal import (
    BATCH,
    ClusterRound,
    Node,
    NodeClients,
    Renewal,
    Schedule,
    redirection,
    renewal_calls,
    settle_renewal,
)

TTL, RENEW, BEAT = 45.0, 30.0, 15.0
SENT = 1000.0
RENEWED = [b"RENEWED", b"2026-02-10T12:34:56.789Z"]


def make_cores(count: int, sent_at: float = SENT) -> list[LeaseCore]:
    """*count* leases of one registry, on ids 1, 2, ..., all claimed (sent) at *sent_at*."""
    config = RegistryConfig(hostname="h", instance_id="i", ttl=TTL, renew_deadline=RENEW, heartbeat_interval=BEAT)
    return [
        config.claimed(config.claim(i + 1, "Binance", False), [b"CLAIMED", b"5", b"new"], sent_at) for i in range(count)
    ]


def ident(core: LeaseCore) -> LeaseCore:
    return core


def test_due_leases_go_out_in_calls_of_at_most_batch() -> None:
    """600 leases due at once make ceil(600 / BATCH) renew_many calls; each call's KEYS are the
    status keys and its ARGV the TTL in ms then each lease's token, in the same order as its cores."""
    cores = make_cores(600)
    calls = renewal_calls(cores, ident, SENT + BEAT)
    assert [len(chunk) for chunk, _ in calls] == [BATCH, BATCH, 600 - 2 * BATCH]
    assert [c for chunk, _ in calls for c in chunk] == cores
    for chunk, call in calls:
        assert call.script == "renew_many"
        assert call.keys == tuple(c.keys.status for c in chunk)
        assert call.args == (str(int(TTL * 1000)), *(c.token for c in chunk))


def test_only_due_leases_are_renewed_and_ahead_widens_the_window() -> None:
    """A lease is renewed once its beat time has come, or with *ahead*, when it comes within
    that many seconds; lost leases never are."""
    early, late, lost = make_cores(3)
    late.next_beat = SENT + BEAT + 2.0
    lost.lose("taken")
    now = SENT + BEAT
    assert [chunk for chunk, _ in renewal_calls([early, late, lost], ident, now)] == [[early]]
    assert [chunk for chunk, _ in renewal_calls([early, late, lost], ident, now, ahead=2.0)] == [[early, late]]
    assert renewal_calls([early, late, lost], ident, now - 0.5) == []


def test_a_lease_past_its_deadline_is_lost_not_renewed() -> None:
    """At its deadline a lease is marked lost ("deadline") and left out of the calls."""
    (core,) = make_cores(1)
    assert renewal_calls([core], ident, SENT + RENEW) == []
    assert core.lost_reason == "deadline"


def test_cluster_leases_are_grouped_by_slot() -> None:
    """With a slot function (cluster clients), each call holds keys of one slot only."""
    cores = make_cores(10)
    slot_of = {c.keys.status: i % 3 for i, c in enumerate(cores)}.__getitem__
    calls = renewal_calls(cores, ident, SENT + BEAT, slot_of=slot_of)
    assert sorted(len(chunk) for chunk, _ in calls) == [3, 3, 4]
    for chunk, call in calls:
        assert len({slot_of(k) for k in call.keys}) == 1
        assert call.keys == tuple(c.keys.status for c in chunk)


def test_settle_applies_each_reply_to_its_lease() -> None:
    """RENEWED extends that lease's deadline from the send time; EXPIRED and TAKEN lose theirs;
    a CORRUPT one is retried soon, like a failed beat."""
    renewed, expired, taken, corrupt = make_cores(4)
    sent = SENT + BEAT
    reply = [*RENEWED, b"EXPIRED", b"", b"TAKEN", b"9", b"CORRUPT", b"status key is not a hash"]  # flat: word, data
    settle_renewal([renewed, expired, taken, corrupt], reply, sent, sent + 0.01)
    assert renewed.deadline == sent + RENEW
    assert renewed.next_beat == sent + BEAT
    assert expired.lost_reason == "expired"
    assert taken.lost_reason == "taken"
    assert corrupt.lost_reason is None
    assert corrupt.next_beat == sent + 0.01 + BEAT / 4


@pytest.mark.parametrize(
    "reply",
    [RedisConnectionError("reset"), RENEWED, RENEWED * 3, [RENEWED, RENEWED], b"RENEWED", None],
    ids=["error", "too-few", "too-many", "nested", "not-a-list", "none"],
)
def test_a_failed_or_malformed_call_retries_every_lease(reply: object, caplog: pytest.LogCaptureFixture) -> None:
    """An exception instead of a reply, or a reply that is not one entry per lease, renews
    nothing: every lease retries after heartbeat_interval / 4, and one warning is logged."""
    cores = make_cores(2)
    sent = SENT + BEAT
    with caplog.at_level(logging.WARNING, logger="pylivermore.heartbeat"):
        settle_renewal(cores, reply, sent, sent + 0.01)
    for core in cores:
        assert core.deadline == SENT + RENEW
        assert core.next_beat == sent + 0.01 + BEAT / 4
        assert core.lost_reason is None
    assert len(caplog.records) == 1


def test_late_renewal_reply_loses_the_lease() -> None:
    """A RENEWED that arrives renew_deadline or more after its send time proves nothing: lost."""
    (core,) = make_cores(1)
    settle_renewal([core], RENEWED, SENT + BEAT, SENT + BEAT + RENEW + 0.1)
    assert core.lost_reason == "deadline"


# -- the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [5, 500], ids=["few", "many"])
def test_schedule_pops_exactly_the_due_leases(count: int) -> None:
    """pop_due returns each due lease once (whether it pops them one by one or, when many are due,
    in one pass), re-files a stale entry whose lease now wakes later, drops discarded leases, and
    keeps the rest; push_all files them again and drops the lost ones."""
    cores = make_cores(count)
    schedule: Schedule[LeaseCore] = Schedule()
    for c in cores:
        schedule.add(c, c)
    later, gone = cores[0], cores[1]
    later.next_beat = SENT + BEAT + 5.0  # its heap entry (SENT + BEAT) is now stale
    schedule.discard(gone)
    now = SENT + BEAT
    due = schedule.pop_due(now)
    assert sorted(id(c) for c in due) == sorted(id(c) for c in cores[2:])
    assert schedule.pop_due(now) == []
    assert schedule.next_wake() == SENT + BEAT + 5.0  # the stale entry was re-filed at its new time
    assert len(schedule) == count - 1

    due[0].lose("taken")
    for c in due[1:]:
        c.next_beat = now + BEAT
    schedule.push_all(due)
    assert len(schedule) == count - 2  # the lost lease left the schedule
    assert schedule.pop_due(now + BEAT - 0.001) == [later]
    assert sorted(id(c) for c in schedule.pop_due(now + BEAT)) == sorted(id(c) for c in due[1:])


# -- cluster rounds -------------------------------------------------------------------------------


NODES = [("127.0.0.1", 7001), ("127.0.0.1", 7002), ("127.0.0.1", 7003)]


def cluster_round(count: int) -> tuple[list[Renewal], ClusterRound]:
    """*count* leases, one renew_many call each (one slot each), spread over three nodes in turn."""
    cores = make_cores(count)
    renewals = renewal_calls(cores, ident, SENT + BEAT, slot_of={c.keys.status: i for i, c in enumerate(cores)}.get)
    node_of = {call.keys[0]: NODES[i % 3] for i, (_, call) in enumerate(renewals)}.__getitem__
    return renewals, ClusterRound(renewals, node_of)


def test_a_cluster_round_sends_one_pipeline_per_node() -> None:
    """15 calls over 3 nodes make 3 batches, each with the calls of its node in order; the round is
    complete once their replies are absorbed, and the replies line up with the calls."""
    renewals, plan = cluster_round(15)
    batches = plan.batches()
    assert sorted(b.node for b in batches) == NODES
    assert all(not b.asking and len(b.calls) == 5 for b in batches)
    for batch in batches:
        assert batch.calls == [renewals[i][1] for i in batch.indexes]
        plan.absorb(batch, [[b"RENEWED", str(i).encode()] for i in batch.indexes])
    assert plan.batches() == []
    assert plan.replies == [[b"RENEWED", str(i).encode()] for i in range(15)]
    assert not plan.refresh


def test_redirected_calls_are_sent_once_more_to_the_node_named() -> None:
    """MOVED resends to the new owner of the slot (no ASKING) and asks for a slot-map refresh; ASK
    resends with ASKING to the importing node; a call redirected twice keeps its error."""
    renewals, plan = cluster_round(3)
    first = {b.node: b for b in plan.batches()}
    moved, ask = MovedError("11 127.0.0.1:7009"), AskError("12 127.0.0.1:7008")
    plan.absorb(first[NODES[0]], [moved])
    plan.absorb(first[NODES[1]], [ask])
    plan.absorb(first[NODES[2]], [RENEWED])
    again = {b.node: b for b in plan.batches()}
    assert set(again) == {("127.0.0.1", 7009), ("127.0.0.1", 7008)}
    assert (again[("127.0.0.1", 7009)].asking, again[("127.0.0.1", 7008)].asking) == (False, True)
    assert again[("127.0.0.1", 7009)].calls == [renewals[0][1]]
    assert plan.refresh  # MOVED: the slot map is stale
    plan.absorb(again[("127.0.0.1", 7009)], [RENEWED])
    plan.absorb(again[("127.0.0.1", 7008)], [AskError("12 127.0.0.1:7007")])
    assert plan.batches() == []  # no third attempt in one round
    assert plan.replies[0] == RENEWED
    assert isinstance(plan.replies[1], AskError)
    assert plan.replies[2] == RENEWED


def test_a_node_that_is_down_fails_only_its_calls() -> None:
    """A pipeline that raised (node down) stands for each of its calls; the other nodes' replies
    stand; the slot map is refreshed before the next round."""
    _, plan = cluster_round(6)
    down = RedisConnectionError("connection refused")
    for batch in plan.batches():
        plan.absorb(batch, down if batch.node == NODES[1] else [RENEWED] * len(batch.calls))
    assert [r is down for r in plan.replies] == [i % 3 == 1 for i in range(6)]
    assert plan.refresh


def test_an_unroutable_call_fails_alone() -> None:
    """A key whose slot no node serves (the node_of lookup raises) fails that call only."""
    cores = make_cores(2)
    renewals = renewal_calls(cores, ident, SENT + BEAT, slot_of={c.keys.status: i for i, c in enumerate(cores)}.get)
    lost_slot = renewals[0][1].keys[0]

    def node_of(key: str) -> Node:
        if key == lost_slot:
            raise SlotNotCoveredError("slot not covered")
        return NODES[0]

    plan = ClusterRound(renewals, node_of)
    (batch,) = plan.batches()
    plan.absorb(batch, [RENEWED])
    assert isinstance(plan.replies[0], SlotNotCoveredError)
    assert plan.replies[1] == RENEWED
    assert plan.refresh


def test_pipeline_commands_put_asking_before_each_call_and_the_tail_last() -> None:
    """With asking, each EVALSHA follows an ASKING; the tail (e.g. WAIT) comes last; the replies
    keep one per call, then the tail's."""
    renewals, _ = cluster_round(2)
    calls = [call for _, call in renewals]
    commands = pipeline_commands(calls, asking=True, tail=[("WAIT", 1, 100)])
    assert [c[0] for c in commands] == ["ASKING", "EVALSHA", "ASKING", "EVALSHA", "WAIT"]
    assert commands[1][2:] == (1, *calls[0].keys, *calls[0].args)
    assert pipeline_replies([b"OK", "r1", b"OK", "r2", 1], 2, asking=True) == ["r1", "r2", 1]
    assert pipeline_replies(["r1", "r2", 1], 2) == ["r1", "r2", 1]


def test_node_clients_are_made_once_per_node_and_timeout() -> None:
    """A node's client is made on first use and reused; another timeout gets its own; drain hands
    every client over once (to be closed) and starts afresh."""
    made: list[tuple[Node, float | None]] = []

    def factory(node: Node, timeout: float | None) -> tuple[Node, float | None]:
        made.append((node, timeout))
        return node, timeout

    clients = NodeClients(factory)
    assert clients.get(NODES[0], 0.5) is clients.get(NODES[0], 0.5)
    clients.get(NODES[0], None)
    clients.get(NODES[1], 0.5)
    assert made == [(NODES[0], 0.5), (NODES[0], None), (NODES[1], 0.5)]
    assert sorted(clients.drain(), key=str) == sorted(made, key=str)
    assert clients.drain() == []
    clients.get(NODES[0], 0.5)
    assert len(made) == 4


def test_redirection_names_the_node_and_whether_to_ask() -> None:
    """MOVED: the node now serving the slot, no ASKING; ASK: the importing node, after ASKING;
    any other reply (an error included) is no redirection."""
    assert redirection(MovedError("11 127.0.0.1:7009")) == (("127.0.0.1", 7009), False)
    assert redirection(AskError("12 127.0.0.1:7008")) == (("127.0.0.1", 7008), True)
    assert redirection(RENEWED) is None
    assert redirection(RedisConnectionError("reset")) is None
