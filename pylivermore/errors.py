"""Every exception pylivermore raises on purpose; all derive from :class:`LivermoreError`.

Bad arguments raise plain ``ValueError``/``TypeError`` before any round trip. redis-py's own
errors (``ConnectionError``, ``TimeoutError``, ``ResponseError``) pass through unchanged.
Every class keeps its data in ``args`` so that instances pickle and unpickle intact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import InstanceStatus


class LivermoreError(Exception):
    """Root of every error pylivermore raises on purpose."""


class ClaimConflictError(LivermoreError):
    """The resource is held by another live owner.

    Attributes: ``exchange_id``; ``holder``, the holder's :class:`InstanceStatus` (``None`` if
    its record could not be decoded); ``ttl``, seconds until the holder's lease runs out unless
    it renews it.
    """

    def __init__(
        self,
        exchange_id: int | str,
        holder: InstanceStatus | Sequence[bytes | str] | Mapping[str, str] | None,
        ttl: float,
    ) -> None:
        super().__init__(exchange_id, holder, ttl)
        self.exchange_id = exchange_id
        self._holder = holder
        self.ttl = ttl

    @property
    def holder(self) -> InstanceStatus | None:
        """The holder's record, decoded on first use: under contention most claims conflict,
        and most callers only retry."""
        from .models import InstanceStatus, decode_status, pairs_to_dict

        raw = self._holder
        if raw is None or isinstance(raw, InstanceStatus):
            return raw
        try:
            decoded = decode_status(raw if isinstance(raw, Mapping) else pairs_to_dict(raw), str(self.exchange_id))
        except CorruptStatusError:
            decoded = None
        self._holder = decoded
        return decoded

    def __str__(self) -> str:
        h = self.holder
        if h is None:
            who = "another instance"
        else:
            # Only what the record says: no "IP: unknown" or "connected since never" for what was never reported.
            facts = [f"instance {h.instance_id}", f"state {h.connection_state} since {h.last_state_change}"]
            facts.append(f"claimed at {h.registered_at}")
            if h.connected_at:
                facts.append(f"connected at {h.connected_at}")
            address = f"{h.ip_address} ({h.country_code})" if h.ip_address and h.country_code else h.ip_address
            facts.append(f"address {address}" if address else "no address reported")
            who = f"{h.hostname} ({', '.join(facts)})"
        return (
            f"exchange {self.exchange_id} is already claimed by {who}. Stop that instance first, "
            f"or wait for its TTL to expire ({self.ttl:.1f} s remaining)."
        )


class LeaseLostError(LivermoreError):
    """The lease is no longer ours; owner operations are refused without touching Redis.

    ``reason`` is ``"expired"`` (the record ran out or was removed), ``"taken"`` (another owner
    holds it), ``"deadline"`` (no renewal was acknowledged within ``renew_deadline``: ownership
    can no longer be assumed) or ``"released"`` (this process released it).
    """

    def __init__(self, exchange_id: int | str, reason: str) -> None:
        super().__init__(exchange_id, reason)
        self.exchange_id = exchange_id
        self.reason = reason

    def __str__(self) -> str:
        what = {
            "expired": "its record expired or was removed",
            "taken": "another owner holds it now",
            "deadline": "no heartbeat was acknowledged within the renew deadline",
            "released": "it was released",
        }.get(self.reason, self.reason)
        return (
            f"the lease on exchange {self.exchange_id} is lost ({what}); stop acting as its owner "
            "and claim it again if the work must go on"
        )


class InvalidTransitionError(LivermoreError, ValueError):
    """The state table (or the expected current state) does not allow this transition.

    Attributes: ``exchange_id``, ``current`` (the record's state), ``requested``, ``expected``
    (the compare-and-set state the caller gave, or ``None``) and ``allowed`` (the states the table
    allows from ``current``, in its order).
    """

    def __init__(
        self,
        exchange_id: int | str,
        current: str,
        requested: str,
        expected: str | None = None,
        allowed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(exchange_id, current, requested, expected, allowed)
        self.exchange_id = exchange_id
        self.current = current
        self.requested = requested
        self.expected = expected
        self.allowed = allowed

    def __str__(self) -> str:
        if self.expected is not None and self.expected != self.current:
            return (
                f"exchange {self.exchange_id} is in state {self.current!r}, not the expected "
                f"{self.expected!r}; re-read the status before moving it to {self.requested!r}"
            )
        nexts = ", ".join(repr(state) for state in self.allowed) or "no other state"
        return (
            f"exchange {self.exchange_id} cannot move from {self.current!r} to {self.requested!r}: "
            f"that edge is not in the state table; from {self.current!r} it can move to {nexts}"
        )


class CorruptStatusError(LivermoreError):
    """A key of the resource holds something the scripts never write; nothing was changed.

    Attributes: ``key`` and ``detail``. Repair by hand (inspect, then ``DEL``) or with
    ``force_release`` when the record is a damaged hash.
    """

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(key, detail)
        self.key = key
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.key}: {self.detail}; inspect the key, then delete or repair it"


class NotReplicatedError(LivermoreError):
    """A durable claim (``claim(..., replicas=N)``) was not acknowledged by N replicas in time.

    The claim was released again (or, if that failed too, expires with its TTL), so nobody holds
    the resource through it. Attributes: ``exchange_id``, ``replicas`` (asked for),
    ``acknowledged`` (replicas that confirmed the claim, ``-1`` if unknown) and ``timeout``
    (seconds waited); ``__cause__`` holds the error of a ``WAIT`` that failed.
    """

    def __init__(self, exchange_id: int | str, replicas: int, acknowledged: int, timeout: float) -> None:
        super().__init__(exchange_id, replicas, acknowledged, timeout)
        self.exchange_id = exchange_id
        self.replicas = replicas
        self.acknowledged = acknowledged
        self.timeout = timeout

    def __str__(self) -> str:
        got = "an unknown number" if self.acknowledged < 0 else str(self.acknowledged)
        return (
            f"the claim of exchange {self.exchange_id} reached {got} of {self.replicas} replica(s) within "
            f"{self.timeout:g} s, so it was released: check the replicas (INFO replication on the master), "
            "or claim with fewer replicas or a longer replica_timeout"
        )


class ScriptContractError(LivermoreError):
    """A script's reply does not match its documented contract (script and wrapper out of step)."""

    def __init__(self, script: str, reply: object) -> None:
        super().__init__(script, reply)
        self.script = script
        self.reply = reply

    def __str__(self) -> str:
        return (
            f"unexpected reply from {self.script}: {self.reply!r}; the server runs a script version "
            "this client does not understand"
        )
