"""Load the Lua scripts and read their contract headers.

Each ``lua/<name>-<numkeys>.lua`` starts with a ``--[[ ... ]]`` header listing its KEYS, its
ARGV and every reply word. A script named ``<name>-n.lua`` takes any number of keys: its header
documents ``KEYS[1]`` and its arguments; each further key brings one more argument.
:func:`check_headers` compares each header with the script body and with the reply words
the Python protocol maps; ``python -m pylivermore._scripts`` runs it (``make lint`` does).

Helpers that several scripts share (the owner check, the log append, the ISO timestamp, ...) have
one source, ``lua/shared/helpers.lua``; each script carries a copy of the blocks it needs between
``--- shared: <name>`` and ``--- end`` lines, so that every file stays loadable on its own.
:func:`sync_shared` writes the copies (``python -m pylivermore._scripts --sync``, ``make lua-sync``)
and :func:`check_shared` reports a copy that differs (``make lua-check``).

In a wheel the scripts are packaged as ``pylivermore/lua``; in a source checkout they are
read from the repository's top-level ``lua/``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_FILE = re.compile(r"([a-z_]+)-(\d+|n)\.lua")
_HEADER = re.compile(r"\A--\[\[(.*?)\]\]", re.S)
_HEADER_ITEM = re.compile(r"^\s*(KEYS|ARGV)\[(\d+)\]\s+(\w+)", re.M)
_HEADER_REPLY = re.compile(r'\{"([A-Z_]+)"')
_BODY_ITEM = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
_BODY_REPLY = re.compile(r"\{'([A-Z_]+)'|answer\(\w+, '([A-Z_]+)'")  # a table, or a variadic script's answer(i, ...)
_BODY_GUARD = re.compile(r"if #KEYS ~= (\d+) or #ARGV ~= (\d+) then")
_VARIADIC_GUARD = re.compile(r"if #KEYS < 1 or #KEYS > \d+ or #ARGV ~= #KEYS \+ (\d+) then")
_SHARED_BLOCK = re.compile(r"^--- shared: (\w+)[^\n]*\n(.*?)^--- end$", re.S | re.M)
_SHARED_SOURCE = "shared/helpers.lua"


@dataclass(frozen=True)
class ScriptSpec:
    """One script: its operation name, key count, source text and documented contract."""

    name: str
    numkeys: int
    source: str
    sha1: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    replies: frozenset[str]
    variadic: bool = False  # <name>-n.lua: KEYS[1] documented, any number of keys accepted

    @property
    def filename(self) -> str:
        return f"{self.name}-{'n' if self.variadic else self.numkeys}.lua"


def lua_dir() -> Path:
    packaged = Path(__file__).with_name("lua")
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "lua"


def _parse(path: Path) -> ScriptSpec:
    m = _FILE.fullmatch(path.name)
    if m is None:
        raise ValueError(f"{path.name}: script files are named <operation>-<numkeys>.lua")
    source = path.read_text(encoding="utf-8")
    header = _HEADER.match(source)
    if header is None:
        raise ValueError(f"{path.name}: the file must start with a --[[ ... ]] contract header")
    items = _HEADER_ITEM.findall(header.group(1))
    reply_part = header.group(1).split("Reply", 1)[-1].split("Errors", 1)[0]
    return ScriptSpec(
        name=m.group(1),
        numkeys=1 if m.group(2) == "n" else int(m.group(2)),
        source=source,
        sha1=hashlib.sha1(source.encode()).hexdigest(),
        keys=tuple(name for kind, _, name in items if kind == "KEYS"),
        argv=tuple(name for kind, _, name in items if kind == "ARGV"),
        replies=frozenset(_HEADER_REPLY.findall(reply_part)),
        variadic=m.group(2) == "n",
    )


@cache
def load_scripts() -> Mapping[str, ScriptSpec]:
    """Every script, keyed by operation name."""
    specs = [_parse(p) for p in sorted(lua_dir().glob("*.lua"))]
    return {s.name: s for s in specs}


def check_headers(specs: Mapping[str, ScriptSpec], mapped: Mapping[str, frozenset[str]]) -> list[str]:
    """Every disagreement between headers, bodies and the protocol's reply words."""
    problems: list[str] = []
    for spec in specs.values():
        header_src = _HEADER.match(spec.source)
        assert header_src is not None
        body = spec.source[header_src.end() :]
        where = spec.filename
        header_items = _HEADER_ITEM.findall(header_src.group(1))
        for kind, count in (("KEYS", spec.numkeys), ("ARGV", len(spec.argv))):
            documented = sorted(int(i) for k, i, _ in header_items if k == kind)
            used = sorted({int(i) for k, i in _BODY_ITEM.findall(body) if k == kind})
            if documented != list(range(1, count + 1)):
                problems.append(f"{where}: header documents {kind} {documented}, expected 1..{count}")
            # A variadic script indexes its keys and their arguments with a variable (KEYS[i]).
            if used != documented and not (spec.variadic and set(used) <= set(documented)):
                problems.append(f"{where}: body uses {kind} {used} but the header documents {documented}")
        if spec.variadic:
            vguard = _VARIADIC_GUARD.search(body)
            # documented ARGV: the fixed ones, then the one argument that comes with each key
            if vguard is None or int(vguard.group(1)) != len(spec.argv) - 1:
                problems.append(f"{where}: the #KEYS/#ARGV guard does not match the header")
        else:
            guard = _BODY_GUARD.search(body)
            if guard is None or (int(guard.group(1)), int(guard.group(2))) != (spec.numkeys, len(spec.argv)):
                problems.append(f"{where}: the #KEYS/#ARGV guard does not match the header")
        body_replies = frozenset(a or b for a, b in _BODY_REPLY.findall(body))
        if body_replies != spec.replies:
            problems.append(f"{where}: body replies {sorted(body_replies)} but header lists {sorted(spec.replies)}")
        if mapped.get(spec.name) != spec.replies:
            mapped_words = sorted(mapped.get(spec.name, ()))
            problems.append(f"{where}: the protocol maps {mapped_words} but the header lists {sorted(spec.replies)}")
    for name in sorted(set(mapped) - set(specs)):
        problems.append(f"the protocol maps replies of {name!r} but lua/ has no such script")
    return problems


