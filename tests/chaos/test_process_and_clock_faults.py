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
from tests.support import DEADLINE, HB, TTL, Background, LossLog, await_beat, wait_for_beat, wait_until

TIMING: dict[str, Any] = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: A contender whose own heartbeat cannot write during a test: every change to its record comes from someone else.
QUIET: dict[str, Any] = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}
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
    stopped and deregisters (token-checked): the record is gone within 1 s of the signal, before it
    could have expired (deregistered, not expired), and a contender's claim succeeds at once, well
    before the TTL, with a higher fencing token. The log's last entries before that claim are
    stopping, stopped, deregister, all with the owner's token. A second release() is a no-op
    (False): nothing more is written, and the owner exits with status 0."""
    admin = make_admin_client(redis_server)
    contender_client = make_client(redis_server)
    contender = Registry(contender_client, namespace=namespace, instance_id="contender-p2", **QUIET)
    keys = Keys(namespace, EXCHANGE)
    owner = start_owner(mode)
    lease: Lease | None = None
    try:
        claimed = owner.wait_for("claimed", timeout=10)
        owner.wait_for("ready", timeout=5)
        with pytest.raises(ClaimConflictError):
            contender.claim(EXCHANGE, "Contender")
        wait_for_beat(admin, keys.status)

        pttl = admin.pttl(keys.status)
        read_at = time.monotonic()
        assert pttl > 0
        signalled_at = time.monotonic()
        os.kill(owner.proc.pid, signal.SIGTERM)
        assert wait_until(lambda: admin.exists(keys.status) == 0, TTL), "the record was not removed"
        gone_at = time.monotonic()
        lease = contender.claim(EXCHANGE, "Contender")  # at once: no waiting for an expiry
        claimed_at = time.monotonic()
        record_after_claim = admin.hgetall(keys.status)

        assert gone_at - signalled_at <= 1.0, f"the record went {gone_at - signalled_at:.3f} s after SIGTERM"
        assert gone_at < read_at + pttl / 1000 - 0.1, "the record was not deleted before it would have expired"
        assert claimed_at - signalled_at < TTL - HB, f"the contender claimed {claimed_at - signalled_at:.3f} s after"
        assert lease.fencing_token > claimed["fencing_token"]

        sigterm = owner.wait_for("sigterm", timeout=2)
        assert sigterm["received_at"] >= signalled_at - 0.01
        exited = owner.wait_for("exited", timeout=2)
        assert exited["lost_reason"] == "released"
        assert exited["state"] == "stopped"
        assert exited["is_valid"] is False
        again = owner.wait_for("released_again", timeout=2)
        assert again["result"] is False, "a second release should be a no-op"
        owner.wait_for("done", timeout=2)
        assert owner.proc.wait(timeout=5) == 0, owner.stderr_text()

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
        started = time.monotonic()
        with pytest.raises(LeaseLostError) as info:
            lease.ensure_held()
        assert time.monotonic() - started < 0.05
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

        started = time.monotonic()
        with pytest.raises(LeaseLostError):
            await lease.transition("warming")
        assert time.monotonic() - started < 0.05, "a refused transition made a round trip"
        await asyncio.sleep(HB + 0.3)  # the heartbeat task gets every chance to run
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


@pytest.mark.chaos
@pytest.mark.timeout(60)
def test_wall_clock_jumps_change_nothing(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C1: while ``time.time`` jumps between +1 h and -1 h every 0.1 s, two leases (default clock,
    and an injected monotonic clock) stay valid for 2 x TTL and keep renewing every heartbeat
    interval; no loss is reported and transitions work. pylivermore never reads the wall clock (no
    call to the patched ``time.time`` comes from it, and its sources hold no wall-clock read). The
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
        beats: dict[str, set[bytes]] = {keys.status: set(), injected_keys.status: set()}
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:
            walls.append(time.time())
            assert lease.is_valid, "a wall-clock jump invalidated the lease"
            assert other.is_valid, "a wall-clock jump invalidated the lease on the injected clock"
            for key, seen in beats.items():
                beat = admin.hget(key, "lastHeartbeat")
                assert beat is not None, f"{key} vanished"
                seen.add(beat)
            time.sleep(0.02)
        assert max(walls) - min(walls) > 2 * JUMP - 60, "time.time did not jump: the test proves nothing"
        for key, seen in beats.items():
            assert len(seen) >= int(2 * TTL / HB) - 1, f"{key}: only {len(seen)} distinct heartbeats in {2 * TTL} s"
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


@pytest.mark.chaos
@pytest.mark.timeout(60)
@pytest.mark.parametrize("rate", [1.3, 0.75, 0.6], ids=["fast-1.3", "slow-0.75", "beyond-tolerance-0.6"])
def test_clock_rate_skew_within_tolerance_reports_loss_before_server_expiry(
    redis_server: RedisServer, namespace: str, rate: float
) -> None:
    """C2: the owner's monotonic clock runs at *rate* x real time. The heartbeat then runs every
    heartbeat_interval / rate real seconds and keeps the lease. Once renewals stop (registry.close()
    right after an acknowledged heartbeat), the local deadline falls renew_deadline / rate real
    seconds after that heartbeat was sent, and the record expires on the server TTL after it ran.

    Tolerance: safe while renew_deadline / rate < TTL, i.e. rate > renew_deadline / TTL = 1/1.5 =
    0.667 (a clock may run up to TTL / renew_deadline = 1.5 x too slow). A fast clock (1.3) declares
    the loss early, never late (0.77 s < 1.0 s); a slow one within tolerance (0.75: 1.33 s < 1.5 s)
    still declares it before the record expires, observed directly with EXISTS. Beyond tolerance
    (0.6: 1.67 s > 1.5 s) the test shows the overlap it would otherwise catch: the record expires
    and a contender claims while the owner still holds a valid lease; only the higher fencing token
    protects the resource then."""
    admin = make_admin_client(redis_server)
    client = make_client(redis_server)
    contender_client = make_client(redis_server)
    origin = time.monotonic()

    def clock() -> float:
        return origin + (time.monotonic() - origin) * rate

    registry = Registry(client, namespace=namespace, clock=clock, **TIMING)
    contender = Registry(contender_client, namespace=namespace, **QUIET)
    keys = Keys(namespace, EXCHANGE)
    lost = LossLog()
    taken: Lease | None = None
    try:
        claiming_at = time.monotonic()
        lease = registry.claim(EXCHANGE, "Owner", on_lost=lost)
        acked = wait_for_beat(admin, keys.status, timeout=HB / rate + 1.0)
        gap = acked - claiming_at
        # Due heartbeat_interval / rate real seconds after the claim; the heartbeat thread sleeps in real
        # seconds (Event.wait), so under a fast injected clock it wakes up to heartbeat_interval later.
        assert HB / rate - 0.05 <= gap <= max(HB, HB / rate) + 0.1, f"first heartbeat after {gap:.3f} s at rate {rate}"
        assert lease.is_valid
        registry.close()  # no more renewals; the heartbeat that was just seen is applied before it returns
        assert lease.is_valid
        assert lost.calls == []

        invalid_at = gone_at = None
        overlap = None
        give_up = time.monotonic() + TTL + 1.5
        while (invalid_at is None or gone_at is None) and time.monotonic() < give_up:
            now = time.monotonic()
            if invalid_at is None and not lease.is_valid:
                invalid_at = now
            if gone_at is None and admin.exists(keys.status) == 0:
                gone_at = now
                if invalid_at is None:  # beyond tolerance: the resource is free while the owner holds it
                    taken = contender.claim(EXCHANGE, "Contender")
                    overlap = lease.is_valid
            time.sleep(0.002)
        assert invalid_at is not None, "the lease never became invalid"
        assert gone_at is not None, "the record never expired"
        local = invalid_at - acked
        assert local <= DEADLINE / rate + 0.02, f"declared lost {local:.3f} s after the last ack at rate {rate}"

        if rate > DEADLINE / TTL:
            assert invalid_at < gone_at, (
                f"rate {rate}: the record expired {invalid_at - gone_at:.3f} s before the owner gave up"
            )
            margin = gone_at - invalid_at
            assert margin >= TTL - DEADLINE / rate - 0.03, f"rate {rate}: only {margin:.3f} s before expiry"
            if rate > 1:
                assert local < DEADLINE, "a fast clock must never declare the loss later than a true one"
        else:
            assert gone_at < invalid_at, "beyond the tolerance the record should expire before the local deadline"
            assert overlap is True, "the contender should have claimed while the stale lease was still valid"
            assert taken is not None
            assert taken.fencing_token > lease.fencing_token, "fencing must reject the stale owner"
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
