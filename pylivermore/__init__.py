"""pylivermore: a Redis-native instance registry.

Exactly one live owner per resource, kept alive by heartbeats, walking a validated
lifecycle, with every read-modify-write done by one atomic Lua script.
"""

from ._async import AsyncLease, AsyncRegistry
from ._states import TRANSITIONS, State, to_legacy_state
from ._sync import Lease, Registry
from .errors import (
    ClaimConflictError,
    CorruptStatusError,
    InvalidTransitionError,
    LeaseLostError,
    LivermoreError,
    NotReplicatedError,
    ScriptContractError,
)
from .models import ActivityEntry, InstanceStatus
from .resolver import Address, no_address, static_address

__version__ = "0.1.0"

__all__ = [
    "TRANSITIONS",
    "ActivityEntry",
    "Address",
    "AsyncLease",
    "AsyncRegistry",
    "ClaimConflictError",
    "CorruptStatusError",
    "InstanceStatus",
    "InvalidTransitionError",
    "Lease",
    "LeaseLostError",
    "LivermoreError",
    "NotReplicatedError",
    "Registry",
    "ScriptContractError",
    "State",
    "__version__",
    "no_address",
    "static_address",
    "to_legacy_state",
]
