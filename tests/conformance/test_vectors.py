"""The conformance vectors (``lua/conformance/*.json``) replayed on a private server over both
transports: ``evalsha`` (each ``lua/<op>-<n>.lua`` by SCRIPT LOAD, then EVALSHA) and ``fcall``
(the library ``lua/functions/pylivermore.lua`` by FUNCTION LOAD REPLACE, then FCALL
``pylivermore_v2_<op>``). One test per vector file and transport; each file starts on an empty
database. Also: the runner reports a wrong expectation, the vectors cover every reply word and
every class of bad arguments, and invalid UTF-8 (which JSON cannot carry) is refused."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.connection import DefaultParser
from redis.exceptions import ResponseError

from pylivermore._protocol import REPLIES
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer
from tests.conftest import _require_binary, make_admin_client

from .runner import OPS, Command, ErrorReply, Send, load, run

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "lua" / "conformance"
LIBRARY = ROOT / "lua" / "functions" / "pylivermore.lua"
LIBRARY_BUILDER = ROOT / "pylivermore" / "_library.py"
LIBRARY_NAME = "pylivermore_v2"
FILES = sorted(VECTORS.glob("*.json"))
TRANSPORTS = ("evalsha", "fcall")

#: Every reply word of every script, as lua/README.md lists them (v2); the coverage test also takes
#: pylivermore._protocol.REPLIES, so that neither list can shrink the other.
README_REPLIES = {
    "claim": {"CLAIMED", "CONFLICT", "CORRUPT"},
    "heartbeat": {"RENEWED", "EXPIRED", "TAKEN", "CORRUPT"},
    "renew_many": {"RENEWED", "EXPIRED", "TAKEN", "CORRUPT"},
    "transition": {"OK", "REPLAYED", "BAD_TRANSITION", "EXPIRED", "TAKEN", "CORRUPT"},
    "update": {"OK", "REPLAYED", "EXPIRED", "TAKEN", "CORRUPT"},
    "record_error": {"OK", "REPLAYED", "EXPIRED", "TAKEN", "CORRUPT"},
    "deregister": {"RELEASED", "REPLAYED", "EXPIRED", "TAKEN", "CORRUPT"},
    "force_release": {"RELEASED", "ABSENT", "CORRUPT"},
}

#: The classes of bad arguments the vectors prove refused (each file's optional "covers" names
#: those it exercises). Invalid UTF-8 is not among them: JSON strings cannot carry it, so
#: test_invalid_utf8 below proves it for this runner.
BAD_ARGS_CLASSES = frozenset(
    {
        "arity",  # wrong number of KEYS or ARGV, the v1 shapes included
        "key-layout",  # a key that is not <ns>:{<id>}:status|log|fence in the header's order
        "key-other-resource",  # keys of two resources
        "key-other-namespace",  # keys of two namespaces
        "claim-tag-not-exchange-id",  # claim's keys name another id than exchange_id
        "id-not-canonical",  # 07, 0, 000, 65 digits
        "id-bad-slug",  # a slug of 65 characters, or with a character outside [A-Za-z0-9._-]
        "namespace-bad",
        "token-too-short",  # 31 characters
        "token-too-long",  # 129 characters
        "token-bad-chars",
        "number-syntax",  # 0x10, 1e3, inf, " 15", -1, 1.5, ...
        "ttl-out-of-range",
        "retention-out-of-range",  # below one day, above ten years
        "reclaim-bad",
        "state-name-bad",
        "table-no-idle-edge",
        "table-syntax",
        "table-too-long",
        "text-control-char",
        "text-length",
        "claim-retry-other-args",  # the same token with other arguments
        "seq-bad",
        "fencing-token-not-the-lease",
        "fencing-token-syntax",
        "update-group-bad",
        "renew-many-one-bad-token",
    }
)


class _WholeErrors(DefaultParser):  # type: ignore[misc,valid-type]
    """Keeps an error reply's whole text: redis-py strips a leading ``ERR `` otherwise, and the
    format checks the message from its first word (``ERR pylivermore bad-args``)."""

    @classmethod
    def parse_error(cls, response: str) -> ResponseError:
        return ResponseError(response)


# -- transports ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A private server for this module; every test empties it first."""
    _require_binary()
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """An all-rights client answering raw RESP2 replies (bytes, ints, lists; no response callbacks).
    RESP2: redis-py 8 speaks RESP3 by default, where HGETALL answers a map."""
    client = make_admin_client(server, parser_class=_WholeErrors, protocol=2)
    client.response_callbacks.clear()
    yield client
    client.close()


