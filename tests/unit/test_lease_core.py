"""LeaseCore: ownership, the local validity deadline and heartbeat timing, with a fake clock (plain floats).

Times below are seconds on the lease's monotonic clock; the configuration is the default
(ttl 45, renew_deadline 30, heartbeat_interval 15) unless a test says otherwise.
"""

from __future__ import annotations

import logging

import pytest

from pylivermore import TRANSITIONS, InvalidTransitionError, LeaseLostError, State
from pylivermore import _protocol as proto
from pylivermore._config import RegistryConfig
from pylivermore._lease import LeaseCore, address_args, admin_args, symbols_args
from pylivermore._scripts import load_scripts

TTL, RENEW, BEAT = 45.0, 30.0, 15.0
SENT = 1000.0  # when the claim was sent
RENEWED = [b"RENEWED", b"2026-02-10T12:34:56.789Z"]


def make_core(sent_at: float = SENT, transitions: dict[str, list[str]] | None = None, **timing: float) -> LeaseCore:
    """A lease core as the registry builds it from an acknowledged claim sent at *sent_at*."""
    options = {"ttl": TTL, "renew_deadline": RENEW, "heartbeat_interval": BEAT, **timing}
    config = RegistryConfig(hostname="h", instance_id="i", transitions=transitions, **options)
    pending = config.claim(7, "Binance", reclaim=False)
    return config.claimed(pending, [b"CLAIMED", b"5", b"new"], sent_at)


def at_state(state: State) -> LeaseCore:
    """A core whose last known state is *state* (as after acknowledged transitions)."""
    core = make_core()
    core.state = state
    return core


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


# -- deadline and heartbeat timing ------------------------------------------------------------


def test_deadline_counts_from_claim_send_time() -> None:
    """A new lease is valid until sent + renew_deadline and beats first at sent + heartbeat_interval."""
    core = make_core()
    assert core.fencing_token == 5
    assert core.deadline == SENT + RENEW
    assert core.next_beat == SENT + BEAT
    assert core.wake_at() == SENT + BEAT
    assert core.is_valid(SENT + RENEW - 0.001)
    assert not core.is_valid(SENT + RENEW)
    assert core.lost_reason is None  # is_valid never changes state


def test_heartbeat_call_shape() -> None:
    """heartbeat_call sends the owner token and the TTL in milliseconds to the status key."""
    core = make_core()
    call = core.heartbeat_call(SENT + BEAT)
    assert call.script == "heartbeat"
    assert call.keys == (core.keys.status,)
    assert call.args == (core.token, str(int(TTL * 1000)))


def test_heartbeat_done_extends_deadline_from_its_send_time() -> None:
    """An acknowledged heartbeat moves the deadline to its *send* time + renew_deadline, not its reply time."""
    core = make_core()
    sent = SENT + BEAT
    core.heartbeat_done(RENEWED, sent, sent + 2.5)
    assert core.deadline == sent + RENEW
    assert core.next_beat == sent + BEAT
    assert core.is_valid(sent + RENEW - 0.001)
    assert not core.is_valid(sent + RENEW)


def test_old_heartbeat_reply_never_shortens_deadline() -> None:
    """A reply to an older heartbeat (sent before the newest acknowledged one) does not move the deadline back."""
    core = make_core()
    core.heartbeat_done(RENEWED, SENT + 20, SENT + 21)
    core.heartbeat_done(RENEWED, SENT + 10, SENT + 22)
    assert core.deadline == SENT + 20 + RENEW


def test_late_heartbeat_reply_loses_lease() -> None:
    """A RENEWED that arrives at or after sent + renew_deadline proves nothing: lost 'deadline', and it raises."""
    core = make_core()
    lost = Counter()
    core.on_lost = lost
    sent = SENT + BEAT
    with pytest.raises(LeaseLostError) as info:
        core.heartbeat_done(RENEWED, sent, sent + RENEW)
    assert info.value.reason == "deadline"
    assert core.lost_reason == "deadline"
    assert lost.calls == 1
    assert not core.is_valid(sent + 1)


