"""A small interpreter of the conformance vectors (``lua/conformance/*.json``, format in
``lua/conformance/README.md``), independent of the client library.

A transport gives two functions: ``send(op, keys, args)`` calls the script of operation *op*
(by ``EVALSHA``, ``FCALL``, ...) and ``command(words)`` sends one raw Redis command. Both answer
the raw reply: ``bytes`` for bulk and simple strings, ``int``, ``None`` for nil, ``list`` for
arrays; an error reply is raised as :class:`ErrorReply` carrying the server's whole message
(``ERR pylivermore bad-args: ...``). :func:`run` replays one file's steps and returns every
mismatch as a :class:`Failure` (file, step index, what differed); an empty list is a pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ErrorReply", "Failure", "load", "run"]

Send = Callable[[str, Sequence[str], Sequence[str]], Any]
Command = Callable[[Sequence[str]], Any]

BAD_ARGS = "ERR pylivermore bad-args"
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
DECIMAL = re.compile(r"-?[0-9]+")
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

#: The keys each kind of step may carry (besides its own kind key): anything else is a bad vector.
STEP_KEYS = {
    "call": ({"keys", "args"}, {"reply", "error", "conflict", "note"}),
    "redis": (set(), {"reply", "note"}),
    "hash": ({"fields"}, {"exact", "note"}),
    "log": ({"entries"}, {"note"}),
    "key": ({"type"}, {"pttl", "note"}),
}
TOP_KEYS = {"name", "description", "steps", "covers"}
#: The operations of lua/README.md (a call step naming another one is a bad vector).
OPS = frozenset(
    {"claim", "heartbeat", "renew_many", "transition", "update", "record_error", "deregister", "force_release"}
)


class ErrorReply(Exception):
    """An error reply; ``str()`` is the server's whole message."""


@dataclass(frozen=True)
class Failure:
    file: str
    step: int  # index in the file's "steps" array; -1: the file itself
    what: str

    def __str__(self) -> str:
        where = "file" if self.step < 0 else f"steps[{self.step}]"
        return f"{self.file} {where}: {self.what}"


class Mismatch(Exception):
    """Raised inside a step; becomes one Failure."""


class BadVector(Mismatch):
    """The step is not in the format (a bug of the vector, not of the scripts)."""


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path.name}: the top level must be an object")
    return doc


# -- values and matchers ---------------------------------------------------------------------------


def show(value: Any) -> str:
    """A reply for a failure message."""
    if isinstance(value, bytes):
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            return repr(value) + " (not UTF-8)"
    if isinstance(value, list):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, ErrorReply):
        return f"error {str(value)!r}"
    return json.dumps(value) if isinstance(value, int | type(None)) else repr(value)


