"""Least-privilege Redis ACL rules for pylivermore users.

Workers need the scripts (``EVALSHA``, ``SCRIPT LOAD`` for NOSCRIPT recovery: :data:`WORKER_COMMANDS`,
``worker_rules(...)``), or over Redis Functions (``Registry(..., transport="functions")``) the
library instead (``FCALL``, ``FUNCTION LOAD`` to load it again where a server lost it:
:data:`FUNCTION_WORKER_COMMANDS`, ``worker_rules(..., transport="functions")``), the commands the
scripts call (Redis checks every command inside a script or function against the caller's ACL), the
readers' ``HGETALL``/``SCAN``/``XREVRANGE``, and what a Redis Cluster client sends to find its
way (:data:`CLUSTER_COMMANDS`, on every topology). Dashboards only read. Neither gets
``CONFIG``, ``DEBUG``, ``FLUSH*``, ``KEYS``, ``SCRIPT FLUSH``, ``FUNCTION FLUSH|DELETE|RESTORE`` or ``CLIENT`` (see
:data:`CLIENT_SETINFO` for the one ``CLIENT`` subcommand redis-py sends). A Sentinel-managed
client needs nothing more on the data nodes; on the Sentinel, see :data:`SENTINEL_CLIENT_COMMANDS`.

Limitation: an ACL cannot say "only through the scripts": a worker allowed ``HSET`` for the
scripts can also send ``HSET`` directly. The scripts treat what they read as untrusted (type
and shape checks), and readers reject records that are not what the scripts write.

Which transport: ``script|load`` lets a worker run code of its own, on its own calls only (a
script is named by its SHA-1, so nobody can change what another worker's ``EVALSHA`` runs).
``function|load`` lets it replace the ``pylivermore_v<N>`` library that *every* worker calls
(``FUNCTION LOAD REPLACE``): grant it only where all workers are trusted alike. Functions are
persisted (RDB/AOF) and replicated, unlike the script cache, so where an operator loads the library
(``FUNCTION LOAD REPLACE "$(cat lua/functions/pylivermore.lua)"`` on every master, again after
each ``FUNCTION FLUSH``), workers may run with ``+fcall`` alone: drop ``+function|load`` from
:data:`FUNCTION_WORKER_COMMANDS`, and a call that finds the library missing fails with
``NOPERM`` for ``function|load`` instead of loading it.

Example, for the default namespace::

    ACL SETUSER worker on >secret resetkeys ~exchange:* resetchannels -@all +ping +hello ...
    # the exact rule strings: " ".join(worker_rules("exchange", "secret"))
"""

from __future__ import annotations

#: Commands the Lua scripts call (checked against lua/*.lua by a test).
SCRIPT_COMMANDS = (
    "type", "get", "set", "del", "exists", "time",
    "hmget", "hset", "hdel", "pttl", "pexpire",
    "xadd", "xrevrange",
)  # fmt: skip

#: What a Redis Cluster client (redis-py's ``RedisCluster``, sync and asyncio) sends besides the
#: registry's own commands: ``CLUSTER SLOTS`` to learn the slot map at start and after a
#: ``MOVED`` (``CLUSTER SHARDS`` is its successor, the same facts, granted so that a client
#: upgrade does not lock workers out), ``COMMAND`` to learn where each command's keys are,
#: ``ASKING`` to follow an ``ASK`` redirect while a slot migrates (the heartbeat sends it in its
#: pipelines then), ``READONLY`` to read from replicas (``load_balancing_strategy``).
#:
#: They are part of the worker and dashboard rules on every topology: none of them reads or
#: writes a key, on a standalone server ``CLUSTER`` only answers an error and ``ASKING`` /
#: ``READONLY`` have no effect, and without them redis-py refuses to start on a cluster with a
#: misleading "Cluster mode is not enabled on this node" (it reads the NOPERM reply to
#: ``CLUSTER SLOTS`` as a standalone server). One rule set that keeps working when a deployment
#: moves to a cluster is worth more than withholding five metadata commands.
CLUSTER_COMMANDS = ("cluster|slots", "cluster|shards", "command", "asking", "readonly")

#: Not granted, though redis-py (5.0 and later) sends it on every new connection: ``CLIENT
#: SETINFO`` (it names the library in ``CLIENT LIST``). The client ignores the refusal, but Redis
#: 7.2+ and Valkey record one ``ACL LOG`` entry per connection for it. Redis 7.0 refuses to load
#: a rule that names it (an unknown subcommand), so rules meant for every supported server
#: cannot carry it: on 7.2+ add it (:data:`CLIENT_SETINFO`) to keep ``ACL LOG`` free of those
#: entries, or build clients with ``lib_name=None`` so that they do not send it.
CLIENT_SETINFO = ("client|setinfo",)

#: What a durable claim (``claim(..., replicas=N)``) sends after the claim script, in the same
#: pipeline: ``WAIT`` blocks the caller's own connection until N replicas have its writes. It
#: reads and writes nothing.
DURABLE_COMMANDS = ("wait",)

