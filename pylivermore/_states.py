"""The lifecycle state table: the one Python copy of the edges in ``lua/transition-2.lua``.

Rules (checked inside Redis by ``transition-2.lua``; mirrored here so that an obviously
invalid call fails before any round trip):

* A claim creates the record in ``idle``.
* A transition must follow an edge of the table; a transition to the same state is not an
  edge and is refused (a *retried* call is recognised by its request id instead).
* Entering ``active`` sets ``connectedAt``; every transition sets ``lastStateChange``.
* The happy path is idle -> starting -> warming -> active -> stopping -> stopped -> idle;
  ``starting`` and ``warming`` may abort to ``stopping`` or straight back to ``idle``.

A contract test drives every (from, to) pair through the real script and compares the
accepted set with :data:`TRANSITIONS`, so this module cannot drift from the Lua table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class State(enum.StrEnum):
    """The six lifecycle states of a resource's owner."""

    IDLE = "idle"
    STARTING = "starting"
    WARMING = "warming"
    ACTIVE = "active"
    STOPPING = "stopping"
    STOPPED = "stopped"


#: The seed's state table: for each state, the states it may move to.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    State.IDLE: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.WARMING, State.STOPPING, State.IDLE}),
    State.WARMING: frozenset({State.ACTIVE, State.STOPPING, State.IDLE}),
    State.ACTIVE: frozenset({State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset({State.IDLE}),
}

_LEGACY = {
    State.IDLE: "idle",
    State.STARTING: "connecting",
    State.WARMING: "connecting",
    State.ACTIVE: "connected",
    State.STOPPING: "disconnected",
    State.STOPPED: "disconnected",
}


def to_legacy_state(state: State | str) -> str:
    """Map a lifecycle state to the seed's 5-state view (idle, connecting, connected, disconnected).

    The legacy ``error`` state has no lifecycle counterpart: it is never returned.
    """
    return _LEGACY[parse_state(state)]


def parse_state(value: State | str) -> State:
    """Return *value* as a :class:`State`, or raise ``ValueError`` naming the valid states."""
    if isinstance(value, State):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a state must be a State or a str, not {type(value).__name__}")
    try:
        return State(value)
    except ValueError:
        names = ", ".join(s.value for s in State)
        raise ValueError(f"unknown state {value!r}: use one of {names}") from None


def build_table(
    table: Mapping[State | str, Iterable[State | str]] | None,
) -> tuple[Mapping[State, frozenset[State]], str]:
    """Validate a custom state table; return it with its wire form for ``transition-2.lua``.

    ``None`` means the seed's table, sent as ``""`` so that the script uses its built-in copy.
    """
    if table is None:
        return TRANSITIONS, ""
    parsed = {parse_state(k): frozenset(parse_state(v) for v in vs) for k, vs in table.items()}
    edges = [f"{a.value}>{b.value}" for a in State for b in sorted(parsed.get(a, ()), key=list(State).index)]
    if not edges:
        raise ValueError("a custom state table needs at least one edge")
    return parsed, " ".join(edges)
