"""The sans-IO wire protocol: call shapes and reply parsing, with literal replies (no Redis)."""

from __future__ import annotations

import pytest

from pylivermore import ClaimConflictError, CorruptStatusError, InstanceStatus, ScriptContractError, State
from pylivermore import _protocol as proto
from pylivermore._keys import Keys
from pylivermore._scripts import load_scripts

KEYS = Keys("ns", "7")

#: A holder's record as HGETALL/claim-3.lua returns it (flat field, value pairs), owner proof included.
HOLDER_FIELDS = {
    "exchangeId": "7",
    "exchangeName": "Binance",
    "hostname": "worker-a",
    "ipAddress": "203.0.113.9",
    "connectionState": "active",
    "symbolCount": "120",
    "connectedAt": "2026-02-10T12:00:01.000Z",
    "lastHeartbeat": "2026-02-10T12:34:56.789Z",
    "lastStateChange": "2026-02-10T12:00:01.000Z",
    "registeredAt": "2026-02-10T11:59:59.500Z",
    "fencingToken": "1770724799500123",
    "instanceId": "worker-a:4242:abc123",
    "ownerDigest": "0" * 40,
}


def _flat(fields: dict[str, str], *, as_bytes: bool) -> list[bytes | str]:
    out: list[bytes | str] = []
    for k, v in fields.items():
        out += [k.encode(), v.encode()] if as_bytes else [k, v]
    return out


# -- words -----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False])
def test_words_decodes_bytes_and_str(as_bytes: bool) -> None:
    """words() returns the reply as str items whether redis-py decoded responses or not."""
    reply = [b"RENEWED", b"2026-02-10T12:34:56.789Z"] if as_bytes else ["RENEWED", "2026-02-10T12:34:56.789Z"]
    assert proto.words("heartbeat", reply) == ["RENEWED", "2026-02-10T12:34:56.789Z"]


def test_words_stringifies_integers() -> None:
    """Lua numbers arrive as Python ints (e.g. a PTTL); words() gives their decimal str."""
    assert proto.words("claim", [b"CONFLICT", 1500, b"k", b"v"])[:2] == ["CONFLICT", "1500"]


@pytest.mark.parametrize("reply", [None, [], (), b"CLAIMED", "CLAIMED", 1, {"CLAIMED": 1}])
def test_words_rejects_non_lists(reply: object) -> None:
    """A reply that is not a non-empty array breaks the contract: ScriptContractError with script and reply."""
    with pytest.raises(ScriptContractError) as info:
        proto.words("claim", reply)
    assert info.value.script == "claim"
    assert info.value.reply == reply


@pytest.mark.parametrize(("script", "word"), [("claim", b"WHAT"), ("heartbeat", b"OK"), ("transition", b"RENEWED")])
def test_words_rejects_words_foreign_to_the_script(script: str, word: bytes) -> None:
    """A reply word the script does not document (even one of another script) is a ScriptContractError."""
    with pytest.raises(ScriptContractError):
        proto.words(script, [word])


def test_replies_cover_every_script() -> None:
    """REPLIES names every script in lua/ and nothing else."""
    assert set(proto.REPLIES) == set(load_scripts())


# -- calls -----------------------------------------------------------------------------------


def test_calls_match_script_arity() -> None:
    """Every *_call builder sends exactly the KEYS and ARGV counts its script's header documents."""
    specs = load_scripts()
    calls = [
        proto.claim_call(KEYS, "t" * 32, 45000, "7", "Binance", "h", "i", False, 86400000, ""),
        proto.heartbeat_call(KEYS, "t" * 32, 45000),
        proto.transition_call(KEYS, "t" * 32, 1, "starting", ""),
        proto.update_call(KEYS, "t" * 32, 2, "symbols", "3", ""),
        proto.record_error_call(KEYS, "t" * 32, 3, "boom"),
        proto.deregister_call(KEYS, "t" * 32, 5),
        proto.force_release_call(KEYS, "why", "op", 86400000),
        proto.renew_many_call([KEYS], ["t" * 32], 45000),
    ]
    assert {c.script for c in calls} == set(specs)
    for call in calls:
        spec = specs[call.script]
        assert len(call.keys) == spec.numkeys, call.script
        assert len(call.args) == len(spec.argv), call.script
        assert all(isinstance(a, str) for a in call.args), call.script
    # variadic: each further key brings one more argument (its token)
    three = proto.renew_many_call([KEYS] * 3, ["t" * 32] * 3, 45000)
    assert (len(three.keys), len(three.args)) == (3, len(specs["renew_many"].argv) + 2)