#: What a waiting claim (``claim(..., wait=seconds)``) sends between attempts, besides
#: ``XREVRANGE``: ``XREAD BLOCK`` on the resource's activity log, to wake on a release, and ``XINFO
#: STREAM`` for an empty log's last id (a lease without history). It only reads.
WAIT_COMMANDS = ("xread", "xinfo|stream")

#: How a worker calls the scripts (``transport="scripts"``, the default): ``EVALSHA``, and ``SCRIPT
#: LOAD`` to load a script again after ``NOSCRIPT`` (a restart, a failover, ``SCRIPT FLUSH``).
SCRIPT_TRANSPORT = ("evalsha", "script|load")

#: How a worker calls the functions (``transport="functions"``, Redis >= 7.0): ``FCALL``, and
#: ``FUNCTION LOAD`` to load the library again after ``Function not found``. Redis 6.2 refuses a
#: rule that names them (unknown commands).
FUNCTION_TRANSPORT = ("fcall", "function|load")

#: What the readers (``get``, ``instances``, ``activity``; ``livermore status``, which also reads each
#: record's TTL and the server's clock for the heartbeat age) send; workers read too.
READ_COMMANDS = ("hgetall", "scan", "xrevrange", "pttl", "time")

#: Everything a worker process needs (over the scripts). ``info`` is optional: it lets the registry
#: check ``maxmemory-policy`` on first use (``CONFIG`` is deliberately not granted).
WORKER_COMMANDS = (
    "ping", "hello", *SCRIPT_TRANSPORT, "info", *READ_COMMANDS,
    *SCRIPT_COMMANDS, *CLUSTER_COMMANDS, *DURABLE_COMMANDS, *WAIT_COMMANDS,
)  # fmt: skip

#: Everything a worker process needs over Redis Functions: :data:`WORKER_COMMANDS` with
#: :data:`FUNCTION_TRANSPORT` instead of :data:`SCRIPT_TRANSPORT`.
FUNCTION_WORKER_COMMANDS = (
    "ping", "hello", *FUNCTION_TRANSPORT, "info", *READ_COMMANDS,
    *SCRIPT_COMMANDS, *CLUSTER_COMMANDS, *DURABLE_COMMANDS, *WAIT_COMMANDS,
)  # fmt: skip

#: A read-only dashboard: ``get``, ``instances`` and ``activity``, ``livermore status / watch / log``
#: and the status page (``livermore serve``), which blocks on the activity logs (``XREAD``) to update.
DASHBOARD_COMMANDS = ("ping", "hello", *READ_COMMANDS, "xread", *CLUSTER_COMMANDS)


#: A Sentinel-managed client (redis-py's ``Sentinel.master_for``, sync and asyncio) sends the data
#: nodes nothing beyond :data:`WORKER_COMMANDS` (measured with redis-py 8.1: no ``ROLE``; after a
#: failover it finds the new master through the Sentinel). What it needs is on the Sentinel
#: process, and only if the Sentinel has ACL users of its own (``user`` lines in sentinel.conf):
#: ``SENTINEL MASTERS`` to find the master, ``SENTINEL SLAVES`` / ``REPLICAS`` for ``slave_for``,
#: and ``SENTINEL GET-MASTER-ADDR-BY-NAME``, which other clients (redis-cli, Node.js) ask instead.
SENTINEL_CLIENT_COMMANDS = (
    "ping", "sentinel|masters", "sentinel|slaves", "sentinel|replicas", "sentinel|get-master-addr-by-name",
)  # fmt: skip


def _rules(keys: str, password: str | None, commands: tuple[str, ...]) -> list[str]:
    auth = [f">{password}"] if password is not None else ["nopass"]
    return ["on", *auth, "resetkeys", keys, "resetchannels", "-@all", *(f"+{c}" for c in commands)]


def worker_rules(namespace: str = "exchange", password: str | None = None, transport: str = "scripts") -> list[str]:
    """ACL SETUSER rules for a worker of *namespace* (read and write its keys only) whose registry
    uses *transport* (``"scripts"``: :data:`WORKER_COMMANDS`; ``"functions"``: :data:`FUNCTION_WORKER_COMMANDS`)."""
    if transport not in ("scripts", "functions"):
        raise ValueError(f"transport must be 'scripts' or 'functions', not {transport!r}")
    commands = FUNCTION_WORKER_COMMANDS if transport == "functions" else WORKER_COMMANDS
    return _rules(f"~{namespace}:*", password, commands)


def dashboard_rules(namespace: str = "exchange", password: str | None = None) -> list[str]:
    """ACL SETUSER rules for a read-only dashboard of *namespace*. Its ``%R~`` (read-only keys)
    needs Redis 7.0; on 6.2 write ``~`` instead (the dashboard's commands only read anyway)."""
    return _rules(f"%R~{namespace}:*", password, DASHBOARD_COMMANDS)


def sentinel_client_rules(password: str | None = None) -> list[str]:
    """ACL SETUSER rules, for a Sentinel's own ACL, of a client that only looks up the master
    and replicas (no keys, no channels)."""
    auth = [f">{password}"] if password is not None else ["nopass"]
    return ["on", *auth, "resetkeys", "resetchannels", "-@all", *(f"+{c}" for c in SENTINEL_CLIENT_COMMANDS)]
