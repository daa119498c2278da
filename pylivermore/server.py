"""A throwaway private ``redis-server`` for demos and tests (not for production).

It runs on a free loopback port with persistence off (``--save "" --appendonly no``), in a
temporary directory that is removed on stop. The binary is found in this order:
``$PYLIVERMORE_REDIS_SERVER``, ``redis-server`` then ``valkey-server`` on ``PATH``.
``$PYLIVERMORE_REDIS_ARGS`` adds flags to every server (the test suite uses it to run
everything under least-privilege ACL users, see :mod:`pylivermore.acl`).
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import NamedTuple


def find_server_binary() -> str | None:
    """The redis-server binary to use, or ``None`` if none can be found."""
    explicit = os.environ.get("PYLIVERMORE_REDIS_SERVER")
    if explicit:
        return explicit
    return shutil.which("redis-server") or shutil.which("valkey-server")


def _free_port() -> int:
    # 20000-30000: outside the kernel's ephemeral range, and port+10000 (a cluster bus) stays valid.
    for _ in range(200):
        port = random.randint(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1 between 20000 and 30000")


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class TLSFiles(NamedTuple):
    """PEM files for a TLS-only server: its certificate chain, its key, and the CA that signed it."""

    cert: str
    key: str
    ca: str


def _pong(s: socket.socket) -> bool:
    """True once the server answers commands (an authentication error counts: it is up)."""
    s.sendall(b"PING\r\n")
    reply = s.recv(64)
    return reply.startswith((b"+PONG", b"-NOAUTH", b"-NOPERM"))


class RedisServer:
    """A private ``redis-server`` process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        tls: TLSFiles | None = None,
    ) -> None:
        found = binary or find_server_binary()
        if found is None:
            raise FileNotFoundError(
                "no redis-server found: install it (apt-get install redis-server) or set PYLIVERMORE_REDIS_SERVER"
            )
        self.binary = found
        self.port = port or _free_port()
        self.extra_args = list(extra_args)
        self.tls = tls
        self.version = _version(found)
        self.dir = tempfile.mkdtemp(prefix="pylivermore-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "redis.log")

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def command(self) -> list[str]:
        args = [self.binary, "--bind", "127.0.0.1", "--dir", self.dir]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:  # TLS only: the plaintext port is closed
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert]
            args += ["--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no"]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--hz", "100", "--logfile", self.log_path]
        if self.version >= (7, 0):
            args += ["--enable-debug-command", "local"]
        from_env = shlex.split(os.environ.get("PYLIVERMORE_REDIS_ARGS", ""))
        return [*args, "--repl-diskless-sync-delay", "0", *from_env, *self.extra_args]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                try:
                    with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                        err += "".join(fh.readlines()[-5:])
                except OSError:
                    pass
                if self.process.stderr:
                    self.process.stderr.close()
                self.process = None
                raise RuntimeError(f"redis-server exited with an error: {err.strip()}")
            if self._ping():
                return self
            time.sleep(0.005)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING within {timeout} s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                if self.tls is None:
                    return _pong(raw)
                context = ssl.create_default_context(cafile=self.tls.ca)
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    return _pong(s)
        except OSError:
            return False

    def stop(self, *, kill: bool = True) -> None:
        """Stop the process (SIGKILL by default: nothing is saved anyway)."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Kill and start again on the same port: all data and the script cache are lost."""
        self.stop()
        self.start()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
