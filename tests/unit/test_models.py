"""InstanceStatus / ActivityEntry: decoding what the scripts store, encoding the seed's JSON document."""

from __future__ import annotations

import msgspec
import pytest

from pylivermore import ActivityEntry, CorruptStatusError, InstanceStatus, State
from pylivermore.models import decode_entry, decode_status, pairs_to_dict, text_dict

KEY = "exchange:{7}:status"
LOG = "exchange:{7}:log"

#: SPEC §2: the seed's status document fields, in the seed's order.
SEED_FIELDS = [
    "exchangeId",
    "exchangeName",
    "hostname",
    "ipAddress",
    "countryCode",
    "adminEmail",
    "adminDisplayName",
    "connectionState",
    "symbolCount",
    "connectedAt",
    "lastHeartbeat",
    "lastStateChange",
    "registeredAt",
    "lastError",
    "lastErrorAt",
]
OPTIONAL = {"ipAddress", "countryCode", "adminEmail", "adminDisplayName", "connectedAt", "lastError", "lastErrorAt"}

#: A record as claim-3.lua writes it (required fields only, plus the owner proof).
MINIMAL = {
    "exchangeId": "7",
    "exchangeName": "Binance",
    "hostname": "worker-a",
    "connectionState": "idle",
    "symbolCount": "0",
    "lastHeartbeat": "2026-02-10T12:34:56.789Z",
    "lastStateChange": "2026-02-10T12:00:00.001Z",
    "registeredAt": "2026-02-10T11:59:59.500Z",
    "fencingToken": "1770724799500123",
    "instanceId": "worker-a:4242:abc123",
    "ownerDigest": "a" * 40,
}

#: Every optional field set, as after transitions, updates and an error.
FULL = {
    **MINIMAL,
    "ipAddress": "203.0.113.9",
    "countryCode": "DE",
    "adminEmail": "ops@example.com",
    "adminDisplayName": "Ops Team",
    "connectionState": "active",
    "symbolCount": "120",
    "connectedAt": "2026-02-10T12:00:01.000Z",
    "lastError": "socket closed",
    "lastErrorAt": "2026-02-10T12:30:00.000Z",
    "transitionRequest": "0123456789abcdef",
    "errorRequest": "fedcba9876543210",
}


def test_decode_full_record() -> None:
    """Every stored field is decoded to its typed attribute (ints as int, state as State)."""
    s = decode_status(FULL, KEY)
    assert isinstance(s, InstanceStatus)
    assert s.exchange_id == 7
    assert s.exchange_name == FULL["exchangeName"]
    assert s.hostname == FULL["hostname"]
    assert s.ip_address == FULL["ipAddress"]
    assert s.country_code == FULL["countryCode"]
    assert s.admin_email == FULL["adminEmail"]
    assert s.admin_display_name == FULL["adminDisplayName"]
    assert s.connection_state is State.ACTIVE
    assert s.symbol_count == 120
    assert s.connected_at == FULL["connectedAt"]
    assert s.last_heartbeat == FULL["lastHeartbeat"]
    assert s.last_state_change == FULL["lastStateChange"]
    assert s.registered_at == FULL["registeredAt"]
    assert s.last_error == FULL["lastError"]
    assert s.last_error_at == FULL["lastErrorAt"]
    assert s.fencing_token == int(FULL["fencingToken"])
    assert s.instance_id == FULL["instanceId"]


def test_decode_minimal_record_gives_none_for_absent_fields() -> None:
    """Absent optional fields (a null is an absent field) decode to None."""
    s = decode_status(MINIMAL, KEY)
    for name in OPTIONAL:
        attr = "".join("_" + c.lower() if c.isupper() else c for c in name)
        assert getattr(s, attr) is None, name


def test_json_is_the_seed_document() -> None:
    """msgspec.json.encode gives the seed's camelCase document, in its field order, with explicit nulls,
    plus fencingToken, instanceId and stateTable; timestamps are the stored ISO strings verbatim."""
    doc = msgspec.json.decode(msgspec.json.encode(decode_status(MINIMAL, KEY)))
    assert list(doc) == [*SEED_FIELDS, "fencingToken", "instanceId", "stateTable"]
    assert doc["stateTable"] is None
    for name in OPTIONAL:
        assert doc[name] is None, name
    for name in ("lastHeartbeat", "lastStateChange", "registeredAt"):
        assert doc[name] == MINIMAL[name]
    assert doc["symbolCount"] == 0
    assert doc["connectionState"] == "idle"
    assert doc["fencingToken"] == int(MINIMAL["fencingToken"])
    full = msgspec.json.decode(msgspec.json.encode(decode_status(FULL, KEY)))
    for name in SEED_FIELDS:
        if name not in ("exchangeId", "symbolCount"):
            assert full[name] == FULL[name], name
    assert full["symbolCount"] == 120


def test_internal_fields_are_never_exposed() -> None:
    """ownerDigest, transitionRequest, errorRequest and unknown extra fields are ignored, not encoded."""
    extra = {**FULL, "someFutureField": "x"}
    s = decode_status(extra, KEY)
    assert s == decode_status(FULL, KEY)
    doc = msgspec.json.decode(msgspec.json.encode(s))
    for hidden in ("ownerDigest", "transitionRequest", "errorRequest", "someFutureField"):
        assert hidden not in doc
    assert FULL["ownerDigest"] not in msgspec.json.encode(s).decode()


