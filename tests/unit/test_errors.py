"""The exception hierarchy: pickling, attributes, and messages that say what happened and what to do."""

from __future__ import annotations

import copy
import pickle

import msgspec
import pytest

import pylivermore
from pylivermore import (
    ClaimConflictError,
    CorruptStatusError,
    InstanceStatus,
    InvalidTransitionError,
    LeaseLostError,
    LivermoreError,
    NotReplicatedError,
    ScriptContractError,
    State,
)

HOLDER = InstanceStatus(
    exchange_id=7,
    exchange_name="Binance",
    hostname="worker-a",
    ip_address="203.0.113.9",
    connection_state=State.ACTIVE,
    symbol_count=120,
    connected_at="2026-02-10T12:00:01.000Z",
    last_heartbeat="2026-02-10T12:34:56.789Z",
    last_state_change="2026-02-10T12:00:01.000Z",
    registered_at="2026-02-10T11:59:59.500Z",
    fencing_token=1770724799500123,
    instance_id="worker-a:4242:abc123",
)

#: One instance of every class, with the attributes each must keep.
SAMPLES: list[tuple[LivermoreError, dict[str, object]]] = [
    (ClaimConflictError("7", HOLDER, 12.3), {"exchange_id": "7", "holder": HOLDER, "ttl": 12.3}),
    (ClaimConflictError("7", None, 0.0), {"exchange_id": "7", "holder": None, "ttl": 0.0}),
    (LeaseLostError("kraken", "taken"), {"exchange_id": "kraken", "reason": "taken"}),
    (
        InvalidTransitionError("7", "idle", "active"),
        {"exchange_id": "7", "current": "idle", "requested": "active", "expected": None, "allowed": ()},
    ),
    (
        InvalidTransitionError("7", "idle", "active", None, ("starting",)),
        {"exchange_id": "7", "current": "idle", "requested": "active", "expected": None, "allowed": ("starting",)},
    ),
    (
        InvalidTransitionError("7", "warming", "active", "starting"),
        {"exchange_id": "7", "current": "warming", "requested": "active", "expected": "starting"},
    ),
    (
        CorruptStatusError("ns:{7}:status", "status key is not a hash"),
        {"key": "ns:{7}:status", "detail": "status key is not a hash"},
    ),
    (ScriptContractError("claim", [b"WHAT", 1]), {"script": "claim", "reply": [b"WHAT", 1]}),
    (
        NotReplicatedError("7", 2, 1, 0.5),
        {"exchange_id": "7", "replicas": 2, "acknowledged": 1, "timeout": 0.5},
    ),
]
IDS = [f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(SAMPLES)]


@pytest.mark.parametrize(("error", "attrs"), SAMPLES, ids=IDS)
def test_pickle_round_trip(error: LivermoreError, attrs: dict[str, object]) -> None:
    """Every exception survives pickle (e.g. across a process pool) with its type, attributes and message."""
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        clone = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(clone) is type(error)
        for name, value in attrs.items():
            assert getattr(clone, name) == value, name
        assert str(clone) == str(error)
        assert clone.args == error.args


@pytest.mark.parametrize(("error", "attrs"), SAMPLES, ids=IDS)
def test_copy_keeps_attributes(error: LivermoreError, attrs: dict[str, object]) -> None:
    """copy.copy/deepcopy (used by some loggers and frameworks) keep the attributes too."""
    for clone in (copy.copy(error), copy.deepcopy(error)):
        for name, value in attrs.items():
            assert getattr(clone, name) == value, name


def test_hierarchy() -> None:
    """All errors derive from LivermoreError (an Exception); InvalidTransitionError is also a ValueError."""
    for cls in (
        ClaimConflictError,
        LeaseLostError,
        InvalidTransitionError,
        CorruptStatusError,
        ScriptContractError,
        NotReplicatedError,
    ):
        assert issubclass(cls, LivermoreError)
    assert issubclass(LivermoreError, Exception)
    assert issubclass(InvalidTransitionError, ValueError)
    assert not issubclass(LeaseLostError, ValueError)
    with pytest.raises(ValueError, match="cannot move"):
        raise InvalidTransitionError("7", "idle", "active")


