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

Custom tables may name new states (any 1-32 characters of ``[a-z_]``, as the contract allows):
the seed's six are :class:`State` members, any other state is a plain ``str``. A claim starts in
``idle``, so a custom table needs an edge leaving ``idle``. The table is stored in the record at
claim (``stateTable``), so every client transitions a record under the table it was claimed with.
"""

from __future__ import annotations

import enum
import re
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


_NAME = re.compile(r"[a-z_]{1,32}")

#: A lifecycle state: a :class:`State` for the seed's six, a plain ``str`` for a custom table's others.
AnyState = State | str


def to_legacy_state(state: State | str) -> str:
    """Map a lifecycle state to the seed's 5-state view (idle, connecting, connected, disconnected).

    The legacy ``error`` state has no lifecycle counterpart: it is never returned. A custom state
    (not one of the six) has none either: ``ValueError``.
    """
    value = parse_state(state)
    if not isinstance(value, State):
        raise ValueError(f"custom state {value!r} has no legacy counterpart")
    return _LEGACY[value]


def parse_state(value: State | str) -> AnyState:
    """Return *value* as a :class:`State` (one of the seed's six) or, for any other valid state
    name, as a ``str``; raise ``ValueError`` for a name the contract does not allow."""
    if isinstance(value, State):
        return value
    if not isinstance(value, str):
        raise TypeError(f"a state must be a State or a str, not {type(value).__name__}")
    try:
        return State(value)
    except ValueError:
        if _NAME.fullmatch(value):
            return value
        names = ", ".join(s.value for s in State)
        raise ValueError(
            f"invalid state {value!r}: use one of {names}, or a custom state name of 1-32 characters of [a-z_]"
        ) from None


def build_table(
    table: Mapping[State | str, Iterable[State | str]] | None,
) -> tuple[Mapping[AnyState, frozenset[AnyState]], str]:
    """Validate a custom state table; return it with its wire form (the claim's ``table`` argument).

    ``None`` means the seed's table, sent as ``""`` so that the script uses its built-in copy.
    """
    if table is None:
        return TRANSITIONS, ""  # type: ignore[return-value]  # a Mapping[State, ...] is one of AnyState
    parsed: dict[AnyState, frozenset[AnyState]] = {}
    for k, vs in table.items():
        if isinstance(vs, str):
            raise TypeError(f"the targets of {k!r} must be a list of states, not the str {vs!r}")
        parsed[parse_state(k)] = frozenset(parse_state(v) for v in vs)
    order: dict[str, int] = {s.value: i for i, s in enumerate(State)}

    def rank(s: AnyState) -> tuple[int, str]:  # the seed's six in lifecycle order, then custom names
        return (order.get(str(s), len(order)), str(s))

    edges = [f"{a}>{b}" for a in sorted(parsed, key=rank) for b in sorted(parsed[a], key=rank)]
    if not edges:
        raise ValueError("a custom state table needs at least one edge")
    if not parsed.get(State.IDLE):
        raise ValueError("a custom state table needs an edge leaving 'idle': every claim starts in idle")
    wire = " ".join(edges)
    if len(wire) > 2048:
        raise ValueError(f"a custom state table is at most 2048 bytes as edges 'from>to', not {len(wire)}")
    return parsed, wire
