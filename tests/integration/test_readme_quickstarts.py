"""The README's quickstarts run as written (against a private server instead of localhost:6379), in a
fresh interpreter in development mode, and leave nothing unclosed: no ``ResourceWarning`` (the async
quickstart once lacked ``asyncio.run(main())`` and closed nothing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pylivermore.server import RedisServer

README = Path(__file__).resolve().parents[2] / "README.md"
#: What the sync quickstart leaves to the reader: the data it writes downstream and where.
SYNC_PRELUDE = "data = b'tick'\nwritten = []\ndef write_downstream(data, fence):\n    written.append((data, fence))\n"


def quickstart(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"## {title}") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block under {title!r}"
    return match.group(1)


@pytest.mark.parametrize(
    ("title", "prelude", "epilogue"),
    [
        ("Quickstart (sync)", SYNC_PRELUDE, "print(written)\n"),
        ("Quickstart (asyncio)", "", ""),
    ],
)
def test_quickstart_runs_and_closes_everything(
    redis_server: RedisServer, title: str, prelude: str, epilogue: str
) -> None:
    """It ran (the sync one wrote downstream with a fencing token, the async one printed the status)
    and closed everything."""
    code = quickstart(title)
    assert "redis://localhost:6379/0" in code
    code = prelude + code.replace("redis://localhost:6379/0", redis_server.url) + epilogue
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ResourceWarning" not in proc.stderr, proc.stderr
    assert "unclosed" not in proc.stderr, proc.stderr
    assert ("[(b'tick', " if epilogue else "exchange_name='Coinbase'") in proc.stdout, proc.stdout
