"""Contract v2 through the Python API: each finding of the v1 audit (issue 9), as a Python user meets it.

The raw-script side of the same findings (EVALSHA, no Python in between) is in
``tests/contract/test_v2_findings.py``; the language-neutral side in ``lua/conformance/``.
Every test runs on a standalone server and a cluster, through the sync and the asyncio driver.
"""

from __future__ import annotations

import msgspec
import pytest

from pylivermore import ClaimConflictError, CorruptStatusError, InvalidTransitionError, State
from pylivermore._keys import Keys
from pylivermore._scripts import load_scripts
from tests.integration.conftest import Topology, entered, io

CUSTOM = {"idle": ["paused", "starting"], "paused": ["idle"], "starting": ["idle"]}
TOKEN = "c0ffee" * 6  # a raw client's token: 36 characters


def raw(topology: Topology, op: str, keys: list[str], args: list[str]) -> object:
    """Run script *op* with raw EVALSHA as another language's client would (after SCRIPT LOAD)."""
    spec = load_scripts()[op]
    admin = topology.admin
    node = admin.get_node_from_key(keys[0]) if topology.kind == "cluster" else None
    target = {"target_nodes": node} if node is not None else {}
    admin.execute_command("SCRIPT", "LOAD", spec.source, **target)
    return admin.execute_command("EVALSHA", spec.sha1, len(keys), *keys, *args, **target)


def layout(namespace: str, wire_id: str) -> list[str]:
    k = Keys(namespace, wire_id)
    return [k.status, k.log, k.fence]


# -- 1. keys and arguments are checked against each other ----------------------------------------


async def test_keys_of_one_id_cannot_carry_another_id(topology: Topology, namespace: str) -> None:
    """Finding 1: keys of {71} with exchange_id 72 are refused; get(71) and get(72) stay None, and a record
    planted under {71} claiming to be 72 is reported corrupt instead of being read as exchange 72."""
    registry = topology.registry(namespace=namespace)
    with pytest.raises(Exception, match="bad-args: exchange_id must be the <id> of the keys"):
        raw(topology, "claim", layout(namespace, "71"), [TOKEN, "45000", "72", "X", "h", "i", "0", "86400000", ""])
    assert await io(registry.get(71)) is None
    assert await io(registry.get(72)) is None
    status = Keys(namespace, "71").status
    topology.admin.hset(status, mapping={"exchangeId": "72", "exchangeName": "X"})
    with pytest.raises(CorruptStatusError, match="not its key's"):
        await io(registry.get(71))
    assert await io(registry.instances()) == []


# -- 2. one resource, one id ------------------------------------------------------------------------


async def test_one_resource_has_one_id(topology: Topology, namespace: str) -> None:
    """Finding 2: "07" is refused before any round trip; "7" and 7 are one resource (they conflict), and the
    lease's exchange_id equals the record's."""
    registry = topology.registry(namespace=namespace)
    with pytest.raises(ValueError, match="must not start with 0"):
        await io(registry.claim("07", "X"))
    lease = await io(registry.claim(7, "X"))
    other = topology.registry(namespace=namespace)
    with pytest.raises(ClaimConflictError):
        await io(other.claim("7", "X"))
    status = await io(registry.get("7"))
    assert status is not None
    assert lease.exchange_id == status.exchange_id == 7
    assert type(lease.exchange_id) is int
    await io(lease.release())


# -- 3. custom states end to end --------------------------------------------------------------------


async def test_a_custom_table_works_end_to_end(topology: Topology, namespace: str) -> None:
    """Finding 3: a registry with new state names claims, transitions into them, and every reader (get,
    instances, activity, the JSON document) reads them; the record says which table it was claimed with."""
    registry = topology.registry(namespace=namespace, transitions=CUSTOM)
    lease = await io(registry.claim(3, "X"))
    assert await io(lease.transition("paused")) == "paused"
    assert lease.state == "paused"
    with pytest.raises(InvalidTransitionError) as info:
        await io(lease.transition("starting"))  # not an edge from paused in this table
    assert info.value.allowed == ("idle",)
    assert "from 'paused' it can move to 'idle'" in str(info.value)
    with pytest.raises(ValueError, match="must say what went wrong"):
        await io(lease.record_error(""))
    status = await io(registry.get(3))
    assert status is not None
    assert status.connection_state == "paused"
    assert status.state_table == "idle>starting idle>paused starting>idle paused>idle"
    assert [s.connection_state for s in await io(registry.instances())] == ["paused"]
    entries = await io(registry.activity(3))
    assert (entries[0].event, entries[0].from_state, entries[0].to_state, entries[0].seq) == (
        "state_transition",
        "idle",
        "paused",
        1,
    )
    doc = msgspec.json.decode(msgspec.json.encode(status))
    assert (doc["connectionState"], doc["stateTable"]) == ("paused", status.state_table)
    await io(lease.transition("idle"))
    await io(lease.release())


async def test_a_default_registry_reads_records_in_custom_states(topology: Topology, namespace: str) -> None:
    """Finding 3: a record another client moved to a state the reader's table does not know is read by get()
    and listed by instances() (v1 raised CorruptStatusError and silently dropped it)."""
    keys = layout(namespace, "4")
    reply = raw(topology, "claim", keys, [TOKEN, "45000", "4", "Node", "h", "node-1", "0", "86400000", "idle>paused"])
    assert reply[0] == b"CLAIMED"
    assert raw(topology, "transition", keys[:2], [TOKEN, "1", "paused", ""])[:2] == [b"OK", b"paused"]
    registry = topology.registry(namespace=namespace)  # the seed's table
    status = await io(registry.get(4))
    assert status is not None
    assert status.connection_state == "paused"
    assert status.state_table == "idle>paused"
    assert [s.instance_id for s in await io(registry.instances())] == ["node-1"]
    known = await io(registry.claim(5, "X"))
    assert (await io(registry.get(5))).connection_state is State.IDLE  # the seed's six stay State members
    await io(known.release())


