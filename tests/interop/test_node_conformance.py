"""The conformance vectors (lua/conformance/*.json) replayed from a second language: Node.js with
ioredis (tests/node/conformance.mjs), over EVALSHA and over FCALL, against a private server; and the
Node runner's own proof that it can fail: deliberately wrong vectors must fail it.

Needs ``node`` on PATH and ``npm ci --prefix tests/node`` (``make node-deps``); without them the
tests skip, unless ``PYLIVERMORE_REQUIRE_NODE=1`` (CI), where they fail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pylivermore.server import RedisServer
from tests.conftest import ACL_MODE, ADMIN_PASSWORD, ADMIN_USER

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
VECTORS = sorted((ROOT / "lua" / "conformance").glob("*.json"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def require_node() -> str:
    """The node binary; skips (fails with PYLIVERMORE_REQUIRE_NODE=1) when node or the Node
    dependencies are missing."""
    node = shutil.which("node")
    if node is None:
        missing = "no node on PATH (Debian: apt-get install nodejs npm)"
    elif not (NODE_DIR / "node_modules" / "ioredis" / "package.json").is_file():
        missing = "tests/node/node_modules is missing: run `npm ci --prefix tests/node` (make node-deps)"
    else:
        return node
    if os.environ.get("PYLIVERMORE_REQUIRE_NODE") == "1":
        pytest.fail(f"PYLIVERMORE_REQUIRE_NODE=1 but {missing}")
    pytest.skip(missing)


def admin_url(server: RedisServer) -> str:
    """The URL of the all-rights user the fixtures create (the runner sends FLUSHDB, FUNCTION LOAD
    and raw reads that the least-privilege worker may not)."""
    if not ACL_MODE:
        return server.url
    return f"redis://{ADMIN_USER}:{ADMIN_PASSWORD}@127.0.0.1:{server.port}/0"


def run_conformance(
    node: str, server: RedisServer, transport: str, *files: Path
) -> tuple[int, list[str], dict[str, Any]]:
    """Run conformance.mjs; (exit code, its per-file lines, its closing JSON summary)."""
    done = subprocess.run(
        [
            node,
            str(NODE_DIR / "conformance.mjs"),
            "--url",
            admin_url(server),
            "--transport",
            transport,
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert lines, f"no output (exit {done.returncode}); stderr:\n{done.stderr}"
    try:
        summary = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"no JSON summary (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    print(done.stdout, done.stderr, sep="\n")
    return done.returncode, lines[:-1], summary


def skip_fcall_before_7(server: RedisServer, transport: str) -> None:
    if transport == "fcall" and server.version < (7, 0):
        pytest.skip(f"FCALL needs Redis 7.0; this server is {server.release}")


@pytest.mark.parametrize("transport", ["evalsha", "fcall"])
def test_every_vector_passes_from_node(
    fresh_server: RedisServer, transport: str, report: Callable[[str], None]
) -> None:
    node = require_node()
    skip_fcall_before_7(fresh_server, transport)
    assert VECTORS, "no lua/conformance/*.json"
    code, lines, summary = run_conformance(node, fresh_server, transport)
    failed = [line for line in lines if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)
    assert code == 0, "\n".join(lines)
    assert summary["files"] == len(VECTORS)
    assert summary["failed"] == 0
    assert summary["steps"] > 0
    assert summary["calls"] > 0
    assert summary["words"], summary
    assert len([line for line in lines if line.startswith("PASS")]) == len(VECTORS)
    report(
        f"conformance from Node.js (ioredis) over {transport}: {summary['files']} files, {summary['steps']} steps, "
        f"{summary['calls']} calls, reply words {sorted(summary['words'])}, {summary['failed']} failed"
    )


# -- the runner fails on wrong vectors ----------------------------------------------------------

K = ["t:{1}:status", "t:{1}:log", "t:{1}:fence"]
TOKEN = "0123456789abcdef0123456789abcdef"
CLAIM_ARGS = [TOKEN, "45000", "1", "Coinbase", "host-a", "host-a:1", "0", "86400000", ""]


def _vector(*steps: dict[str, Any]) -> dict[str, Any]:
    claim = {"call": "claim", "keys": K, "args": CLAIM_ARGS, "reply": ["CLAIMED", {"$": "capture", "as": "f"}, "new"]}
    return {"name": "node-runner-self-test", "description": "written by the test", "steps": [claim, *steps]}


#: A vector that is right: the control for the wrong ones below (each differs in one place).
RIGHT = _vector(
    {"call": "heartbeat", "keys": K[:1], "args": [TOKEN, "45000"], "reply": ["RENEWED", {"$": "iso"}]},
    {"hash": K[0], "fields": {"exchangeName": "Coinbase", "fencingToken": {"$": "same", "as": "f"}, "ipAddress": None}},
    {"log": K[1], "entries": [{"event": "claim", "how": "new", "fencingToken": {"$": "same", "as": "f"}}]},
    {"key": K[2], "type": "string"},
    {"redis": ["GET", K[2]], "reply": {"$": "same", "as": "f"}},
)
WRONG = {
    "reply word": _vector({"call": "heartbeat", "keys": K[:1], "args": [TOKEN, "45000"], "reply": ["EXPIRED"]}),
    "one byte": _vector({"hash": K[0], "fields": {"exchangeName": "Coinbasé"}}),
    "absent field": _vector({"hash": K[0], "fields": {"hostname": None}}),
    "exact hash": _vector({"hash": K[0], "fields": {"exchangeName": "Coinbase"}, "exact": True}),
    "integer for a string": _vector({"redis": ["GET", K[2]], "reply": 1}),
    "log length": _vector({"log": K[1], "entries": []}),
    "key type": _vector({"key": K[0], "type": "string"}),
    "expected error": _vector({"call": "heartbeat", "keys": K[:1], "args": [TOKEN, "45000"], "error": "bad-args"}),
    "missing capture": _vector({"redis": ["GET", "${nope}"]}),
    "not greater": _vector({"redis": ["GET", K[2]], "reply": {"$": "gt", "than": "f"}}),
}


@pytest.mark.parametrize("transport", ["evalsha", "fcall"])
def test_node_runner_fails_on_wrong_vectors(fresh_server: RedisServer, transport: str, tmp_path: Path) -> None:
    node = require_node()
    skip_fcall_before_7(fresh_server, transport)
    right = tmp_path / "right.json"
    right.write_text(json.dumps(RIGHT))
    files = [right]
    for i, vector in enumerate(WRONG.values()):
        files.append(tmp_path / f"wrong-{i:02d}.json")
        files[-1].write_text(json.dumps(vector))
    code, lines, summary = run_conformance(node, fresh_server, transport, *files)
    assert code == 1
    assert summary["files"] == len(files)
    assert summary["failed"] == len(WRONG), lines
    assert lines[0].startswith("PASS"), lines[0]
    assert "right.json" in lines[0], lines[0]
    for line, what in zip(lines[1:], WRONG, strict=True):
        assert line.startswith("FAIL"), f"the vector with a wrong {what} passed: {line}"
