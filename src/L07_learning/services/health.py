"""``/health``'s component block: database, Redis (when configured), outbox lag, worker heartbeats, breakers.

Each component reports ``ok``, ``degraded`` or ``down`` and never raises: a dependency that does not answer within
``PROBE_TIMEOUT_S`` (a stopped Redis, a refused port) is reported, not propagated. The overall status is
``unhealthy`` when the database is down (nothing works without it), ``degraded`` when any component is not ``ok``
(Redis down, outbox events waiting longer than ``OUTBOX_LAG_DEGRADED_S``, a job whose worker stopped beating, an
open breaker or a paused loop policy), else ``healthy``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from ..models._base import utcnow
from ..settings import Settings
from ..store.db import Database
from ..store.repositories import health as rows
from .breakers import ComponentBreakers

PROBE_TIMEOUT_S = 2.0
OUTBOX_LAG_DEGRADED_S = 300.0


async def _timed(check: Awaitable[Any]) -> tuple[Any, float, str | None]:
    started = time.perf_counter()
    try:
        value, error = await asyncio.wait_for(check, timeout=PROBE_TIMEOUT_S), None
    except asyncio.TimeoutError:
        value, error = None, f"no answer within {PROBE_TIMEOUT_S:g} s"
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure as the component's state
        value, error = None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return value, round((time.perf_counter() - started) * 1000, 2), error


async def redis_ping(url: str) -> bool:
    """PING the broker; raises on a refused or broken connection."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


async def _database(db: Database) -> dict[str, Any]:
    ok, ms, error = await _timed(db.ping())
    return {"status": "ok" if ok else "down", "latency_ms": ms, **({"error": error} if error else {})}


async def _redis(url: str) -> dict[str, Any]:
    ok, ms, error = await _timed(redis_ping(url))
    return {"status": "ok" if ok else "degraded", "latency_ms": ms,
            **({"error": error or "PING failed", "effect": "stream consumers retry; outbox Redis sink holds events"}
               if not ok else {})}


async def _stored(db: Database, settings: Settings) -> dict[str, Any]:
    """Outbox lag, heartbeats and breakers: what the database holds (skipped when it is down)."""
    now = utcnow()
    async with db.session() as session:
        pending, oldest = await rows.outbox_lag(session)
        jobs = await rows.job_heartbeats(session)
        leases = await rows.leases(session)
        paused = await rows.paused_policies(session)
    lag = (now - oldest).total_seconds() if oldest else 0.0
    stale_after = settings.worker_stale_after_s
    workers = []
    for job in jobs:
        age = (now - job["heartbeat_at"]).total_seconds() if job["heartbeat_at"] else None
        workers.append({**job, "heartbeat_at": job["heartbeat_at"].isoformat() if job["heartbeat_at"] else None,
                        "age_s": round(age, 1) if age is not None else None,
                        "stale": age is None or age > stale_after})
    breakers = await ComponentBreakers(db).status()
    return {
        "outbox": {"status": "degraded" if lag > OUTBOX_LAG_DEGRADED_S else "ok", "pending": pending,
                   "oldest_pending_age_s": round(lag, 1)},
        "workers": {"status": "degraded" if any(w["stale"] for w in workers) else "ok", "jobs": workers,
                    "stale_after_s": stale_after,
                    "leases": [{**lease, "expires_at": lease["expires_at"].isoformat(),
                                "live": lease["expires_at"] > now} for lease in leases]},
        "breakers": {"status": "degraded" if paused or any(b["state"] != "CLOSED" for b in breakers.values()) else "ok",
                     "components": breakers, "paused_policies": paused},
    }


async def component_health(db: Database, settings: Settings) -> dict[str, Any]:
    """The ``/health`` body (JSON-ready)."""
    components: dict[str, Any] = {"database": await _database(db)}
    if settings.redis_url:
        components["redis"] = await _redis(settings.redis_url)
    if components["database"]["status"] == "ok":
        stored, ms, error = await _timed(_stored(db, settings))
        if stored is not None:
            components.update(stored)
        else:
            components["database"] = {"status": "degraded", "latency_ms": ms, "error": error}
    states = [c["status"] for c in components.values()]
    status = "unhealthy" if components["database"]["status"] == "down" else \
        "degraded" if any(s != "ok" for s in states) else "healthy"
    breakers = components.get("breakers", {}).get("components", {})
    worst = "OPEN" if any(b["state"] == "OPEN" for b in breakers.values()) else \
        "HALF_OPEN" if any(b["state"] == "HALF_OPEN" for b in breakers.values()) else "CLOSED"
    return {"status": status, "timestamp": utcnow().isoformat(), "components": components,
            "circuit_breaker": {"state": worst,
                                "failures_detected": sum(b["consecutive_failures"] for b in breakers.values())}}
