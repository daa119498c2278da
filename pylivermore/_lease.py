"""The state of one lease, without I/O: ownership, local validity and heartbeat timing.

Timeline of one lease (monotonic clock of this process; server times never enter here)::

    sent ──► claim acknowledged                 deadline = sent + renew_deadline
     │ heartbeat_interval
     ▼
    sent' ──► RENEWED                            deadline = sent' + renew_deadline
     │ ... a heartbeat fails: retry every heartbeat_interval / 4, each attempt bounded
     ▼
    deadline passes with no acknowledgement  →  lost ("deadline"); on_lost fires once

Counting from the *send* time of the last acknowledged claim or heartbeat is what makes the
deadline safe: the server started the TTL no earlier than that send, and
``renew_deadline < ttl``, so while the local deadline holds, the server's TTL holds too
(with a margin of ``ttl - renew_deadline`` for pauses and clock-rate differences).
A reply that arrives after its own deadline is not a success: the lease is lost.

Once lost, a lease stays lost; every owner operation raises :class:`LeaseLostError`
without a round trip.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence

from . import _protocol as proto
from ._events import Observer
from ._keys import Keys, check_text
from ._states import AnyState, State, parse_state
from .errors import InvalidTransitionError, LeaseLostError, ScriptContractError
from .models import InstanceStatus

logger = logging.getLogger("pylivermore.lease")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # what the contract refuses in a message

_RENEWED = (b"RENEWED", "RENEWED")


class LeaseSettings:
    """What a lease needs from its registry's configuration."""

    __slots__ = ("heartbeat_interval", "observer", "renew_deadline", "retention_ms", "table", "table_wire", "ttl_ms")

    def __init__(
        self,
        ttl_ms: int,
        heartbeat_interval: float,
        renew_deadline: float,
        retention_ms: int,
        table: Mapping[AnyState, frozenset[AnyState]],
        table_wire: str,
    ) -> None:
        self.ttl_ms = ttl_ms
        self.heartbeat_interval = heartbeat_interval
        self.renew_deadline = renew_deadline
        self.retention_ms = retention_ms
        self.table = table
        self.table_wire = table_wire
        self.observer: Observer | None = None  # pylivermore.metrics: told of claims, conflicts, losses, rounds