def test_claim_call_layout() -> None:
    """claim sends (status, log, fence) and encodes ttl, reclaim and retention as decimal strings, then the table."""
    call = proto.claim_call(KEYS, "tok" * 11, 45000, "7", "Binance", "host", "inst", True, 7776000000, "idle>x x>idle")
    assert call.keys == (KEYS.status, KEYS.log, KEYS.fence)
    assert call.args == ("tok" * 11, "45000", "7", "Binance", "host", "inst", "1", "7776000000", "idle>x x>idle")
    assert proto.claim_call(KEYS, "tok" * 11, 45000, "7", "B", "h", "i", False, 86400000, "").args[6] == "0"


# -- claim -----------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False])
@pytest.mark.parametrize("how", ["new", "reclaim", "retry"])
def test_parse_claim_success(as_bytes: bool, how: str) -> None:
    """CLAIMED gives (fencing token as int, how)."""
    token = 1770724799500123
    reply = [b"CLAIMED", str(token).encode(), how.encode()] if as_bytes else ["CLAIMED", str(token), how]
    assert proto.parse_claim(reply, KEYS, "7") == (token, how)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        [],
        [b"WHAT"],
        [b"CLAIMED"],
        [b"CLAIMED", b"x"],
        [b"CLAIMED", b"x", b"new"],
        [b"CLAIMED", b"-5", b"new"],
        [b"CLAIMED", b"12", b"new", b"extra"],
        [b"CLAIMED", "\u00b2".encode(), b"new"],  # str.isdigit() is True for superscript two
        [b"CONFLICT"],
        [b"CONFLICT", b"soon"],
    ],
    ids=repr,
)
def test_parse_claim_malformed(reply: object) -> None:
    """Any claim reply outside the documented shapes is a ScriptContractError (never IndexError/ValueError)."""
    with pytest.raises(ScriptContractError) as info:
        proto.parse_claim(reply, KEYS, "7")
    assert info.value.script == "claim"


@pytest.mark.parametrize("as_bytes", [True, False])
def test_parse_claim_conflict_carries_holder_and_ttl(as_bytes: bool) -> None:
    """CONFLICT raises ClaimConflictError with the holder's decoded record and its TTL in seconds."""
    pttl = 12345
    reply = [b"CONFLICT" if as_bytes else "CONFLICT", pttl, *_flat(HOLDER_FIELDS, as_bytes=as_bytes)]
    with pytest.raises(ClaimConflictError) as info:
        proto.parse_claim(reply, KEYS, "7")
    err = info.value
    assert err.exchange_id == "7"
    assert err.ttl == pytest.approx(pttl / 1000)
    assert isinstance(err.holder, InstanceStatus)
    assert err.holder.hostname == HOLDER_FIELDS["hostname"]
    assert err.holder.ip_address == HOLDER_FIELDS["ipAddress"]
    assert err.holder.connection_state is State.ACTIVE
    assert err.holder.fencing_token == int(HOLDER_FIELDS["fencingToken"])
    assert err.holder.instance_id == HOLDER_FIELDS["instanceId"]
    assert err.holder.exchange_id == 7
    message = str(err)
    assert HOLDER_FIELDS["hostname"] in message
    assert HOLDER_FIELDS["ipAddress"] in message
    assert HOLDER_FIELDS["connectedAt"] in message
    assert f"{pttl / 1000:.1f} s remaining" in message


def test_parse_claim_quiet_answers_none_on_conflict_only() -> None:
    """quiet (try_claim): CONFLICT answers None without building the error; a malformed CONFLICT
    and CORRUPT still raise; CLAIMED answers as without quiet."""
    assert proto.parse_claim([b"CONFLICT", 3000, *_flat(HOLDER_FIELDS, as_bytes=True)], KEYS, "7", True) is None
    assert proto.parse_claim([b"CLAIMED", b"5", b"new"], KEYS, "7", True) == (5, "new")
    with pytest.raises(ScriptContractError):
        proto.parse_claim([b"CONFLICT", b"soon"], KEYS, "7", True)
    with pytest.raises(CorruptStatusError):
        proto.parse_claim([b"CORRUPT", b"status key holds a list, not a hash"], KEYS, "7", True)


@pytest.mark.parametrize("pttl", [-1, -2])
def test_parse_claim_conflict_negative_pttl_is_zero(pttl: int) -> None:
    """A PTTL of -1/-2 (no expiry / gone meanwhile) is reported as 0 seconds, never negative."""
    with pytest.raises(ClaimConflictError) as info:
        proto.parse_claim([b"CONFLICT", pttl, *_flat(HOLDER_FIELDS, as_bytes=True)], KEYS, "7")
    assert info.value.ttl == 0.0