def test_all_exported() -> None:
    """Every exception class is importable from the package root and listed in __all__."""
    for name in (
        "LivermoreError",
        "ClaimConflictError",
        "LeaseLostError",
        "InvalidTransitionError",
        "CorruptStatusError",
        "ScriptContractError",
        "NotReplicatedError",
    ):
        assert name in pylivermore.__all__
        assert isinstance(getattr(pylivermore, name), type)


def test_claim_conflict_message() -> None:
    """The conflict message names the holder (host, instance, state and since when, when it claimed
    and connected, its address) and the remaining TTL, and tells the user to stop that instance or
    wait, as the seed did."""
    message = str(ClaimConflictError("7", HOLDER, 12.34))
    for part in (
        "exchange 7",
        HOLDER.hostname,
        f"address {HOLDER.ip_address}",
        f"connected at {HOLDER.connected_at}",
        f"claimed at {HOLDER.registered_at}",
        f"state active since {HOLDER.last_state_change}",
        HOLDER.instance_id,
        "Stop that instance first",
        "wait for its TTL to expire",
        "12.3 s remaining",
    ):
        assert part in message, part


def test_claim_conflict_message_with_unknown_fields() -> None:
    """A holder that reported no address and never connected (the defaults) is worded from what is
    known: no "IP: unknown", no "connected since never"; an undecodable holder is "another instance"."""
    quiet = msgspec.structs.replace(HOLDER, ip_address=None, country_code=None, connected_at=None)
    message = str(ClaimConflictError("7", quiet, 1.0))
    assert "no address reported" in message
    assert f"claimed at {HOLDER.registered_at}" in message
    for wording in ("unknown", "never", "connected"):
        assert wording not in message, wording
    assert "another instance" in str(ClaimConflictError("7", None, 1.0))


@pytest.mark.parametrize(
    ("reason", "what"),
    [
        ("expired", "expired or was removed"),
        ("taken", "another owner holds it"),
        ("deadline", "renew deadline"),
        ("released", "released"),
        ("something-new", "something-new"),
    ],
)
def test_lease_lost_message(reason: str, what: str) -> None:
    """The lease-lost message gives the reason in words and says to stop acting as owner and claim again."""
    message = str(LeaseLostError("7", reason))
    assert "exchange 7" in message
    assert what in message
    assert "stop acting as its owner" in message
    assert "claim it again" in message


def test_invalid_transition_messages() -> None:
    """An illegal edge names both states and the state table; a failed compare-and-set says to re-read."""
    edge = str(InvalidTransitionError("7", "idle", "active", None, ("starting",)))
    assert "'idle'" in edge
    assert "'active'" in edge
    assert "state table" in edge
    assert "from 'idle' it can move to 'starting'" in edge
    assert "to 'stopping', 'idle'" in str(InvalidTransitionError("7", "starting", "active", None, ("stopping", "idle")))
    assert "it can move to no other state" in str(InvalidTransitionError("7", "dead", "idle"))
    cas = str(InvalidTransitionError("7", "warming", "active", "starting"))
    assert "'warming'" in cas
    assert "'starting'" in cas
    assert "re-read the status" in cas
    # expected == current: the edge itself is the problem
    assert "state table" in str(InvalidTransitionError("7", "idle", "active", "idle"))


def test_corrupt_and_contract_messages() -> None:
    """Corrupt: key, damage and the repair hint. Contract: script, reply and the version hint."""
    corrupt = str(CorruptStatusError("ns:{7}:status", "status key is not a hash"))
    assert "ns:{7}:status" in corrupt
    assert "status key is not a hash" in corrupt
    assert "delete or repair" in corrupt
    contract = str(ScriptContractError("claim", [b"WHAT"]))
    assert "claim" in contract
    assert "WHAT" in contract
    assert "script version" in contract
