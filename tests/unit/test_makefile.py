"""``make demo`` on a fresh checkout installs what the demo needs (the package and its server extra),
not the dev tools (``make -n``: the commands it would run, none run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on PATH")
def test_make_demo_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    commands = proc.stdout
    assert "pip install -q -e '.[server]'" in commands, commands
    assert "pylivermore.demo" in commands, commands
    assert "npm ci" not in commands, commands
    for extra in ("dev", "test", "bench"):
        assert f"[{extra}" not in commands, commands
        assert f",{extra}" not in commands, commands
