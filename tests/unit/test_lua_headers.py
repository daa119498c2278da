"""The Lua contract headers agree with the script bodies and with the Python protocol, and the checker
that enforces this catches each kind of drift (SPEC §3 "Scripts")."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from pylivermore._protocol import REPLIES
from pylivermore._scripts import (
    ScriptSpec,
    check_headers,
    check_shared,
    load_scripts,
    lua_dir,
    shared_blocks,
    sync_shared,
)

REPO_LUA = Path(__file__).resolve().parents[2] / "lua"


def test_current_headers_have_no_problems() -> None:
    """check_headers(load_scripts(), REPLIES) finds nothing to complain about in the shipped scripts."""
    assert check_headers(load_scripts(), REPLIES) == []


def test_every_lua_file_is_loaded() -> None:
    """load_scripts reads every lua/*.lua, named <operation>-<numkeys>.lua, and nothing else."""
    specs = load_scripts()
    files = sorted(p.name for p in lua_dir().glob("*.lua"))
    assert sorted(s.filename for s in specs.values()) == files
    assert set(specs) == set(REPLIES)
    for spec in specs.values():
        assert len(spec.keys) == spec.numkeys
        assert spec.argv
        assert spec.replies
        assert re.fullmatch(r"[0-9a-f]{40}", spec.sha1)


def test_scripts_come_from_the_checkout() -> None:
    """In a source checkout, the scripts loaded are the repository's lua/ files, byte for byte."""
    for spec in load_scripts().values():
        assert (REPO_LUA / spec.filename).read_text(encoding="utf-8") == spec.source


# -- drift detection ---------------------------------------------------------------------------


def with_spec(spec: ScriptSpec) -> dict[str, ScriptSpec]:
    """All shipped specs, with *spec* replacing the one of the same name."""
    return {**load_scripts(), spec.name: spec}


def header_and_body(spec: ScriptSpec) -> tuple[str, str]:
    end = spec.source.index("]]") + 2
    return spec.source[:end], spec.source[end:]


def problems_for(specs: Mapping[str, ScriptSpec], replies: Mapping[str, frozenset[str]] = REPLIES) -> list[str]:
    problems = check_headers(specs, replies)
    assert problems, "the checker missed the drift"
    return problems


def only_about(problems: list[str], filename: str) -> None:
    """The drift is blamed on the changed script alone."""
    assert all(p.startswith(filename + ":") for p in problems), problems


@pytest.fixture
def claim() -> ScriptSpec:
    return load_scripts()["claim"]


def test_header_drops_an_argv_line(claim: ScriptSpec) -> None:
    """Removing ARGV[8] from claim's header while the body still uses it is reported."""
    header, body = header_and_body(claim)
    line = re.search(r"^\s*ARGV\[8\].*\n", header, re.M)
    assert line is not None
    drifted = dataclasses.replace(claim, source=header.replace(line.group(0), "") + body)
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("ARGV" in p for p in problems)


def test_header_drops_an_argv_line_and_spec_agrees(claim: ScriptSpec) -> None:
    """Even if the parsed spec is consistent with the shortened header, the body and guard still disagree."""
    header, body = header_and_body(claim)
    line = re.search(r"^\s*ARGV\[8\].*\n", header, re.M)
    assert line is not None
    drifted = dataclasses.replace(claim, source=header.replace(line.group(0), "") + body, argv=claim.argv[:-1])
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("body uses ARGV" in p for p in problems)
    assert any("guard" in p for p in problems)


def test_body_uses_undocumented_argv(claim: ScriptSpec) -> None:
    """A body that reads ARGV[10], which the header does not document, is reported."""
    drifted = dataclasses.replace(claim, source=claim.source + "\nlocal extra = ARGV[10]\n")
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("body uses ARGV" in p and "10" in p for p in problems)


def test_body_uses_undocumented_key(claim: ScriptSpec) -> None:
    """A body that touches KEYS[4] (a key the header and file name do not declare) is reported."""
    drifted = dataclasses.replace(claim, source=claim.source + "\nlocal other = KEYS[4]\n")
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("KEYS" in p for p in problems)


def test_guard_disagrees_with_header(claim: ScriptSpec) -> None:
    """A #KEYS/#ARGV guard that does not match the documented counts is reported."""
    assert "#ARGV ~= 9" in claim.source
    drifted = dataclasses.replace(claim, source=claim.source.replace("#ARGV ~= 9", "#ARGV ~= 8", 1))
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("guard" in p for p in problems)


def test_body_sends_undocumented_reply(claim: ScriptSpec) -> None:
    """A reply word the body can send but the header does not list is reported."""
    drifted = dataclasses.replace(claim, source=claim.source + "\nif false then return {'SURPRISE'} end\n")
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("SURPRISE" in p for p in problems)


def test_header_lists_reply_the_body_never_sends(claim: ScriptSpec) -> None:
    """A header that documents a reply word the body never sends (and the protocol does not map) is reported."""
    drifted = dataclasses.replace(claim, replies=claim.replies | {"GHOST"})
    problems = problems_for(with_spec(drifted))
    only_about(problems, "claim-3.lua")
    assert any("GHOST" in p for p in problems)


def test_protocol_maps_an_extra_word() -> None:
    """REPLIES mapping a word that the script's header does not list is reported."""
    replies = {**REPLIES, "claim": REPLIES["claim"] | {"BOGUS"}}
    problems = problems_for(load_scripts(), replies)
    only_about(problems, "claim-3.lua")
    assert any("BOGUS" in p and "protocol" in p for p in problems)


def test_protocol_misses_a_word() -> None:
    """REPLIES lacking a word the script can send (here heartbeat's TAKEN) is reported."""
    replies = {**REPLIES, "heartbeat": REPLIES["heartbeat"] - {"TAKEN"}}
    problems = problems_for(load_scripts(), replies)
    only_about(problems, "heartbeat-1.lua")
    assert any("TAKEN" in p for p in problems)


def test_protocol_misses_a_script() -> None:
    """A script whose replies the protocol does not map at all is reported."""
    replies = {k: v for k, v in REPLIES.items() if k != "update"}
    problems = problems_for(load_scripts(), replies)
    only_about(problems, "update-1.lua")


def test_protocol_maps_a_missing_script() -> None:
    """A protocol entry for a script that lua/ does not have is reported."""
    replies = {**REPLIES, "frobnicate": frozenset({"OK"})}
    problems = problems_for(load_scripts(), replies)
    assert any("frobnicate" in p for p in problems)


# -- variadic scripts (<name>-n.lua) -------------------------------------------------------------


@pytest.fixture
def renew_many() -> ScriptSpec:
    return load_scripts()["renew_many"]


def test_variadic_script_is_read_as_such(renew_many: ScriptSpec) -> None:
    """renew_many-n.lua documents KEYS[1] and ARGV[1..2] (ttl, the first key's token)."""
    assert renew_many.variadic
    assert renew_many.filename == "renew_many-n.lua"
    assert renew_many.keys == ("status",)
    assert renew_many.argv == ("ttl_ms", "token")


def test_variadic_guard_disagrees_with_header(renew_many: ScriptSpec) -> None:
    """A variadic guard whose per-call argument count differs from the header's is reported."""
    assert "#ARGV ~= #KEYS + 1" in renew_many.source
    drifted = dataclasses.replace(
        renew_many, source=renew_many.source.replace("#ARGV ~= #KEYS + 1", "#ARGV ~= #KEYS + 2")
    )
    problems = problems_for(with_spec(drifted))
    only_about(problems, "renew_many-n.lua")
    assert any("guard" in p for p in problems)


def test_variadic_body_uses_undocumented_argv(renew_many: ScriptSpec) -> None:
    """A variadic body may index with variables, but a literal ARGV[3] not in the header is reported."""
    drifted = dataclasses.replace(renew_many, source=renew_many.source + "\nlocal extra = ARGV[3]\n")
    problems = problems_for(with_spec(drifted))
    only_about(problems, "renew_many-n.lua")
    assert any("body uses ARGV" in p for p in problems)


def test_variadic_body_answers_undocumented_word(renew_many: ScriptSpec) -> None:
    """A reply word sent through the variadic answer(i, word, data) helper counts as a body reply."""
    drifted = dataclasses.replace(
        renew_many, source=renew_many.source + "\nif false then answer(1, 'SURPRISE', '') end\n"
    )
    problems = problems_for(with_spec(drifted))
    only_about(problems, "renew_many-n.lua")
    assert any("SURPRISE" in p for p in problems)


# -- shared helpers: one source, checked copies ------------------------------------------------


def test_shared_helper_copies_match_their_one_source() -> None:
    """Every '--- shared: <name>' block of every script is byte for byte the block of lua/shared/helpers.lua,
    and the helpers several scripts need (owner check, log append, ISO time, key check) are shared, not
    rewritten per script."""
    specs = load_scripts()
    assert check_shared(specs) == []
    source = shared_blocks((REPO_LUA / "shared" / "helpers.lua").read_text(encoding="utf-8"))
    used = {name: [s.filename for s in specs.values() if name in shared_blocks(s.source)] for name in source}
    for name in ("owner", "append", "iso", "keys", "bad"):
        assert len(used[name]) >= 3, (name, used[name])
    assert all(used.values()), "a helper of the one source that no script uses"


def test_a_drifted_copy_is_reported_and_sync_restores_it(claim: ScriptSpec) -> None:
    """A script whose copy of a shared helper was edited in place is reported; sync_shared writes the one
    source's version back."""
    blocks = shared_blocks((REPO_LUA / "shared" / "helpers.lua").read_text(encoding="utf-8"))
    assert "text" in shared_blocks(claim.source)
    drifted_source = claim.source.replace("if #s < lo or #s > hi then return false end", "", 1)
    assert drifted_source != claim.source
    problems = check_shared(with_spec(dataclasses.replace(claim, source=drifted_source)))
    assert problems == ["claim-3.lua: shared block 'text' differs from lua/shared/helpers.lua (make lua-sync)"]
    assert sync_shared(drifted_source, blocks) == claim.source
