"""The scripts as one Redis Functions library (Redis >= 7.0, Valkey), built from the same Lua files.

:func:`build_library` turns every ``lua/<operation>-<numkeys>.lua`` into one function of one
``FUNCTION LOAD``-able library: the file's body after its ``--[[ ... ]]`` header, byte for byte,
becomes the body of ``function(KEYS, ARGV) ... end`` (a script's top-level ``local``s and
``return``s mean the same inside a function, and ``KEYS``/``ARGV`` are the function's arguments
instead of globals). The library's name and every function's name carry the contract version of
the script headers (``contract v2``: library ``pylivermore_v2``, functions
``pylivermore_v2_<operation>``), so that two contract versions can be loaded side by side.

Two functions are registered with the ``allow-oom`` flag: those whose script's first write is
``PEXPIRE`` (:data:`ALLOW_OOM`, the heartbeats). Redis runs an ``EVALSHA`` script while it is over
``maxmemory`` and refuses only a first write that may grow memory; a function without that flag
is refused whole. With it, a heartbeat renews under memory pressure over ``FCALL`` as it does over
``EVALSHA``; every other function is refused at OOM, as its script would be at its first write.

``python -m pylivermore._library`` writes ``lua/functions/pylivermore.lua`` (the file other
clients load); ``--check`` exits 1 when that file differs from what would be built
(``make lua-check`` runs it). The drivers build the library text in memory from the scripts they
load (:func:`library`), so it always matches the scripts of the installed package.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ._scripts import ScriptSpec, load_scripts, lua_dir

PREFIX = "pylivermore"

#: Operations whose script's first write is ``PEXPIRE`` (no memory needed): their functions carry
#: ``allow-oom`` so that Redis runs them over ``maxmemory`` as it runs their scripts (see above).
ALLOW_OOM = frozenset({"heartbeat", "renew_many"})

_HEADER = re.compile(r"\A--\[\[(.*?)\]\]", re.S)
_VERSION = re.compile(r"\bcontract v(\d+)\b")


@dataclass(frozen=True)
class Library:
    """A built library: its name, its ``FUNCTION LOAD`` text and the function of each operation."""

    name: str
    text: str
    functions: Mapping[str, str]


def contract_version(specs: Mapping[str, ScriptSpec]) -> int:
    """The contract version every script header names (``contract vN``); they must agree."""
    versions: dict[int, list[str]] = {}
    for spec in specs.values():
        header = _HEADER.match(spec.source)
        found = _VERSION.search(header.group(1)) if header else None
        if found is None:
            raise ValueError(f"{spec.filename}: its header names no 'contract vN'")
        versions.setdefault(int(found.group(1)), []).append(spec.filename)
    if len(versions) != 1:
        detail = "; ".join(f"v{v}: {', '.join(sorted(files))}" for v, files in sorted(versions.items()))
        raise ValueError(f"the scripts disagree on the contract version ({detail})")
    return next(iter(versions))


def library_name(version: int) -> str:
    return f"{PREFIX}_v{version}"


def function_name(version: int, operation: str) -> str:
    return f"{library_name(version)}_{operation}"


def _body(spec: ScriptSpec) -> str:
    header = _HEADER.match(spec.source)
    if header is None:
        raise ValueError(f"{spec.filename}: the file must start with a --[[ ... ]] contract header")
    return spec.source[header.end() :]


def _register(name: str, spec: ScriptSpec) -> str:
    body = _body(spec)
    end = "end" if body.endswith("\n") else "\nend"
    comment = f"-- {spec.filename}\n"
    if spec.name in ALLOW_OOM:
        comment = (
            f"-- {spec.filename} (allow-oom: its first write, PEXPIRE, needs no memory; see pylivermore/_library.py)\n"
        )
        opening = (
            f"redis.register_function{{function_name = '{name}', flags = {{'allow-oom'}}, "
            "callback = function(KEYS, ARGV)"
        )
        closing = f"{end}}}\n"
    else:
        opening = f"redis.register_function('{name}', function(KEYS, ARGV)"
        closing = f"{end})\n"
    return f"{comment}{opening}{body}{closing}"


def build_library(specs: Mapping[str, ScriptSpec]) -> str:
    """The ``FUNCTION LOAD`` text of the library of *specs* (deterministic: sorted by operation)."""
    version = contract_version(specs)
    name = library_name(version)
    parts = [
        f"#!lua name={name}\n",
        "-- GENERATED from lua/*.lua by `python -m pylivermore._library`: do not edit (edit the scripts, run it).\n",
        "-- Each function is one script's body after its --[[ header ]], byte for byte: the same KEYS, ARGV and\n",
        "-- replies as that file (lua/README.md). Load with FUNCTION LOAD REPLACE, call with\n",
        f"-- FCALL {name}_<operation> <numkeys> <keys...> <args...>\n",
    ]
    for operation in sorted(specs):
        parts.append("\n")
        parts.append(_register(function_name(version, operation), specs[operation]))
    return "".join(parts)


@cache
def library() -> Library:
    """The library of the scripts this process loads (:func:`~pylivermore._scripts.load_scripts`)."""
    specs = load_scripts()
    version = contract_version(specs)
    functions = {op: function_name(version, op) for op in specs}
    return Library(library_name(version), build_library(specs), functions)


def library_path() -> Path:
    return lua_dir() / "functions" / f"{PREFIX}.lua"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--check"]):
        print("usage: python -m pylivermore._library [--check]", file=sys.stderr)
        return 2
    path = library_path()
    text = build_library(load_scripts())
    if args == ["--check"]:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            state = "is missing" if current is None else "differs from what lua/*.lua build"
            print(f"{path.name} {state}: run `python -m pylivermore._library`", file=sys.stderr)
            return 1
        print(f"lua functions: {path.name} is up to date")
        return 0
    path.parent.mkdir(exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
