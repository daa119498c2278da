"""Address resolvers: how a worker learns the public IP address (and country) it reports.

The seed detected its public IP over the network after registering. Here that is a
pluggable callable, run after the claim, off the caller's path; its failure is logged,
never fatal. The default, :func:`no_address`, sends nothing over the network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple


class Address(NamedTuple):
    """What a resolver reports: an IP address and, when known, an ISO 3166-1 alpha-2 country code."""

    ip: str
    country_code: str | None = None


#: A resolver for :class:`~pylivermore.Registry`: called once after each claim.
Resolver = Callable[[], Address | None]
#: A resolver for :class:`~pylivermore.AsyncRegistry`: a plain resolver (run in a thread) or a coroutine function.
AsyncResolver = Callable[[], Address | None] | Callable[[], Awaitable[Address | None]]


def no_address() -> Address | None:
    """The default resolver: reports nothing and makes no network request."""
    return None


def static_address(ip: str, country_code: str | None = None) -> Resolver:
    """A resolver that always reports the given address (e.g. from configuration)."""
    address = Address(ip, country_code)
    return lambda: address