@pytest.mark.parametrize(("word", "reason"), [([b"EXPIRED"], "expired"), ([b"TAKEN", b"9"], "taken")])
def test_heartbeat_reply_not_ours_loses_lease(word: list[bytes], reason: str) -> None:
    """EXPIRED/TAKEN heartbeat replies mark the lease lost with that reason and raise LeaseLostError."""
    core = make_core()
    with pytest.raises(LeaseLostError) as info:
        core.heartbeat_done(word, SENT + BEAT, SENT + BEAT + 0.1)
    assert info.value.reason == reason
    assert core.lost_reason == reason


def test_heartbeat_failed_schedules_retry() -> None:
    """A failed heartbeat before the deadline is retried after heartbeat_interval / 4; the lease stays valid."""
    core = make_core()
    now = SENT + BEAT + 1
    core.heartbeat_failed(now)
    assert core.lost_reason is None
    assert core.next_beat == now + BEAT / 4
    assert core.wake_at() == min(now + BEAT / 4, SENT + RENEW)


def test_heartbeat_failed_at_deadline_loses_lease() -> None:
    """A heartbeat that fails at or after the deadline marks the lease lost ('deadline') and fires on_lost."""
    core = make_core()
    lost = Counter()
    core.on_lost = lost
    core.heartbeat_failed(SENT + RENEW)
    assert core.lost_reason == "deadline"
    assert lost.calls == 1


def test_wake_at_never_after_deadline() -> None:
    """The heartbeat loop wakes no later than the deadline, even if the next beat is scheduled past it."""
    core = make_core()
    core.heartbeat_failed(SENT + RENEW - 1)  # next beat = deadline - 1 + 3.75
    assert core.wake_at() == core.deadline


def test_check_marks_deadline_loss() -> None:
    """check(now) past the deadline marks the lease lost ('deadline') and raises LeaseLostError."""
    core = make_core()
    core.check(SENT + RENEW - 0.5)  # still fine
    with pytest.raises(LeaseLostError) as info:
        core.check(SENT + RENEW)
    assert info.value.reason == "deadline"
    assert info.value.exchange_id == 7  # an all-digit id is an int, as in InstanceStatus
    assert core.lost_reason == "deadline"


def test_lost_lease_builds_no_calls() -> None:
    """After a loss every owner operation raises LeaseLostError before building a call (no round trip)."""
    core = make_core()
    core.lose("taken")
    now = SENT + 1
    builders = [
        lambda: core.heartbeat_call(now),
        lambda: core.transition_call(State.STARTING, None, now),
        lambda: core.update_call(*symbols_args(3), now),
        lambda: core.record_error_call("boom", now),
    ]
    for build in builders:
        with pytest.raises(LeaseLostError) as info:
            build()
        assert info.value.reason == "taken"


def test_loss_is_final_and_on_lost_fires_once() -> None:
    """The first reason sticks; on_lost runs exactly once however often the loss is observed."""
    core = make_core()
    lost = Counter()
    core.on_lost = lost
    core.lose("expired")
    core.lose("taken")
    core.lose("deadline")
    with pytest.raises(LeaseLostError):
        core.check(SENT + RENEW + 100)
    core.heartbeat_failed(SENT + RENEW + 100)
    assert core.lost_reason == "expired"
    assert lost.calls == 1


def test_on_lost_that_raises_is_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    """An on_lost callback that raises does not propagate; the loss is still recorded and the error logged."""
    core = make_core()

    def explode() -> None:
        raise RuntimeError("callback bug")

    core.on_lost = explode
    with caplog.at_level(logging.ERROR, logger="pylivermore.lease"):
        core.lose("expired")
    assert core.lost_reason == "expired"
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert any(isinstance(e, RuntimeError) and str(e) == "callback bug" for e in logged)


def test_release_does_not_fire_on_lost() -> None:
    """A deliberate release is not a loss: on_lost stays silent, lost_reason becomes 'released'."""
    core = make_core()
    lost = Counter()
    core.on_lost = lost
    assert core.release_done([b"RELEASED", b"idle"]) is True
    assert core.lost_reason == "released"
    assert lost.calls == 0


