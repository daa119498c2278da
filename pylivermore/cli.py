"""``livermore``: the operator's command line (also ``python -m pylivermore``).

``status``, ``watch``, ``log``, ``release``, ``scripts`` and ``doctor`` against the server of
``--url`` (default ``$REDIS_URL``, then ``redis://localhost:6379/0``), in ``--namespace``. Tables for
people, ``--json`` for scripts. Exit codes: 0 done, 1 not found, 2 bad input, 3 the server failed or
refused (one line on stderr, never a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import msgspec
import redis

from ._keys import Keys, check_id, check_namespace
from ._scripts import load_scripts, lua_dir
from ._states import to_legacy_state
from ._sync import Registry
from ._view import Row, rows_from, ttl_keys
from .errors import LivermoreError
from .models import ActivityEntry
from .server import redacted_url

DEFAULT_URL = "redis://localhost:6379/0"
OK, NOT_FOUND, BAD_INPUT, SERVER_ERROR, INTERRUPTED = 0, 1, 2, 3, 130


class Failure(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# -- reading the registry ------------------------------------------------------------------------


def rows(registry: Registry, exchange_id: int | str | None = None) -> list[Row]:
    """The live records (or the one of *exchange_id*), with heartbeat age and TTL left."""
    if exchange_id is None:
        statuses = registry.instances()
    else:
        one = registry.get(exchange_id)
        statuses = [one] if one is not None else []
    pipe = registry.client.pipeline(transaction=False)
    for key in ttl_keys(registry._config.namespace, statuses):
        pipe.pttl(key)
    pttls = pipe.execute()
    return rows_from(statuses, pttls, registry.client.time())


# -- formatting ----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [list(header), *lines])


def status_table(found: Sequence[Row]) -> str:
    header = ["ID", "NAME", "STATE", "LEGACY", "HOST", "INSTANCE", "HEARTBEAT AGE", "TTL LEFT", "FENCING", "SYMBOLS"]
    lines = [
        [
            str(r.status.exchange_id),
            r.status.exchange_name,
            str(r.status.connection_state),
            to_legacy_state(r.status.connection_state),
            r.status.hostname,
            r.status.instance_id,
            _seconds(r.heartbeat_age),
            _seconds(r.ttl),
            str(r.status.fencing_token),
            str(r.status.symbol_count),
        ]
        for r in found
    ]
    return table(header, lines)


def entry_line(entry: ActivityEntry) -> str:
    if entry.event == "state_transition":
        what = f"{entry.from_state} -> {entry.to_state}"
    elif entry.event == "error":
        what = f"error: {entry.error}"
    elif entry.event == "force_release":
        what = f"released by {entry.operator}: {entry.reason}"
    elif entry.event == "claim":
        what = f"claimed by {entry.instance_id} on {entry.hostname}"
    else:
        what = f"released in state {entry.state}" if entry.state else ""
    return f"{entry.timestamp}  {entry.event:<16}  token {entry.fencing_token}  {what}".rstrip()


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


# -- commands ------------------------------------------------------------------------------------


def cmd_status(registry: Registry, args: argparse.Namespace) -> int:
    exchange_id = check_id(args.id) if args.id is not None else None
    found = rows(registry, exchange_id)
    if args.json:
        print(_json([r.status for r in found]))
    else:
        print(status_table(found) if found else "no live records" + (f" for exchange {args.id}" if args.id else ""))
    return NOT_FOUND if exchange_id is not None and not found else OK


def cmd_watch(registry: Registry, args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise Failure("--interval must be a number of seconds above 0", BAD_INPUT)
    interactive = sys.stdout.isatty()
    rounds = 0
    try:
        while args.rounds is None or rounds < args.rounds:
            found = rows(registry)
            stamp = datetime.datetime.now().strftime("%H:%M:%S")
            body = status_table(found) if found else "no live records"
            if interactive:
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: the table replaces itself
            print(f"livermore watch  {args.url_shown}  namespace {args.namespace}  {stamp}  (Ctrl-C ends)\n{body}\n")
            sys.stdout.flush()
            rounds += 1
            if args.rounds is None or rounds < args.rounds:
                time.sleep(args.interval)
    except KeyboardInterrupt:  # the way to end it
        pass
    return OK


def cmd_log(registry: Registry, args: argparse.Namespace) -> int:
    exchange_id = check_id(args.id)
    if not 1 <= args.count <= 10_000:
        raise Failure("--count must be from 1 to 10000", BAD_INPUT)
    entries = registry.activity(exchange_id, count=args.count)
    if args.json and not args.follow:
        print(_json(entries))
    else:
        for entry in entries:
            print(_json(entry) if args.json else entry_line(entry))
    if not args.follow:
        return OK if entries else NOT_FOUND
    keys = Keys(registry._config.namespace, str(exchange_id))
    since: Any = entries[0].id if entries else "$"
    try:
        while True:  # newest first above; from here on, entries as they arrive
            reply: Any = registry.client.xread({keys.log: since}, block=1000, count=100)
            for _stream, raw in reply or []:
                for entry in registry._config.decode_activity(raw, keys):
                    print(_json(entry) if args.json else entry_line(entry), flush=True)
                    since = entry.id
    except KeyboardInterrupt:  # the way to end it
        return OK


def cmd_release(registry: Registry, args: argparse.Namespace) -> int:
    exchange_id = check_id(args.id)
    holder = registry.get(exchange_id)
    removed = registry.force_release(exchange_id, args.reason, operator=args.operator)
    if removed is None:
        print(f"exchange {exchange_id} is not held by anyone: nothing released", file=sys.stderr)
        return NOT_FOUND
    who = (
        f"{holder.instance_id} on {holder.hostname}, state {holder.connection_state}"
        if holder is not None and holder.fencing_token == removed
        else "its holder"
    )
    print(f"released exchange {exchange_id}: removed {who} (fencing token {removed}); logged as by {args.operator!r}")
    return OK


def cmd_scripts(registry: Registry | None, args: argparse.Namespace) -> int:
    specs = load_scripts()
    print(f"Lua scripts in {lua_dir()} (contract v2):")
    print(table(["FILE", "SHA1"], [[spec.filename, spec.sha1] for spec in specs.values()]))
    if args.load:
        assert registry is not None
        for spec in specs.values():
            loaded = registry.client.script_load(spec.source)
            if loaded != spec.sha1:
                raise Failure(f"the server answered SHA-1 {loaded} for {spec.filename}, not {spec.sha1}", SERVER_ERROR)
        print(f"loaded {len(specs)} scripts into {args.url_shown}")
    return OK


def cmd_doctor(registry: Registry, args: argparse.Namespace) -> int:
    from ._doctor import run_checks

    findings = run_checks(registry.client, args.namespace)
    width = max(len(f.topic) for f in findings)
    for f in findings:
        print(f"{f.level.upper():<5} {f.topic:<{width}}  {f.detail}")
        if f.fix:
            print(f"{'':<5} {'':<{width}}  fix: {f.fix}")
    return OK if all(f.level != "fail" for f in findings) else SERVER_ERROR


def cmd_serve(registry: Registry | None, args: argparse.Namespace) -> int:
    import ipaddress

    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        raise Failure(f"--host must be an IP address or localhost, not {args.host!r}", BAD_INPUT) from None
    if not loopback and not args.public:
        raise Failure(
            f"binding to {args.host} lets anyone who reaches it read who holds what: add --public to mean it "
            "(and put the page behind your own authentication)",
            BAD_INPUT,
        )
    if not 0 < args.port < 65536 or not args.refresh > 0:
        raise Failure("--port must be 1-65535 and --refresh above 0", BAD_INPUT)
    try:
        from .web import serve
    except ImportError as exc:
        raise Failure(f"the status page needs its extra: pip install 'pylivermore[web]' ({exc})", BAD_INPUT) from None
    assert registry is not None
    registry.get("livermore-serve-check")  # fail early (one line) if the server is unreachable or refuses reads
    print(
        f"livermore: serving {args.url_shown} namespace {args.namespace} on http://{args.host}:{args.port}/", flush=True
    )
    from redis.cluster import RedisCluster

    serve(args.url, args.namespace, args.host, args.port, args.refresh, isinstance(registry.client, RedisCluster))
    return OK


# -- the command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(BAD_INPUT, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="livermore",
        description="Inspect and operate a pylivermore registry: who holds what, the activity log, "
        "force release, the Lua scripts, and a check of the server.",
        epilog="Exit codes: 0 done, 1 not found, 2 bad input, 3 server error or refusal, 130 interrupted.",
    )
    top.add_argument("--url", default=None, help=f"server URL (default: $REDIS_URL, then {DEFAULT_URL})")
    top.add_argument("--namespace", default="exchange", help="key namespace (default: exchange)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("status", help="every live record (or one) as a table or JSON")
    p.add_argument("id", nargs="?", help="one exchange id")
    p.add_argument("--json", action="store_true", help="the seed's JSON documents, as a list")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("watch", help="the status table, refreshed until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)  # tests: stop after N tables
    p.set_defaults(run=cmd_watch)

    p = sub.add_parser("log", help="an exchange's activity log, newest first")
    p.add_argument("id", help="the exchange id")
    p.add_argument("--json", action="store_true", help="JSON: a list, or one document per line with --follow")
    p.add_argument("--count", type=int, default=20, help="how many entries (default 20, at most 10000)")
    p.add_argument("--follow", action="store_true", help="then print new entries as they come, until Ctrl-C")
    p.set_defaults(run=cmd_log)

    p = sub.add_parser("release", help="force-release an exchange (logged with who and why)")
    p.add_argument("id", help="the exchange id")
    p.add_argument("--reason", required=True, help="why (stored in the log)")
    p.add_argument("--operator", default=None, help="who (default: $USER)")
    p.set_defaults(run=cmd_release)

    p = sub.add_parser("scripts", help="where the Lua scripts are and their SHA-1s; --load loads them")
    p.add_argument("--load", action="store_true", help="SCRIPT LOAD every script into the server")
    p.set_defaults(run=cmd_scripts)

    p = sub.add_parser("doctor", help="check the server for what matters to pylivermore, each with a fix")
    p.set_defaults(run=cmd_doctor)

    p = sub.add_parser(
        "serve",
        help="the live status page, /api/instances and /metrics (pip install 'pylivermore[web]')",
        description="A read-only status page that updates itself, its JSON API and Prometheus metrics. "
        "It binds to 127.0.0.1; anything else needs --public, and exposes who holds what (hosts, instances, "
        "fencing tokens) to whoever can reach the port: put it behind your own authentication.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--public", action="store_true", help="allow binding to an address other than loopback")
    p.add_argument("--refresh", type=float, default=1.0, help="longest pause between updates, seconds (default 1)")
    p.set_defaults(run=cmd_serve)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    url = args.url or os.environ.get("REDIS_URL") or DEFAULT_URL
    args.url_shown = redacted_url(url)
    args.url = url
    if args.command == "release" and args.operator is None:
        args.operator = os.environ.get("USER") or os.environ.get("USERNAME") or "livermore"
    run: Callable[[Any, argparse.Namespace], int] = args.run
    try:
        check_namespace(args.namespace)
        if args.command == "scripts" and not args.load:
            return run(None, args)
        client = connect(url)
        try:
            with Registry(client, namespace=args.namespace) as registry:
                return run(registry, args)
        finally:
            client.close()
    except Failure as exc:
        return _fail(str(exc), exc.code)
    except (ValueError, TypeError) as exc:
        return _fail(str(exc), BAD_INPUT)
    except redis.ConnectionError as exc:
        return _fail(f"cannot reach the server at {args.url_shown}: {exc}", SERVER_ERROR)
    except redis.exceptions.NoPermissionError as exc:
        return _fail(f"the server refused this user: {exc}", SERVER_ERROR)
    except (redis.RedisError, LivermoreError) as exc:
        return _fail(f"{type(exc).__name__}: {exc}", SERVER_ERROR)
    except KeyboardInterrupt:
        return INTERRUPTED


def connect(url: str) -> Any:
    """A client for *url*: ``RedisCluster`` when the server is a cluster node (so that listings,
    TTLs and logs reach every master), else ``redis.Redis``; bounded timeouts, a short retry policy."""
    from redis.cluster import RedisCluster
    from redis.retry import Retry

    from ._config import client_options

    options = client_options(Retry)
    client = redis.Redis.from_url(url, **options)
    try:
        client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    except redis.ResponseError:  # "cluster support disabled" (or not allowed: then treat it as standalone)
        return client
    client.close()
    return RedisCluster.from_url(url, **options)


def _fail(message: str, code: int) -> int:
    print(f"livermore: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
