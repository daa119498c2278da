"""Process and clock faults of an owner (reliability notes §4.1 P2, P5 and §4.5 C1, C2), on a real
redis-server.

P2 runs the owner as a child process (``owner_signals.py``) and sends it SIGTERM; P5 starves the
asyncio event loop of an owner in this process; C1 and C2 change the clocks the owner sees (the
wall clock by monkeypatching ``time.time``, the monotonic clock through the registry's ``clock``).
Owners use TTL 1.5 s, heartbeat 0.5 s, renew deadline 1.0 s; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

import pylivermore
from pylivermore import AsyncRegistry, ClaimConflictError, Lease, LeaseLostError, Registry, State
from pylivermore._keys import Keys
from pylivermore.server import RedisServer
from tests.conftest import make_admin_client, make_async_client, make_client
from tests.support import (
    DEADLINE,
    HB,
    TTL,
    Background,
    LossLog,
    OwnerClock,
    RoundTrips,
    await_beat,
    expiry_window,
    wait_for_beat,
    wait_until,
)

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: A contender whose own heartbeat cannot write during a test: every change to its record comes from someone else.
QUIET: dict[str, Any] = {"ttl": 120.0, "heartbeat_interval": 40.0, "renew_deadline": 80.0}
EXCHANGE, OTHER = "42", "43"
OWNER_SCRIPT = Path(__file__).with_name("owner_signals.py")
ROOT = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------------


def snapshot(admin: redis.Redis, keys: Keys) -> tuple[dict[bytes, bytes], list[Any], bytes | None]:
    pipe = admin.pipeline(transaction=True)
    pipe.hgetall(keys.status)
    pipe.xrange(keys.log)
    pipe.get(keys.fence)
    record, log, fence = pipe.execute()
    return record, log, fence


def claim_when_free(registry: Registry, exchange_id: str, give_up_after: float) -> Lease:
    """Poll a claim every 20 ms until it succeeds; raise if it never does."""
    give_up = time.monotonic() + give_up_after
    while True:
        try:
            return registry.claim(exchange_id, "Contender")
        except ClaimConflictError:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.02)


# -- P2: graceful SIGTERM --------------------------------------------------------------------------------------


class SignalOwner:
    """``owner_signals.py`` as a child process; a thread reads its JSON reports line by line."""

    def __init__(self, server: RedisServer, namespace: str, mode: str, stderr_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._stderr_path = stderr_path
        self._stderr: IO[bytes] = stderr_path.open("wb")  # closed in stop(), which the fixture always calls
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(OWNER_SCRIPT),
                    *("--url", server.url, "--namespace", namespace, "--id", EXCHANGE, "--mode", mode),
                    *("--ttl", str(TTL), "--hb", str(HB), "--deadline", str(DEADLINE), "--max-life", "30"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                cwd=ROOT,
                env=env,
            )
        except BaseException:
            self._stderr.close()
            raise
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="owner-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                self._lines.put({"event": "garbage", "line": line.decode(errors="replace")})
        self._lines.put(None)

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text(errors="replace")

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The next report named *event*, reading for at most *timeout* seconds; fail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                pytest.fail(f"owner reported no {event!r} within {timeout} s: {self.events}; {self.stderr_text()!r}")
            if item is None:
                self._lines.put(None)
                pytest.fail(f"owner exited before {event!r}: {self.events}; stderr {self.stderr_text()!r}")
            self.events.append(item)
            if item["event"] in ("error", "timeout"):
                pytest.fail(f"owner failed: {item}; stderr: {self.stderr_text()!r}")
            if item["event"] == event:
                return item

    def stop(self) -> None:
        """Kill the process if it still runs, reap it, and close every pipe and file."""
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()


@pytest.fixture
def start_owner(redis_server: RedisServer, namespace: str, tmp_path: Path) -> Iterator[Callable[[str], SignalOwner]]:
    started: list[SignalOwner] = []

    def start(mode: str) -> SignalOwner:
        owner = SignalOwner(redis_server, namespace, mode, tmp_path / f"owner-{len(started)}.stderr")
        started.append(owner)
        return owner

    yield start
    for owner in started:
        owner.stop()


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigterm_deregisters_at_once_and_contender_claims_before_ttl(
    mode: str, redis_server: RedisServer, namespace: str, start_owner: Callable[[str], SignalOwner]
) -> None:
    """P2: an owner whose SIGTERM handler ends its ``with lease:`` block walks active -> stopping ->
    stopped and deregisters (token-checked): the record is deleted while it is live (deregistered,
    not expired: the log's last entries before the next claim are stopping, stopped, deregister,
    all with the owner's token, and a deregister of an expired record writes nothing), and a
    contender's claim succeeds at once (its first attempt, no waiting for a TTL) with a higher
    fencing token. A second release() is a no-op (False): nothing more is written, and the owner
    exits with status 0.

    Timing: how soon after the signal the record goes depends on how soon the owner process runs,
    so the test waits for that event (bounded only to give up) and proves "deregistered, not
    expired" by the log instead of by the clock."""
    admin = make_admin_client(redis_server)
    contender_client = make_client(redis_server)
    contender = Registry(contender_client, namespace=namespace, instance_id="contender-p2", **QUIET)
    keys = Keys(namespace, EXCHANGE)
    owner = start_owner(mode)
    lease: Lease | None = None
    try:
        claimed = owner.wait_for("claimed", timeout=30)
        owner.wait_for("ready", timeout=10)
        with pytest.raises(ClaimConflictError):
            contender.claim(EXCHANGE, "Contender")
        wait_for_beat(admin, keys.status)

        signalled_at = time.monotonic()
        os.kill(owner.proc.pid, signal.SIGTERM)
        assert wait_until(lambda: admin.exists(keys.status) == 0, 15.0), "the record was not removed"
        lease = contender.claim(EXCHANGE, "Contender")  # the first attempt: no waiting for an expiry
        record_after_claim = admin.hgetall(keys.status)
        assert lease.fencing_token > claimed["fencing_token"]

        sigterm = owner.wait_for("sigterm", timeout=10)
        assert sigterm["received_at"] >= signalled_at - 0.01
        exited = owner.wait_for("exited", timeout=10)
        assert exited["lost_reason"] == "released"
        assert exited["state"] == "stopped"
        assert exited["is_valid"] is False
        again = owner.wait_for("released_again", timeout=10)
        assert again["result"] is False, "a second release should be a no-op"
        owner.wait_for("done", timeout=10)
        assert owner.proc.wait(timeout=10) == 0, owner.stderr_text()

        log = list(reversed(contender.activity(EXCHANGE)))  # oldest first
        owner_token = claimed["fencing_token"]
        assert [(e.event, e.to_state, e.fencing_token) for e in log[-4:-1]] == [
            ("state_transition", "stopping", owner_token),
            ("state_transition", "stopped", owner_token),
            ("deregister", None, owner_token),
        ]
        assert log[-2].state == "stopped"
        assert log[-2].instance_id == claimed["instance_id"]
        assert (log[-1].event, log[-1].fencing_token) == ("claim", lease.fencing_token)
        assert sum(1 for e in log if e.event == "deregister") == 1
        assert [e.to_state for e in log if e.event == "state_transition"] == [
            "starting",
            "warming",
            "active",
            "stopping",
            "stopped",
        ]
        assert admin.hgetall(keys.status) == record_after_claim, "the exiting owner touched the new record"
    finally:
        if lease is not None:
            lease.release()
        contender.close()
        contender_client.close()
        admin.close()


# -- P5: starved asyncio event loop -----------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", ["owner_acts_first", "loop_runs_first"])
async def test_starved_event_loop_loses_lease_before_any_owner_action(
    redis_server: RedisServer, namespace: str, first: str
) -> None:
    """P5: a coroutine blocks the event loop with time.sleep(2 x TTL), so the heartbeat task cannot
    run, and a contender (another thread) claims the expired resource meanwhile. Afterwards the
    lease is known lost before any owner action succeeds, whether the owner acts first or the loop
    runs the heartbeat task first: is_valid is False, ensure_held() raises LeaseLostError at once
    (reason "deadline"; "expired"/"taken" would also be safe), a transition is refused without a
    round trip, on_lost fires exactly once, and nothing from the stale owner reaches the
    contender's record, log or fence (its token-checked release changes nothing)."""
    admin = make_admin_client(redis_server)
    aclient = make_async_client(redis_server)
    registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
    contender_client = make_client(redis_server)
    contender = Registry(contender_client, namespace=namespace, instance_id="contender-p5", **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    grab: Background | None = None
    try:
        lease = await registry.claim(EXCHANGE, "Owner", on_lost=lost)
        await lease.transition("starting")
        await await_beat(admin, keys.status)

        grab = Background(lambda: claim_when_free(contender, EXCHANGE, give_up_after=2 * TTL + 1.0))
        time.sleep(2 * TTL)  # starve the event loop: no heartbeat, no callback can run
        woke_at = time.monotonic()
        if first == "loop_runs_first":
            await asyncio.sleep(0.05)  # pending callbacks, including the heartbeat task, run first
            assert len(lost.calls) == 1
            assert lost.reasons[0] in ("deadline", "expired", "taken")
        else:
            assert lost.calls == [], "on_lost ran while the loop was starved"
        assert not lease.is_valid
        calls = RoundTrips(aclient)
        with pytest.raises(LeaseLostError) as info:
            lease.ensure_held()
        assert calls.count == 0, "ensure_held() made a round trip"
        reason = info.value.reason
        assert reason in ("deadline", "expired", "taken")
        assert lost.reasons == [reason], "on_lost must fire once, with the reason the owner sees"

        grab.join(2)
        assert grab.error is None, grab.error
        taken = grab.result
        assert isinstance(taken, Lease)
        assert grab.finished_at is not None
        assert grab.finished_at < woke_at, "the contender should have claimed during the stall"
        assert taken.fencing_token > lease.fencing_token
        before = snapshot(admin, keys)

        with pytest.raises(LeaseLostError):
            await lease.transition("warming")
        assert calls.count == 0, "a refused transition made a round trip"
        await asyncio.sleep(HB + 0.3)  # the heartbeat task's chance to write (load can only hide it)
        assert await lease.release() is False
        assert snapshot(admin, keys) == before, "the stale owner changed the contender's record"
        assert before[0][b"instanceId"] == b"contender-p5"
        assert len(lost.calls) == 1
        assert taken.release() is True
    finally:
        if grab is not None:
            grab.join(5)
        await registry.close()
        await aclient.aclose()
        contender.close()
        contender_client.close()
        admin.close()


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["awaits_in_block", "acts_in_block"])
async def test_starved_event_loop_inside_guard_ends_block_with_lease_lost_only(
    redis_server: RedisServer, namespace: str, how: str
) -> None:
    """P5 with ``AsyncLease.guard()``: the event loop is starved (time.sleep) past the deadline
    inside a guarded block. Whether the block then awaits (the heartbeat task finds the loss and
    the guard cancels the block) or acts (a transition is refused), the block ends with
    LeaseLostError("deadline"), nothing is written, on_lost fires once, and the task that ran the
    block carries on normally after handling the error: the guard leaves no cancellation pending."""
    admin = make_admin_client(redis_server)
    aclient = make_async_client(redis_server)
    registry = AsyncRegistry(aclient, namespace=namespace, **TIMING)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    try:
        lease = await registry.claim(EXCHANGE, "Owner", on_lost=lost)
        await lease.transition("starting")
        await await_beat(admin, keys.status)
        log_before = admin.xrange(keys.log)

        async def worker() -> dict[str, str | None]:
            outcome: dict[str, str | None] = {}
            try:
                async with lease.guard():
                    time.sleep(TTL)  # starve the loop past the deadline
                    if how == "acts_in_block":
                        await lease.transition("warming")
                    else:
                        await asyncio.sleep(5)
                outcome["block"] = "completed"
            except LeaseLostError as exc:
                outcome["block"] = exc.reason
            await asyncio.sleep(0.01)  # the task goes on after handling the loss
            outcome["after"] = "ran"
            return outcome

        task = asyncio.create_task(worker())
        done, _ = await asyncio.wait({task}, timeout=TTL + 5)
        assert task in done, "the guarded block did not end"
        assert not task.cancelled(), (
            "the task was cancelled after it had handled LeaseLostError: the guard left a cancellation pending"
        )
        assert task.result() == {"block": "deadline", "after": "ran"}
        assert lost.reasons == ["deadline"]
        assert admin.xrange(keys.log) == log_before, "a transition was written after the deadline"
        assert await lease.release() in (True, False)
        assert len(lost.calls) == 1
    finally:
        await registry.close()
        await aclient.aclose()
        admin.close()


# -- C1: wall-clock jumps ---------------------------------------------------------------------------------------

JUMP = 3600.0
WALL_CLOCK_READS = re.compile(r"\btime\.time(_ns)?\(|\bdatetime\.(now|utcnow|today)\(|\bdate\.today\(")


#: Operator tools that read the wall clock on no lease's path: ``livermore doctor`` compares this
#: machine's clock with the server's, ``livermore watch`` prints the local time of each refresh.
CLOCK_COMPARERS = frozenset({"_doctor.py", "cli.py"})


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_wall_clock_jumps_change_nothing(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C1: while ``time.time`` jumps between +1 h and -1 h every 0.1 s, two leases (default clock,
    and an injected monotonic clock) stay valid for 2 x TTL and keep renewing; no loss is reported
    and transitions work. pylivermore never reads the wall clock (no call to the patched
    ``time.time`` comes from it, and its sources hold no wall-clock read). The
    injected monotonic clock is what decides: moving it past the deadline (the wall clock and the
    server untouched) makes that lease invalid at once, while the other stays valid."""
    real_time = time.time
    callers: set[str] = set()
    walls: list[float] = []

    def jumping_time() -> float:
        callers.add(sys._getframe(1).f_globals.get("__name__", "?"))
        return real_time() + (JUMP if int(time.monotonic() * 10) % 2 else -JUMP)

    admin = make_admin_client(redis_server)
    client = make_client(redis_server)
    injected_client = make_client(redis_server)
    skew = [0.0]
    registry = Registry(client, namespace=namespace, **TIMING)
    injected = Registry(injected_client, namespace=namespace, clock=lambda: time.monotonic() + skew[0], **TIMING)
    keys, injected_keys = Keys(namespace, EXCHANGE), Keys(namespace, OTHER)
    lost, injected_lost = LossLog(), LossLog()
    monkeypatch.setattr(time, "time", jumping_time)
    try:
        lease = registry.claim(EXCHANGE, "Wall", on_lost=lost)
        other = injected.claim(OTHER, "Injected", on_lost=injected_lost)
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:
            walls.append(time.time())
            assert lease.is_valid, "a wall-clock jump invalidated the lease"
            assert other.is_valid, "a wall-clock jump invalidated the lease on the injected clock"
            for key in (keys.status, injected_keys.status):
                assert admin.hget(key, "lastHeartbeat") is not None, f"{key} vanished"
            time.sleep(0.02)

        def jumped() -> bool:  # a loaded machine may have let the loop look only a few times
            walls.append(time.time())
            return max(walls) - min(walls) > 2 * JUMP - 60

        assert wait_until(jumped, 5.0), "time.time did not jump: the test proves nothing"
        # Both leases stayed valid for 2 x TTL, which takes a renewal at least every renew_deadline,
        # and the heartbeats go on (counting the writes this thread happened to see would measure
        # how often a loaded machine let it look).
        for key in (keys.status, injected_keys.status):
            wait_for_beat(admin, key)
            assert admin.pttl(key) > 0
        assert lost.calls == []
        assert injected_lost.calls == []
        assert lease.transition("starting") is State.STARTING
        assert other.transition("starting") is State.STARTING

        skew[0] = DEADLINE + 0.01  # the monotonic clock, not the wall clock, moves past the deadline
        assert not other.is_valid, "the injected monotonic clock did not decide the lease's validity"
        with pytest.raises(LeaseLostError) as info:
            other.ensure_held()
        assert info.value.reason == "deadline"
        assert injected_lost.reasons == ["deadline"]
        assert lease.is_valid
        assert admin.exists(injected_keys.status) == 1, "the server's record is untouched: only the clock moved"

        from_package = sorted(name for name in callers if name == "pylivermore" or name.startswith("pylivermore."))
        assert from_package == [], f"pylivermore read the wall clock from {from_package}"
        package_dir = Path(pylivermore.__file__).parent
        for source in sorted(package_dir.glob("*.py")):
            if source.name in CLOCK_COMPARERS:
                continue
            match = WALL_CLOCK_READS.search(source.read_text(encoding="utf-8"))
            assert match is None, f"{source.name} reads the wall clock: {match.group(0)!r}"
        assert lease.release() is True
        assert other.release() is True  # lost to its deadline only: the token-checked release still deletes
    finally:
        monkeypatch.undo()
        registry.close()
        injected.close()
        client.close()
        injected_client.close()
        admin.close()


# -- C2: clock rate skew -----------------------------------------------------------------------------------------

#: A heartbeat may go out this much before it is due (``RegistryConfig.renew_ahead``: heartbeat_interval / 10).
RENEW_AHEAD = HB / 10


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("rate", [1.3, 0.75, 0.5], ids=["fast-1.3", "slow-0.75", "beyond-tolerance-0.5"])
def test_clock_rate_skew_within_tolerance_reports_loss_before_server_expiry(
    redis_server: RedisServer, namespace: str, rate: float
) -> None:
    """C2: the owner's monotonic clock runs at *rate* x real time. The heartbeat is scheduled on that
    clock (the first one goes out heartbeat_interval after the claim as the owner counts) and keeps
    the lease. Once renewals stop (registry.close() after an acknowledged heartbeat), the local
    deadline falls renew_deadline / rate real seconds after the last acknowledged send, and the record
    expires on the server TTL after that renewal ran.

    Tolerance: safe while renew_deadline / rate < TTL, i.e. rate > renew_deadline / TTL = 1/1.5 =
    0.667 (a clock may run up to TTL / renew_deadline = 1.5 x too slow). A fast clock (1.3) declares
    the loss early, never late (0.77 s < 1.0 s); a slow one within tolerance (0.75: 1.33 s < 1.5 s)
    still gives up before the record expires, at least TTL - renew_deadline / rate before. Beyond
    tolerance (0.5: 2.0 s > 1.5 s) the test shows the overlap it would otherwise catch: the record
    expires and a contender claims while the owner's lease is still valid; only the higher fencing
    token protects the resource then.

    Timing: nothing here depends on how promptly the test's thread runs. The lease's validity at an
    instant is read through the injected clock (``OwnerClock.valid_at``), and the record's expiry
    instant is bracketed by PTTL reads (``expiry_window``): both are exact whatever the load."""
    admin = make_admin_client(redis_server)
    client = make_client(redis_server)
    contender_client = make_client(redis_server)
    clock = OwnerClock(rate)
    registry = Registry(client, namespace=namespace, clock=clock, **TIMING)
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    taken: Lease | None = None
    try:
        claiming_at = time.monotonic()
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        acked = wait_for_beat(admin, keys.status, timeout=HB / rate + TTL + 5.0)
        beat, beat_read = admin.hget(keys.status, "lastHeartbeat"), time.monotonic()
        # Due heartbeat_interval after the claim on the owner's clock (a slow clock delays it in
        # real time); a loaded machine can only make the beat, and the test's sighting, later.
        owner_gap = clock.at(acked) - clock.at(claiming_at)
        assert owner_gap >= HB - RENEW_AHEAD - 0.005, f"first heartbeat after {owner_gap:.3f} s of owner time"
        registry.close()  # no more renewals; the heartbeat thread has ended when this returns
        closed_at = time.monotonic()
        assert lost.calls == [], "the lease was lost while it was being renewed"
        # Every renewal that was acknowledged was applied, and sent, before *sent_by*: the sighting of
        # the beat if it is still the last one applied, else the end of close().
        sent_by = beat_read if admin.hget(keys.status, "lastHeartbeat") == beat else closed_at
        expires_lo, expires_hi = expiry_window(admin, keys.status, reads=20)

        # The real instant from which the lease is invalid, exactly (no more renewals can move it).
        invalid_from = clock.deadline(lease, closed_at, closed_at + DEADLINE / rate + 1.0)
        # It is renew_deadline on the owner's clock after a heartbeat's send: after the first beat
        # was due, and no later than sent_by (the slack is the bisection's 1 µs).
        last_send = clock.at(invalid_from) - DEADLINE
        assert last_send >= clock.at(claiming_at) + HB - RENEW_AHEAD - 0.005, "no heartbeat renewed the deadline"
        assert invalid_from <= sent_by + DEADLINE / rate + 1e-5, (
            f"rate {rate}: valid {invalid_from - sent_by:.3f} s after the last renewal was sent "
            f"(renew_deadline on the owner's clock is {DEADLINE / rate:.3f} s)"
        )

        if rate > DEADLINE / TTL:
            # The owner gives up before the record can expire, with TTL - renew_deadline / rate to
            # spare (the renewal ran on the server after it was sent). A fast clock gives up even
            # earlier than a true one (renew_deadline / rate < renew_deadline after the send).
            assert not clock.valid_at(lease, expires_lo), (
                f"rate {rate}: still valid {invalid_from - expires_lo:.3f} s after the record could expire"
            )
            margin = TTL - DEADLINE / rate
            assert not clock.valid_at(lease, expires_hi - margin + 0.002), (
                f"rate {rate}: gave up only {expires_hi - invalid_from:.3f} s before expiry (at least {margin:.3f} s)"
            )
        else:
            # Beyond the tolerance the record expires while the owner still holds a valid lease.
            assert clock.valid_at(lease, expires_hi + 0.002), (
                f"rate {rate}: the owner gave up {expires_hi - invalid_from:.3f} s before the record expired"
            )

        # Seen directly as well: once EXISTS finds the record gone, a lease within the tolerance
        # reads invalid (checked in that order, so a late poll only checks later); beyond it, a
        # contender then claims the free resource while the stale lease is still valid.
        def gone() -> bool:
            exists = admin.exists(keys.status)
            if not exists and rate > DEADLINE / TTL:
                assert not lease.is_valid, f"rate {rate}: the record expired while the owner held a valid lease"
            return not exists

        assert wait_until(gone, TTL + 5.0), "the record never expired"
        if rate <= DEADLINE / TTL:
            taken = contender.claim(EXCHANGE, "Contender")  # no conflict: the record expired
            assert taken.fencing_token > lease.fencing_token, "fencing must reject the stale owner"
        assert wait_until(lambda: not lease.is_valid, max(0.0, invalid_from - time.monotonic()) + 5.0)
        with pytest.raises(LeaseLostError) as info:
            lease.ensure_held()
        assert info.value.reason == "deadline"
        assert lost.reasons == ["deadline"]
    finally:
        if taken is not None:
            taken.release()
        registry.close()
        contender.close()
        client.close()
        contender_client.close()
        admin.close()