def test_check_record_compares_fencing_token() -> None:
    """check_record: no record -> lost 'expired'; another token -> lost 'taken'; ours -> adopt its state."""
    from pylivermore import InstanceStatus

    def status(token: int, state: State) -> InstanceStatus:
        return InstanceStatus(
            exchange_id=7,
            exchange_name="Binance",
            hostname="h",
            connection_state=state,
            symbol_count=0,
            last_heartbeat="t",
            last_state_change="t",
            registered_at="t",
            fencing_token=token,
            instance_id="i",
        )

    core = make_core()
    core.check_record(status(core.fencing_token, State.WARMING))
    assert core.state is State.WARMING
    with pytest.raises(LeaseLostError, match="another owner"):
        core.check_record(status(core.fencing_token + 1, State.IDLE))
    assert core.lost_reason == "taken"
    other = make_core()
    with pytest.raises(LeaseLostError):
        other.check_record(None)
    assert other.lost_reason == "expired"


# -- transitions -------------------------------------------------------------------------------


def test_valid_transition_builds_call() -> None:
    """An edge of the table builds a transition call carrying the lease's next seq, target and expected state."""
    core = make_core()
    call = core.transition_call("starting", None, SENT + 1)
    assert call.script == "transition"
    assert call.keys == (core.keys.status, core.keys.log)
    assert call.args == (core.token, "1", "starting", "")
    assert core.transition_done([b"OK", b"starting", b"2026-02-10T12:00:00.000Z"], call) is State.STARTING
    assert core.state is State.STARTING


def test_each_call_that_changes_the_record_takes_a_higher_seq() -> None:
    """Transitions, updates and errors of one lease number their calls 1, 2, 3, ...: a retry resends its own
    seq (answered REPLAYED once applied), a new call never reuses one."""
    core = make_core()
    first = core.transition_call("starting", None, SENT)
    core.transition_done([b"OK", b"starting", b"t"], first)
    update = core.update_call(*symbols_args(3), SENT)
    error = core.record_error_call("boom", SENT)
    second = core.transition_call("warming", "starting", SENT)
    assert [first.args[1], update.args[1], error.args[1], second.args[1]] == ["1", "2", "3", "4"]
    assert second.args[3] == "starting"


def test_replayed_transition_takes_the_records_state() -> None:
    """REPLAYED (the call was applied by an earlier attempt whose reply was lost) is a success whose
    state is the record's."""
    core = make_core()
    call = core.transition_call("starting", None, SENT)
    assert core.transition_done([b"REPLAYED", b"1", b"starting"], call) is State.STARTING
    assert core.state is State.STARTING


@pytest.mark.parametrize("state", list(State))
def test_invalid_transition_fails_locally(state: State) -> None:
    """A target that is not an edge from the known state raises InvalidTransitionError before any call."""
    for target in State:
        if target in TRANSITIONS[state]:
            continue
        core = at_state(state)
        with pytest.raises(InvalidTransitionError) as info:
            core.transition_call(target, None, SENT + 1)
        assert (info.value.current, info.value.requested, info.value.expected) == (state.value, target.value, None)
        assert core.state is state
        # Nothing is in flight: a valid transition afterwards is still checked locally and accepted.
        for ok in TRANSITIONS[state]:
            assert core.transition_call(ok, None, SENT + 1).args[2] == ok.value


def test_expected_state_mismatch_fails_locally() -> None:
    """expected != known state raises InvalidTransitionError carrying the expected state."""
    core = make_core()
    with pytest.raises(InvalidTransitionError) as info:
        core.transition_call("starting", "warming", SENT + 1)
    assert info.value.expected == "warming"
    assert info.value.current == "idle"
    assert "expected" in str(info.value)


@pytest.mark.parametrize(("to", "expected"), [("bogus", None), ("starting", "Idle"), (3, None)])
def test_transition_arguments_are_parsed(to: object, expected: object) -> None:
    """Unknown state names are ValueError/TypeError, never sent."""
    with pytest.raises((ValueError, TypeError)):
        make_core().transition_call(to, expected, SENT + 1)  # type: ignore[arg-type]