class LeaseCore:
    """Shared by :class:`~pylivermore.Lease` and :class:`~pylivermore.AsyncLease`."""

    def __init__(
        self,
        settings: LeaseSettings,
        exchange_id: int | str,
        exchange_name: str,
        keys: Keys,
        token: str,
        fencing_token: int,
        sent_at: float,
    ) -> None:
        self.settings = settings
        self.exchange_id = exchange_id
        self.exchange_name = exchange_name
        self.keys = keys
        self.token = token
        self.fencing_token = fencing_token
        self.state: AnyState = State.IDLE
        # The lease's sequence number (contract v2): each call that changes the record sends a higher
        # one, so a retry (the same seq) or a late duplicate (a lower one) is answered REPLAYED and
        # never applied twice.
        self._seq = 0
        self.deadline = sent_at + settings.renew_deadline
        self.next_beat = sent_at + settings.heartbeat_interval
        self.lost_reason: str | None = None
        self.on_lost: Callable[[], object] | None = None
        # True while a transition's outcome is unknown (sent, no reply read): the local state
        # may be stale, so the local pre-check is skipped and Redis decides.
        self._in_flight = False
        self._lock = threading.Lock()

    # -- validity --------------------------------------------------------------------------

    def is_valid(self, now: float) -> bool:
        return self.lost_reason is None and now < self.deadline

    def check(self, now: float) -> None:
        """Raise :class:`LeaseLostError` if the lease is lost or its local deadline has passed."""
        if self.lost_reason is None and now >= self.deadline:
            self.lose("deadline")
        if self.lost_reason is not None:
            raise LeaseLostError(self.exchange_id, self.lost_reason)

    def lose(self, reason: str) -> None:
        """Mark the lease lost (once) and run the on_lost hook; never raises."""
        with self._lock:
            if self.lost_reason is not None:
                return
            self.lost_reason = reason
        if reason != "released":
            logger.warning("lease on exchange %s lost: %s", self.exchange_id, reason)
            if self.settings.observer is not None:
                self.settings.observer.lost(reason)
            if self.on_lost is not None:
                try:
                    self.on_lost()
                except Exception:
                    logger.exception("on_lost callback for exchange %s raised", self.exchange_id)

    def check_record(self, status: InstanceStatus | None) -> None:
        """Compare a record read from Redis with this lease; raise if it is no longer ours."""
        if status is None or status.fencing_token != self.fencing_token:
            reason = "expired" if status is None else "taken"
            self.lose(reason)
            raise LeaseLostError(self.exchange_id, reason)
        self.state = status.connection_state

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _owned(self, script: str, reply: object) -> list[str]:
        w = proto.parse_owned(script, reply, self.keys)
        if w[0] in proto.LOST:
            self.lose(proto.LOST[w[0]])
            raise LeaseLostError(self.exchange_id, proto.LOST[w[0]])
        return w

    # -- heartbeat -------------------------------------------------------------------------

    def heartbeat_call(self, now: float) -> proto.Call:
        self.check(now)
        return proto.heartbeat_call(self.keys, self.token, self.settings.ttl_ms)

    def heartbeat_done(self, reply: object, sent_at: float, now: float) -> None:
        """Apply a heartbeat reply; raise :class:`LeaseLostError` if it shows the lease is gone."""
        if not (type(reply) is list and len(reply) == 2 and reply[0] in _RENEWED):  # the usual answer, fast
            self._owned("heartbeat", reply)
        deadline = sent_at + self.settings.renew_deadline
        if now >= deadline:
            # The acknowledgement came too late to prove anything.
            self.lose("deadline")
            raise LeaseLostError(self.exchange_id, "deadline")
        self.deadline = max(self.deadline, deadline)
        self.next_beat = sent_at + self.settings.heartbeat_interval

    def heartbeat_failed(self, now: float) -> None:
        """A heartbeat got no answer: retry soon, and give up at the deadline."""
        if now >= self.deadline:
            self.lose("deadline")
        self.next_beat = now + self.settings.heartbeat_interval / 4

    def beat_due(self, now: float, ahead: float = 0.0) -> bool:
        """True when a heartbeat should be sent now (or within *ahead* seconds: renewing a little
        early lets one call renew leases that come due close together); marks the lease lost at
        its deadline."""
        if self.lost_reason is None and now >= self.deadline:
            self.lose("deadline")
        return self.lost_reason is None and now + ahead >= self.next_beat

    def wake_at(self) -> float:
        """When the heartbeat loop must next look at this lease (a beat, or the deadline)."""
        return min(self.next_beat, self.deadline)

    # -- transitions -----------------------------------------------------------------------

    def transition_call(self, to: State | str, expected: State | str | None, now: float) -> proto.Call:
        target = parse_state(to)
        want = parse_state(expected) if expected is not None else None
        self.check(now)
        if not self._in_flight:
            current = self.state
            if (want is not None and want != current) or target not in self.settings.table.get(current, ()):
                raise InvalidTransitionError(
                    self.exchange_id, str(current), str(target), want and str(want), self.next_states(current)
                )
        self._in_flight = True
        return proto.transition_call(self.keys, self.token, self.next_seq(), str(target), str(want or ""))

    def next_states(self, state: AnyState) -> tuple[str, ...]:
        """The states the lease's table allows from *state*, in the table's order."""
        return tuple(str(next_state) for next_state in self.settings.table.get(state, ()))

    def transition_done(self, reply: object, call: proto.Call) -> AnyState:
        w = self._owned("transition", reply)
        self._in_flight = False
        try:
            # OK: {OK, state, at}; BAD_TRANSITION: {.., state}; REPLAYED: {.., applied_seq, state}
            state = parse_state(w[2] if w[0] == "REPLAYED" else w[1])
        except (ValueError, IndexError):
            raise ScriptContractError("transition", reply) from None
        self.state = state
        if w[0] == "BAD_TRANSITION":
            expected = call.args[3] or None
            raise InvalidTransitionError(self.exchange_id, str(state), call.args[2], expected, self.next_states(state))
        # REPLAYED: a retry of this very call (redis-py resent it after a timeout) that was applied
        # the first time; the record's state is the answer.
        return state

    # -- fields, errors, release -----------------------------------------------------------

    def update_call(self, group: str, first: str, second: str, now: float) -> proto.Call:
        self.check(now)
        return proto.update_call(self.keys, self.token, self.next_seq(), group, first, second)

    def update_done(self, reply: object) -> None:
        self._owned("update", reply)

    def record_error_call(self, message: str, now: float) -> proto.Call:
        if not isinstance(message, str):
            raise TypeError(f"an error message must be a str, not {type(message).__name__}")
        if not message.strip():
            raise ValueError("an error message must say what went wrong, not be empty or blank")
        # The contract takes UTF-8 without control characters other than tab, LF and CR: an error
        # message is free text (a traceback, bytes from a socket), so it is made to fit, not refused.
        message = _CONTROL.sub("\ufffd", message)
        encoded = message.encode("utf-8")
        if len(encoded) > 4096:
            message = encoded[:4093].decode("utf-8", "ignore") + "..."
        self.check(now)
        return proto.record_error_call(self.keys, self.token, self.next_seq(), message)

    def record_error_done(self, reply: object) -> None:
        self._owned("record_error", reply)

    def release_call(self) -> proto.Call | None:
        """The deregister call, or ``None`` when there is nothing left to release.

        A lease lost only to its local deadline may still hold the record (Redis was just
        slow or unreachable), so it still sends the token-checked deregister.
        """
        if self.lost_reason not in (None, "deadline"):
            return None
        return proto.deregister_call(self.keys, self.token, self.fencing_token)

    def release_done(self, reply: object) -> bool:
        """True when the record was deleted by this release (now, or by an earlier attempt of it
        whose reply was lost: REPLAYED); False when the lease had expired or been taken."""
        w = proto.parse_owned("deregister", reply, self.keys)
        self.lose("released")
        return w[0] in ("RELEASED", "REPLAYED")

    def shutdown_path(self) -> Sequence[AnyState]:
        """The transitions a graceful shutdown makes: to ``stopping`` and ``stopped`` where allowed."""
        table, state = self.settings.table, self.state
        path: list[AnyState] = []
        for step in (State.STOPPING, State.STOPPED):
            if state != State.STOPPED and step in table.get(state, ()):
                path.append(step)
                state = step
        return path


