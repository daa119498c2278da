"""The worked example of a fenced write (RELIABILITY.md, "Using the fencing token"), run for real.

A downstream store (SQLite here) keeps, per resource, the highest fencing token it has seen and
refuses writes that carry a lower one. A stale owner, paused while another worker took over,
then cannot overwrite the new owner's data: its lease thought it held, the store knew better.
"""

from __future__ import annotations

import sqlite3

import redis

from pylivermore import Registry


def fenced_write(db: sqlite3.Connection, exchange_id: int, fencing_token: int, value: str) -> bool:
    """Write *value* unless a newer owner already wrote; True if the write was applied."""
    with db:  # one transaction: the check and the write are atomic in the store
        cur = db.execute(
            "INSERT INTO positions (exchange_id, fence, value) VALUES (?, ?, ?) "
            "ON CONFLICT (exchange_id) DO UPDATE SET fence = excluded.fence, value = excluded.value "
            "WHERE excluded.fence >= positions.fence",
            (exchange_id, fencing_token, value),
        )
        return cur.rowcount == 1


def test_stale_owner_write_is_rejected_by_the_store(client: redis.Redis, namespace: str) -> None:
    """After a takeover, the old owner's write (lower token) is refused and the new owner's data stays."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE positions (exchange_id INTEGER PRIMARY KEY, fence INTEGER NOT NULL, value TEXT)")
    old_registry = Registry(client, namespace=namespace)
    old = old_registry.claim(1, "Coinbase")
    old_registry.close()  # the old owner stalls: no more heartbeats
    assert fenced_write(db, 1, old.fencing_token, "written by the old owner")

    old_registry.force_release(1, "the old owner stopped renewing")  # stands in for its TTL running out
    new_registry = Registry(client, namespace=namespace)
    new = new_registry.claim(1, "Coinbase")
    assert new.fencing_token > old.fencing_token
    assert fenced_write(db, 1, new.fencing_token, "written by the new owner")

    # The old owner wakes up and, not having looked at its lease, writes: the store refuses it.
    assert not fenced_write(db, 1, old.fencing_token, "stale write")
    assert db.execute("SELECT value FROM positions WHERE exchange_id = 1").fetchone() == ("written by the new owner",)
    assert new.release()
    new_registry.close()
    db.close()
