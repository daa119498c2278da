"""Fixtures of the contract tests: the scripts loaded into the session's private server and
called by raw EVALSHA, resources in the test's namespace, a claim helper and key snapshots."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import pytest
import redis

from pylivermore.server import RedisServer
from tests.conftest import make_client

from .helpers import Owner, Resource, Scripts, Snapshot, claim_args, new_token, take_snapshot


class Claim(Protocol):
    def __call__(self, res: Resource, token: str | None = None, **overrides: str) -> Owner: ...


@pytest.fixture
def scripts(client: redis.Redis) -> Scripts:
    """Every script SCRIPT LOADed into the session server (SHA checked against ScriptSpec.sha1),
    called by the worker (no credentials): the worker rules must suffice for every script."""
    return Scripts(client)


@pytest.fixture
def call(scripts: Scripts) -> Callable[[str, Sequence[str], Sequence[str]], Any]:
    """``call(script_name, keys, args)``: one raw EVALSHA; bulk strings in the reply are decoded."""
    return scripts


@pytest.fixture
def snapshot(admin: redis.Redis) -> Callable[[Resource], Snapshot]:
    """``snapshot(res)``: DUMP of the status, log and fence keys, XLEN of the log, PTTL of the status
    (read by the admin: DUMP and XLEN are no worker commands)."""
    return lambda res: take_snapshot(admin, res)


@pytest.fixture
def make_resource(namespace: str) -> Callable[[], Resource]:
    """A new resource id (r1, r2, ...) in the test's namespace on every call."""
    counter = itertools.count(1)
    return lambda: Resource(namespace, f"r{next(counter)}")


@pytest.fixture
def res(make_resource: Callable[[], Resource]) -> Resource:
    return make_resource()


def claim_with(scripts: Scripts) -> Claim:
    def claim(res: Resource, token: str | None = None, **overrides: str) -> Owner:
        token = token or new_token()
        overrides.setdefault("exchange_id", res.id)
        reply = scripts("claim", res.keys_for("claim"), claim_args(token, **overrides))
        assert reply[0] == "CLAIMED", reply
        return Owner(res, token, int(reply[1]), overrides.get("instance_id", "worker-a"))

    return claim


@pytest.fixture
def claim(scripts: Scripts) -> Claim:
    """``claim(res, token=None, **claim_args_overrides) -> Owner``; asserts the reply is CLAIMED."""
    return claim_with(scripts)


@pytest.fixture
def owner(claim: Claim, res: Resource) -> Owner:
    """*res* claimed by a fresh owner (state idle, TTL 60 s)."""
    return claim(res)


@pytest.fixture
def fresh_client(fresh_server: RedisServer) -> Iterator[redis.Redis]:
    """A client (retries off) of this test's own server, which the test may kill and restart."""
    c = make_client(fresh_server)
    yield c
    c.close()
