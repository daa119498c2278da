"""A guided tour: claim an exchange, walk its lifecycle, meet a second worker's conflict,
read the status and the activity log, release, and see the next claim's higher fencing token.

Run ``make demo`` (or ``python -m pylivermore.demo``). It uses ``$REDIS_URL`` when set;
otherwise it starts a throwaway private ``redis-server`` and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from typing import Any

import msgspec

from . import ClaimConflictError, Registry, State, static_address, to_legacy_state
from .server import RedisServer, find_server_binary


@contextlib.contextmanager
def _redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        print(f"using REDIS_URL={url}")
        yield url
        return
    if find_server_binary() is None:
        raise SystemExit("no redis-server found: install it (apt-get install redis-server) or set REDIS_URL")
    with RedisServer() as server:
        print(f"started a private redis-server {'.'.join(map(str, server.version))} at {server.url}")
        yield server.url
    print("private redis-server stopped and removed")


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
