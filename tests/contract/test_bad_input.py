"""Bad input (reliability.md §4.6, B1-B10): every case gets a clear error, either the
"ERR pylivermore bad-args" error reply or the CORRUPT reply word, and changes nothing: the
status, log and fence keys are byte-identical afterwards (DUMP; None for an absent key), the
TTL is untouched and no log entry is added. Invalid ids never reach Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import CorruptStatusError, Registry
from pylivermore._keys import check_id

from .helpers import (
    BAD_ARGS,
    Owner,
    Resource,
    Scripts,
    Snapshot,
    assert_unchanged,
    claim_args,
    new_token,
    valid_args,
)

SCRIPTS = ("claim", "heartbeat", "transition", "update", "record_error", "deregister", "force_release")
OWNER_SCRIPTS = ("heartbeat", "transition", "update", "record_error", "deregister")

Values = list[tuple[str, str]]

BAD_TOKENS: Values = [
    ("empty", ""),
    ("15-chars", "a" * 15),
    ("31-chars", "a" * 31),
    ("129-chars", "a" * 129),
    ("punctuation", "a" * 32 + "!"),
    ("space", "a" * 16 + " " + "a" * 16),
    ("newline", "a" * 32 + "\n"),
    ("non-ascii", "\u00e9" * 16),
]
BAD_TTLS: Values = [
    ("0", "0"),
    ("-1", "-1"),
    ("inf", "inf"),
    ("-inf", "-inf"),
    ("nan", "nan"),
    ("hex", "0x10"),
    ("exponent", "1e3"),
    ("leading-space", " 15"),
    ("trailing-space", "15 "),
    ("fraction", "15.5"),
    ("plus", "+15"),
    ("leading-zero", "015"),
    ("empty", ""),
    ("below-10", "9"),
    ("above-1-day", "86400001"),
    ("huge", "99999999999"),
]
#: v2: the retention floor is one day, so a call can never trim the recent history ("0" is valid:
#: a lease without history, tests/contract/test_no_history.py).
BAD_RETENTIONS: Values = [
    ("1", "1"),
    ("leading-zero", "086400000"),
    ("999", "999"),
    ("1000", "1000"),
    ("one-day-minus-1", "86399999"),
    ("negative", "-1000"),
    ("exponent", "1e8"),
    ("inf", "inf"),
    ("nan", "nan"),
    ("hex", "0x5265c00"),
    ("leading-space", " 86400000"),
    ("leading-zero", "086400000"),
    ("fraction", "86400000.0"),
    ("empty", ""),
    ("above-10-years", "315360000001"),
    ("huge", "99999999999999999"),
]
#: v2: ``seq`` replaced v1's request id: a decimal integer 1..2^53-1.
BAD_SEQS: Values = [
    ("empty", ""),
    ("0", "0"),
    ("negative", "-1"),
    ("leading-zero", "01"),
    ("fraction", "1.5"),
    ("exponent", "1e3"),
    ("hex", "0x10"),
    ("leading-space", " 1"),
    ("plus", "+1"),
    ("inf", "inf"),
    ("nan", "nan"),
    ("2^53", "9007199254740992"),
    ("huge", "99999999999999999999"),
    ("request-id", "req-1"),
]
BAD_FENCING_TOKENS: Values = [
    ("empty", ""),
    ("0", "0"),
    ("negative", "-5"),
    ("leading-zero", "05"),
    ("fraction", "1.5"),
    ("exponent", "1e3"),
    ("text", "abc"),
    ("2^53", "9007199254740992"),
]
TABLE_2049 = "idle>starting" + " a>b" * 509
assert len(TABLE_2049) == 2049
BAD_TABLES: Values = [
    ("double-space", "idle>starting  starting>warming"),
    ("leading-space", " idle>starting"),
    ("trailing-space", "idle>starting "),
    ("newline", "idle>starting\n"),
    ("capital", "Idle>starting"),
    ("no-edge", "idle"),
    ("dangling", "idle>"),
    ("no-from", ">idle"),
    ("comma", "idle>starting,starting>warming"),
    ("no-edge-leaving-idle", "starting>warming warming>idle"),
    ("33-char-state", "idle>" + "x" * 33),
    ("2049-bytes", TABLE_2049),
]


def _argv_cases() -> list[Any]:
    """(script, {ARGV index: value}) cases that the script must answer with bad-args."""
    spec: dict[str, list[tuple[str, dict[int, str]]]] = {s: [] for s in SCRIPTS}

    def add(script: str, index: int, label: str, values: Values) -> None:
        spec[script] += [(f"{label}-{name}", {index: value}) for name, value in values]

    for script in ("claim", *OWNER_SCRIPTS):
        add(script, 0, "token", BAD_TOKENS)
    for script in ("claim", "heartbeat"):
        add(script, 1, "ttl", BAD_TTLS)
    for script, index in (("claim", 7), ("force_release", 2)):
        add(script, index, "retention", BAD_RETENTIONS)
    for script in ("transition", "update", "record_error"):
        add(script, 1, "seq", BAD_SEQS)
    add("deregister", 1, "fencing-token", BAD_FENCING_TOKENS)
    # exchange_id must be the <id> of the keys (held.res.id, "r1"): anything else, well-formed or not.
    ids = [("empty", ""), ("brace", "}x"), ("space", "a b"), ("colon", "a:b"), ("tag", "{1}"), ("65-chars", "a" * 65)]
    ids += [("underscore-first", "_a"), ("dot-first", ".a"), ("non-ascii", "\u00e91")]
    ids += [("other-resource", "r2"), ("other-case", "R1"), ("trailing-space", "r1 ")]
    add("claim", 2, "exchange-id", ids)
    add("claim", 3, "exchange-name", [("empty", ""), ("129-bytes", "x" * 129), ("130-utf8-bytes", "\u00e9" * 65)])
    add("claim", 4, "hostname", [("empty", ""), ("256-bytes", "h" * 256)])
    add("claim", 5, "instance-id", [("empty", ""), ("256-bytes", "i" * 256)])
    add("claim", 6, "reclaim", [("empty", ""), ("2", "2"), ("true", "true"), ("space", " 1"), ("yes", "yes")])
    add("claim", 8, "table", BAD_TABLES)
    add("transition", 2, "to", [("capital", "Active"), ("empty", ""), ("leading-space", " idle"), ("33", "x" * 33)])
    expected = [("capital", "Idle"), ("leading-space", " idle"), ("33-chars", "x" * 33), ("punctuation", "idle!")]
    add("transition", 3, "expected", expected)
    add("record_error", 2, "message", [("empty", ""), ("4097-bytes", "m" * 4097), ("4098-utf8-bytes", "\u00e9" * 2049)])
    add("force_release", 0, "reason", [("empty", ""), ("1025-bytes", "r" * 1025)])
    add("force_release", 1, "operator", [("empty", ""), ("256-bytes", "o" * 256)])
    # B10: only the three documented groups exist; control fields can never be named.
    groups = ["ownerDigest", "fencingToken", "connectionState", "instanceId", "lastHeartbeat", "seq", "retentionMs"]
    groups += ["stateTable", "contract", "", "Symbols", "symbols ", "symbolCount"]
    spec["update"] += [(f"group-{g or 'empty'}", {2: g}) for g in groups]
    for name, value in [
        ("negative", "-1"),
        ("fraction", "1.5"),
        ("exponent", "1e3"),
        ("hex", "0x10"),
        ("above-1e9", "1000000001"),
        ("empty", ""),
        ("leading-zero", "01"),
        ("leading-space", " 1"),
        ("nan", "nan"),
        ("huge", "99999999999"),
    ]:
        spec["update"].append((f"symbols-{name}", {2: "symbols", 3: value, 4: ""}))
    spec["update"].append(("symbols-second-not-empty", {2: "symbols", 3: "1", 4: "x"}))
    spec["update"].append(("admin-email-321-bytes", {2: "admin", 3: "e" * 321, 4: ""}))
    spec["update"].append(("admin-name-257-bytes", {2: "admin", 3: "", 4: "n" * 257}))
    for name, value in [
        ("trailing-space", "1.2.3.4 "),
        ("not-hex", "g::1"),
        ("46-chars", "1" * 46),
        ("cidr", "1.2.3.4/24"),
        ("zone", "fe80::1%eth0"),
    ]:
        spec["update"].append((f"address-ip-{name}", {2: "address", 3: value, 4: ""}))
    for name, value in [("lower", "us"), ("three", "USA"), ("one", "U"), ("digit", "1A"), ("non-ascii", "D\u00c9")]:
        spec["update"].append((f"address-country-{name}", {2: "address", 3: "", 4: value}))
    return [
        pytest.param(script, overrides, id=f"{script}-{label}")
        for script in SCRIPTS
        for label, overrides in spec[script]
    ]


def _arity_cases() -> list[Any]:
    """(script, label): ARGV missing, empty or extra; numkeys one less, one more, or zero (B7)."""
    labels = ["missing-last-argv", "no-argv", "extra-argv", "numkeys-minus-1", "numkeys-plus-1", "numkeys-0"]
    return [pytest.param(script, label, id=f"{script}-{label}") for script in SCRIPTS for label in labels]


def reclaim_args(owner: Owner) -> list[str]:
    """A self-reclaim (new token, same instance_id, ARGV[7]="1"): on a healthy record it writes,
    so any check that fails to stop it shows up as a changed key."""
    return claim_args(new_token(), exchange_id=owner.res.id, instance_id=owner.instance_id, reclaim="1")


def args_for(script: str, owner: Owner) -> list[str]:
    """Well-formed arguments that WOULD write on *owner*'s healthy record."""
    return reclaim_args(owner) if script == "claim" else valid_args(script, owner.token, owner.fencing_token)