def command_of(client: redis.Redis) -> Command:
    def command(words: Sequence[Any]) -> Any:
        try:
            return client.execute_command(*words)
        except ResponseError as exc:
            raise ErrorReply(str(exc)) from None

    return command


def evalsha(client: redis.Redis) -> Send:
    specs = load_scripts()
    for spec in specs.values():
        sha = client.execute_command("SCRIPT", "LOAD", spec.source)
        assert sha.decode() == spec.sha1, f"{spec.filename}: SCRIPT LOAD answered {sha!r}, not {spec.sha1}"
    assert set(specs) == OPS, f"lua/ has the scripts {sorted(specs)}, the contract {sorted(OPS)}"
    command = command_of(client)

    def send(op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return command(["EVALSHA", specs[op].sha1, len(keys), *keys, *args])

    return send


def fcall(client: redis.Redis) -> Send:
    if not LIBRARY_BUILDER.is_file() or not LIBRARY.is_file():
        pytest.fail(
            f"the FCALL transport needs {LIBRARY.relative_to(ROOT)}, built by {LIBRARY_BUILDER.relative_to(ROOT)} "
            "(python -m pylivermore._library): one of them is missing"
        )
    version = client.execute_command("INFO", "server").decode()
    major = next(
        int(line.split(":")[1].split(".")[0]) for line in version.splitlines() if line.startswith("redis_version:")
    )
    if major < 7:
        pytest.skip(f"Redis {major}.x has no Redis Functions (7.0+)")
    name = client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY.read_text(encoding="utf-8"))
    assert name == LIBRARY_NAME.encode(), f"{LIBRARY.relative_to(ROOT)} loads library {name!r}, not {LIBRARY_NAME}"
    command = command_of(client)

    def send(op: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        return command(["FCALL", f"{LIBRARY_NAME}_{op}", len(keys), *keys, *args])

    return send


def transport(client: redis.Redis, kind: str) -> tuple[Send, Command]:
    """*kind*'s send() on an emptied server, and the raw command()."""
    client.execute_command("FLUSHALL")
    return (evalsha(client) if kind == "evalsha" else fcall(client)), command_of(client)


# -- the vectors -----------------------------------------------------------------------------------


def test_vector_files_exist() -> None:
    assert len(FILES) >= 10, f"expected the conformance vectors in {VECTORS}"


@pytest.mark.parametrize("kind", TRANSPORTS)
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_vectors(raw: redis.Redis, path: Path, kind: str) -> None:
    send, command = transport(raw, kind)
    failures = run(load(path), path.name, send, command)
    assert not failures, f"{len(failures)} failed step(s) over {kind}:\n" + "\n".join(map(str, failures))


# -- the runner can fail ---------------------------------------------------------------------------

TOKEN = "0123456789abcdef0123456789abcdef"
KEYS = ["exchange:{1}:status", "exchange:{1}:log", "exchange:{1}:fence"]
CLAIM = [TOKEN, "60000", "1", "Coinbase", "host-a", "host-a:1", "0", "7776000000", ""]

#: (a step that must fail right after a good claim, what the failure must mention)
WRONG_STEPS = [
    ({"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "int"}, "new"]}, "retry"),
    ({"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "int"}]}, "expected 2 elements"),
    ({"call": "claim", "keys": KEYS, "args": CLAIM, "error": "bad-args"}, "expected an error"),
    ({"call": "heartbeat", "keys": KEYS[:1], "args": [TOKEN, "9"], "reply": ["RENEWED", {"$": "iso"}]}, "bad-args"),
    ({"call": "heartbeat", "keys": KEYS[:1], "args": [TOKEN, "60000"], "reply": ["RENEWED", "2000"]}, "expected"),
    ({"call": "heartbeat", "keys": KEYS[:1], "args": [TOKEN, "60000"], "reply": ["RENEWED", {"$": "int"}]}, "integer"),
    (
        {"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "gt", "than": "f"}, "retry"]},
        "expected an integer >",
    ),
    (
        {"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "same", "as": "nope"}, "retry"]},
        "nope",
    ),
    ({"call": "heartbeat", "keys": KEYS[:1], "args": ["${nope}", "60000"], "reply": ["RENEWED", {"$": "iso"}]}, "nope"),
    ({"hash": KEYS[0], "fields": {"connectionState": "active"}}, "connectionState"),
    ({"hash": KEYS[0], "fields": {"ownerDigest": None}}, "ownerDigest"),
    ({"hash": KEYS[0], "fields": {"nosuchfield": "x"}}, "absent"),
    ({"hash": KEYS[0], "fields": {"connectionState": "idle"}, "exact": True}, "unexpected field"),
    ({"log": KEYS[1], "entries": []}, "expected 0 entries"),
    ({"log": KEYS[1], "entries": [{"event": "deregister"}]}, "event"),
    ({"key": KEYS[0], "type": "string"}, "type"),
    ({"key": KEYS[2], "type": "string", "pttl": {"$": "int", "min": 0}}, "PTTL"),
    ({"redis": ["GET", KEYS[2]], "reply": 7}, "integer"),
    ({"redis": ["NOSUCHCOMMAND"]}, "unknown command"),
    ({"call": "claim", "keys": KEYS, "args": CLAIM, "conflict": {"fields": {}}}, "expected CONFLICT"),
    (
        {"call": "claim", "keys": KEYS, "args": [TOKEN[::-1], *CLAIM[1:]], "conflict": {"fields": {"hostname": "x"}}},
        "unexpected field",
    ),
    ({"call": "nosuchop", "keys": [], "args": [], "reply": []}, "bad vector"),
    ({"call": "claim", "keys": KEYS, "args": CLAIM}, "bad vector"),
    ({"hash": KEYS[0], "fields": {"seq": ["0"]}}, "bad vector"),
    ({"hash": KEYS[0], "fields": {}, "bogus": 1}, "bad vector"),
]


@pytest.mark.parametrize(("wrong", "mentions"), WRONG_STEPS, ids=[str(i) for i in range(len(WRONG_STEPS))])
def test_runner_reports_a_wrong_expectation(raw: redis.Redis, wrong: dict[str, Any], mentions: str) -> None:
    send, command = transport(raw, "evalsha")
    good = {"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "capture", "as": "f"}, "new"]}
    failures = run({"name": "wrong", "steps": [good, wrong]}, "wrong.json", send, command)
    assert len(failures) == 1, failures
    assert (failures[0].file, failures[0].step) == ("wrong.json", 1)
    assert mentions in failures[0].what, failures[0]


def test_runner_passes_a_right_expectation(raw: redis.Redis) -> None:
    send, command = transport(raw, "evalsha")
    steps = [
        {"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "capture", "as": "f"}, "new"]},
        {"call": "claim", "keys": KEYS, "args": CLAIM, "reply": ["CLAIMED", {"$": "same", "as": "f"}, "retry"]},
        {"redis": ["GET", KEYS[2]], "reply": {"$": "same", "as": "f"}},
        {"hash": KEYS[0], "fields": {"connectionState": "idle", "nosuchfield": None}},
        {"key": KEYS[1], "type": "stream", "pttl": -1},
        {"log": KEYS[1], "entries": [{"event": "claim", "fencingToken": {"$": "same", "as": "f"}}]},
    ]
    assert run({"name": "right", "steps": steps}, "right.json", send, command) == []


# -- coverage --------------------------------------------------------------------------------------


def _covered() -> tuple[dict[str, set[str]], set[tuple[str, str]], set[str], list[str]]:
    """(reply words per op, (op, how) of CLAIMED, bad-args classes named, problems)."""
    words: dict[str, set[str]] = {op: set() for op in OPS}
    hows: set[tuple[str, str]] = set()
    classes: set[str] = set()
    problems: list[str] = []
    for path in FILES:
        doc = load(path)
        covers = doc.get("covers", [])
        bad_ops = {s["call"] for s in doc["steps"] if "call" in s and s.get("error") == "bad-args"}
        if covers and not bad_ops:
            problems.append(f"{path.name} covers {covers} but has no bad-args step")
        unknown = set(covers) - BAD_ARGS_CLASSES
        if unknown:
            problems.append(f"{path.name} covers unknown classes {sorted(unknown)}")
        classes |= set(covers)
        for step in doc["steps"]:
            op = step.get("call")
            if op is None:
                continue
            if "error" in step:
                words[op].add("bad-args")
            elif "conflict" in step:
                words[op].add("CONFLICT")
            else:
                reply = step["reply"]
                firsts = reply[0::2] if op == "renew_many" else reply[:1]
                words[op] |= {w for w in firsts if isinstance(w, str)}
                if op == "claim" and reply[:1] == ["CLAIMED"] and isinstance(reply[-1], str):
                    hows.add(("CLAIMED", reply[-1]))
                if reply[:1] == ["REPLAYED"]:
                    hows.add((op, f"REPLAYED/{len(reply)}"))
    return words, hows, classes, problems


def test_vectors_cover_every_reply_word() -> None:
    words, hows, _, _ = _covered()
    missing = {
        op: sorted((README_REPLIES[op] | set(REPLIES.get(op, ()))) - words[op])
        for op in sorted(OPS)
        if (README_REPLIES[op] | set(REPLIES.get(op, ()))) - words[op]
    }
    assert not missing, f"reply words no vector expects: {missing}"
    strange = {
        op: sorted(words[op] - README_REPLIES[op] - {"bad-args"})
        for op in OPS
        if words[op] - README_REPLIES[op] - {"bad-args"}
    }
    assert not strange, f"vectors expect words lua/README.md does not list: {strange}"
    assert {("CLAIMED", "new"), ("CLAIMED", "reclaim"), ("CLAIMED", "retry")} <= hows, hows
    shapes = {h for h in hows if h[1].startswith("REPLAYED/")}
    assert shapes == {(op, "REPLAYED/3") for op in ("transition", "update", "record_error")} | {
        ("deregister", "REPLAYED/2")
    }, shapes
    no_bad = sorted(op for op in OPS if "bad-args" not in words[op])
    assert not no_bad, f"no vector refuses bad arguments of {no_bad}"


def test_vectors_cover_every_bad_args_class(report: Callable[[str], None]) -> None:
    words, _, classes, problems = _covered()
    assert not problems, problems
    assert classes == BAD_ARGS_CLASSES, f"no vector covers {sorted(BAD_ARGS_CLASSES - classes)}"
    steps = [step for path in FILES for step in load(path)["steps"]]
    report(
        f"conformance vectors: {len(FILES)} files, {len(steps)} steps, {sum('call' in s for s in steps)} calls; "
        f"{len(classes)} bad-args classes; reply words {sorted(set().union(*words.values()))}"
    )


def test_vectors_are_in_the_format() -> None:
    """Every file parses, has the top-level keys of the format, and uses fixed 32-hex tokens or
    tokens built for a token test (no generated secrets)."""
    for path in FILES:
        doc = load(path)
        assert doc["name"] == path.stem, f"{path.name}: name {doc['name']!r}"
        assert isinstance(doc.get("description"), str), path.name
        assert doc["description"], path.name
        assert isinstance(doc["steps"], list), path.name
        assert doc["steps"], path.name
        json.dumps(doc, ensure_ascii=True)  # plain JSON: no NaN, no binary


# -- invalid UTF-8: proved here, since JSON strings cannot carry it --------------------------------

INVALID_UTF8 = [
    b"\xff",  # never in UTF-8
    b"\x80",  # a lone continuation byte
    b"\xc3",  # a truncated sequence
    b"\xe6\x9d",  # a truncated 3-byte sequence
    b"\xc0\xaf",  # an overlong '/'
    b"\xe0\x80\xaf",  # an overlong '/', 3 bytes
    b"\xed\xa0\x80",  # an encoded surrogate (U+D800)
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # a 5-byte form
]


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_invalid_utf8(raw: redis.Redis, kind: str) -> None:
    send, command = transport(raw, kind)
    assert send("claim", KEYS, CLAIM)[0] == b"CLAIMED"
    before = (command(["HGETALL", KEYS[0]]), command(["XLEN", KEYS[1]]), command(["GET", KEYS[2]]))
    other = ["exchange:{2}:status", "exchange:{2}:log", "exchange:{2}:fence"]
    refused = []
    for bad in INVALID_UTF8:
        calls: list[tuple[str, list[str], list[Any]]] = [
            ("claim", other, [TOKEN, "60000", "2", b"Coin" + bad, "host-a", "host-a:1", "0", "7776000000", ""]),
            ("claim", other, [TOKEN, "60000", "2", "Coinbase", b"host" + bad, "host-a:1", "0", "7776000000", ""]),
            ("claim", other, [TOKEN, "60000", "2", "Coinbase", "host-a", bad + b":1", "0", "7776000000", ""]),
            ("record_error", KEYS[:2], [TOKEN, "1", b"boom " + bad]),
            ("update", KEYS[:1], [TOKEN, "1", "admin", b"ops" + bad + b"@example.com", ""]),
            ("update", KEYS[:1], [TOKEN, "1", "admin", "", bad]),
            ("force_release", KEYS[:2], [b"drain" + bad, "alice", "7776000000"]),
            ("force_release", KEYS[:2], ["drain", bad, "7776000000"]),
        ]
        for op, keys, args in calls:
            try:
                reply: Any = send(op, keys, args)
            except ErrorReply as exc:
                reply = exc
            if not (isinstance(reply, ErrorReply) and str(reply).startswith("ERR pylivermore bad-args")):
                refused.append(f"{op} with {bad!r}: {reply!r}")
    assert not refused, "invalid UTF-8 accepted:\n" + "\n".join(refused)
    assert (command(["HGETALL", KEYS[0]]), command(["XLEN", KEYS[1]]), command(["GET", KEYS[2]])) == before
    assert command(["EXISTS", *other]) == 0
