"""Least-privilege Redis ACL rules for pylivermore users.

Workers need the scripts (``EVALSHA``, ``SCRIPT LOAD`` for NOSCRIPT recovery), the commands the
scripts call (Redis checks every command inside a script against the caller's ACL), and the
readers' ``HGETALL``/``SCAN``/``XREVRANGE``. Dashboards only read. Neither gets ``CONFIG``,
``DEBUG``, ``FLUSH*``, ``KEYS``, ``SCRIPT FLUSH`` or ``CLIENT``.

Limitation: an ACL cannot say "only through the scripts": a worker allowed ``HSET`` for the
scripts can also send ``HSET`` directly. The scripts treat what they read as untrusted (type
and shape checks), and readers reject records that are not what the scripts write.

Example, for the default namespace::

    ACL SETUSER worker on >secret resetkeys ~exchange:* resetchannels -@all +ping +hello ...
    # the exact rule strings: " ".join(worker_rules("exchange", "secret"))
"""

from __future__ import annotations

#: Commands the Lua scripts call (checked against lua/*.lua by a test).
SCRIPT_COMMANDS = (
    "type", "get", "set", "del", "exists", "time",
    "hmget", "hset", "hdel", "hgetall", "pttl", "pexpire",
    "xadd", "xrevrange",
)  # fmt: skip

#: Everything a worker process needs. ``info`` is optional: it lets the registry check
#: ``maxmemory-policy`` on first use (``CONFIG`` is deliberately not granted).
WORKER_COMMANDS = ("ping", "hello", "evalsha", "script|load", "scan", "info", *SCRIPT_COMMANDS)

#: A read-only dashboard: ``get``, ``instances`` and ``activity``.
DASHBOARD_COMMANDS = ("ping", "hello", "hgetall", "scan", "xrevrange")


def _rules(keys: str, password: str | None, commands: tuple[str, ...]) -> list[str]:
    auth = [f">{password}"] if password is not None else ["nopass"]
    return ["on", *auth, "resetkeys", keys, "resetchannels", "-@all", *(f"+{c}" for c in commands)]


def worker_rules(namespace: str = "exchange", password: str | None = None) -> list[str]:
    """ACL SETUSER rules for a worker of *namespace* (read and write its keys only)."""
    return _rules(f"~{namespace}:*", password, WORKER_COMMANDS)


def dashboard_rules(namespace: str = "exchange", password: str | None = None) -> list[str]:
    """ACL SETUSER rules for a read-only dashboard of *namespace*."""
    return _rules(f"%R~{namespace}:*", password, DASHBOARD_COMMANDS)
