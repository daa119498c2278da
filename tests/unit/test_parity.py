"""The sync and asyncio drivers offer the same public surface (SPEC §3: "sync and asyncio, same names").

For Registry/AsyncRegistry and Lease/AsyncLease: the same public names, each of the same kind
(property, classmethod, method), methods with the same parameter names, kinds and defaults, and
methods that are plain on the sync side and coroutine functions on the async side.
"""

from __future__ import annotations

import inspect

import pytest

from pylivermore import AsyncLease, AsyncRegistry, Lease, Registry

PAIRS = [(Registry, AsyncRegistry), (Lease, AsyncLease)]
PAIR_IDS = ["Registry", "Lease"]

#: Public members that are allowed to differ between the two sides, with the reason. None so far:
#: ``from_url`` is a (synchronous) classmethod on both sides and properties are plain on both,
#: which the kind check below already covers.
EXCEPTIONS: dict[str, str] = {
    "guard": "asyncio only: it cancels the task running the block on loss; threads cannot be cancelled, "
    "so sync code calls ensure_held() between steps",
}

#: Methods that never do I/O, so they are plain functions on both sides.
NO_IO = {"ensure_held"}

#: Members the surface must have (guards against comparing two empty sets).
REQUIRED = {
    Registry: {"claim", "get", "instances", "activity", "force_release", "close", "from_url", "client", "instance_id"},
    Lease: {
        "exchange_id",
        "exchange_name",
        "fencing_token",
        "state",
        "is_valid",
        "lost_reason",
        "ensure_held",
        "transition",
        "set_symbol_count",
        "set_admin",
        "set_address",
        "record_error",
        "status",
        "heartbeat",
        "release",
    },
}


def public_names(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_")} - set(EXCEPTIONS)


def kind(cls: type, name: str) -> str:
    member = inspect.getattr_static(cls, name)
    if isinstance(member, property):
        return "property"
    if isinstance(member, classmethod):
        return "classmethod"
    if isinstance(member, staticmethod):
        return "staticmethod"
    if inspect.isfunction(member):
        return "method"
    return type(member).__name__


def shape(func: object) -> list[tuple[str, inspect._ParameterKind, object]]:
    """Parameter names, kinds and defaults (annotations differ by design: redis.Redis vs redis.asyncio.Redis)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]  # type: ignore[arg-type]


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_same_public_names(sync_cls: type, async_cls: type) -> None:
    """Both sides expose exactly the same public names (minus the listed exceptions)."""
    assert REQUIRED[sync_cls] <= public_names(sync_cls)
    assert public_names(sync_cls) == public_names(async_cls)


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_same_member_kinds(sync_cls: type, async_cls: type) -> None:
    """A property on one side is a property on the other; likewise classmethods and methods."""
    for name in sorted(public_names(sync_cls)):
        assert kind(sync_cls, name) == kind(async_cls, name), name


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_same_signatures(sync_cls: type, async_cls: type) -> None:
    """Every public method and the constructor take the same parameters (names, kinds, defaults)."""
    names = [n for n in sorted(public_names(sync_cls)) if kind(sync_cls, n) != "property"]
    assert names
    for name in [*names, "__init__"]:
        assert shape(getattr(sync_cls, name)) == shape(getattr(async_cls, name)), name


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_async_methods_are_coroutines(sync_cls: type, async_cls: type) -> None:
    """Methods are plain on the sync side and coroutine functions on the async side; classmethods
    (from_url builds a registry without I/O) are plain on both."""
    for name in sorted(public_names(sync_cls)):
        k = kind(sync_cls, name)
        if k == "property":
            continue
        sync_member, async_member = getattr(sync_cls, name), getattr(async_cls, name)
        assert not inspect.iscoroutinefunction(sync_member), name
        if k == "classmethod" or name in NO_IO:
            assert not inspect.iscoroutinefunction(async_member), name
        else:
            assert inspect.iscoroutinefunction(async_member), name


def test_context_manager_protocols() -> None:
    """Lease is a `with` context manager; AsyncLease is an `async with` one, with the same exit parameters."""
    assert not inspect.iscoroutinefunction(Lease.__enter__)
    assert not inspect.iscoroutinefunction(Lease.__exit__)
    assert inspect.iscoroutinefunction(AsyncLease.__aenter__)
    assert inspect.iscoroutinefunction(AsyncLease.__aexit__)
    assert shape(Lease.__exit__) == shape(AsyncLease.__aexit__)


@pytest.mark.parametrize(("sync_cls", "async_cls"), PAIRS, ids=PAIR_IDS)
def test_public_methods_documented_alike(sync_cls: type, async_cls: type) -> None:
    """A public method documented on one side is documented on the other."""
    for name in sorted(public_names(sync_cls)):
        sync_doc = inspect.getdoc(getattr(sync_cls, name)) if kind(sync_cls, name) != "property" else None
        async_doc = inspect.getdoc(getattr(async_cls, name)) if kind(async_cls, name) != "property" else None
        assert bool(sync_doc) == bool(async_doc), name