@pytest.fixture
def held(owner: Owner, client: redis.Redis) -> Owner:
    """The owner's record with a 30 s TTL left, so that a wrongful renewal (to 60 s) is visible."""
    client.pexpire(owner.res.status, 30_000)
    return owner


def expect_bad_args(action: Callable[[], object]) -> None:
    with pytest.raises(redis.ResponseError) as info:
        action()
    assert str(info.value).startswith(BAD_ARGS), str(info.value)


@pytest.mark.parametrize(("script", "overrides"), _argv_cases())
def test_bad_argv_is_rejected_and_writes_nothing(
    script: str, overrides: dict[int, str], held: Owner, call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """Malformed, out-of-range or oversized ARGV (tokens, TTLs as "0"/"inf"/"0x10"/"1e3"/" 15",
    retention below one day, seqs, fencing tokens, ids other than the keys', names, tables,
    messages, control-field groups) gets
    "ERR pylivermore bad-args: ..." and writes nothing, although the same call with valid
    arguments would write."""
    args = args_for(script, held)
    for index, value in overrides.items():
        args[index] = value
    before = snapshot(held.res)
    expect_bad_args(lambda: call(script, held.res.keys_for(script), args))
    assert_unchanged(before, snapshot(held.res))


@pytest.mark.parametrize(("script", "label"), _arity_cases())
def test_wrong_arity_is_rejected_and_writes_nothing(
    script: str, label: str, held: Owner, scripts: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """Missing, absent or extra ARGV and a wrong numkeys (B7) get "ERR pylivermore bad-args" and
    write nothing (a nil argument must never reach redis.call)."""
    keys, args = held.res.keys_for(script), args_for(script, held)
    if label == "missing-last-argv":
        args = args[:-1]
    elif label == "no-argv":
        args = []
    elif label == "extra-argv":
        args = [*args, "x"]
    elif label == "numkeys-minus-1":
        keys, args = keys[:-1], [keys[-1], *args]
    elif label == "numkeys-plus-1":
        keys, args = [*keys, args[0]], args[1:]
    else:
        keys, args = [], [*keys, *args]
    before = snapshot(held.res)
    expect_bad_args(lambda: scripts.raw(script, len(keys), *keys, *args))
    assert_unchanged(before, snapshot(held.res))


@pytest.mark.parametrize("script", OWNER_SCRIPTS)
def test_wrong_token_is_taken_and_writes_nothing(
    script: str, held: Owner, call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """A well-formed token that is not the owner's (B9) answers TAKEN with the holder's fencing
    token, and nothing is written (deregister too, given the holder's fencing token: the lease
    of that token was not released, it is held)."""
    before = snapshot(held.res)
    reply = call(script, held.res.keys_for(script), valid_args(script, new_token(), held.fencing_token))
    assert reply == ["TAKEN", str(held.fencing_token)]
    assert_unchanged(before, snapshot(held.res))


# -- damaged keys (B1) ---------------------------------------------------------------------


def _retype(key_of: Callable[[Resource], str], make: Callable[[redis.Redis, str], object]) -> Callable[..., None]:
    def corrupt(admin: redis.Redis, res: Resource) -> None:
        key = key_of(res)
        admin.delete(key)
        make(admin, key)

    return corrupt


def _field(name: str, value: str | None) -> Callable[..., None]:
    def corrupt(admin: redis.Redis, res: Resource) -> None:
        if value is None:
            admin.hdel(res.status, name)
        else:
            admin.hset(res.status, name, value)

    return corrupt


def _status(res: Resource) -> str:
    return res.status


def _log(res: Resource) -> str:
    return res.log


def _fence(res: Resource) -> str:
    return res.fence


SEED_JSON = '{"exchangeId":1,"exchangeName":"Binance","hostname":"h","connectionState":"connected"}'
STATUS_DAMAGE: dict[str, Callable[..., None]] = {
    "status-string": _retype(_status, lambda c, k: c.set(k, "garbage")),
    "status-seed-json": _retype(_status, lambda c, k: c.set(k, SEED_JSON)),
    "status-list": _retype(_status, lambda c, k: c.rpush(k, "a")),
    "status-set": _retype(_status, lambda c, k: c.sadd(k, "a")),
    "status-zset": _retype(_status, lambda c, k: c.zadd(k, {"a": 1})),
    "status-stream": _retype(_status, lambda c, k: c.xadd(k, {"a": "b"})),
    "hash-foreign": _retype(_status, lambda c, k: c.hset(k, "foo", "bar")),
    "hash-no-fencing-token": _field("fencingToken", None),
    "hash-text-fencing-token": _field("fencingToken", "12abc"),
    "hash-zero-fencing-token": _field("fencingToken", "0"),
    # v2: a record names the resource of its key, or it is not a record of that resource.
    "hash-other-exchange-id": _field("exchangeId", "r2"),
    "hash-no-exchange-id": _field("exchangeId", None),
}
DIGEST_DAMAGE: dict[str, Callable[..., None]] = {
    "hash-no-digest": _field("ownerDigest", None),
    "hash-non-hex-digest": _field("ownerDigest", "z" * 40),
    "hash-short-digest": _field("ownerDigest", "a" * 39),
}
#: v2: the record's seq (the highest applied one) is a decimal integer (absent: a v1 record, 0).
SEQ_DAMAGE: dict[str, Callable[..., None]] = {
    "hash-text-seq": _field("seq", "abc"),
    "hash-negative-seq": _field("seq", "-1"),
    "hash-leading-zero-seq": _field("seq", "01"),
    "hash-fraction-seq": _field("seq", "1.5"),
}
#: v2: the record's retentionMs is what its log writes trim with: never below one day ("0": no history).
RETENTION_DAMAGE: dict[str, Callable[..., None]] = {
    "hash-retention-1000": _field("retentionMs", "1000"),
    "hash-retention-00": _field("retentionMs", "00"),
    "hash-retention-text": _field("retentionMs", "forever"),
}
LOG_DAMAGE: dict[str, Callable[..., None]] = {
    "log-string": _retype(_log, lambda c, k: c.set(k, "garbage")),
    "log-hash": _retype(_log, lambda c, k: c.hset(k, "event", "claim")),
    "log-list": _retype(_log, lambda c, k: c.rpush(k, "a")),
}
FENCE_DAMAGE: dict[str, Callable[..., None]] = {
    "fence-hash": _retype(_fence, lambda c, k: c.hset(k, "token", "5")),
    "fence-list": _retype(_fence, lambda c, k: c.rpush(k, "5")),
    "fence-text": _retype(_fence, lambda c, k: c.set(k, "abc")),
    "fence-empty": _retype(_fence, lambda c, k: c.set(k, "")),
    "fence-negative": _retype(_fence, lambda c, k: c.set(k, "-5")),
    "fence-fraction": _retype(_fence, lambda c, k: c.set(k, "1.5")),
    "fence-hex": _retype(_fence, lambda c, k: c.set(k, "0x10")),
    "fence-space": _retype(_fence, lambda c, k: c.set(k, " 5")),
    "fence-above-2^53": _retype(_fence, lambda c, k: c.set(k, "9007199254740992")),
}


def _damage_cases() -> list[Any]:
    cases = []
    for script in SCRIPTS:
        damages = dict(STATUS_DAMAGE)
        if script != "force_release":  # the operator's repair tool ignores the owner digest by design
            damages.update(DIGEST_DAMAGE)
        if script in ("claim", "transition", "record_error", "deregister", "force_release"):
            damages.update(LOG_DAMAGE)
        if script in ("transition", "update", "record_error"):
            damages.update(SEQ_DAMAGE)
        if script in ("transition", "record_error", "deregister"):
            damages.update(RETENTION_DAMAGE)
        if script == "claim":
            damages.update(FENCE_DAMAGE)
        cases += [pytest.param(script, name, id=f"{script}-{name}") for name in damages]
    return cases


ALL_DAMAGE = {**STATUS_DAMAGE, **DIGEST_DAMAGE, **SEQ_DAMAGE, **RETENTION_DAMAGE, **LOG_DAMAGE, **FENCE_DAMAGE}


@pytest.mark.parametrize(("script", "damage"), _damage_cases())
def test_damaged_key_is_corrupt_and_writes_nothing(
    script: str,
    damage: str,
    held: Owner,
    call: Scripts,
    admin: redis.Redis,
    snapshot: Callable[[Resource], Snapshot],
) -> None:
    """A key holding something the scripts never write (a string, list, set, zset or stream at
    the status key, the seed's JSON document, a hash without or with a malformed ownerDigest or
    fencingToken, an exchangeId that is not its key's id, a malformed seq, a retentionMs below one
    day, a non-stream log, a non-integer fence) is answered with the CORRUPT reply word
    and a reason; the damaged keys and the log stay byte-identical (no foreign key is
    overwritten), although the same call on a healthy record would write."""
    ALL_DAMAGE[damage](admin, held.res)  # the damage is done by the admin (RPUSH, SADD, ZADD are no worker commands)
    before = snapshot(held.res)
    reply = call(script, held.res.keys_for(script), args_for(script, held))
    assert reply[0] == "CORRUPT", reply
    assert len(reply) == 2
    assert reply[1]
    assert_unchanged(before, snapshot(held.res))


@pytest.mark.parametrize("script", SCRIPTS)
def test_damage_control_healthy_record_is_written(
    script: str, held: Owner, call: Scripts, snapshot: Callable[[Resource], Snapshot]
) -> None:
    """Control for the two matrices above: the exact call they make, on the healthy record,
    does write (so "nothing changed" there is the script's refusal, not a no-op call)."""
    before = snapshot(held.res)
    reply = call(script, held.res.keys_for(script), args_for(script, held))
    assert reply[0] in {"CLAIMED", "RENEWED", "OK", "RELEASED"}, reply
    after = snapshot(held.res)
    assert after != before or after.pttl > before.pttl + 1000


def test_force_release_removes_a_record_with_a_damaged_digest(held: Owner, call: Scripts, admin: redis.Redis) -> None:
    """force_release is the documented repair tool for a damaged hash: a record whose
    ownerDigest is missing or not hex, but which still has a fencing token and identity, is
    removed and the removal logged (not answered CORRUPT)."""
    admin.hset(held.res.status, "ownerDigest", "z" * 40)
    reply = call("force_release", held.res.keys_for("force_release"), valid_args("force_release", ""))
    assert reply == ["RELEASED", str(held.fencing_token), "idle"]
    assert admin.exists(held.res.status) == 0


def test_python_api_maps_corrupt_to_corrupt_status_error(
    client: redis.Redis, admin: redis.Redis, namespace: str, res: Resource
) -> None:
    """Through the Python API, CORRUPT from claim and a wrong-typed status on read raise
    CorruptStatusError naming the key; the foreign value is left in place."""
    admin.set(res.status, "garbage")
    registry = Registry(client, namespace=namespace)
    try:
        with pytest.raises(CorruptStatusError) as info:
            registry.claim(res.id, "Binance")
        assert info.value.key == res.status
        with pytest.raises(CorruptStatusError):
            registry.get(res.id)
    finally:
        registry.close()
    assert admin.get(res.status) == b"garbage"


# -- invalid ids: a Python-side check, before any key is built (B4) ------------------------------

INVALID_ID_STRINGS = [
    "}x",
    "a}b",
    "{x}",
    "a b",
    "",
    "a" * 65,
    "a" * 200,
    "a:b",
    "a*b",
    "a?b",
    "a[b]",
    "a\x00b",
    "a\nb",
    "-a",
    ".a",
    "\u00e9",
    "0",  # v2: canonical ids, an all-digit id is a positive integer without leading zero
    "07",
    "00",
    "0" * 64,
    "\uff11",  # FULLWIDTH DIGIT ONE
    "e\u0301",  # e + COMBINING ACUTE ACCENT (NFD)
]
INVALID_ID_INTS = [0, -1, 10**64]  # 10**64 has 65 digits: more than the 64 the scripts accept
INVALID_ID_TYPES = [True, False, None, 1.5, b"1", ["1"]]


def _id_param(value: object) -> Any:
    label = repr(value) if len(repr(value)) < 24 else f"{type(value).__name__}-of-{len(str(value))}"
    return pytest.param(value, id=label.encode("ascii", "backslashreplace").decode())


@pytest.mark.parametrize("bad_id", [_id_param(v) for v in [*INVALID_ID_STRINGS, *INVALID_ID_INTS]])
def test_check_id_rejects_invalid_ids(bad_id: Any) -> None:
    """check_id raises ValueError for ids that cannot be a key part (braces, spaces, colons,
    glob characters, control characters, non-ASCII, >64 chars, non-positive or >64-digit ints)."""
    with pytest.raises(ValueError, match="exchange id"):
        check_id(bad_id)


@pytest.mark.parametrize("bad_id", [_id_param(v) for v in INVALID_ID_TYPES])
def test_check_id_rejects_wrong_types(bad_id: Any) -> None:
    """check_id raises TypeError for a bool, None, float, bytes or list."""
    with pytest.raises(TypeError):
        check_id(bad_id)


@pytest.mark.parametrize("good_id", [1, 2**63, "a", "A1._-z", "a" * 64, "1" * 64])
def test_check_id_accepts_valid_ids(good_id: int | str) -> None:
    """Positive ints and 1-64 character slugs are valid; the wire form is str(id)."""
    assert check_id(good_id) == str(good_id)


@pytest.mark.parametrize("bad_id", [_id_param(v) for v in [*INVALID_ID_STRINGS, *INVALID_ID_INTS, *INVALID_ID_TYPES]])
def test_registry_claim_rejects_invalid_ids_before_any_round_trip(bad_id: Any, namespace: str) -> None:
    """Registry.claim with an invalid id raises ValueError/TypeError without touching Redis: the
    client points at a closed port, so any round trip would raise ConnectionError instead."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    registry = Registry(dead, namespace=namespace)
    try:
        with pytest.raises((ValueError, TypeError)):
            registry.claim(bad_id, "Binance")
    finally:
        registry.close()
        dead.close()