def shared_blocks(text: str) -> dict[str, str]:
    """The helper blocks of ``lua/shared/helpers.lua`` (or of a script): name -> code."""
    return {m.group(1): m.group(2) for m in _SHARED_BLOCK.finditer(text)}


def sync_shared(source: str, blocks: Mapping[str, str]) -> str:
    """*source* with each ``--- shared: <name>`` block replaced by the one source's code."""

    def copy(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in blocks:
            raise ValueError(f"no shared helper {name!r} in lua/{_SHARED_SOURCE}")
        note = f"(a copy from lua/{_SHARED_SOURCE}: edit it there, then make lua-sync)"
        return f"--- shared: {name} {note}\n{blocks[name]}--- end"

    return _SHARED_BLOCK.sub(copy, source)


def check_shared(specs: Mapping[str, ScriptSpec]) -> list[str]:
    """Every script whose shared blocks differ from ``lua/shared/helpers.lua`` (none in a wheel,
    which carries the scripts only)."""
    path = lua_dir() / _SHARED_SOURCE
    if not path.is_file():
        return []
    blocks = shared_blocks(path.read_text(encoding="utf-8"))
    problems = []
    for spec in specs.values():
        for name, code in shared_blocks(spec.source).items():
            if blocks.get(name) != code:
                problems.append(
                    f"{spec.filename}: shared block {name!r} differs from lua/{_SHARED_SOURCE} (make lua-sync)"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    from ._protocol import REPLIES

    if (argv if argv is not None else sys.argv[1:]) == ["--sync"]:
        blocks = shared_blocks((lua_dir() / _SHARED_SOURCE).read_text(encoding="utf-8"))
        for path in sorted(lua_dir().glob("*.lua")):
            text = path.read_text(encoding="utf-8")
            synced = sync_shared(text, blocks)
            if synced != text:
                path.write_text(synced, encoding="utf-8")
                print(f"lua/{path.name}: shared blocks copied")
        load_scripts.cache_clear()
        return 0
    problems = check_headers(load_scripts(), REPLIES) + check_shared(load_scripts())
    for p in problems:
        print(p, file=sys.stderr)
    print(f"lua headers: {len(load_scripts())} scripts, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