def test_a_record_whose_exchange_id_is_not_its_keys_is_corrupt() -> None:
    """A record under exchange:{7}:status that says exchangeId 72 is not read as exchange 72 (nor as 7)."""
    with pytest.raises(CorruptStatusError, match="not its key's"):
        decode_status({**MINIMAL, "exchangeId": "72"}, KEY)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [("7", 7), ("12345", 12345), ("binance", "binance"), ("kraken-eu", "kraken-eu"), ("007", "007"), ("7a", "7a")],
)
def test_exchange_id_numeric_only_for_numeric_ids(stored: str, expected: int | str) -> None:
    """exchangeId is a JSON number for integer ids and a string for slugs; a slug with a leading zero
    stays a string (as a number it would name another resource's keys)."""
    s = decode_status({**MINIMAL, "exchangeId": stored}, f"exchange:{{{stored}}}:status")
    assert s.exchange_id == expected
    assert type(s.exchange_id) is type(expected)
    doc = msgspec.json.decode(msgspec.json.encode(s))
    assert doc["exchangeId"] == expected
    assert type(doc["exchangeId"]) is type(expected)


def test_json_round_trip() -> None:
    """The encoded document decodes back to an equal InstanceStatus."""
    s = decode_status(FULL, KEY)
    assert msgspec.json.decode(msgspec.json.encode(s), type=InstanceStatus) == s


def test_status_is_frozen() -> None:
    """InstanceStatus is immutable: a snapshot, not a handle to change the record."""
    s = decode_status(MINIMAL, KEY)
    with pytest.raises(AttributeError):
        s.hostname = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "damage",
    [
        {"symbolCount": "many"},
        {"symbolCount": "1.5"},
        {"fencingToken": "abc"},
        {"connectionState": "x" * 33},
        {"connectionState": "Active"},
        {"connectionState": ""},
    ],
)
def test_corrupt_values(damage: dict[str, str]) -> None:
    """Values the scripts never write make CorruptStatusError for the key, saying it is not a pylivermore record."""
    with pytest.raises(CorruptStatusError) as info:
        decode_status({**MINIMAL, **damage}, KEY)
    assert info.value.key == KEY
    assert "not a pylivermore record" in info.value.detail


@pytest.mark.parametrize(
    "missing",
    ["exchangeId", "exchangeName", "hostname", "connectionState", "symbolCount", "fencingToken", "instanceId"],
)
def test_missing_required_field(missing: str) -> None:
    """A record without one of the fields claim always writes is corrupt."""
    fields = {k: v for k, v in MINIMAL.items() if k != missing}
    with pytest.raises(CorruptStatusError) as info:
        decode_status(fields, KEY)
    assert info.value.key == KEY


def test_pairs_and_text_dicts() -> None:
    """Flat [k, v, ...] replies and bytes mappings become str dicts (invalid UTF-8 does not raise)."""
    assert pairs_to_dict([b"a", b"1", "b", "2"]) == {"a": "1", "b": "2"}
    assert text_dict({b"a": b"1", "b": "2"}) == {"a": "1", "b": "2"}
    assert text_dict({b"k": b"\xff"})["k"] == "\udcff"
    flat = [x for k, v in FULL.items() for x in (k.encode(), v.encode())]
    assert decode_status(pairs_to_dict(flat), KEY) == decode_status(FULL, KEY)


# -- activity entries --------------------------------------------------------------------------


def test_decode_claim_entry() -> None:
    """A claim entry: ints decoded, empty strings (unknown ip, no replaced token) become None."""
    fields = {
        "event": "claim",
        "timestamp": "2026-02-10T12:00:00.001Z",
        "exchangeId": "7",
        "exchangeName": "Binance",
        "hostname": "worker-a",
        "ip": "",
        "fencingToken": "1770724799500123",
        "instanceId": "worker-a:1:x",
        "ttlMs": "45000",
        "how": "new",
        "replaced": "",
    }
    e = decode_entry(b"1770724800001-0", fields, LOG)
    assert isinstance(e, ActivityEntry)
    assert e.id == "1770724800001-0"
    assert e.event == "claim"
    assert e.exchange_id == 7
    assert e.ip is None
    assert e.fencing_token == 1770724799500123
    assert e.ttl_ms == 45000
    assert e.how == "new"
    assert e.replaced is None
    assert e.from_state is None


def test_decode_transition_and_error_entries() -> None:
    """Transition and error entries carry their own fields; absent ones are None."""
    common = {"timestamp": "t", "exchangeId": "kraken", "exchangeName": "Kraken", "hostname": "h", "ip": "1.2.3.4"}
    t = decode_entry(
        "1-0",
        {**common, "event": "state_transition", "fromState": "idle", "toState": "starting", "adminEmail": ""},
        LOG,
    )
    assert (t.exchange_id, t.from_state, t.to_state, t.admin_email, t.ip) == (
        "kraken",
        "idle",
        "starting",
        None,
        "1.2.3.4",
    )
    err = decode_entry("2-0", {**common, "event": "error", "error": "boom", "state": "warming"}, LOG)
    assert (err.error, err.state, err.to_state) == ("boom", "warming", None)
    fr = decode_entry("3-0", {**common, "event": "force_release", "reason": "stuck", "operator": "alice"}, LOG)
    assert (fr.reason, fr.operator) == ("stuck", "alice")


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "claim", "timestamp": "t", "exchangeId": "7", "exchangeName": "B", "hostname": "h", "ttlMs": "x"},
        {"timestamp": "t", "exchangeId": "7", "exchangeName": "B", "hostname": "h"},
        {"event": "claim", "timestamp": "t", "exchangeId": "7", "exchangeName": "B", "fencingToken": "1"},
    ],
)
def test_corrupt_entries(fields: dict[str, str]) -> None:
    """An entry with a non-integer number or a missing required field is a CorruptStatusError for the log key."""
    with pytest.raises(CorruptStatusError) as info:
        decode_entry("9-0", fields, LOG)
    assert info.value.key == LOG
    assert "9-0" in info.value.detail