def test_parse_claim_conflict_with_undecodable_holder() -> None:
    """If the holder's record cannot be decoded, the conflict is still raised, with holder None."""
    broken = {**HOLDER_FIELDS, "symbolCount": "many"}
    with pytest.raises(ClaimConflictError) as info:
        proto.parse_claim([b"CONFLICT", 3000, *_flat(broken, as_bytes=True)], KEYS, "7")
    assert info.value.holder is None
    assert info.value.ttl == pytest.approx(3.0)
    assert "another instance" in str(info.value)


@pytest.mark.parametrize("as_bytes", [True, False])
def test_parse_claim_corrupt(as_bytes: bool) -> None:
    """CORRUPT raises CorruptStatusError for the status key, with the script's reason as detail."""
    reason = "status key holds a string, not a hash"
    reply = [b"CORRUPT", reason.encode()] if as_bytes else ["CORRUPT", reason]
    with pytest.raises(CorruptStatusError) as info:
        proto.parse_claim(reply, KEYS, "7")
    assert info.value.key == KEYS.status
    assert info.value.detail == reason


# -- owner operations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "reply", "expected"),
    [
        ("heartbeat", [b"RENEWED", b"2026-02-10T12:34:56.789Z"], ["RENEWED", "2026-02-10T12:34:56.789Z"]),
        ("heartbeat", [b"EXPIRED"], ["EXPIRED"]),
        ("heartbeat", ["TAKEN", "99"], ["TAKEN", "99"]),
        (
            "transition",
            [b"OK", b"starting", b"2026-02-10T12:34:56.789Z"],
            ["OK", "starting", "2026-02-10T12:34:56.789Z"],
        ),
        ("transition", [b"BAD_TRANSITION", b"idle"], ["BAD_TRANSITION", "idle"]),
        ("update", [b"OK"], ["OK"]),
        ("record_error", ["OK", "2026-02-10T12:34:56.789Z"], ["OK", "2026-02-10T12:34:56.789Z"]),
        ("deregister", [b"RELEASED", b"stopped"], ["RELEASED", "stopped"]),
        ("deregister", [b"TAKEN", b"12"], ["TAKEN", "12"]),
    ],
)
def test_parse_owned_returns_words(script: str, reply: list[bytes | str], expected: list[str]) -> None:
    """Owner-operation replies come back as str words; EXPIRED/TAKEN are returned for the lease to handle."""
    assert proto.parse_owned(script, reply, KEYS) == expected


def test_lost_words_map_to_reasons() -> None:
    """EXPIRED and TAKEN are the two 'not yours' words, mapped to the LeaseLostError reasons."""
    assert proto.LOST == {"EXPIRED": "expired", "TAKEN": "taken"}


@pytest.mark.parametrize("script", ["heartbeat", "transition", "update", "record_error", "deregister"])
def test_parse_owned_corrupt(script: str) -> None:
    """CORRUPT from any owner operation raises CorruptStatusError naming the status key."""
    with pytest.raises(CorruptStatusError) as info:
        proto.parse_owned(script, [b"CORRUPT", b"status key is not a hash"], KEYS)
    assert info.value.key == KEYS.status
    assert info.value.detail == "status key is not a hash"


@pytest.mark.parametrize("reply", [None, [], [b"WHAT"], [b"ABSENT"], "OK"])
def test_parse_owned_malformed(reply: object) -> None:
    """Malformed owner-operation replies are ScriptContractErrors."""
    with pytest.raises(ScriptContractError):
        proto.parse_owned("update", reply, KEYS)


# -- force release ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False])
def test_parse_force_release(as_bytes: bool) -> None:
    """RELEASED gives the removed holder's fencing token; ABSENT gives None."""
    released = [b"RELEASED", b"1770724799500123", b"active"] if as_bytes else ["RELEASED", "1770724799500123", "active"]
    assert proto.parse_force_release(released, KEYS) == 1770724799500123
    assert proto.parse_force_release([b"ABSENT"] if as_bytes else ["ABSENT"], KEYS) is None


def test_parse_force_release_corrupt() -> None:
    """CORRUPT raises CorruptStatusError."""
    with pytest.raises(CorruptStatusError, match="no fencingToken"):
        proto.parse_force_release([b"CORRUPT", b"status hash has no fencingToken"], KEYS)


@pytest.mark.parametrize(
    "reply",
    [None, [], [b"WHAT"], [b"OK"], [b"RELEASED"], [b"RELEASED", b"x", b"active"], [b"RELEASED", b"", b"idle"]],
    ids=repr,
)
def test_parse_force_release_malformed(reply: object) -> None:
    """Malformed force_release replies are ScriptContractErrors (never IndexError/ValueError)."""
    with pytest.raises(ScriptContractError) as info:
        proto.parse_force_release(reply, KEYS)
    assert info.value.script == "force_release"