def text(value: Any) -> str | None:
    """A bulk string (or an integer) as text; None for anything else (nil, arrays, invalid UTF-8)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def integer(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    t = text(value)
    return int(t) if t is not None and DECIMAL.fullmatch(t) else None


class Matcher:
    def __init__(self, captures: dict[str, str]) -> None:
        self.captures = captures

    def check(self, m: Any, value: Any, where: str) -> None:
        """Raise Mismatch unless *value* matches matcher *m*."""
        problem = self.problem(m, value)
        if problem:
            raise Mismatch(f"{where}: {problem}")

    def problem(self, m: Any, value: Any) -> str | None:
        if isinstance(value, ErrorReply) and not (isinstance(m, dict) and m.get("$") == "any"):
            return f"expected {json.dumps(m, ensure_ascii=False)}, got {show(value)}"
        if m is None:
            return None if value is None else f"expected nil/absent, got {show(value)}"
        if isinstance(m, bool | float | list):
            raise BadVector(f"matcher {json.dumps(m)} is not in the format")
        if isinstance(m, str):
            if not isinstance(value, bytes):
                return f"expected the string {json.dumps(m, ensure_ascii=False)}, got {show(value)}"
            return None if text(value) == m else f"expected {json.dumps(m, ensure_ascii=False)}, got {show(value)}"
        if isinstance(m, int):
            if not isinstance(value, int) or isinstance(value, bool):
                return f"expected the integer {m}, got {show(value)}"
            return None if value == m else f"expected {m}, got {show(value)}"
        if not isinstance(m, dict) or "$" not in m:
            raise BadVector(f"matcher {json.dumps(m)} is not in the format")
        return self.special(m, value)

    def special(self, m: dict[str, Any], value: Any) -> str | None:
        kind = m["$"]
        allowed = {"any": set(), "iso": set(), "int": {"min", "max"}, "capture": {"as", "like"}}
        allowed |= {"same": {"as"}, "gt": {"than"}}
        if kind not in allowed or set(m) - {"$"} - allowed[kind]:
            raise BadVector(f"matcher {json.dumps(m)} is not in the format")
        if kind == "any":
            return None
        if kind == "iso":
            t = text(value)
            ok = isinstance(value, bytes) and t is not None and ISO.fullmatch(t)
            return None if ok else f"expected an ISO-8601 timestamp, got {show(value)}"
        if kind == "int":
            n = integer(value)
            if n is None:
                return f"expected a decimal integer, got {show(value)}"
            if ("min" in m and n < m["min"]) or ("max" in m and n > m["max"]):
                return f"expected an integer in [{m.get('min', '-inf')}, {m.get('max', 'inf')}], got {n}"
            return None
        if kind == "capture":
            if "like" in m:
                problem = self.problem(m["like"], value)
                if problem:
                    return problem
            t = text(value)
            if t is None:
                return f"cannot capture {show(value)} as a string"
            self.captures[m["as"]] = t
            return None
        if kind == "same":
            want = self.capture(m["as"])
            return (
                None if text(value) == want else f"expected {json.dumps(want)} (capture {m['as']}), got {show(value)}"
            )
        # gt
        want = self.capture(m["than"])
        n, floor = integer(value), integer(want.encode())
        if n is None or floor is None:
            return f"expected an integer greater than {want} (capture {m['than']}), got {show(value)}"
        return None if n > floor else f"expected an integer > {floor} (capture {m['than']}), got {n}"

    def capture(self, name: str) -> str:
        if name not in self.captures:
            raise Mismatch(f"no capture {name!r} (an earlier step did not set it)")
        return self.captures[name]

    def substitute(self, words: Any, what: str) -> list[str]:
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise BadVector(f"{what} must be an array of strings")
        return [PLACEHOLDER.sub(lambda mo: self.capture(mo.group(1)), w) for w in words]


# -- steps -----------------------------------------------------------------------------------------


def _pairs(flat: Any, what: str) -> list[tuple[str, Any]]:
    if not isinstance(flat, list) or len(flat) % 2:
        raise Mismatch(f"{what}: expected field/value pairs, got {show(flat)}")
    out = []
    for i in range(0, len(flat), 2):
        name = text(flat[i])
        if name is None:
            raise Mismatch(f"{what}: field name {show(flat[i])} is not text")
        out.append((name, flat[i + 1]))
    return out


def _fields(mt: Matcher, got: list[tuple[str, Any]], want: Any, exact: bool, what: str) -> None:
    if not isinstance(want, dict):
        raise BadVector(f"{what}: fields must be an object")
    names = [n for n, _ in got]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise Mismatch(f"{what}: field(s) {dupes} appear more than once")
    values = dict(got)
    problems = []
    for name, m in want.items():
        if name not in values:
            if m is not None:
                problems.append(f"field {name!r} is absent (expected {json.dumps(m, ensure_ascii=False)})")
            continue
        problem = mt.problem(m, values[name])
        if problem:
            problems.append(f"field {name!r}: {problem}")
    if exact:
        extra = [n for n in names if n not in want]
        if extra:
            problems.append(f"unexpected field(s) {extra}")
    if problems:
        raise Mismatch(f"{what}: " + "; ".join(problems))


def _call(step: Mapping[str, Any], mt: Matcher, send: Send) -> None:
    op = step["call"]
    outcomes = [k for k in ("reply", "error", "conflict") if k in step]
    if op not in OPS or len(outcomes) != 1:
        raise BadVector(f"a call step names one of {sorted(OPS)} and has exactly one of reply, error, conflict")
    keys, args = mt.substitute(step["keys"], "keys"), mt.substitute(step["args"], "args")
    try:
        reply = send(op, keys, args)
    except ErrorReply as exc:
        reply = exc
    what = f"call {op}"
    if "error" in step:
        if step["error"] != "bad-args":
            raise BadVector(f"error {step['error']!r} is not in the format")
        if not (isinstance(reply, ErrorReply) and str(reply).startswith(BAD_ARGS)):
            raise Mismatch(f"{what}: expected an error {BAD_ARGS}..., got {show(reply)}")
        return
    if isinstance(reply, ErrorReply) or not isinstance(reply, list):
        raise Mismatch(f"{what}: expected an array, got {show(reply)}")
    if "reply" in step:
        want = step["reply"]
        if not isinstance(want, list):
            raise BadVector("reply must be an array of matchers")
        if len(reply) != len(want):
            raise Mismatch(f"{what}: expected {len(want)} elements, got {len(reply)}: {show(reply)}")
        problems = []
        for i, (m, value) in enumerate(zip(want, reply, strict=True)):
            problem = mt.problem(m, value)
            if problem:
                problems.append(f"[{i}] {problem}")
        if problems:
            raise Mismatch(f"{what}: " + "; ".join(problems) + f" (reply {show(reply)})")
        return
    want = step["conflict"]
    if op != "claim" or not isinstance(want, dict) or set(want) - {"pttl", "fields"} or "fields" not in want:
        raise BadVector("conflict is {pttl, fields}, for claim only")
    if not reply or text(reply[0]) != "CONFLICT" or len(reply) < 2:
        raise Mismatch(f"{what}: expected CONFLICT, got {show(reply)}")
    if "pttl" in want:
        mt.check(want["pttl"], reply[1], f"{what}: pttl")
    _fields(mt, _pairs(reply[2:], what), want["fields"], True, what)


def _redis(step: Mapping[str, Any], mt: Matcher, command: Command) -> None:
    words = mt.substitute(step["redis"], "redis")
    if not words:
        raise BadVector("redis names a command")
    try:
        reply = command(words)
    except ErrorReply as exc:
        reply = exc
    if "reply" in step:
        mt.check(step["reply"], reply, f"redis {' '.join(words)}")
    elif isinstance(reply, ErrorReply):
        raise Mismatch(f"redis {' '.join(words)}: {show(reply)}")


def _hash(step: Mapping[str, Any], mt: Matcher, command: Command) -> None:
    key = step["hash"]
    exact = step.get("exact", False)
    if not isinstance(key, str) or not isinstance(exact, bool):
        raise BadVector("hash is a key name; exact is true or false")
    try:
        flat = command(["HGETALL", key])
    except ErrorReply as exc:
        raise Mismatch(f"HGETALL {key}: {show(exc)}") from None
    _fields(mt, _pairs(flat, f"hash {key}"), step["fields"], exact, f"hash {key}")


def _log(step: Mapping[str, Any], mt: Matcher, command: Command) -> None:
    key, want = step["log"], step["entries"]
    if not isinstance(key, str) or not isinstance(want, list):
        raise BadVector("log is a key name; entries an array")
    try:
        entries = command(["XRANGE", key, "-", "+"])
    except ErrorReply as exc:
        raise Mismatch(f"XRANGE {key}: {show(exc)}") from None
    if not isinstance(entries, list):
        raise Mismatch(f"XRANGE {key}: got {show(entries)}")
    events = [dict(_pairs(e[1], key)).get("event") for e in entries]
    if len(entries) != len(want):
        raise Mismatch(f"log {key}: expected {len(want)} entries, got {len(entries)} (events {show(events)})")
    for i, (entry, fields) in enumerate(zip(entries, want, strict=True)):
        _fields(mt, _pairs(entry[1], key), fields, False, f"log {key} entry {i}")


def _key(step: Mapping[str, Any], mt: Matcher, command: Command) -> None:
    key, kind = step["key"], step["type"]
    if not isinstance(key, str) or not isinstance(kind, str):
        raise BadVector("key is a key name; type a type name")
    got = text(command(["TYPE", key]))
    if got != kind:
        raise Mismatch(f"key {key}: expected type {kind}, got {got}")
    if "pttl" in step:
        mt.check(step["pttl"], command(["PTTL", key]), f"key {key}: PTTL")


def _shape(step: Any) -> str:
    if not isinstance(step, dict):
        raise BadVector("a step is an object")
    kinds = [k for k in STEP_KEYS if k in step]
    if len(kinds) != 1:
        raise BadVector(f"a step has exactly one of {sorted(STEP_KEYS)}, this one has {kinds}")
    kind = kinds[0]
    required, optional = STEP_KEYS[kind]
    missing, unknown = required - set(step), set(step) - required - optional - {kind}
    if missing or unknown:
        raise BadVector(f"{kind} step: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return kind


def run(doc: Mapping[str, Any], file: str, send: Send, command: Command) -> list[Failure]:
    """Replay one vector file on an empty database; every failed step, in order."""
    failures: list[Failure] = []
    unknown = set(doc) - TOP_KEYS
    steps = doc.get("steps")
    if unknown or not isinstance(steps, list) or not isinstance(doc.get("name"), str):
        return [Failure(file, -1, f"bad vector: needs name and steps (unknown keys {sorted(unknown)})")]
    mt = Matcher({})
    for index, step in enumerate(steps):
        try:
            kind = _shape(step)
            if kind == "call":
                _call(step, mt, send)
            elif kind == "redis":
                _redis(step, mt, command)
            elif kind == "hash":
                _hash(step, mt, command)
            elif kind == "log":
                _log(step, mt, command)
            else:
                _key(step, mt, command)
        except BadVector as exc:
            failures.append(Failure(file, index, f"bad vector: {exc}"))
        except ErrorReply as exc:
            failures.append(Failure(file, index, f"unexpected {show(exc)}"))
        except Mismatch as exc:
            note = step.get("note") if isinstance(step, dict) else None
            failures.append(Failure(file, index, f"{exc}" + (f"  [note: {note}]" if note else "")))
    return failures
