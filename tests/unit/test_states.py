"""The lifecycle state table, the legacy view and state parsing (SPEC §2, §3)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import pytest

from pylivermore import TRANSITIONS, State, to_legacy_state
from pylivermore._scripts import load_scripts
from pylivermore._states import build_table, parse_state

#: SPEC §2, the seed's table, written out edge by edge.
SPEC_EDGES = {
    ("idle", "starting"),
    ("starting", "warming"),
    ("starting", "stopping"),
    ("starting", "idle"),
    ("warming", "active"),
    ("warming", "stopping"),
    ("warming", "idle"),
    ("active", "stopping"),
    ("stopping", "stopped"),
    ("stopped", "idle"),
}

#: SPEC §2: idle→idle, starting/warming→connecting, active→connected, stopping/stopped→disconnected.
SPEC_LEGACY = {
    "idle": "idle",
    "starting": "connecting",
    "warming": "connecting",
    "active": "connected",
    "stopping": "disconnected",
    "stopped": "disconnected",
}


def _edges(table: Mapping[State, Iterable[State]]) -> set[tuple[str, str]]:
    return {(a.value, b.value) for a, targets in table.items() for b in targets}


def test_six_states_with_seed_names() -> None:
    """State has exactly the six lifecycle states, valued by their seed names, and str() gives the name."""
    assert {s.value for s in State} == set(SPEC_LEGACY)
    for s in State:
        assert str(s) == s.value
        assert s == s.value  # a str enum compares equal to its wire name


def test_transitions_are_exactly_the_spec_edges() -> None:
    """TRANSITIONS holds exactly the ten edges of SPEC §2: none missing, none extra, no self-loops."""
    assert set(TRANSITIONS) == set(State)
    assert _edges(TRANSITIONS) == SPEC_EDGES
    for state, targets in TRANSITIONS.items():
        assert state not in targets, f"{state} -> {state} must not be an edge"
        assert isinstance(targets, frozenset)


def test_lua_default_table_matches_python_table() -> None:
    """The DEFAULT edge list built into transition-2.lua names the same edges as TRANSITIONS."""
    source = load_scripts()["transition"].source
    m = re.search(r"local DEFAULT = '([^']*)'", source)
    assert m is not None, "transition-2.lua no longer declares its DEFAULT table"
    lua_edges = {tuple(edge.split(">")) for edge in m.group(1).split()}
    assert lua_edges == _edges(TRANSITIONS)


@pytest.mark.parametrize("state", list(State))
def test_to_legacy_state_maps_each_state(state: State) -> None:
    """to_legacy_state maps every state (given as State or as str) to the seed's 5-state view."""
    assert to_legacy_state(state) == SPEC_LEGACY[state.value]
    assert to_legacy_state(state.value) == SPEC_LEGACY[state.value]


def test_to_legacy_state_never_returns_error() -> None:
    """The legacy 'error' state has no lifecycle counterpart and is never produced."""
    assert "error" not in {to_legacy_state(s) for s in State}


def test_to_legacy_state_rejects_unknown() -> None:
    """Legacy names are not lifecycle states: to_legacy_state('connected') (a custom state name at most) is a
    ValueError."""
    with pytest.raises(ValueError, match="no legacy counterpart"):
        to_legacy_state("connected")


@pytest.mark.parametrize("name", ["paused", "error", "connecting", "a" * 32, "draining_out"])
def test_parse_state_keeps_custom_names_as_str(name: str) -> None:
    """Any name the contract allows (1-32 chars of [a-z_]) that is not one of the six is a plain str."""
    value = parse_state(name)
    assert value == name
    assert type(value) is str


def test_parse_state_accepts_state_and_name() -> None:
    """parse_state returns the State for a State or its exact wire name."""
    for s in State:
        assert parse_state(s) is s
        assert parse_state(s.value) is s


