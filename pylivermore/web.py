"""``livermore serve``: a read-only status page, its JSON API, live updates and Prometheus metrics.

Routes (``pip install 'pylivermore[web]'``: Starlette, uvicorn, sse-starlette, prometheus-client):

- ``GET /``: the page. Every instance with its state (the seed's six, and the legacy view), heartbeat
  age, a TTL bar, fencing token, host, instance and symbol count; a click shows its activity log.
  It updates itself from ``/events`` without reloading.
- ``GET /api/instances``: the live records as JSON (the seed's documents plus ``legacyState``,
  ``heartbeatAgeSeconds``, ``ttlSeconds``).
- ``GET /api/log/{id}``: an instance's activity log, newest first.
- ``GET /events``: Server-Sent Events: an ``instances`` event with the whole list at once and then
  whenever a known resource's activity log gets an entry (``XREAD BLOCK`` on the logs) or at the
  latest every *refresh* seconds (ages and TTLs move; new resources appear). On a Redis Cluster
  (one ``XREAD`` may name keys of one slot only) every *refresh* seconds.
- ``GET /metrics``: the Prometheus text format: per instance its state, heartbeat age, TTL left and
  fencing token; instances by state.

Everything here only reads (``SCAN``, ``HGETALL``, ``PTTL``, ``TIME``, ``XREVRANGE``, ``XREAD``): a
user with :func:`pylivermore.acl.dashboard_rules` (plus ``xread``) can serve it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aredis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ._async import AsyncRegistry
from ._keys import Keys, check_id
from ._view import SEED_STATES, Row, document, rows_from, ttl_keys

PAGE = Path(__file__).with_name("status_page.html")
logger = logging.getLogger("pylivermore.web")
#: The commands the status page sends: the dashboard's reads, and XREAD to wake on activity.
WEB_COMMANDS = ("xread",)


class StatusReader:
    """The page's reads, on one asyncio client (read-only)."""

    def __init__(self, client: aredis.Redis | RedisCluster, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.registry = AsyncRegistry(client, namespace=namespace)  # type: ignore[arg-type]
        # One XREAD may only name keys of one slot on a cluster: there the page refreshes on its timer.
        self.follows_logs = not isinstance(client, RedisCluster)

    async def rows(self) -> list[Row]:
        statuses = await self.registry.instances()
        pipe = self.client.pipeline(transaction=False)
        for key in ttl_keys(self.namespace, statuses):
            pipe.pttl(key)
        pttls = await pipe.execute()
        return rows_from(statuses, pttls, await self.client.time())

    async def documents(self) -> list[dict[str, Any]]:
        return [document(row) for row in await self.rows()]

    async def newest_ids(self, wire_ids: Iterable[str]) -> dict[str, str]:
        """The id of each resource's newest log entry (``0-0`` for an empty or missing log)."""
        wire_ids = list(wire_ids)
        if not wire_ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for wire_id in wire_ids:
            pipe.xrevrange(Keys(self.namespace, wire_id).log, count=1)
        newest = {}
        for wire_id, reply in zip(wire_ids, await pipe.execute(), strict=True):
            last = reply[0][0] if reply else b"0-0"
            newest[wire_id] = last.decode() if isinstance(last, bytes) else str(last)
        return newest

    async def wait_for_activity(self, since: dict[str, str], timeout: float) -> bool:
        """Block up to *timeout* s on the logs of the resources in *since* (id -> the last entry seen);
        True if one got a newer entry (*since* moves on)."""
        logs: dict[Any, Any] = {Keys(self.namespace, wire_id).log: last for wire_id, last in since.items()}
        if not logs or not self.follows_logs:
            await asyncio.sleep(timeout)
            return False
        reply: Any = await self.client.xread(logs, block=max(1, int(timeout * 1000)), count=100)
        for stream, entries in reply or []:
            key = stream.decode() if isinstance(stream, bytes) else stream
            wire_id = key.split("{", 1)[1].rsplit("}", 1)[0]
            last = entries[-1][0]
            since[wire_id] = last.decode() if isinstance(last, bytes) else last
        return bool(reply)


class _Snapshot(Collector):
    """The metric families of one reading (a fresh registry per scrape: no state between scrapes)."""

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "pylivermore_instance_state", "1 for the instance's current state", labels=["exchange_id", "state"]
        )
        info = GaugeMetricFamily(
            "pylivermore_instance_info",
            "The instance's identity (always 1)",
            labels=["exchange_id", "exchange_name", "hostname", "instance_id", "legacy_state"],
        )
        age = GaugeMetricFamily(
            "pylivermore_instance_heartbeat_age_seconds", "Seconds since the last heartbeat", labels=["exchange_id"]
        )
        ttl = GaugeMetricFamily(
            "pylivermore_instance_ttl_seconds", "Seconds before the record expires", labels=["exchange_id"]
        )
        fence = GaugeMetricFamily(
            "pylivermore_instance_fencing_token", "The lease's fencing token", labels=["exchange_id"]
        )
        counts = GaugeMetricFamily("pylivermore_instances", "Live instances by state", labels=["state"])
        by_state = dict.fromkeys(SEED_STATES, 0)
        for row in self._rows:
            s, wire_id = row.status, str(row.status.exchange_id)
            current = str(s.connection_state)
            by_state[current] = by_state.get(current, 0) + 1
            state.add_metric([wire_id, current], 1)
            info.add_metric([wire_id, s.exchange_name, s.hostname, s.instance_id, document(row)["legacyState"]], 1)
            if row.heartbeat_age is not None:
                age.add_metric([wire_id], row.heartbeat_age)
            if row.ttl is not None:
                ttl.add_metric([wire_id], row.ttl)
            fence.add_metric([wire_id], float(s.fencing_token))
        for name, count in by_state.items():
            counts.add_metric([name], count)
        return [state, info, age, ttl, fence, counts]


