"""The wire protocol of the scripts, without I/O: what to send, and what a reply means.

``*_call`` functions build a :class:`Call` (script name, KEYS, ARGV); ``parse_*`` functions
turn a raw reply into a result or an exception. Both drivers (sync and asyncio) send the
same calls and parse with the same functions. :data:`REPLIES` lists, per script, the reply
words this module understands; a header check keeps it equal to the Lua headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

from ._keys import Keys
from ._scripts import load_scripts
from .errors import ClaimConflictError, CorruptStatusError, LivermoreError, ScriptContractError

REPLIES: dict[str, frozenset[str]] = {
    "claim": frozenset({"CLAIMED", "CONFLICT", "CORRUPT"}),
    "heartbeat": frozenset({"RENEWED", "EXPIRED", "TAKEN", "CORRUPT"}),
    "renew_many": frozenset({"RENEWED", "EXPIRED", "TAKEN", "CORRUPT"}),
    "transition": frozenset({"OK", "REPLAYED", "BAD_TRANSITION", "EXPIRED", "TAKEN", "CORRUPT"}),
    "update": frozenset({"OK", "REPLAYED", "EXPIRED", "TAKEN", "CORRUPT"}),
    "record_error": frozenset({"OK", "REPLAYED", "EXPIRED", "TAKEN", "CORRUPT"}),
    "deregister": frozenset({"RELEASED", "REPLAYED", "EXPIRED", "TAKEN", "CORRUPT"}),
    "force_release": frozenset({"RELEASED", "ABSENT", "CORRUPT"}),
}

_DIGITS = re.compile(r"[0-9]+")
_INT = re.compile(r"-?[0-9]+")

#: Reply words meaning "the caller does not own the record", mapped to LeaseLostError reasons.
LOST = {"EXPIRED": "expired", "TAKEN": "taken"}


@dataclass(frozen=True, slots=True)
class Call:
    """One script invocation: the script's operation name, its KEYS and its ARGV."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str, ...]


#: How calls reach the server (the registries' ``transport`` option): ``EVALSHA`` of each script,
#: or ``FCALL`` of the functions of one library built from the same scripts (Redis >= 7.0, see
#: :mod:`pylivermore._library`). Same KEYS, ARGV and replies either way.
TRANSPORTS = ("scripts", "functions")
Transport = Literal["scripts", "functions"]


def evalsha_args(call: Call) -> tuple[str, int, tuple[str, ...]]:
    """``EVALSHA`` arguments of *call* (for pipelines): sha1, numkeys, then keys and args."""
    return load_scripts()[call.script].sha1, len(call.keys), (*call.keys, *call.args)


def call_command(call: Call, transport: str = "scripts") -> tuple[str | int, ...]:
    """The command that sends *call*: ``EVALSHA <sha1> <numkeys> <keys…> <args…>``, or over the
    functions transport ``FCALL pylivermore_v<N>_<operation> <numkeys> <keys…> <args…>``."""
    if transport == "functions":
        from ._library import library  # here: `python -m pylivermore._library` must not find it imported

        return ("FCALL", library().functions[call.script], len(call.keys), *call.keys, *call.args)
    sha, numkeys, rest = evalsha_args(call)
    return ("EVALSHA", sha, numkeys, *rest)


def load_commands(scripts: Iterable[str], transport: str = "scripts") -> list[tuple[str, ...]]:
    """What makes a server know *scripts* again after :func:`is_missing` said it lost them:
    ``SCRIPT LOAD`` of each, or ``FUNCTION LOAD REPLACE`` of the whole library."""
    if transport == "functions":
        from ._library import library

        return [("FUNCTION", "LOAD", "REPLACE", library().text)]
    specs = load_scripts()
    return [("SCRIPT", "LOAD", specs[name].source) for name in sorted(set(scripts))]


def pipeline_commands(
    calls: Sequence[Call],
    asking: bool = False,
    tail: Sequence[tuple[str | int, ...]] = (),
    transport: str = "scripts",
) -> list[tuple[str | int, ...]]:
    """The raw commands that send *calls* in one pipeline (each after ``ASKING`` with *asking*:
    a cluster node importing a slot runs a command on it only right after ``ASKING``), then *tail*."""
    out: list[tuple[str | int, ...]] = []
    for call in calls:
        if asking:
            out.append(("ASKING",))
        out.append(call_command(call, transport))
    out.extend(tail)
    return out


def pipeline_replies(replies: Sequence[object], count: int, asking: bool = False) -> list[object]:
    """The replies of a :func:`pipeline_commands` pipeline of *count* calls: one per call, then the
    tail's (the replies to ``ASKING`` left out)."""
    if asking:
        return [*replies[1 : 2 * count : 2], *replies[2 * count :]]
    return list(replies)


def is_missing(reply: object) -> bool:
    """Whether *reply* says that the server lacks the script (``NOSCRIPT``) or the function
    (``ERR Function not found``: the library was never loaded there, or was lost to a restart, a
    failover or ``FUNCTION FLUSH``). The call did not run: load (:func:`load_commands`) and resend it."""
    if not isinstance(reply, Exception):
        return False
    text = str(reply).removeprefix("ERR ")
    return text.startswith(("No matching script", "Function not found"))


def noscript_indexes(replies: Sequence[object]) -> list[int]:
    """Positions of the pipelined replies that failed because the server lacks the script or the
    function (:func:`is_missing`): those calls did not run."""
    return [i for i, r in enumerate(replies) if is_missing(r)]


