"""The scripts are a contract for other languages: a client that is not Python (``redis-cli``,
the C client that ships with Redis) loads them, claims, renews, transitions and releases with
nothing but ``lua/README.md`` (contract v2) in hand, and a Python registry on the same keys sees
exactly that, and the other way round (SPEC §4: "proven by a non-Python client")."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from pylivermore import ClaimConflictError, Registry, State
from pylivermore._scripts import load_scripts
from pylivermore.server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
TTL_MS, RETENTION_MS = "60000", "7776000000"

pytestmark = pytest.mark.timeout(60)


class Cli:
    """``redis-cli`` against one server, as the worker (the server's default user); replies in
    redis-cli's plain output (one element per line when stdout is not a terminal)."""

    def __init__(self, server: RedisServer) -> None:
        binary = shutil.which("redis-cli")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("no redis-cli on PATH (Debian: redis-tools, a dependency of redis-server)")
            pytest.skip("no redis-cli on PATH")
        self.argv = [binary, "-h", "127.0.0.1", "-p", str(server.port)]
        self.sha: dict[str, str] = {}

    def __call__(self, *words: str) -> list[str]:
        done = subprocess.run([*self.argv, *words], capture_output=True, text=True, timeout=10, check=True)
        assert "ERR" not in done.stdout, done.stdout
        return done.stdout.splitlines()

    def load(self, name: str) -> None:
        """SCRIPT LOAD of lua/<name>-<n>.lua, read from the repository as another service would."""
        spec = load_scripts()[name]
        (sha,) = self("SCRIPT", "LOAD", (ROOT / "lua" / spec.filename).read_text(encoding="utf-8"))
        self.sha[name] = sha

    def evalsha(self, name: str, keys: list[str], *args: str) -> list[str]:
        return self("EVALSHA", self.sha[name], str(len(keys)), *keys, *args)


@pytest.fixture
def cli(redis_server: RedisServer) -> Cli:
    cli = Cli(redis_server)
    for name in ("claim", "heartbeat", "transition", "deregister"):
        cli.load(name)
    return cli


def test_script_load_gives_the_sha_the_package_uses(cli: Cli) -> None:
    """The SHA1 that redis-cli gets from SCRIPT LOAD of each file is the one the Python package sends."""
    for name, sha in cli.sha.items():
        assert sha == load_scripts()[name].sha1, name


def test_the_readme_example_runs_as_written(fresh_server: RedisServer) -> None:
    """The redis-cli example of lua/README.md, run by a shell as written (redis-cli pointed at this
    test's own server), claims: its reply is the one the README shows, with a fencing token of
    the server's clock."""
    readme = (ROOT / "lua" / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Example (redis-cli)", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "no sh block under 'Example (redis-cli)'"
    example = match.group(1)
    shown = re.findall(r'\d\) "([^"]*)"', example)
    Cli(fresh_server)  # skips (or fails on CI) without redis-cli
    shell = f'redis-cli() {{ command redis-cli -h 127.0.0.1 -p {fresh_server.port} "$@"; }}\nset -e\n{example}'
    done = subprocess.run(["bash", "-c", shell], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    reply = done.stdout.splitlines()
    assert "ERR" not in done.stdout, done.stdout
    assert [reply[0], reply[2]] == [shown[0], shown[2]] == ["CLAIMED", "new"]
    assert re.fullmatch(r"[1-9][0-9]{15}", reply[1]), reply


def test_a_redis_cli_owner_and_a_python_registry_share_one_resource(
    cli: Cli, client: redis.Redis, namespace: str
) -> None:
    """redis-cli claims (the call of lua/README.md's example: default table, 90-day retention),
    renews, walks idle -> starting -> warming -> active with seq 1, 2, 3 (a resent seq is
    REPLAYED) and deregisters with its fencing token; the Python registry reads each step, is
    refused while redis-cli holds the resource (with the holder's identity and TTL), claims after
    the release with a higher fencing token, and then redis-cli is refused with the Python
    holder's public fields in the same reply, while its retried release still answers REPLAYED."""
    registry = Registry(client, namespace=namespace, hostname="py-host", instance_id="py-worker")
    keys = [f"{namespace}:{{7}}:status", f"{namespace}:{{7}}:log", f"{namespace}:{{7}}:fence"]
    token = secrets.token_hex(16)
    try:
        word, fencing, how = cli.evalsha(
            "claim", keys, token, TTL_MS, "7", "Kraken", "cli-host", "cli-worker", "0", RETENTION_MS, ""
        )
        assert (word, how) == ("CLAIMED", "new")

        status = registry.get(7)
        assert status is not None
        assert (status.hostname, status.instance_id, status.fencing_token) == ("cli-host", "cli-worker", int(fencing))
        assert status.connection_state is State.IDLE
        with pytest.raises(ClaimConflictError) as conflict:
            registry.claim(7, "Kraken")
        assert conflict.value.holder is not None
        assert conflict.value.holder.instance_id == "cli-worker"
        assert 0 < conflict.value.ttl <= 60

        assert cli.evalsha("heartbeat", keys[:1], token, TTL_MS)[0] == "RENEWED"
        for seq, to in enumerate(("starting", "warming", "active"), start=1):
            reply = cli.evalsha("transition", keys[:2], token, str(seq), to, "")
            assert reply[:2] == ["OK", to]
            status = registry.get(7)
            assert status is not None
            assert status.connection_state.value == to
        assert status.connected_at is not None  # entering active set it, as for a Python owner
        # a step outside the table is refused, whoever asks
        bad = cli.evalsha("transition", keys[:2], token, "4", "idle", "")
        assert bad == ["BAD_TRANSITION", "active"]
        # a retry of an applied call (its reply lost) is never applied twice
        assert cli.evalsha("transition", keys[:2], token, "2", "warming", "") == ["REPLAYED", "3", "active"]

        assert cli.evalsha("deregister", keys[:2], token, fencing) == ["RELEASED", "active"]
        assert cli.evalsha("deregister", keys[:2], token, fencing) == ["REPLAYED", "active"]
        assert registry.get(7) is None
        events = [(e.event, e.to_state) for e in reversed(registry.activity(7))]
        assert events == [
            ("claim", None),
            ("state_transition", "starting"),
            ("state_transition", "warming"),
            ("state_transition", "active"),
            ("deregister", None),
        ]

        lease = registry.claim(7, "Kraken")
        assert lease.fencing_token > int(fencing)
        refused = cli.evalsha(
            "claim", keys, secrets.token_hex(16), TTL_MS, "7", "Kraken", "cli-host", "cli-worker", "0", RETENTION_MS, ""
        )
        assert refused[0] == "CONFLICT"
        assert 0 < int(refused[1]) <= 45000  # the Python lease's PTTL (default TTL 45 s)
        holder = dict(zip(refused[2::2], refused[3::2], strict=True))
        assert (holder["instanceId"], holder["hostname"]) == ("py-worker", "py-host")
        assert holder["fencingToken"] == str(lease.fencing_token)
        assert holder["contract"] == "2"
        assert not {"ownerDigest", "seq", "retentionMs"} & set(holder)
        # the redis-cli owner's retried release, after the Python claim: still REPLAYED, not TAKEN
        assert cli.evalsha("deregister", keys[:2], token, fencing) == ["REPLAYED", "active"]
        # and the Python owner's heartbeat, from its side, still finds the lease its own
        lease.heartbeat()
        assert lease.is_valid
        assert lease.release() is True
    finally:
        registry.close()
