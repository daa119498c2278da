"""The background heartbeat without I/O: when each lease is due (:class:`Schedule`), which
``renew_many`` calls a round sends (:func:`renewal_calls`), where they go on a Redis Cluster
(:class:`ClusterRound`), and what the replies mean for each lease (:func:`settle_round`).

Both drivers run the same loop over these pieces; they only send the calls and read replies.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from redis.exceptions import AskError, ClusterDownError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _protocol as proto
from ._events import Observer
from ._lease import LeaseCore
from .errors import LeaseLostError, ScriptContractError

logger = logging.getLogger("pylivermore.heartbeat")

T = TypeVar("T")

#: Seconds a registry's heartbeat worker (thread or task) waits for a new lease after its last one
#: left before it ends. A claim / release loop thus never pays a thread start per claim, and a
#: registry left open without leases does not keep a thread forever.
IDLE_LINGER = 30.0


class Schedule(Generic[T]):
    """The heartbeat loop's agenda: which leases need attention next (a heap on ``wake_at``).

    One loop serves every lease of a registry, so finding the due ones must not cost a pass
    over all of them. Heap entries go stale when a lease's wake time moves or it is discarded;
    :meth:`pop_due` re-files or drops those lazily. Not thread-safe: the sync driver locks.
    """

    def __init__(self) -> None:
        self._cores: dict[T, LeaseCore] = {}
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._cores)

    def add(self, item: T, lease_core: LeaseCore) -> None:
        self._cores[item] = lease_core
        self.push(item)

    def discard(self, item: T) -> None:
        self._cores.pop(item, None)
        if len(self._heap) > 2 * len(self._cores) + 64:  # mostly stale (claim / release cycles): compact
            self._heap = [e for e in self._heap if e[2] in self._cores]
            heapq.heapify(self._heap)

    def push(self, item: T) -> None:
        """File *item* again after it was handled (no-op once discarded or lost). Every claim
        comes through here: kept apart from :meth:`push_all` (≈ 1 µs cheaper per claim)."""
        c = self._cores.get(item)
        if c is not None and c.lost_reason is None:
            heapq.heappush(self._heap, (c.wake_at(), next(self._seq), item))
        elif c is not None:
            del self._cores[item]

    def pop_due(self, now: float) -> list[T]:
        """Items whose wake time has come; they leave the heap until :meth:`push` or :meth:`push_all`."""
        heap = self._heap
        if len(heap) > 64 and heap[0][0] <= now:
            # Leases claimed together come due together: take many in one pass, not one pop each.
            ready = [e for e in heap if e[0] <= now]
            if len(ready) > 32:
                self._heap = [e for e in heap if e[0] > now]
                heapq.heapify(self._heap)
                return self._sort_out(ready, now)
        ready = []
        while heap and heap[0][0] <= now:
            ready.append(heapq.heappop(heap))
        return self._sort_out(ready, now)

    def _sort_out(self, entries: list[tuple[float, int, T]], now: float) -> list[T]:
        """The items of popped *entries* that are due; stale entries are re-filed or dropped."""
        due: list[T] = []
        for _, _, item in entries:
            c = self._cores.get(item)
            if c is None:
                continue
            if c.wake_at() > now:
                heapq.heappush(self._heap, (c.wake_at(), next(self._seq), item))
            else:
                due.append(item)
        return due

    def push_all(self, items: Iterable[T]) -> None:
        """:meth:`push` for many items at once (one heapify instead of a push each)."""
        cores, seq = self._cores, self._seq
        live = [(item, c) for item in items if (c := cores.get(item)) is not None]
        entries = [(c.wake_at(), next(seq), item) for item, c in live if c.lost_reason is None]
        if len(entries) * 8 > len(self._heap):  # many: one O(heap) heapify beats a push each
            self._heap.extend(entries)
            heapq.heapify(self._heap)
        else:
            for entry in entries:
                heapq.heappush(self._heap, entry)
        for item, c in live:
            if c.lost_reason is not None:
                del cores[item]

    def next_wake(self) -> float | None:
        while self._heap and self._heap[0][2] not in self._cores:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None


#: At most this many leases are renewed by one ``renew_many`` call (the script takes up to 1000).
BATCH = 256

#: One renewal call: the cores of the leases it renews, in the order of its keys, and the call.
Renewal = tuple[list[LeaseCore], proto.Call]


def renewal_calls(
    items: Iterable[T],
    core_of: Callable[[T], LeaseCore],
    now: float,
    ahead: float = 0.0,
    slot_of: Callable[[str], int] | None = None,
) -> list[Renewal]:
    """The ``renew_many`` calls for the leases among *items* whose heartbeat is due now or
    within *ahead* seconds, at most :data:`BATCH` leases per call. A Redis Cluster runs a script
    only on keys of one hash slot, so with *slot_of* (cluster clients) they are grouped by slot."""
    groups: dict[tuple[int, int], list[LeaseCore]] = {}
    for item in items:
        c = core_of(item)
        if c.beat_due(now, ahead):
            slot = slot_of(c.keys.status) if slot_of is not None else 0
            groups.setdefault((slot, c.settings.ttl_ms), []).append(c)
    calls: list[Renewal] = []
    for (_, ttl_ms), cores in groups.items():
        for start in range(0, len(cores), BATCH):
            chunk = cores[start : start + BATCH]
            calls.append((chunk, proto.renew_many_call([c.keys for c in chunk], [c.token for c in chunk], ttl_ms)))
    return calls


def settle_renewal(cores: Sequence[LeaseCore], reply: object, sent: float, now: float) -> None:
    """Apply the reply of one renewal call (or the exception that stood for it); never raises."""
    failure: BaseException | None = reply if isinstance(reply, BaseException) else None
    if failure is None:
        try:
            replies = proto.split_renewals(reply, len(cores))
        except ScriptContractError as exc:
            failure = exc
    if failure is not None:
        logger.warning("heartbeat of %d lease(s) failed: %r", len(cores), failure)
        for c in cores:
            c.heartbeat_failed(now)
        return
    for c, one in zip(cores, replies, strict=True):
        try:
            c.heartbeat_done(one, sent, now)
        except LeaseLostError:
            pass
        except Exception as exc:
            logger.warning("heartbeat of exchange %s got a bad reply: %s", c.exchange_id, exc)
            c.heartbeat_failed(now)


def settle_round(
    renewals: Sequence[Renewal], replies: Sequence[object], sent: float, now: float, observer: Observer | None = None
) -> None:
    """Apply the replies of one heartbeat round (one per renewal call, or the exception that
    stood for it), all sent at *sent*; never raises. The *observer* learns how long it took."""
    if observer is not None:
        observer.heartbeat_round(now - sent)
    for (cores, _), reply in zip(renewals, replies, strict=True):
        settle_renewal(cores, reply, sent, now)


# -- Redis Cluster ------------------------------------------------------------------------------

#: A cluster node, as redis-py names it in redirections: ``(host, port)``.
Node = tuple[str, int]

C = TypeVar("C")


def address(node: Any) -> Node:
    """The ``(host, port)`` of a redis-py ``ClusterNode`` (sync or asyncio)."""
    return node.host, int(node.port)


def redirection(reply: object) -> tuple[Node, bool] | None:
    """Where a redirected call goes next, and whether after ``ASKING``: ``MOVED`` (the slot lives
    elsewhere now: no ``ASKING``, and the slot map is stale) or ``ASK`` (the slot is being imported
    there); ``None`` for any other reply."""
    if not isinstance(reply, AskError):  # MovedError is an AskError
        return None
    return (reply.host, int(reply.port)), not isinstance(reply, MovedError)


class NodeClients(Generic[C]):
    """Plain clients of single cluster nodes, one per node and timeout, made on first use by
    *factory* (a driver's): the heartbeat's pipelines and durable claims' ``WAIT`` go through
    them, since redis-py's cluster pipeline refuses ``EVALSHA``."""

    def __init__(self, factory: Callable[[Node, float | None], C]) -> None:
        self._factory = factory
        self._clients: dict[tuple[Node, float | None], C] = {}

    def get(self, node: Node, timeout: float | None) -> C:
        client = self._clients.get((node, timeout))
        if client is None:
            client = self._clients[(node, timeout)] = self._factory(node, timeout)
        return client

    def drain(self) -> list[C]:
        """Every client made so far, forgotten here (for the driver to close)."""
        clients, self._clients = list(self._clients.values()), {}
        return clients


@dataclass(slots=True)
class Batch:
    """The calls of one round that go to one node in one pipeline. With *asking*, each call is
    sent after ``ASKING`` (the node is importing the slot: see :class:`ClusterRound`)."""

    node: Node
    asking: bool
    indexes: list[int] = field(default_factory=list)
    calls: list[proto.Call] = field(default_factory=list)


class ClusterRound:
    """One heartbeat round on a Redis Cluster: one pipeline per node, not one call per lease.

    A script runs only on keys of one slot, so the round's ``renew_many`` calls are grouped by
    slot (:func:`renewal_calls`); here they are grouped again by the node that serves each slot,
    and each node gets all its calls in one pipeline.

    While a slot migrates, a node answers some calls with a redirection instead of running them:
    ``MOVED`` (the slot now lives elsewhere: the client's slot map is stale) or ``ASK`` (the slot
    is being imported by another node and these keys are already there: send ``ASKING`` first).
    Such calls are sent once more, in one pipeline per target node, in the same round; a call
    redirected twice keeps its error and its leases retry at the next attempt, like a failed beat.
    ``TRYAGAIN`` (a multi-key call whose keys are split across the two nodes mid-migration), a
    node that is down or a ``CLUSTERDOWN`` likewise fail only the leases of those calls.

    :attr:`refresh` tells the driver to reload the slot map before the next round.
    """

    def __init__(self, renewals: Sequence[Renewal], node_of: Callable[[str], Node]) -> None:
        self.renewals = renewals
        self.replies: list[object] = [None] * len(renewals)
        self.refresh = False
        self._redirected: set[int] = set()
        batches: dict[Node, Batch] = {}
        for i, (_, call) in enumerate(renewals):
            try:
                node = node_of(call.keys[0])
            except Exception as exc:  # e.g. a slot no node serves (CLUSTERDOWN): those leases retry
                self.replies[i] = exc
                self.refresh = True
                continue
            batch = batches.get(node) or batches.setdefault(node, Batch(node, False))
            batch.indexes.append(i)
            batch.calls.append(call)
        self._queue = list(batches.values())

    def batches(self) -> list[Batch]:
        """The pipelines to send now (one per node); empty once the round is complete."""
        out, self._queue = self._queue, []
        return out

    def absorb(self, batch: Batch, replies: Sequence[object] | BaseException) -> None:
        """Record the replies of *batch* (or the exception that stood for the whole pipeline)."""
        if isinstance(replies, BaseException):
            replies = [replies] * len(batch.calls)
        elif len(replies) != len(batch.calls):
            replies = [ScriptContractError("renew_many", replies)] * len(batch.calls)
        follow: dict[tuple[Node, bool], Batch] = {}
        for i, reply in zip(batch.indexes, replies, strict=True):
            self.replies[i] = reply
            if isinstance(reply, MovedError | RedisConnectionError | RedisTimeoutError | ClusterDownError):
                self.refresh = True
            redirect = redirection(reply)
            if redirect is not None and i not in self._redirected:
                self._redirected.add(i)
                target, asking = redirect
                again = follow.get((target, asking)) or follow.setdefault((target, asking), Batch(target, asking))
                again.indexes.append(i)
                again.calls.append(self.renewals[i][1])
        self._queue.extend(follow.values())