# -- argument encoding of the field updates (validated before any round trip) ------------------


def symbols_args(count: int) -> tuple[str, str, str]:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"a symbol count must be an int, not {type(count).__name__}")
    if not 0 <= count <= 1_000_000_000:
        raise ValueError(f"a symbol count must be from 0 to 1000000000, not {count}")
    return "symbols", str(count), ""


def admin_args(email: str | None, display_name: str | None) -> tuple[str, str, str]:
    for name, value, limit in (("email", email, 320), ("display_name", display_name, 256)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        if value is not None:
            check_text(name, value, 0, limit)
    return "admin", email or "", display_name or ""


def address_args(ip: str | None, country_code: str | None) -> tuple[str, str, str]:
    if ip is not None:
        if not isinstance(ip, str):
            raise TypeError(f"ip must be a str or None, not {type(ip).__name__}")
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise ValueError(f"{ip!r} is not an IPv4 or IPv6 address") from None
        if "%" in ip:
            raise ValueError(f"{ip!r} is a scoped IPv6 address: report the address without its %zone")
    if country_code is not None:
        if (
            not isinstance(country_code, str)
            or len(country_code) != 2
            or not country_code.isascii()
            or not country_code.isalpha()
        ):
            raise ValueError(f"country_code must be two letters (ISO 3166-1 alpha-2), not {country_code!r}")
        country_code = country_code.upper()
    return "address", ip or "", country_code or ""