def unsupported(reply: object, transport: str) -> LivermoreError | None:
    """Over the functions transport, the error that stands for *reply* when it says the server has
    no ``FCALL`` (Redis < 7.0); ``None`` for any other reply."""
    if transport != "functions" or not isinstance(reply, Exception):
        return None
    text = str(reply).lower()
    if "unknown command" not in text:
        return None
    if "fcall" not in text and "function" not in text:
        return None
    return LivermoreError(
        "transport='functions' calls Redis Functions (FCALL), which this server does not have "
        "(they need Redis >= 7.0 or Valkey): use transport='scripts' (EVALSHA) with it"
    )


def words(script: str, reply: object, limit: int | None = None) -> list[str]:
    """A script reply (its first *limit* items) as ``str``; the first is a reply word the script may send."""
    if not isinstance(reply, list | tuple) or not reply:
        raise ScriptContractError(script, reply)
    out = [x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else str(x) for x in reply[:limit]]
    if out[0] not in REPLIES[script]:
        raise ScriptContractError(script, reply)
    return out


def _corrupt(w: list[str], key: str) -> None:
    if w[0] == "CORRUPT":
        raise CorruptStatusError(key, w[1] if len(w) > 1 else "unknown damage")


# -- claim ---------------------------------------------------------------------------------


def claim_call(
    keys: Keys,
    token: str,
    ttl_ms: int,
    wire_id: str,
    exchange_name: str,
    hostname: str,
    instance_id: str,
    reclaim: bool,
    retention_ms: int,
    table: str,
) -> Call:
    return Call(
        "claim",
        (keys.status, keys.log, keys.fence),
        (
            token,
            str(ttl_ms),
            wire_id,
            exchange_name,
            hostname,
            instance_id,
            "1" if reclaim else "0",
            str(retention_ms),
            table,
        ),
    )


@overload
def parse_claim(reply: object, keys: Keys, wire_id: str, quiet: Literal[False] = False) -> tuple[int, str]: ...
@overload
def parse_claim(reply: object, keys: Keys, wire_id: str, quiet: bool) -> tuple[int, str] | None: ...
def parse_claim(reply: object, keys: Keys, wire_id: str, quiet: bool = False) -> tuple[int, str] | None:
    """``(fencing_token, how)``; on conflict raise :class:`ClaimConflictError` with the holder and
    its TTL, or with *quiet* answer ``None`` (``try_claim``: no exception built, nothing decoded)."""
    w = words("claim", reply, 3)
    _corrupt(w, keys.status)
    if w[0] == "CONFLICT":
        if len(w) < 2 or not _INT.fullmatch(w[1]):
            raise ScriptContractError("claim", reply)
        if quiet:
            return None
        # The holder's fields stay raw until someone reads .holder (most callers just retry).
        assert isinstance(reply, list | tuple)
        raise ClaimConflictError(wire_id, list(reply[2:]), max(int(w[1]), 0) / 1000.0)
    if len(reply) != 3 or not _DIGITS.fullmatch(w[1]):  # type: ignore[arg-type]
        raise ScriptContractError("claim", reply)
    return int(w[1]), w[2]


# -- owner operations ------------------------------------------------------------------------


def heartbeat_call(keys: Keys, token: str, ttl_ms: int) -> Call:
    return Call("heartbeat", (keys.status,), (token, str(ttl_ms)))


def renew_many_call(keys: Sequence[Keys], tokens: Sequence[str], ttl_ms: int) -> Call:
    """Renew every lease of *keys* (with its token) in one call: ``lua/renew_many-n.lua``."""
    return Call("renew_many", tuple(k.status for k in keys), (str(ttl_ms), *tokens))


def split_renewals(reply: object, count: int) -> list[object]:
    """The per-lease replies of a renew_many call, each shaped as a heartbeat reply
    (the script answers flat: word and data for each key in turn)."""
    if not isinstance(reply, list | tuple) or len(reply) != 2 * count:
        raise ScriptContractError("renew_many", reply)
    return [list(reply[i : i + 2]) for i in range(0, 2 * count, 2)]


def transition_call(keys: Keys, token: str, seq: int, to: str, expected: str) -> Call:
    return Call("transition", (keys.status, keys.log), (token, str(seq), to, expected))


def update_call(keys: Keys, token: str, seq: int, group: str, first: str, second: str) -> Call:
    return Call("update", (keys.status,), (token, str(seq), group, first, second))


def record_error_call(keys: Keys, token: str, seq: int, message: str) -> Call:
    return Call("record_error", (keys.status, keys.log), (token, str(seq), message))


def deregister_call(keys: Keys, token: str, fencing_token: int) -> Call:
    return Call("deregister", (keys.status, keys.log), (token, str(fencing_token)))


def parse_owned(script: str, reply: object, keys: Keys) -> list[str]:
    """Reply words of an owner operation; ``CORRUPT`` raises. ``EXPIRED``/``TAKEN`` are returned
    for the lease to handle (see :data:`LOST`)."""
    w = words(script, reply)
    _corrupt(w, keys.status)
    return w


# -- operator ----------------------------------------------------------------------------------


def force_release_call(keys: Keys, reason: str, operator: str, retention_ms: int) -> Call:
    return Call("force_release", (keys.status, keys.log), (reason, operator, str(retention_ms)))


def parse_force_release(reply: object, keys: Keys) -> int | None:
    """The removed holder's fencing token, or ``None`` if nobody held the resource."""
    w = words("force_release", reply)
    _corrupt(w, keys.status)
    if w[0] == "ABSENT":
        return None
    if len(w) != 3 or not _DIGITS.fullmatch(w[1]):
        raise ScriptContractError("force_release", reply)
    return int(w[1])