# -- 4. retention: tests/unit/test_config.py::test_log_retention_bounds (the floor, before any round trip) --


# -- 5. retries ---------------------------------------------------------------------------------------


async def test_a_replayed_transition_is_never_applied_twice(topology: Topology, namespace: str) -> None:
    """Finding 5: a transition sent twice (as redis-py resends after a timeout) is applied once: the second
    answer is REPLAYED and the lease takes it as the success it is; one log entry."""
    registry = topology.registry(namespace=namespace)
    lease = await io(registry.claim(6, "X"))
    core = lease._core
    call = core.transition_call("starting", None, core.deadline - core.settings.renew_deadline)
    first = await io(registry._run(call))
    again = await io(registry._run(call))
    assert first[0] == b"OK"
    assert again[0] == b"REPLAYED"
    assert core.transition_done(again, call) is State.STARTING
    transitions = [e for e in await io(registry.activity(6)) if e.event == "state_transition"]
    assert len(transitions) == 1
    await io(lease.release())


async def test_a_release_retried_after_someone_else_claimed_is_replayed(topology: Topology, namespace: str) -> None:
    """Finding 5: a deregister whose reply was lost, retried after another owner claimed, answers REPLAYED
    (released by you), not TAKEN (lost before release): release() reports True."""
    registry = topology.registry(namespace=namespace)
    lease = await io(registry.claim(8, "X"))
    call = lease._core.release_call()
    assert call is not None
    assert (await io(registry._run(call)))[0] == b"RELEASED"
    successor = await io(topology.registry(namespace=namespace).claim(8, "Y"))
    reply = await io(registry._run(call))
    assert reply[0] == b"REPLAYED"
    assert lease._core.release_done(reply) is True
    await io(successor.release())


async def test_a_lease_taken_before_its_release_reports_false(topology: Topology, namespace: str) -> None:
    """Finding 5: TAKEN now only means lost before release: release() answers False."""
    registry = topology.registry(namespace=namespace)
    lease = await io(registry.claim(9, "X"))
    await io(registry.close())  # no heartbeat: the takeover below is not seen before release()
    await io(topology.registry(namespace=namespace).force_release(9, "test"))
    successor = await io(topology.registry(namespace=namespace).claim(9, "Y"))
    assert await io(lease.release()) is False
    await io(successor.release())


# -- 6. the CONFLICT reply -------------------------------------------------------------------------


async def test_a_conflict_shows_the_public_fields_only(topology: Topology, namespace: str) -> None:
    """Finding 6: the holder in a ClaimConflictError never carries the owner digest or sequence numbers, and
    its TTL is the record's."""
    registry = topology.registry(namespace=namespace)
    lease = await io(registry.claim(10, "X"))
    async with entered(lease):
        with pytest.raises(ClaimConflictError) as info:
            await io(topology.registry(namespace=namespace).claim(10, "Y"))
        fields = dict(zip(info.value._holder[::2], info.value._holder[1::2], strict=True))  # type: ignore[index]
        names = {f.decode() if isinstance(f, bytes) else f for f in fields}
        assert names.isdisjoint({"ownerDigest", "seq", "retentionMs", "transitionRequest", "errorRequest"})
        assert {"exchangeId", "fencingToken", "instanceId", "contract"} <= names
        assert 0 < info.value.ttl <= 45
        assert info.value.holder is not None
        assert info.value.holder.fencing_token == lease.fencing_token


async def test_a_record_without_ttl_is_corrupt_not_a_conflict(topology: Topology, namespace: str) -> None:
    """Finding 6: a record that lost its TTL (PERSIST) would never expire; claim reports it corrupt instead of
    a conflict with 0.0 s left."""
    registry = topology.registry(namespace=namespace)
    lease = await io(registry.claim(11, "X"))
    await io(registry.close())
    topology.admin.persist(Keys(namespace, "11").status)
    with pytest.raises(CorruptStatusError, match="no TTL"):
        await io(topology.registry(namespace=namespace).claim(11, "Y"))
    assert lease.fencing_token == (await io(topology.registry(namespace=namespace).get(11))).fencing_token


# -- 7. the stated rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bad\ud800name", "tab\there", "nul\x00", "bell\x07"])
async def test_text_the_contract_refuses_is_refused_before_sending(
    topology: Topology, namespace: str, name: str
) -> None:
    """Finding 7: text that is not valid UTF-8 (a lone surrogate) or holds a control character is a ValueError
    before any round trip; nothing is written."""
    registry = topology.registry(namespace=namespace)
    with pytest.raises(ValueError, match=r"surrogate|control character"):
        await io(registry.claim(12, name))
    assert await io(registry.get(12)) is None


async def test_error_messages_are_made_to_fit_the_contract(topology: Topology, namespace: str) -> None:
    """Finding 7: record_error takes any text (tracebacks, bytes from a socket): control characters and lone
    surrogates become U+FFFD, lines stay; the script accepts it."""
    registry = topology.registry(namespace=namespace)
    lease = await io(registry.claim(13, "X"))
    await io(lease.record_error("line 1\nline 2\tand \x07 bell \udcff"))
    status = await io(registry.get(13))
    assert status is not None
    assert status.last_error == "line 1\nline 2\tand \ufffd bell \ufffd"
    await io(lease.release())
