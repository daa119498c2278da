"""What an operator sees of the live records: each with its heartbeat age and TTL left, read after
the listing (the ``PTTL`` of each record in one pipeline, which a cluster client splits by node, then
the server's ``TIME``). Shared by ``livermore status`` / ``watch`` (sync) and the status page
(asyncio): the drivers send :func:`ttl_keys`' ``PTTL``s and ``TIME`` and hand the replies to
:func:`rows_from`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import msgspec

from ._keys import Keys
from ._states import State, to_legacy_state
from .models import InstanceStatus


class Row(msgspec.Struct, frozen=True):
    """One live record as the status views show it."""

    status: InstanceStatus
    heartbeat_age: float | None  # seconds since lastHeartbeat, on the server's clock
    ttl: float | None  # seconds left before the record expires (None: it just did)


def ttl_keys(namespace: str, statuses: Sequence[InstanceStatus]) -> list[str]:
    """The status key of each record, whose ``PTTL`` is its TTL left."""
    return [Keys(namespace, str(s.exchange_id)).status for s in statuses]


def _iso_seconds(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def rows_from(statuses: Sequence[InstanceStatus], pttls: Sequence[Any], time_reply: Any) -> list[Row]:
    """The rows, from the ``PTTL`` replies (one per record) and ``TIME``'s."""
    sec, usec = time_reply
    now = int(sec) + int(usec) / 1e6
    out = []
    for status, pttl in zip(statuses, pttls, strict=True):
        beat = _iso_seconds(status.last_heartbeat)
        age = None if beat is None else max(0.0, now - beat)
        out.append(Row(status, age, int(pttl) / 1000 if int(pttl) >= 0 else None))
    return out


def document(row: Row) -> dict[str, Any]:
    """A row as JSON: the seed's document, plus ``legacyState``, ``heartbeatAgeSeconds`` and ``ttlSeconds``."""
    doc: dict[str, Any] = msgspec.to_builtins(row.status)
    doc["legacyState"] = to_legacy_state(row.status.connection_state)
    doc["heartbeatAgeSeconds"] = None if row.heartbeat_age is None else round(row.heartbeat_age, 3)
    doc["ttlSeconds"] = row.ttl
    return doc


#: The seed's six states, each counted (0 included) by the metrics.
SEED_STATES = tuple(state.value for state in State)
