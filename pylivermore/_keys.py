"""Key layout: the only place where key names are built.

For namespace ``exchange`` and resource id ``1``::

    exchange:{1}:status   hash    the live record; its TTL is the lease
    exchange:{1}:log      stream  the activity log, trimmed by MINID
    exchange:{1}:fence    string  the last fencing token issued; never expires

The ``{1}`` is a Redis Cluster hash tag: all keys of one resource live in one slot, so every
script touches a single slot. Ids are validated first, because a ``{``, ``}`` or ``:`` in an
id would break the tag or the layout.
"""

from __future__ import annotations

import re

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"invalid namespace {namespace!r}: use 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit"
        )
    return namespace


def check_id(exchange_id: int | str) -> str:
    """Return the id's wire form; raise ``ValueError``/``TypeError`` for an id that cannot be a key part."""
    if isinstance(exchange_id, bool) or not isinstance(exchange_id, int | str):
        raise TypeError(f"an exchange id must be an int or a str, not {type(exchange_id).__name__}")
    if isinstance(exchange_id, int):
        if not 0 < exchange_id < 10**64:
            raise ValueError(f"invalid exchange id {exchange_id}: integer ids must be positive, at most 64 digits")
        return str(exchange_id)
    if not _ID.fullmatch(exchange_id):
        raise ValueError(
            f"invalid exchange id {exchange_id!r}: use a positive integer or 1-64 characters of "
            "[A-Za-z0-9._-] starting with a letter or digit (no spaces, braces or colons)"
        )
    return exchange_id


class Keys:
    """The three keys of one resource."""

    __slots__ = ("fence", "log", "status")

    def __init__(self, namespace: str, wire_id: str) -> None:
        base = f"{namespace}:{{{wire_id}}}:"
        self.status = base + "status"
        self.log = base + "log"
        self.fence = base + "fence"


def status_pattern(namespace: str) -> str:
    """The SCAN MATCH pattern of every status key in *namespace*."""
    return f"{namespace}:{{*}}:status"
