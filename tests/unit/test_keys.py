"""Resource-id and namespace validation, and the key layout (SPEC §3 "Keys")."""

from __future__ import annotations

import fnmatch
import re

import pytest

from pylivermore._config import RegistryConfig
from pylivermore._keys import Keys, check_id, check_namespace, python_id, status_pattern
from pylivermore._scripts import load_scripts


def _crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _reference_slot(key: bytes) -> int:
    """The Redis Cluster slot of *key*, hash tags included (cluster spec, 'Hash tags')."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return _crc16_xmodem(key) % 16384


try:
    from redis.crc import key_slot as _redis_key_slot
except ImportError:  # pragma: no cover - older redis-py
    _redis_key_slot = None


def key_slot(key: str) -> int:
    """The slot per our reference implementation, cross-checked with redis-py's when it has one."""
    slot = _reference_slot(key.encode())
    if _redis_key_slot is not None:
        assert _redis_key_slot(key.encode()) == slot
    return slot


def test_reference_crc16_matches_cluster_spec_vector() -> None:
    """Our CRC16 gives the cluster specification's check value (CRC16('123456789') == 0x31C3)."""
    assert _crc16_xmodem(b"123456789") == 0x31C3


# -- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 7, 42, 2**31, 10**18])
def test_check_id_accepts_positive_ints(value: int) -> None:
    """Positive integer ids are accepted and sent as their decimal form."""
    assert check_id(value) == str(value)


@pytest.mark.parametrize("slug", ["binance", "Kraken", "a", "7", "a.b-c_d", "x" * 64, "0abc", "ex-1.eu_west"])
def test_check_id_accepts_slugs(slug: str) -> None:
    """Short ASCII slugs (1-64 chars of [A-Za-z0-9._-], alphanumeric first) are sent unchanged."""
    assert check_id(slug) == slug


def test_int_and_decimal_string_share_a_key() -> None:
    """check_id(7) and check_id('7') give the same wire id, hence the same keys."""
    assert check_id(7) == check_id("7")


@pytest.mark.parametrize("bad", ["07", "0", "00", "0001", "0" * 64])
def test_check_id_refuses_non_canonical_integer_ids(bad: str) -> None:
    """An all-digit id is an integer: with a leading zero it would be a second id of one resource (contract v2),
    so it is refused, and the message names the canonical form."""
    with pytest.raises(ValueError, match="must not start with 0") as info:
        check_id(bad)
    if bad.strip("0"):
        assert f"use {int(bad)}" in str(info.value)


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        ("7", 7),
        ("123456789012345678901234", 123456789012345678901234),
        ("binance", "binance"),
        ("0abc", "0abc"),
        ("7a", "7a"),
    ],
)
def test_python_id_reads_all_digit_ids_as_ints(wire: str, value: int | str) -> None:
    """The Python form of a wire id is an int exactly when the id is all digits (the lease and every reader
    agree: lease.exchange_id == status.exchange_id)."""
    assert python_id(wire) == value
    assert type(python_id(wire)) is type(value)


