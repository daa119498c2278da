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
    """Return the id's wire form; raise ``ValueError``/``TypeError`` for an id that cannot be a key part.

    Ids are canonical (contract v2): an all-digit id is an integer and has no leading zero, so
    ``"7"`` and ``7`` name the same resource and ``"07"`` is refused rather than being a second one.
    """
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
    if exchange_id.isdigit() and exchange_id[0] == "0":
        raise ValueError(
            f"invalid exchange id {exchange_id!r}: an all-digit id is an integer and must not start with 0 "
            f"(one resource has one id: use {int(exchange_id) or 'a positive integer'})"
        )
    return exchange_id


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_text(name: str, value: str, low: int, high: int, lines: bool = False) -> str:
    """Check a text argument as the scripts do: UTF-8 of *low*..*high* bytes, no control character
    (with *lines*: tab, LF and CR allowed)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{name} {value!r} is not valid Unicode text (it holds a lone surrogate)") from None
    if not low <= size <= high:
        raise ValueError(f"{name} must be {low}-{high} bytes of UTF-8, not {size}")
    if (_CONTROL_BUT_LINES if lines else _CONTROL).search(value):
        raise ValueError(f"{name} {value!r} holds a control character: use printable text")
    return value


def python_id(wire_id: str) -> int | str:
    """The Python form of a wire id: an all-digit id is an ``int``, anything else a ``str``."""
    return int(wire_id) if wire_id.isascii() and wire_id.isdigit() and wire_id[0] != "0" else wire_id


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
