"""Model-based test: random sequences of registry operations against a real redis-server and against a
pure-Python model of the registry, compared after every step.

Three registries take part. Registries 0 and 1 share one instance identity (a process that restarted
under the same identity), registry 2 has another; ``claim(reclaim=True)`` may only take over a record
held by the same identity. Time is frozen for the leases (an injected clock that never moves), so the
background heartbeat never fires and no local deadline passes: every change of ownership comes from a
rule. "Expiry" of the record is simulated by deleting the status key or by a 1 ms PEXPIRE.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from pylivermore import (
    TRANSITIONS,
    ClaimConflictError,
    InvalidTransitionError,
    Lease,
    LeaseLostError,
    Registry,
    State,
)
from pylivermore._keys import Keys
from pylivermore.server import RedisServer, find_server_binary
from tests.conftest import make_admin_client

EXCHANGE_ID = 7
IDENTITIES = ["worker-a:1:aaaaaa", "worker-a:1:aaaaaa", "worker-b:2:bbbbbb"]
TTL, HEARTBEAT, RENEW = 30.0, 5.0, 10.0
STATES = list(State)

_server: RedisServer | None = None


@pytest.fixture(scope="module")
def model_server() -> Iterator[RedisServer]:
    """A private redis-server for this module's state machine (shared by all its examples)."""
    global _server
    if find_server_binary() is None:
        message = "no redis-server on PATH (install redis-server or set PYLIVERMORE_REDIS_SERVER)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with RedisServer() as server:
        _server = server
        yield server
        _server = None


@dataclass
class LeaseModel:
    """What the model knows about one lease object."""

    registry: int
    token: int
    local_state: State = State.IDLE
    lost: str | None = None  # the LeaseLostError reason once the lease has noticed its loss


@dataclass
class Model:
    """The registry as a pure-Python model: the one live record (or none) of one resource."""

    holder: int | None = None  # handle of the lease owning the record, None if there is no record
    state: State = State.IDLE
    symbol_count: int = 0
    last_error: str | None = None
    connected: bool = False  # entered "active" since the claim: connectedAt is set
    log_len: int = 0
    last_token: int = 0
    leases: list[LeaseModel] = field(default_factory=list)

    def not_ours_reason(self) -> str:
        """The reason a dispossessed lease learns from Redis: no record, or somebody else's."""
        return "expired" if self.holder is None else "taken"


@dataclass(frozen=True)
class Handle:
    """A lease in the Bundle: an index into the machine's leases (hashable, readable in failure output)."""

    index: int

    def __repr__(self) -> str:
        return f"lease{self.index}"


def shortest_path(start: State, goal: State) -> list[State]:
    """The states visited on a shortest walk along TRANSITIONS from *start* to *goal* (start excluded)."""
    paths: dict[State, list[State]] = {start: []}
    frontier = [start]
    while frontier and goal not in paths:
        nxt = []
        for state in frontier:
            for to in sorted(TRANSITIONS[state], key=STATES.index):
                if to not in paths:
                    paths[to] = [*paths[state], to]
                    nxt.append(to)
        frontier = nxt
    return paths.get(goal, [])


def outcome(fn: Callable[[], object]) -> tuple[str, object]:
    """('ok', result) or (exception class name, exception) for the library's own exceptions."""
    try:
        return "ok", fn()
    except (ClaimConflictError, LeaseLostError, InvalidTransitionError) as exc:
        return type(exc).__name__, exc