@pytest.mark.parametrize(
    "bad",
    [
        "}x",
        "{x}",
        "x{",
        "a b",
        "",
        "a" * 200,
        "a" * 65,
        "a:b",
        "-abc",
        ".abc",
        "_abc",
        "abc\n",
        "a\x00b",
        "a/b",
        "a*",
        "bin\u0430nce",  # U+0430 CYRILLIC SMALL LETTER A, looks like Latin a
        "\uff42inance",  # U+FF42 FULLWIDTH LATIN SMALL LETTER B
        "\uff17",  # fullwidth digit 7
        "caf\u00e9",
        "\u0661\u0662",  # Arabic-Indic digits: str.isdigit() is True for these
    ],
)
def test_check_id_rejects_bad_slugs(bad: str) -> None:
    """Ids that would break the hash tag/layout or are not plain ASCII are ValueErrors with a usable message."""
    with pytest.raises(ValueError, match="invalid exchange id") as info:
        check_id(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "[A-Za-z0-9._-]" in message
    assert "positive integer" in message


@pytest.mark.parametrize("bad", [0, -1, -(2**40)])
def test_check_id_rejects_non_positive_ints(bad: int) -> None:
    """Zero and negative ints are ValueErrors saying integer ids must be positive."""
    with pytest.raises(ValueError, match="must be positive"):
        check_id(bad)


@pytest.mark.parametrize("bad", [True, False, 1.0, 1.5, None, b"binance", ["a"]])
def test_check_id_rejects_other_types(bad: object) -> None:
    """bool (although an int), float, bytes, None... are TypeErrors naming the type."""
    with pytest.raises(TypeError, match=f"not {type(bad).__name__}"):
        check_id(bad)  # type: ignore[arg-type]


def test_check_id_rejects_ints_the_scripts_reject() -> None:
    """An integer id whose decimal form exceeds the scripts' 64-character id limit (claim-3.lua ARGV[3]) is
    refused before any round trip, like an over-long slug, instead of failing later inside Redis."""
    header = load_scripts()["claim"].source
    assert "1-64 chars" in header  # the limit this test is about
    assert check_id(10**63) == "1" + "0" * 63  # 64 digits: allowed
    with pytest.raises(ValueError, match="invalid exchange id"):
        check_id(10**64)  # 65 digits


def test_every_accepted_id_fits_the_claim_script_pattern() -> None:
    """Whatever check_id returns satisfies claim-3.lua's own check of ARGV[3] (1-64 chars, alnum first)."""
    lua_pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
    for value in [1, 10**18, "a", "x" * 64, "a.b-c_d"]:
        wire = check_id(value)
        assert len(wire) <= 64
        assert lua_pattern.fullmatch(wire)


# -- layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("namespace", "wire_id"), [("exchange", "1"), ("t0a1b2c3", "binance"), ("a.b-c", "x.y_z")])
def test_keys_layout(namespace: str, wire_id: str) -> None:
    """Keys are <ns>:{<id>}:status|log|fence, exactly as documented."""
    keys = Keys(namespace, wire_id)
    assert keys.status == f"{namespace}:{{{wire_id}}}:status"
    assert keys.log == f"{namespace}:{{{wire_id}}}:log"
    assert keys.fence == f"{namespace}:{{{wire_id}}}:fence"


@pytest.mark.parametrize("exchange_id", [1, 7, 12345, "binance", "kraken-eu", "x" * 64])
def test_keys_of_one_resource_share_one_cluster_slot(exchange_id: int | str) -> None:
    """status, log and fence of one resource hash to the same Redis Cluster slot: the slot of the id itself."""
    wire = check_id(exchange_id)
    keys = Keys("exchange", wire)
    slots = {key_slot(keys.status), key_slot(keys.log), key_slot(keys.fence)}
    assert slots == {key_slot(wire)}


def test_different_resources_usually_differ_in_slot() -> None:
    """The hash tag is the id, not the namespace: many ids spread over many slots."""
    slots = {key_slot(Keys("exchange", str(i)).status) for i in range(1, 200)}
    assert len(slots) > 150


def test_registry_config_builds_keys_from_checked_ids() -> None:
    """RegistryConfig.keys validates the id and uses its namespace."""
    config = RegistryConfig(namespace="ns1", hostname="h", instance_id="i")
    wire, keys = config.keys(5)
    assert wire == "5"
    assert keys.status == "ns1:{5}:status"
    with pytest.raises(ValueError, match="invalid exchange id"):
        config.keys("a:b")


def test_status_pattern_matches_only_status_keys() -> None:
    """The SCAN pattern matches every status key of the namespace and nothing else."""
    pattern = status_pattern("ns1")
    for wire in ["1", "binance", "a.b"]:
        keys = Keys("ns1", wire)
        assert fnmatch.fnmatchcase(keys.status, pattern)
        assert not fnmatch.fnmatchcase(keys.log, pattern)
        assert not fnmatch.fnmatchcase(keys.fence, pattern)
        assert not fnmatch.fnmatchcase(Keys("ns2", wire).status, pattern)


# -- namespaces ------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["exchange", "t1234abcd", "a", "A.b-c_d", "n" * 64])
def test_check_namespace_accepts(namespace: str) -> None:
    """Namespaces of 1-64 chars of [A-Za-z0-9._-] starting alphanumeric are accepted unchanged."""
    assert check_namespace(namespace) == namespace


@pytest.mark.parametrize("bad", ["", "a:b", "a{b", "a}b", "a b", "-a", "n" * 65, "caf\u00e9", "a*"])
def test_check_namespace_rejects(bad: str) -> None:
    """Namespaces that could collide with the layout or the SCAN pattern are ValueErrors naming the rule."""
    with pytest.raises(ValueError, match="invalid namespace") as info:
        check_namespace(bad)
    assert "[A-Za-z0-9._-]" in str(info.value)


@pytest.mark.parametrize("bad", [None, 1, b"exchange"])
def test_check_namespace_rejects_non_strings(bad: object) -> None:
    """A non-str namespace is refused (ValueError or TypeError), never turned into a key."""
    with pytest.raises((ValueError, TypeError)):
        check_namespace(bad)  # type: ignore[arg-type]


def test_registry_config_validates_namespace() -> None:
    """A bad namespace fails when the configuration is built, before any key exists."""
    with pytest.raises(ValueError, match="invalid namespace"):
        RegistryConfig(namespace="bad:ns", hostname="h", instance_id="i")
