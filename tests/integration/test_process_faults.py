"""Process faults of an owner (reliability notes §4.1, P1 and P3), sync and asyncio.

The owner is a separate process (``owner_proc.py``) that claims a resource and reports on stdout
as JSON lines; the contender is a :class:`~pylivermore.Registry` in the test process, on the same
private server. Timings: TTL 1.5 s, heartbeat 0.5 s, renew deadline 1.0 s.
"""

from __future__ import annotations

import json
import os
import queue
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

from pylivermore import ClaimConflictError, Lease, Registry
from pylivermore._keys import Keys
from pylivermore.server import RedisServer
from tests.support import expiry_window, iso_ms

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(60)]

TTL, HB, DEADLINE = 1.5, 0.5, 1.0
TIMING = {"ttl": TTL, "heartbeat_interval": HB, "renew_deadline": DEADLINE}
#: A contender whose own heartbeat cannot write during a test: every change to its record comes from someone else.
QUIET = {"ttl": 120.0, "heartbeat_interval": 40.0, "renew_deadline": 80.0}
OWNER_SCRIPT = Path(__file__).with_name("owner_proc.py")
ROOT = Path(__file__).resolve().parents[2]
EXCHANGE = "42"


class OwnerProcess:
    """``owner_proc.py`` as a child process, its stdout read line by line by a thread."""

    def __init__(self, server: RedisServer, namespace: str, mode: str, stderr_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._stderr_path = stderr_path
        self._stderr: IO[bytes] = stderr_path.open("wb")  # closed in stop(), which the fixture always calls
        try:
            self.proc = self._spawn(server, namespace, mode, env)
        except BaseException:
            self._stderr.close()
            raise
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="owner-stdout", daemon=True)
        self._reader.start()

    def _spawn(self, server: RedisServer, namespace: str, mode: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
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

    @property
    def pid(self) -> int:
        return self.proc.pid

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
        """The next report named *event*, reading at most *timeout* seconds; fail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self._lines.get(timeout=max(remaining, 0.0)) if remaining > 0 else self._lines.get_nowait()
            except queue.Empty:
                pytest.fail(
                    f"owner reported no {event!r} within {timeout} s; reports so far: {self.events}; "
                    f"stderr: {self.stderr_text()!r}"
                )
            if item is None:
                self._lines.put(None)  # keep the end-of-output marker for later readers
                pytest.fail(
                    f"owner exited ({self.proc.poll()}) before reporting {event!r}; reports: {self.events}; "
                    f"stderr: {self.stderr_text()!r}"
                )
            self.events.append(item)
            if item["event"] == "error":
                pytest.fail(f"owner crashed: {item}; stderr: {self.stderr_text()!r}")
            if item["event"] == event:
                return item

    def drain(self) -> None:
        """Collect whatever the owner has reported by now, without waiting."""
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._lines.put(None)
                return
            self.events.append(item)

    def stop(self) -> None:
        """Kill the process (stopped or not), reap it, and close every pipe and file."""
        try:
            if self.proc.poll() is None:
                self.proc.kill()  # SIGKILL also ends a SIGSTOPped process
            self.proc.wait(timeout=10)
        finally:
            self._reader.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()


@pytest.fixture
def start_owner(redis_server: RedisServer, namespace: str, tmp_path: Path) -> Iterator[Callable[[str], OwnerProcess]]:
    started: list[OwnerProcess] = []

    def start(mode: str) -> OwnerProcess:
        owner = OwnerProcess(redis_server, namespace, mode, tmp_path / f"owner-{len(started)}.stderr")
        started.append(owner)
        return owner

    yield start
    for owner in started:
        owner.stop()


def claim_conflict(registry: Registry) -> ClaimConflictError:
    with pytest.raises(ClaimConflictError) as info:
        registry.claim(EXCHANGE, "Contender")
    return info.value


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigkilled_owner_expires_after_its_ttl_and_contender_takes_over(
    mode: str, client: redis.Redis, admin: redis.Redis, namespace: str, start_owner: Callable[[str], OwnerProcess]
) -> None:
    """P1: while the owner process lives (and renews past its TTL), a contender's claim conflicts;
    after ``kill -9`` the record expires one TTL after the owner's last renewal (its absolute
    expiry is lastHeartbeat + TTL on the server's clock), never earlier and never later: the
    contender's first successful claim (polling every 50 ms) comes no earlier than the key's
    expiry as read right after the kill, and every claim that conflicted was sent before that
    expiry could have passed; its fencing token is higher and the activity log records the
    second claim.

    Timing: how soon the contender gets to poll again depends on the scheduler, so "never later"
    is checked on the conflicts (each was sent before the expiry), not on the wall time."""
    keys = Keys(namespace, EXCHANGE)
    owner = start_owner(mode)
    claimed = owner.wait_for("claimed", timeout=30)
    owner.wait_for("ready", timeout=10)
    contender = Registry(client, namespace=namespace, **TIMING)
    lease: Lease | None = None
    try:
        conflict = claim_conflict(contender)
        assert conflict.holder is not None
        assert conflict.holder.fencing_token == claimed["fencing_token"]
        assert conflict.holder.instance_id == claimed["instance_id"]
        assert 0 < conflict.ttl <= TTL

        # Still held after more than one TTL: the owner process's heartbeat renews the record.
        time.sleep(max(0.0, claimed["t"] + TTL + 0.3 - time.monotonic()))
        assert claim_conflict(contender).holder is not None

        killed_at = time.monotonic()
        os.kill(owner.pid, signal.SIGKILL)
        owner.proc.wait(timeout=10)

        # The record as the dead owner left it: one TTL after its last renewal, on the server's clock.
        # (A renewal it wrote just before it died may still land: read until two reads agree.)
        def last_renewal() -> tuple[bytes | None, int]:
            pipe = admin.pipeline(transaction=True)
            pipe.hget(keys.status, "lastHeartbeat").pexpiretime(keys.status)
            beat, expires = pipe.execute()
            return beat, expires

        last_beat, expires_ms = last_renewal()
        for _ in range(5):
            expiry_floor, expiry_ceiling = expiry_window(admin, keys.status)
            again = last_renewal()
            if again == (last_beat, expires_ms):
                break
            last_beat, expires_ms = again
        else:
            pytest.fail("the dead owner's record kept changing")
        assert last_beat is not None, "the owner's record should still live right after the kill"
        assert abs(expires_ms - (iso_ms(last_beat) + round(TTL * 1000))) <= 2, (expires_ms, last_beat)

        give_up = killed_at + TTL + 10.0  # only a give-up bound: the record expires by kill + TTL
        conflicts_sent: list[float] = []
        while lease is None:
            sent = time.monotonic()
            try:
                lease = contender.claim(EXCHANGE, "Contender")
            except ClaimConflictError:
                conflicts_sent.append(sent)
                assert time.monotonic() < give_up, "the killed owner's record never expired"
                time.sleep(0.05)
        claimed_at = time.monotonic()

        assert claimed_at >= expiry_floor, (
            f"claimed {expiry_floor - claimed_at:.3f} s before the killed owner's record could expire"
        )
        assert all(t < expiry_ceiling for t in conflicts_sent), (
            f"a claim sent {max(conflicts_sent) - expiry_ceiling:.3f} s after the record's expiry still conflicted"
        )
        assert lease.fencing_token > claimed["fencing_token"]

        log = list(reversed(contender.activity(EXCHANGE)))  # oldest first
        claims = [(e.fencing_token, e.instance_id, e.how) for e in log if e.event == "claim"]
        assert claims == [
            (claimed["fencing_token"], claimed["instance_id"], "new"),
            (lease.fencing_token, contender.instance_id, "new"),
        ]
        assert log[-1].event == "claim"
        assert [e.to_state for e in log if e.event == "state_transition"] == ["starting", "warming", "active"]
        assert not any(e.event in ("deregister", "force_release") for e in log)
        status = contender.get(EXCHANGE)
        assert status is not None
        assert status.fencing_token == lease.fencing_token
        assert status.instance_id == contender.instance_id
    finally:
        if lease is not None:
            lease.release()
        contender.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sigstopped_owner_resumed_after_takeover_stands_down_without_writing(
    mode: str, client: redis.Redis, admin: redis.Redis, namespace: str, start_owner: Callable[[str], OwnerProcess]
) -> None:
    """P3: an owner frozen (SIGSTOP) for longer than its TTL loses the record to a contender;
    after SIGCONT it must not act: its ``on_lost`` fires once (reason "taken" or "deadline")
    before it acts, its transition and other owner operations are refused with LeaseLostError,
    and nothing it does (heartbeat, transition, release) changes the contender's record (its
    absolute expiry included) or the log.

    Timing: how soon a resumed process runs depends on the scheduler; the test waits for its
    reports (bounded only to give up) and checks their order, not their delay."""
    keys = Keys(namespace, EXCHANGE)
    owner = start_owner(mode)
    claimed = owner.wait_for("claimed", timeout=30)
    owner.wait_for("ready", timeout=10)
    contender = Registry(client, namespace=namespace, **QUIET)
    lease: Lease | None = None
    try:
        assert claim_conflict(contender).holder is not None

        stopped_at = time.monotonic()
        os.kill(owner.pid, signal.SIGSTOP)
        # The frozen owner cannot renew: its record expires by stopped_at + TTL and the contender's
        # claim then succeeds (polled; a record that never expired would make it give up).
        time.sleep(max(0.0, stopped_at + TTL - time.monotonic()))
        give_up = stopped_at + TTL + 10.0
        while lease is None:
            try:
                lease = contender.claim(EXCHANGE, "Contender")
            except ClaimConflictError:
                assert time.monotonic() < give_up, "the frozen owner's record never expired"
                time.sleep(0.05)
        assert lease.fencing_token > claimed["fencing_token"]

        before = admin.hgetall(keys.status)
        expires_before = admin.pexpiretime(keys.status)
        log_before = admin.xrange(keys.log)
        fence_before = admin.get(keys.fence)
        keys_before = sorted(admin.scan_iter(match=f"{namespace}:*"))
        assert before[b"fencingToken"] == str(lease.fencing_token).encode()
        assert before[b"instanceId"] == contender.instance_id.encode()

        resumed_at = time.monotonic()
        os.kill(owner.pid, signal.SIGCONT)
        lost = owner.wait_for("lost", timeout=15.0)
        assert lost["reason"] in ("taken", "deadline")
        assert lost["lost_at"] >= resumed_at - 0.01, "on_lost ran while the owner was frozen"
        assert lost["is_valid"] is False
        # The owner acts only after it has seen the loss (owner_proc.py): every act below is refused.
        refused = owner.wait_for("transition_refused", timeout=10.0)
        assert refused["error"] == "LeaseLostError"
        assert refused["reason"] == lost["reason"]
        released = owner.wait_for("released", timeout=10.0)
        assert released["result"] is False
        done = owner.wait_for("done", timeout=10.0)
        assert done["on_lost_calls"] == 1

        time.sleep(HB + 0.2)  # a heartbeat of the resumed owner's chance to write (load can only hide it)
        owner.drain()
        ops = {e["op"]: e for e in owner.events if "op" in e}
        assert set(ops) == {"transition", "set_symbol_count", "record_error", "heartbeat"}
        for op, report in ops.items():
            assert report["event"] in ("transition_refused", "op_refused"), f"{op}: {report}"
            assert report["reason"] == lost["reason"]
        assert not [e for e in owner.events if e["event"] == "lost_again"]

        after = admin.hgetall(keys.status)
        for field in (b"fencingToken", b"instanceId", b"ownerDigest"):
            assert after.get(field) == before[field], field
        assert after == before, "the resumed owner changed the contender's record"
        assert admin.pexpiretime(keys.status) == expires_before, "the resumed owner re-armed the TTL"
        assert admin.xrange(keys.log) == log_before, "the resumed owner wrote to the activity log"
        assert admin.get(keys.fence) == fence_before == str(lease.fencing_token).encode()
        assert sorted(admin.scan_iter(match=f"{namespace}:*")) == keys_before, "the resumed owner created a key"
        assert lease.is_valid
    finally:
        if lease is not None:
            lease.release()
        contender.close()