class RegistryMachine(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        assert _server is not None, "the model_server fixture must be active"
        self.client = redis.Redis.from_url(_server.url, socket_timeout=5.0, retry=Retry(NoBackoff(), 0))
        self.admin = make_admin_client(_server)  # the machine's own faults and inspection; registries use client
        self.namespace = "m" + secrets.token_hex(5)
        self.keys = Keys(self.namespace, str(EXCHANGE_ID))
        self.registries = [
            Registry(
                self.client,
                namespace=self.namespace,
                ttl=TTL,
                heartbeat_interval=HEARTBEAT,
                renew_deadline=RENEW,
                instance_id=identity,
                hostname=identity.split(":")[0],
                clock=lambda: 0.0,  # frozen: no background beat, no local deadline
            )
            for identity in IDENTITIES
        ]
        self.objects: list[Lease] = []
        self.model = Model()

    def teardown(self) -> None:
        for registry in self.registries:
            registry.close()
        self.admin.delete(self.keys.status, self.keys.log, self.keys.fence)
        self.client.close()
        self.admin.close()

    # -- helpers -------------------------------------------------------------------------------

    def lease_op(
        self, label: str, handle: Handle, op: Callable[[Lease], object], *, local_error: bool = False
    ) -> tuple[bool, object]:
        """Run an owner operation and check the outcome the model predicts for lease *handle*.

        Returns ``(True, result)`` on success (the caller then applies the change to the model),
        ``(False, None)`` after checking a predicted failure.
        """
        m = self.model.leases[handle.index]
        lease = self.objects[handle.index]
        kind, value = outcome(lambda: op(lease))
        event(f"{label}: {kind}")
        if m.lost is not None:
            assert kind == "LeaseLostError", (kind, value)
            assert isinstance(value, LeaseLostError)
            assert value.reason == m.lost
            return False, None
        if local_error:
            assert kind == "InvalidTransitionError", (kind, value)
            assert isinstance(value, InvalidTransitionError)
            assert value.current == m.local_state.value
            return False, None
        if self.model.holder != handle.index:
            reason = self.model.not_ours_reason()
            assert kind == "LeaseLostError", (kind, value)
            assert isinstance(value, LeaseLostError)
            assert value.reason == reason
            m.lost = reason
            return False, None
        assert kind == "ok", (kind, value)
        return True, value

    # -- rules -----------------------------------------------------------------------------------

    @initialize()
    def empty_at_start(self) -> None:
        assert self.admin.exists(self.keys.status, self.keys.log, self.keys.fence) == 0

    @rule(target=leases, who=st.integers(0, len(IDENTITIES) - 1), reclaim=st.booleans())
    def claim(self, who: int, reclaim: bool) -> object:
        registry = self.registries[who]
        holder = self.model.holder
        same_identity = holder is not None and IDENTITIES[self.model.leases[holder].registry] == IDENTITIES[who]
        kind, value = outcome(lambda: registry.claim(EXCHANGE_ID, "Binance", reclaim=reclaim))
        event(f"claim (reclaim={reclaim}, held={holder is not None}, same identity={same_identity}): {kind}")
        if holder is not None and not (reclaim and same_identity):
            assert kind == "ClaimConflictError", (kind, value)
            assert isinstance(value, ClaimConflictError)
            assert value.exchange_id == str(EXCHANGE_ID)
            assert value.holder is not None
            assert value.holder.fencing_token == self.model.leases[holder].token
            assert value.holder.instance_id == IDENTITIES[self.model.leases[holder].registry]
            assert value.holder.connection_state is self.model.state
            assert 0 < value.ttl <= TTL
            return multiple()
        assert kind == "ok", (kind, value)
        assert isinstance(value, Lease)
        token = value.fencing_token
        assert token > self.model.last_token, "fencing tokens must strictly increase"
        assert value.state is State.IDLE
        newest = self.registries[0].activity(EXCHANGE_ID, count=1)[0]
        assert newest.event == "claim"
        assert newest.fencing_token == token
        assert newest.how == ("new" if holder is None else "reclaim")
        assert newest.replaced == (None if holder is None else self.model.leases[holder].token)
        self.objects.append(value)
        self.model.leases.append(LeaseModel(registry=who, token=token))
        self.model.holder = len(self.objects) - 1
        self.model.state = State.IDLE
        self.model.symbol_count = 0
        self.model.last_error = None
        self.model.connected = False
        self.model.last_token = token
        self.model.log_len += 1
        return Handle(len(self.objects) - 1)

    @rule(handle=leases)
    def heartbeat(self, handle: Handle) -> None:
        self.lease_op("heartbeat", handle, lambda lease: lease.heartbeat())

    def _transition(self, handle: Handle, to: State | str, expected: State | None) -> None:
        m = self.model.leases[handle.index]
        target = State(to)
        before = m.local_state
        locally_invalid = (expected is not None and expected != before) or target not in TRANSITIONS[before]
        ok, result = self.lease_op(
            "transition", handle, lambda lease: lease.transition(to, expected=expected), local_error=locally_invalid
        )
        event(f"transition {before.value}->{target.value}: {'ok' if ok else 'refused'}")
        if not ok:
            return
        assert result is target
        assert self.objects[handle.index].state is target
        m.local_state = target
        self.model.state = target
        self.model.connected = self.model.connected or target is State.ACTIVE
        self.model.log_len += 1
        newest = self.registries[1].activity(EXCHANGE_ID, count=1)[0]
        assert (newest.event, newest.from_state, newest.to_state) == ("state_transition", before.value, target.value)
        assert newest.fencing_token == m.token

    @rule(
        handle=leases,
        to=st.sampled_from([*STATES, *(s.value for s in STATES)]),
        expected=st.none() | st.sampled_from(STATES),
    )
    def transition(self, handle: Handle, to: State | str, expected: State | None) -> None:
        """Any lease, any target (mostly invalid ones), with or without compare-and-set."""
        self._transition(handle, to, expected)

    @precondition(lambda self: self.model.holder is not None)
    @rule(goal=st.sampled_from(STATES), cas=st.booleans())
    def advance(self, goal: State, cas: bool) -> None:
        """The holder walks the shortest path of valid edges to *goal* (so that runs get deep into the
        lifecycle), with or without compare-and-set on its current state."""
        assert self.model.holder is not None
        handle = Handle(self.model.holder)
        for step in shortest_path(self.model.leases[handle.index].local_state, goal):
            current = self.model.leases[handle.index].local_state
            self._transition(handle, step, current if cas else None)

    @rule(handle=leases, count=st.integers(0, 1_000_000_000))
    def set_symbol_count(self, handle: Handle, count: int) -> None:
        ok, _ = self.lease_op("set_symbol_count", handle, lambda lease: lease.set_symbol_count(count))
        if ok:
            self.model.symbol_count = count

    @rule(handle=leases, message=st.sampled_from(["boom", "socket closed", "rate limited: 429", "é" * 3]))
    def record_error(self, handle: Handle, message: str) -> None:
        ok, _ = self.lease_op("record_error", handle, lambda lease: lease.record_error(message))
        if ok:
            self.model.last_error = message
            self.model.log_len += 1

    @rule(handle=leases)
    def release(self, handle: Handle) -> None:
        m = self.model.leases[handle.index]
        deleted = self.objects[handle.index].release()  # never raises LeaseLostError
        if m.lost is None and self.model.holder == handle.index:
            assert deleted is True
            self.model.holder = None
            self.model.log_len += 1
        else:
            assert deleted is False
        if m.lost in (None, "deadline"):
            m.lost = "released"
        assert self.objects[handle.index].lost_reason == m.lost

    @rule(how=st.sampled_from(["delete", "pexpire", "force_release"]), who=st.integers(0, len(IDENTITIES) - 1))
    def dispossess(self, how: str, who: int) -> None:
        """The record goes away behind the owner's back: TTL expiry (simulated) or an operator's force release."""
        if how == "delete":
            self.admin.delete(self.keys.status)
        elif how == "pexpire":
            self.admin.pexpire(self.keys.status, 1)
            time.sleep(0.005)
        else:
            removed = self.registries[who].force_release(EXCHANGE_ID, "model test", operator="operator")
            if self.model.holder is None:
                assert removed is None
                return
            assert removed == self.model.leases[self.model.holder].token
            newest = self.registries[0].activity(EXCHANGE_ID, count=1)[0]
            assert (newest.event, newest.fencing_token, newest.operator) == ("force_release", removed, "operator")
            self.model.log_len += 1
        self.model.holder = None

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def record_matches_model(self) -> None:
        status = self.registries[2].get(EXCHANGE_ID)
        if self.model.holder is None:
            assert status is None
            return
        holder = self.model.leases[self.model.holder]
        assert status is not None
        assert status.fencing_token == holder.token
        assert status.instance_id == IDENTITIES[holder.registry]
        assert status.connection_state is self.model.state
        assert status.symbol_count == self.model.symbol_count
        assert status.last_error == self.model.last_error
        assert (status.connected_at is not None) == self.model.connected
        assert 0 < self.admin.pttl(self.keys.status) <= TTL * 1000

    @invariant()
    def log_and_fence_match_model(self) -> None:
        assert self.admin.xlen(self.keys.log) == self.model.log_len
        fence = self.admin.get(self.keys.fence)
        assert (int(fence) if fence is not None else 0) == self.model.last_token

    @invariant()
    def leases_know_what_model_knows(self) -> None:
        for index, m in enumerate(self.model.leases):
            lease = self.objects[index]
            assert lease.lost_reason == m.lost, index
            assert lease.state is m.local_state, index
            assert lease.fencing_token == m.token


@pytest.mark.timeout(120)
def test_registry_matches_model(model_server: RedisServer) -> None:
    """Under any sequence of claims (with/without reclaim, by three registries), heartbeats, transitions
    (valid and invalid, with/without compare-and-set), field updates, errors, releases, force releases and
    expiries, Redis and the model agree after every step: who holds the record and in which state, its
    fields, the log length and the fence; each operation succeeds or fails (ClaimConflictError,
    LeaseLostError with the right reason, InvalidTransitionError) as the model predicts; and fencing
    tokens strictly increase."""
    assert model_server.process is not None
    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