def metrics_text(rows: list[Row]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(rows))
    return generate_latest(registry)


def create_app(client: aredis.Redis | RedisCluster, namespace: str = "exchange", refresh: float = 1.0) -> Starlette:
    """The status page's application on *client* (read-only); *refresh*: the longest pause between
    two ``instances`` events."""
    reader = StatusReader(client, namespace)
    page = PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page.replace("{{namespace}}", namespace))

    async def instances(request: Request) -> JSONResponse:
        return JSONResponse(await reader.documents())

    async def log(request: Request) -> Response:
        try:
            wire_id = check_id(request.path_params["id"])
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        entries = await reader.registry.activity(wire_id, count=50)
        return Response(msgspec.json.encode(entries), media_type="application/json")

    async def events(request: Request) -> EventSourceResponse:
        async def stream() -> AsyncIterator[dict[str, str]]:
            since: dict[str, str] = {}
            while not await request.is_disconnected():
                try:
                    # The newest log entries of the resources already known are read *before* the
                    # listing: whatever is logged after it ends the block below at once. Resources new
                    # in this listing are watched from their newest entry now (or shown at the next refresh).
                    since.update(await reader.newest_ids(list(since)))
                    documents = await reader.documents()
                    current = [str(d["exchangeId"]) for d in documents]
                    since = {wire_id: since[wire_id] for wire_id in current if wire_id in since}
                    since.update(await reader.newest_ids([w for w in current if w not in since]))
                    yield {"event": "instances", "data": json.dumps(documents)}
                    await reader.wait_for_activity(since, refresh)
                except RedisError as exc:  # the page says so and tries again; the stream stays open
                    logger.warning("status page: %s", exc)
                    yield {"event": "failure", "data": json.dumps(f"{type(exc).__name__}: {exc}")}
                    since = {}
                    await asyncio.sleep(refresh)

        return EventSourceResponse(stream())

    async def metrics(request: Request) -> Response:
        return Response(metrics_text(await reader.rows()), media_type=CONTENT_TYPE_LATEST)

    async def unavailable(request: Request, exc: Exception) -> Response:
        logger.warning("status page: %s", exc)
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=503)

    return Starlette(
        exception_handlers={RedisError: unavailable},
        routes=[
            Route("/", index),
            Route("/api/instances", instances),
            Route("/api/log/{id}", log),
            Route("/events", events),
            Route("/metrics", metrics),
        ],
    )


def serve(url: str, namespace: str, host: str, port: int, refresh: float = 1.0, cluster: bool = False) -> None:
    """Run the status page until interrupted (uvicorn)."""
    import uvicorn

    timeout = max(5.0, refresh + 4.0)  # above the longest XREAD BLOCK
    client: aredis.Redis | RedisCluster
    if cluster:
        client = RedisCluster.from_url(url, socket_timeout=timeout)
    else:
        client = aredis.Redis.from_url(url, socket_timeout=timeout)
    uvicorn.run(create_app(client, namespace, refresh), host=host, port=port, log_level="warning")