def test_bad_transition_reply_adopts_server_state() -> None:
    """BAD_TRANSITION raises InvalidTransitionError with the server's state, which the lease adopts."""
    core = make_core()
    call = core.transition_call("starting", None, SENT)
    with pytest.raises(InvalidTransitionError) as info:
        core.transition_done([b"BAD_TRANSITION", b"warming"], call)
    assert info.value.current == "warming"
    assert info.value.requested == "starting"
    assert core.state is State.WARMING


def test_transition_in_flight_skips_local_check() -> None:
    """While a transition's outcome is unknown, the next one is left to Redis (the local state may be stale)."""
    core = make_core()
    core.transition_call("starting", None, SENT)  # sent, reply never read
    call = core.transition_call("warming", None, SENT)  # idle -> warming is no edge, but the state is unknown
    assert call.args[2] == "warming"


def test_custom_table_is_enforced_locally_and_sent_with_the_claim() -> None:
    """A custom table, with state names of its own, is enforced locally; its wire form goes with the claim
    (the record keeps it), not with each transition."""
    config = RegistryConfig(hostname="h", instance_id="i", transitions={"idle": ["paused"], "paused": ["idle"]})
    pending = config.claim(7, "Binance", reclaim=False)
    assert pending.call.args[-1] == "idle>paused paused>idle"
    core = config.claimed(pending, [b"CLAIMED", b"5", b"new"], SENT)
    with pytest.raises(InvalidTransitionError):
        core.transition_call("starting", None, SENT)
    call = core.transition_call("paused", None, SENT)
    assert call.args == (core.token, "1", "paused", "")
    assert core.transition_done([b"OK", b"paused", b"t"], call) == "paused"
    assert core.state == "paused"
    assert not isinstance(core.state, State)


# -- shutdown and release ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "path"),
    [
        (State.IDLE, []),  # idle -> stopping is no edge: nothing to walk
        (State.STARTING, [State.STOPPING, State.STOPPED]),
        (State.WARMING, [State.STOPPING, State.STOPPED]),
        (State.ACTIVE, [State.STOPPING, State.STOPPED]),
        (State.STOPPING, [State.STOPPED]),
        (State.STOPPED, []),
    ],
)
def test_shutdown_path(state: State, path: list[State]) -> None:
    """Graceful shutdown walks to stopping then stopped, using only edges the table allows from each state."""
    core = at_state(state)
    assert list(core.shutdown_path()) == path
    current = state
    for step in path:
        assert step in TRANSITIONS[current]
        current = step


@pytest.mark.parametrize("reason", [None, "deadline"])
def test_release_call_when_record_may_still_be_ours(reason: str | None) -> None:
    """A live lease, or one lost only to its local deadline, still sends the token-checked deregister."""
    core = make_core()
    if reason:
        core.lose(reason)
    call = core.release_call()
    assert call is not None
    assert call.script == "deregister"
    assert call.args[0] == core.token


@pytest.mark.parametrize("reason", ["expired", "taken", "released"])
def test_release_call_none_when_record_is_not_ours(reason: str) -> None:
    """A lease known to be expired, taken or already released has nothing to deregister."""
    core = make_core()
    core.lose(reason)
    assert core.release_call() is None


@pytest.mark.parametrize(("reply", "deleted"), [([b"RELEASED", b"idle"], True), ([b"EXPIRED"], False)])
def test_release_done(reply: list[bytes], deleted: bool) -> None:
    """release_done reports whether this call deleted the record and marks the lease released either way."""
    core = make_core()
    assert core.release_done(reply) is deleted
    assert core.lost_reason == "released"


# -- record_error ------------------------------------------------------------------------------


def test_record_error_message_rules() -> None:
    """Messages must be str and say something ('' and blanks are refused before any round trip, not
    stored as a made-up text); long ones are cut to the script's 4096-byte cap."""
    core = make_core()
    with pytest.raises(TypeError):
        core.record_error_call(b"boom", SENT)  # type: ignore[arg-type]
    for blank in ("", "   ", "\n\t"):
        with pytest.raises(ValueError, match="must say what went wrong"):
            core.record_error_call(blank, SENT)
    assert core.next_seq() == 1, "a refused message takes no seq"
    long = core.record_error_call("é" * 5000, SENT).args[2]
    assert len(long.encode("utf-8")) <= 4096
    assert long.endswith("...")
    assert long.startswith("é" * 100)


