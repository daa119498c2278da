"""What a registry tells an observer (``pylivermore.metrics``): claims, conflicts, losses and
heartbeat rounds. Reported from the sans-IO core, so both drivers report the same events."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def claimed(self) -> None:
        """A claim took the resource."""

    def conflict(self) -> None:
        """A claim found another live owner (``ClaimConflictError``, or ``None`` from ``try_claim``)."""

    def lost(self, reason: str) -> None:
        """A lease was lost: ``expired``, ``taken`` or ``deadline`` (not a release)."""

    def heartbeat_round(self, seconds: float) -> None:
        """A background heartbeat round took *seconds* from sending to its replies."""