@pytest.mark.parametrize("junk", ["Active", " idle", "idle ", "", "IDLE", "a" * 33, "idle-2", "état"])
def test_parse_state_rejects_junk_strings(junk: str) -> None:
    """Names the contract does not allow are ValueErrors whose message repeats the input and lists the valid states."""
    with pytest.raises(ValueError, match="invalid state") as info:
        parse_state(junk)
    message = str(info.value)
    assert repr(junk) in message
    for s in State:
        assert s.value in message


@pytest.mark.parametrize("junk", [3, None, b"idle", 1.0, ["idle"]])
def test_parse_state_rejects_non_strings(junk: object) -> None:
    """Values that are not str/State are TypeErrors naming the bad type."""
    with pytest.raises(TypeError, match=type(junk).__name__):
        parse_state(junk)  # type: ignore[arg-type]


def test_build_table_none_means_default() -> None:
    """build_table(None) is the seed's table, sent as '' so the script uses its built-in copy."""
    table, wire = build_table(None)
    assert table is TRANSITIONS
    assert wire == ""


def test_build_table_wire_format() -> None:
    """A custom table is sent as 'from>to' edges, single-space separated, in State declaration order."""
    order = list(State)
    custom = {"stopped": ["idle"], State.IDLE: [State.ACTIVE], "active": ["stopped", "idle"]}
    table, wire = build_table(custom)
    assert table == {
        State.STOPPED: frozenset({State.IDLE}),
        State.IDLE: frozenset({State.ACTIVE}),
        State.ACTIVE: frozenset({State.STOPPED, State.IDLE}),
    }
    edges = [tuple(e.split(">")) for e in wire.split(" ")]
    assert set(edges) == _edges(table)
    ranks = [(order.index(State(a)), order.index(State(b))) for a, b in edges]
    assert ranks == sorted(ranks)
    # The shape transition-2.lua accepts for ARGV[5].
    assert re.fullmatch(r"[a-z_]+>[a-z_]+[a-z_> ]*", wire)
    assert "  " not in wire
    assert len(wire.encode()) <= 2048


def test_build_table_of_seed_table_round_trips() -> None:
    """Passing the seed's table explicitly yields the same edges and a wire form listing all of them."""
    table, wire = build_table({k: list(v) for k, v in TRANSITIONS.items()})
    assert _edges(table) == SPEC_EDGES
    assert {tuple(e.split(">")) for e in wire.split()} == SPEC_EDGES


@pytest.mark.parametrize(
    "bad",
    [
        {"idle": ["Bogus"]},
        {"bo gus": ["idle"]},
        {"Idle": ["starting"]},
        {"idle": ["x" * 33]},
    ],
)
def test_build_table_rejects_invalid_state_names(bad: dict[str, list[str]]) -> None:
    """A custom table naming a state the contract does not allow is a ValueError before any round trip."""
    with pytest.raises(ValueError, match="invalid state"):
        build_table(bad)


def test_build_table_takes_custom_state_names() -> None:
    """New state names are plain strs in the table and go into its wire form (claim's `table`)."""
    table, wire = build_table({"idle": ["paused", "starting"], "paused": ["idle"]})
    assert table == {State.IDLE: frozenset({"paused", State.STARTING}), "paused": frozenset({State.IDLE})}
    assert wire == "idle>starting idle>paused paused>idle"


def test_build_table_needs_an_edge_leaving_idle() -> None:
    """Every claim starts in idle: a table without an edge leaving idle is refused."""
    with pytest.raises(ValueError, match="leaving 'idle'"):
        build_table({"active": ["stopping"]})


@pytest.mark.parametrize("empty", [{}, {"idle": []}, {"idle": [], "active": ()}])
def test_build_table_rejects_tables_without_edges(empty: dict[str, list[str]]) -> None:
    """A custom table without a single edge is rejected (it would freeze every lease in idle)."""
    with pytest.raises(ValueError, match="at least one edge"):
        build_table(empty)