# -- argument encoders ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 120, 1_000_000_000])
def test_symbols_args_accepts(count: int) -> None:
    """Symbol counts 0..1e9 are sent as decimal strings."""
    assert symbols_args(count) == ("symbols", str(count), "")


@pytest.mark.parametrize(("bad", "exc"), [(-1, ValueError), (1_000_000_001, ValueError), (1.5, TypeError)])
def test_symbols_args_rejects(bad: object, exc: type[Exception]) -> None:
    """Out-of-range counts are ValueErrors, non-ints TypeErrors."""
    with pytest.raises(exc):
        symbols_args(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [True, False, "5", None])
def test_symbols_args_rejects_bool_and_str(bad: object) -> None:
    """bool is not a count, nor is a numeric str: TypeError."""
    with pytest.raises(TypeError, match="must be an int"):
        symbols_args(bad)  # type: ignore[arg-type]


def test_admin_args() -> None:
    """None clears a field (sent as ''); over-long values are ValueErrors; non-str TypeErrors."""
    assert admin_args("ops@example.com", "Ops") == ("admin", "ops@example.com", "Ops")
    assert admin_args(None, None) == ("admin", "", "")
    with pytest.raises(ValueError, match="email"):
        admin_args("a" * 321, None)
    with pytest.raises(ValueError, match="display_name"):
        admin_args(None, "é" * 129)  # 258 bytes
    with pytest.raises(TypeError):
        admin_args(5, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ip", "cc", "expected"),
    [
        ("203.0.113.9", "de", ("address", "203.0.113.9", "DE")),
        ("2001:DB8::1", None, ("address", "2001:db8::1", "")),
        (None, "US", ("address", "", "US")),
        (None, None, ("address", "", "")),
    ],
)
def test_address_args_normalises(ip: str | None, cc: str | None, expected: tuple[str, str, str]) -> None:
    """IPs are normalised (compressed, lower case), country codes upper-cased, None sent as ''."""
    assert address_args(ip, cc) == expected


@pytest.mark.parametrize("bad_ip", ["1.2.3.999", "localhost", "", "1.2.3", "203.0.113.9/24"])
def test_address_args_rejects_bad_ip(bad_ip: str) -> None:
    """Something that is not an IPv4/IPv6 address is a ValueError that quotes it."""
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        address_args(bad_ip, None)


@pytest.mark.parametrize("bad_cc", ["D", "DEU", "1A", "D1", "ÄÖ", "", 49])
def test_address_args_rejects_bad_country(bad_cc: object) -> None:
    """Country codes must be two ASCII letters (ISO 3166-1 alpha-2)."""
    with pytest.raises(ValueError, match="two letters"):
        address_args(None, bad_cc)  # type: ignore[arg-type]


def test_address_args_rejects_non_str_ip() -> None:
    """A non-str IP (e.g. an int, which ipaddress would accept) is a TypeError."""
    with pytest.raises(TypeError):
        address_args(3405803785, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("ip", ["fe80::1%eth0", "::ffff:203.0.113.9", "1:2:3:4:5:6:7:8", "0.0.0.0"])
def test_address_args_output_fits_update_script(ip: str) -> None:
    """Whatever address_args accepts satisfies update-1.lua's ARGV[3] rule (0-45 chars of [0-9A-Fa-f.:]),
    so a value Python accepted is never refused inside Redis; otherwise it must be refused up front."""
    assert "0-45 chars of [0-9A-Fa-f.:]" in load_scripts()["update"].source
    try:
        _, sent, _ = address_args(ip, None)
    except ValueError:
        return
    assert len(sent) <= 45
    assert all(c in "0123456789abcdefABCDEF.:" for c in sent), sent


def test_update_call_shape() -> None:
    """update_call sends (token, seq, group, first, second) to the status key only."""
    core = make_core()
    call = core.update_call(*address_args("203.0.113.9", "de"), SENT)
    assert call == proto.Call("update", (core.keys.status,), (core.token, "1", "address", "203.0.113.9", "DE"))
