"""A running ``livermore serve`` (the installed console script) on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

LIVERMORE = Path(sys.executable).with_name("livermore")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """``serve(url, namespace, *more_args)`` starts ``livermore serve`` and answers its base URL."""
    if not LIVERMORE.exists():
        message = "the livermore console script is not installed (pip install -e '.[test]', as make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    procs: list[subprocess.Popen[str]] = []

    def start(url: str, namespace: str, *args: str) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [str(LIVERMORE), "--url", url, "--namespace", namespace, "serve", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"livermore serve exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        pytest.fail("livermore serve did not listen within 20 s")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert "Traceback" not in err, err
