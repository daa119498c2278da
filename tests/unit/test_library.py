"""The Redis Functions library built from lua/*.lua (pylivermore._library), the committed copy of it
(lua/functions/pylivermore.lua), and the sans-IO half of the functions transport: which commands
a call becomes, how a lost library is recognised and loaded again, and the option and ACL rules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from redis.exceptions import NoScriptError, ResponseError

from pylivermore import LivermoreError, acl
from pylivermore import _library as lib
from pylivermore import _protocol as proto
from pylivermore._config import RegistryConfig
from pylivermore._keys import Keys
from pylivermore._scripts import ScriptSpec, load_scripts

REPO_FUNCTIONS = Path(__file__).resolve().parents[2] / "lua" / "functions" / "pylivermore.lua"
HEADER = re.compile(r"\A--\[\[(.*?)\]\]", re.S)


def with_version(spec: ScriptSpec, version: int) -> ScriptSpec:
    source = re.sub(r"contract v\d+", f"contract v{version}", spec.source, count=1)
    return dataclasses.replace(spec, source=source)


# -- the committed file ------------------------------------------------------------------------


def test_committed_library_is_up_to_date() -> None:
    """lua/functions/pylivermore.lua is exactly what lua/*.lua build: after editing a script, run
    `python -m pylivermore._library` (make lua-check fails too)."""
    built = lib.build_library(load_scripts())
    assert REPO_FUNCTIONS.is_file(), "lua/functions/pylivermore.lua is missing: run python -m pylivermore._library"
    assert REPO_FUNCTIONS.read_text(encoding="utf-8") == built, (
        "lua/functions/pylivermore.lua is stale: run python -m pylivermore._library"
    )


def test_check_and_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--check` exits 1 on a missing or stale file and 0 on a fresh one; without it the file is written."""
    target = tmp_path / "functions" / "pylivermore.lua"
    monkeypatch.setattr(lib, "library_path", lambda: target)
    assert lib.main(["--check"]) == 1
    assert lib.main([]) == 0
    assert target.read_text(encoding="utf-8") == lib.build_library(load_scripts())
    assert lib.main(["--check"]) == 0
    target.write_text(target.read_text(encoding="utf-8") + "-- edited by hand\n", encoding="utf-8")
    assert lib.main(["--check"]) == 1
    assert lib.main(["--bogus"]) == 2
    assert "python -m pylivermore._library" in capsys.readouterr().err


# -- the build ---------------------------------------------------------------------------------


def test_library_shape() -> None:
    """One FUNCTION LOAD text: the shebang naming the library of the headers' contract version, the
    do-not-edit comment, then one function per script, named <library>_<operation>, sorted."""
    specs = load_scripts()
    version = lib.contract_version(specs)
    text = lib.build_library(specs)
    name = f"pylivermore_v{version}"
    assert text.splitlines()[0] == f"#!lua name={name}"
    assert "GENERATED from lua/*.lua by `python -m pylivermore._library`: do not edit" in text
    registered = re.findall(r"redis\.register_function[({](?:function_name = )?'([a-z_0-9]+)'", text)
    assert registered == [f"{name}_{op}" for op in sorted(specs)]
    assert lib.build_library(specs) == text  # deterministic
    built = lib.library()
    assert built.name == name
    assert built.text == text
    assert built.functions == {op: f"{name}_{op}" for op in specs}


def test_each_function_is_its_script_body_byte_for_byte() -> None:
    """Each function's body is the script file after its --[[ header ]], unchanged; headers stay out."""
    specs = load_scripts()
    text = lib.build_library(specs)
    for spec in specs.values():
        header = HEADER.match(spec.source)
        assert header is not None
        body = spec.source[header.end() :]
        assert f"function(KEYS, ARGV){body}end" in text, spec.filename
        assert header.group(0) not in text, spec.filename


def test_only_the_heartbeats_run_out_of_memory() -> None:
    """allow-oom goes to exactly the functions whose script's first write is PEXPIRE (Redis runs such a
    script over maxmemory; a function without the flag it refuses whole)."""
    text = lib.build_library(load_scripts())
    for spec in load_scripts().values():
        writes = re.search(r"^\s*Writes\s+(.*)$", spec.source, re.M)
        assert writes is not None, spec.filename
        first_write = re.search(r"\(([A-Z]+)", writes.group(1))
        assert first_write is not None, spec.filename
        flagged = f"function_name = '{lib.library().functions[spec.name]}', flags = {{'allow-oom'}}" in text
        assert flagged == (first_write.group(1) == "PEXPIRE") == (spec.name in lib.ALLOW_OOM), spec.filename


def test_names_follow_the_contract_version() -> None:
    """A new contract version in the headers renames the library and every function."""
    specs = {op: with_version(s, 3) for op, s in load_scripts().items()}
    text = lib.build_library(specs)
    assert text.startswith("#!lua name=pylivermore_v3\n")
    assert "'pylivermore_v3_claim'" in text
    assert "pylivermore_v2" not in text


def test_scripts_must_agree_on_the_version() -> None:
    """Scripts of two contract versions make no library (the names could only lie about one of them)."""
    specs = dict(load_scripts())
    specs["claim"] = with_version(specs["claim"], 9)
    with pytest.raises(ValueError, match=r"disagree on the contract version \(v2: .*; v9: claim-3.lua\)"):
        lib.build_library(specs)
    specs["claim"] = dataclasses.replace(specs["claim"], source=specs["claim"].source.replace("contract v9", "x"))
    with pytest.raises(ValueError, match=r"claim-3\.lua: its header names no 'contract vN'"):
        lib.build_library(specs)


# -- the transport in the protocol -------------------------------------------------------------


CALL = proto.heartbeat_call(Keys("ns", "7"), "t" * 32, 45000)


def test_call_command_per_transport() -> None:
    """The same Call is an EVALSHA of the script or an FCALL of its function, with the same keys and args."""
    spec = load_scripts()["heartbeat"]
    assert proto.call_command(CALL) == ("EVALSHA", spec.sha1, 1, "ns:{7}:status", "t" * 32, "45000")
    assert proto.call_command(CALL, "functions") == (
        "FCALL",
        "pylivermore_v2_heartbeat",
        1,
        "ns:{7}:status",
        "t" * 32,
        "45000",
    )


def test_pipeline_commands_per_transport() -> None:
    """Pipelines carry the transport's commands, ASKING and the tail as before."""
    commands = proto.pipeline_commands([CALL, CALL], asking=True, tail=[("WAIT", 1, 100)], transport="functions")
    assert [c[0] for c in commands] == ["ASKING", "FCALL", "ASKING", "FCALL", "WAIT"]
    assert [c[0] for c in proto.pipeline_commands([CALL])] == ["EVALSHA"]


def test_load_commands_per_transport() -> None:
    """After NOSCRIPT: SCRIPT LOAD of each missing script; after Function not found: the whole library."""
    specs = load_scripts()
    assert proto.load_commands(["heartbeat", "claim", "heartbeat"]) == [
        ("SCRIPT", "LOAD", specs["claim"].source),
        ("SCRIPT", "LOAD", specs["heartbeat"].source),
    ]
    assert proto.load_commands(["heartbeat"], "functions") == [("FUNCTION", "LOAD", "REPLACE", lib.library().text)]


def test_missing_script_or_function_is_recognised() -> None:
    """NOSCRIPT and 'Function not found' (as redis-py words them, with or without ERR) mean "did not run"."""
    replies: list[object] = [
        NoScriptError("No matching script. Please use EVAL."),
        ResponseError("Function not found"),
        ResponseError("ERR Function not found"),
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("pylivermore bad-args: token must be 32-128 characters"),
        [b"RENEWED", b"2026-02-10T12:34:56.789Z"],
        b"Function not found",
    ]
    assert proto.noscript_indexes(replies) == [0, 1, 2]


@pytest.mark.parametrize(
    "text",
    [
        "unknown command 'FCALL', with args beginning with: 'pylivermore_v2_claim' ",  # Redis 7 wording
        "unknown command `FCALL`, with args beginning with: `pylivermore_v2_claim`, ",  # Redis 6.2 wording
        "ERR unknown command `FUNCTION`, with args beginning with: `LOAD`, ",
    ],
)
def test_a_server_without_functions_is_named(text: str) -> None:
    """Over the functions transport, a server without FCALL (Redis < 7.0) gets a clear error that
    points to transport='scripts'; other errors and the scripts transport pass through."""
    error = proto.unsupported(ResponseError(text), "functions")
    assert isinstance(error, LivermoreError)
    assert "transport='scripts'" in str(error)
    assert "Redis >= 7.0" in str(error)
    assert proto.unsupported(ResponseError(text), "scripts") is None


@pytest.mark.parametrize(
    "reply",
    [ResponseError("unknown command 'HGETALLX'"), ResponseError("Function not found"), [b"OK"], None],
)
def test_other_replies_are_not_a_missing_functions_engine(reply: object) -> None:
    assert proto.unsupported(reply, "functions") is None


# -- the option and the ACL rules ----------------------------------------------------------------


def test_transport_option() -> None:
    """transport is 'scripts' by default or 'functions'; anything else is a ValueError naming both."""
    assert RegistryConfig().transport == "scripts"
    assert RegistryConfig(transport="functions").transport == "functions"
    for bad in ("function", "FUNCTIONS", "", None, 1, ["scripts"]):
        with pytest.raises(ValueError, match=r"'scripts'.*'functions'"):
            RegistryConfig(transport=bad)  # type: ignore[arg-type]


def test_worker_rules_per_transport() -> None:
    """The functions worker gets FCALL and FUNCTION LOAD instead of EVALSHA and SCRIPT LOAD, all else equal."""
    scripts = acl.worker_rules("exchange", "pw")
    assert scripts == acl.worker_rules("exchange", "pw", transport="scripts")
    functions = acl.worker_rules("exchange", "pw", transport="functions")
    assert {"+fcall", "+function|load"} <= set(functions)
    assert not {"+evalsha", "+script|load"} & set(functions)
    assert [r for r in functions if r not in ("+fcall", "+function|load")] == [
        r for r in scripts if r not in ("+evalsha", "+script|load")
    ]
    assert set(acl.FUNCTION_WORKER_COMMANDS) - set(acl.WORKER_COMMANDS) == set(acl.FUNCTION_TRANSPORT)
    for name in ("function|flush", "function|delete", "function|restore", "script|flush"):
        assert f"+{name}" not in functions
    with pytest.raises(ValueError, match="'scripts' or 'functions'"):
        acl.worker_rules(transport="fcall")
