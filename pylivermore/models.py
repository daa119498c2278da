"""Typed views of what the scripts store: the status record and the activity-log entries.

The record is a Redis hash with one field per status field, named as in the seed's JSON
document; a null is an absent field. ``msgspec.json.encode(status)`` gives the seed's JSON
document (camelCase, ISO timestamps, nulls) plus ``fencingToken``, ``instanceId`` and, for a record
claimed under a custom state table, ``stateTable``. Internal fields (``ownerDigest``, ``seq``,
``retentionMs``, and v1's ``transitionRequest``/``errorRequest``) are not exposed.

``connectionState`` is any state the contract allows: a :class:`State` for the seed's six (a
``State`` is a ``str``), a plain ``str`` for a custom table's others.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import msgspec

from ._keys import python_id
from ._states import parse_state
from .errors import CorruptStatusError

_INT_FIELDS = ("symbolCount", "fencingToken")


class InstanceStatus(msgspec.Struct, kw_only=True, rename="camel", frozen=True):
    """One resource's live record: who owns it, in which state, since when, and its last error."""

    exchange_id: int | str
    exchange_name: str
    hostname: str
    ip_address: str | None = None
    country_code: str | None = None
    admin_email: str | None = None
    admin_display_name: str | None = None
    connection_state: str  # a State for the seed's six states, a str for a custom table's others
    symbol_count: int
    connected_at: str | None = None
    last_heartbeat: str
    last_state_change: str
    registered_at: str
    last_error: str | None = None
    last_error_at: str | None = None
    fencing_token: int
    instance_id: str
    state_table: str | None = None  # the custom table the record was claimed with (edges "from>to"), None: the seed's


class ActivityEntry(msgspec.Struct, kw_only=True, rename="camel", frozen=True):
    """One activity-log entry. ``event`` is ``claim``, ``state_transition``, ``error``,
    ``deregister`` or ``force_release``; fields that do not apply to an event are ``None``."""

    id: str
    event: str
    timestamp: str
    exchange_id: int | str
    exchange_name: str
    hostname: str
    ip: str | None = None
    fencing_token: int | None = None
    instance_id: str | None = None
    seq: int | None = None  # the lease's sequence number of a transition or error (contract v2)
    request_id: str | None = None  # the request id of an entry written by a v1 script
    from_state: str | None = None
    to_state: str | None = None
    admin_email: str | None = None
    error: str | None = None
    state: str | None = None
    ttl_ms: int | None = None
    how: str | None = None
    replaced: int | None = None
    reason: str | None = None
    operator: str | None = None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def pairs_to_dict(flat: Sequence[bytes | str]) -> dict[str, str]:
    """``[k1, v1, k2, v2, ...]`` (a script reply or RESP2 HGETALL) as a ``str`` dict."""
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def text_dict(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash reply as a ``str`` dict (a listing decodes thousands: keep the common case lean)."""
    try:  # a client without decode_responses: every key and value is bytes
        return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape") for k, v in raw.items()}  # type: ignore[union-attr]
    except AttributeError:
        return {_text(k): _text(v) for k, v in raw.items()}


_STATUS_KEY = re.compile(r"[^:]+:\{([^{}]+)\}:status")


def decode_status(fields: Mapping[str, str], key: str) -> InstanceStatus:
    """Decode a status hash; raise :class:`CorruptStatusError` if it is not what the scripts write
    (also: a record under a status key whose ``exchangeId`` is not the key's id)."""
    data: dict[str, object] = dict(fields)
    named = _STATUS_KEY.fullmatch(key)
    if named is not None and fields.get("exchangeId", named.group(1)) != named.group(1):
        raise CorruptStatusError(
            key,
            f"the status hash is not a pylivermore record (its exchangeId {fields['exchangeId']!r} is not its key's)",
        )
    try:
        for name in _INT_FIELDS:
            if name in data:
                data[name] = int(fields[name])
        if "exchangeId" in data:
            data["exchangeId"] = python_id(fields["exchangeId"])
        status = msgspec.convert(data, InstanceStatus)
        # msgspec cannot decode "State or str" (two str-like types): the seed's six become State here.
        msgspec.structs.force_setattr(status, "connection_state", parse_state(status.connection_state))
        return status
    except (ValueError, msgspec.ValidationError) as exc:
        raise CorruptStatusError(key, f"the status hash is not a pylivermore record ({exc})") from None


def decode_entry(entry_id: bytes | str, fields: Mapping[str, str], key: str) -> ActivityEntry:
    data: dict[str, object] = {k: v for k, v in fields.items() if v != ""}
    data["id"] = _text(entry_id)
    try:
        for name in ("fencingToken", "ttlMs", "replaced", "seq"):
            if name in data:
                data[name] = int(fields[name])
        if "exchangeId" in data:
            data["exchangeId"] = python_id(fields["exchangeId"])
        return msgspec.convert(data, ActivityEntry)
    except (ValueError, msgspec.ValidationError) as exc:
        raise CorruptStatusError(key, f"log entry {data['id']} is not a pylivermore entry ({exc})") from None
