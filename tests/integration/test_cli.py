"""``livermore``, the installed console script, run as a subprocess against a private server with a
live registry: status (table, JSON, one id), log (table, JSON, --count, --follow), release (whom it
removed, logged with who and why), scripts (--load), doctor, watch; bad input, a missing
permission and a refused connection each give one line on stderr and their exit code, never a
traceback. Exit codes: 0 done, 1 not found, 2 bad input, 3 server error or refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from pylivermore import Registry
from pylivermore._scripts import load_scripts
from pylivermore.acl import dashboard_rules
from pylivermore.server import RedisServer
from tests.topology import ClusterSet

LIVERMORE = Path(sys.executable).with_name("livermore")
LONG = {"ttl": 30.0, "heartbeat_interval": 10.0, "renew_deadline": 20.0}


def livermore(url: str, *args: str, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
    if not LIVERMORE.exists():
        message = "the livermore console script is not installed (pip install -e ., as make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    ns = ["--namespace", namespace] if namespace else []
    proc = subprocess.run(
        [str(LIVERMORE), "--url", url, *ns, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def live(redis_server: RedisServer, namespace: str) -> Iterator[Registry]:
    """A registry holding exchange 1 (starting, 42 symbols) and "kraken" (idle)."""
    with Registry.from_url(redis_server.url, namespace=namespace, **LONG) as registry:
        lease = registry.claim(1, "Coinbase")
        lease.transition("starting")
        lease.set_symbol_count(42)
        registry.claim("kraken", "Kraken")
        yield registry


def test_status_table_and_json(redis_server: RedisServer, namespace: str, live: Registry) -> None:
    table = livermore(redis_server.url, "status", namespace=namespace)
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    for column in ("ID", "NAME", "STATE", "HOST", "INSTANCE", "HEARTBEAT AGE", "TTL LEFT", "FENCING", "SYMBOLS"):
        assert column in header
    by_id = {line.split()[0]: line for line in lines}
    assert set(by_id) == {"1", "kraken"}
    first = live.get(1)
    assert first is not None
    for cell in ("Coinbase", "starting", first.hostname, first.instance_id, str(first.fencing_token), "42"):
        assert cell in by_id["1"], cell
    documents = json.loads(livermore(redis_server.url, "status", "--json", namespace=namespace).stdout)
    assert documents == json.loads(msgspec.json.encode(live.instances()))  # the seed's documents, as a list
    one = livermore(redis_server.url, "status", "1", "--json", namespace=namespace)
    assert [d["exchangeId"] for d in json.loads(one.stdout)] == [1]


def test_status_of_an_id_nobody_holds_is_not_found(redis_server: RedisServer, namespace: str, live: Registry) -> None:
    proc = livermore(redis_server.url, "status", "9", namespace=namespace)
    assert proc.returncode == 1
    assert "no live records for exchange 9" in proc.stdout


def test_log_newest_first_json_and_count(redis_server: RedisServer, namespace: str, live: Registry) -> None:
    proc = livermore(redis_server.url, "log", "1", namespace=namespace)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "state_transition" in lines[0]
    assert "idle -> starting" in lines[0]
    assert "claim" in lines[-1]
    entries = json.loads(livermore(redis_server.url, "log", "1", "--json", "--count", "1", namespace=namespace).stdout)
    assert [e["event"] for e in entries] == ["state_transition"]
    assert livermore(redis_server.url, "log", "404", namespace=namespace).returncode == 1


def test_log_follow_streams_new_entries(redis_server: RedisServer, namespace: str, live: Registry) -> None:
    if not LIVERMORE.exists():
        pytest.skip("the livermore console script is not installed")
    proc = subprocess.Popen(
        [str(LIVERMORE), "--url", redis_server.url, "--namespace", namespace, "log", "kraken", "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal: a shell's background job (CI runs under one) starts with SIGINT ignored,
        # and Python then installs no KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the existing entry: the claim
        assert first["event"] == "claim"
        live.force_release("kraken", "drain", operator="bob")
        released = json.loads(proc.stdout.readline())  # arrives while the command blocks on the log
        assert (released["event"], released["operator"], released["reason"]) == ("force_release", "bob", "drain")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_release_says_whom_it_removed_and_logs_who_and_why(
    redis_server: RedisServer, namespace: str, live: Registry
) -> None:
    holder = live.get("kraken")
    assert holder is not None
    proc = livermore(
        redis_server.url, "release", "kraken", "--reason", "stuck worker", "--operator", "alice", namespace=namespace
    )
    assert proc.returncode == 0, proc.stderr
    assert holder.instance_id in proc.stdout
    assert str(holder.fencing_token) in proc.stdout
    assert live.get("kraken") is None
    entry = live.activity("kraken")[0]
    assert (entry.event, entry.reason, entry.operator) == ("force_release", "stuck worker", "alice")
    again = livermore(redis_server.url, "release", "kraken", "--reason", "again", namespace=namespace)
    assert again.returncode == 1
    assert "not held" in again.stderr


def test_scripts_lists_and_loads(redis_server: RedisServer, admin: redis.Redis) -> None:
    specs = load_scripts()
    proc = livermore(redis_server.url, "scripts")
    assert proc.returncode == 0, proc.stderr
    for spec in specs.values():
        assert f"{spec.filename}" in proc.stdout
        assert spec.sha1 in proc.stdout
    admin.script_flush()
    loaded = livermore(redis_server.url, "scripts", "--load")
    assert loaded.returncode == 0, loaded.stderr
    assert all(admin.script_exists(*[spec.sha1 for spec in specs.values()]))


def test_doctor_reports_each_topic(redis_server: RedisServer) -> None:
    proc = livermore(redis_server.url, "doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the test server: nothing fails
    text = proc.stdout
    for topic in ("permissions", "version", "eviction", "persistence", "layout", "clock"):
        assert topic in text, topic
    assert "WARN  persistence" in text  # the suite's servers run with --save "" --appendonly no
    assert "fix: CONFIG SET appendonly yes" in text


def test_watch_prints_the_table(redis_server: RedisServer, namespace: str, live: Registry) -> None:
    proc = livermore(redis_server.url, "watch", "--rounds", "2", "--interval", "0.05", namespace=namespace)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("livermore watch") == 2
    assert "Coinbase" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "07"], "invalid exchange id '07'"),
        (["log", "a b"], "invalid exchange id 'a b'"),
        (["release", "1"], "the following arguments are required: --reason"),
        (["log", "1", "--count", "0"], "--count must be from 1 to 10000"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["--namespace", "no spaces", "status"], "invalid namespace 'no spaces'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(redis_server: RedisServer, args: list[str], message: str) -> None:
    proc = livermore(redis_server.url, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert proc.stderr.count("livermore") <= 2  # usage + one error line, no traceback


def test_a_refused_connection_is_one_line_and_exit_3() -> None:
    proc = livermore("redis://127.0.0.1:1/0", "status")
    assert proc.returncode == 3
    assert proc.stderr.startswith("livermore: cannot reach the server at redis://127.0.0.1:1/0")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_permission_is_one_line_and_exit_3(
    redis_server: RedisServer, admin: redis.Redis, namespace: str, live: Registry
) -> None:
    """A read-only (dashboard) user may look but not release."""
    user, password = f"viewer-{namespace}", "viewer-secret-password"
    admin.execute_command("ACL", "SETUSER", user, "reset", *dashboard_rules(namespace, password))
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:{password}@", 1)
        assert livermore(url, "status", namespace=namespace).returncode == 0
        proc = livermore(url, "release", "1", "--reason", "x", namespace=namespace)
        assert proc.returncode == 3
        assert proc.stderr.startswith("livermore: the server refused this user")
        assert len(proc.stderr.strip().splitlines()) == 1
        assert live.get(1) is not None
    finally:
        admin.execute_command("ACL", "DELUSER", user)


def test_python_dash_m_pylivermore_is_the_same_command(redis_server: RedisServer) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pylivermore", "--url", redis_server.url, "scripts"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "claim-3.lua" in proc.stdout


def test_on_a_cluster_every_master_is_read(cluster: ClusterSet, namespace: str) -> None:
    """``--url`` of one cluster node: livermore reads the whole cluster (a RedisCluster client), so
    status lists the records of every master, log and release reach the right node, doctor says
    it is a cluster."""
    client = cluster.client()
    try:
        with Registry(client, namespace=namespace, **LONG) as registry:
            ids = list(range(1, 13))  # hash tags {1}..{12}: spread over the three masters
            for exchange_id in ids:
                registry.claim(exchange_id, f"Exchange{exchange_id}")
            masters = {cluster.node_for_key(f"{namespace}:{{{i}}}:status").port for i in ids}
            assert len(masters) == 3, "the ids should land on every master"
            documents = json.loads(livermore(cluster.url, "status", "--json", namespace=namespace).stdout)
            assert sorted(d["exchangeId"] for d in documents) == ids
            table = livermore(cluster.url, "status", namespace=namespace)
            assert table.returncode == 0, table.stderr
            assert len(table.stdout.splitlines()) == 1 + len(ids)
            assert "claim" in livermore(cluster.url, "log", "7", namespace=namespace).stdout
            released = livermore(cluster.url, "release", "7", "--reason", "drain", namespace=namespace)
            assert released.returncode == 0, released.stderr
            assert registry.get(7) is None
            doctor = livermore(cluster.url, "doctor")  # as the worker: CLUSTER INFO is not among its rules
            assert doctor.returncode == 0, doctor.stdout + doctor.stderr
            assert "Redis Cluster" in doctor.stdout, doctor.stdout
    finally:
        client.close()
