"""Liveness and readiness probes (contract §7.1 ``/ready``): the database is queried, the broker pinged."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...models._base import utcnow
from ...services.health import component_health
from ..deps import ContextDep
from ..types import UtcDateTime

router = APIRouter(tags=["health"])

# A probe must answer quickly even when a dependency hangs; the orchestrator retries.
PROBE_TIMEOUT_S = 2.0


class Liveness(BaseModel):
    status: str = Field(examples=["alive"])
    timestamp: UtcDateTime


class Readiness(BaseModel):
    """Contract §7.1: ``ready`` plus one flag per configured dependency (unconfigured ones are omitted)."""

    ready: bool
    dependencies_satisfied: dict[str, bool] = Field(examples=[{"storage": True, "event_stream": True}])
    latency_ms: dict[str, float] = Field(default_factory=dict)
    timestamp: UtcDateTime


class Health(BaseModel):
    """Contract §7.1 ``/health``: overall status and one entry per component (database, redis when configured,
    outbox, workers, breakers), each with its own ``status`` (ok | degraded | down)."""

    status: str = Field(examples=["healthy", "degraded", "unhealthy"])
    timestamp: UtcDateTime
    components: dict[str, dict[str, Any]]
    circuit_breaker: dict[str, Any] = Field(examples=[{"state": "CLOSED", "failures_detected": 0}])


@router.get("/health", name="health.components", response_model=Health,
            responses={503: {"model": Health, "description": "The database is down"}})
async def health(ctx: ContextDep) -> JSONResponse:
    """Every component's state; 200 while the layer works (healthy or degraded), 503 when the database is down."""
    body = Health.model_validate(await component_health(ctx.db, ctx.settings))
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if body.status == "unhealthy" else 200)


@router.get("/health/live", name="health.live", response_model=Liveness)
async def live() -> Liveness:
    """The process is up and serving."""
    return Liveness(status="alive", timestamp=utcnow())


async def _redis_ok(url: str) -> bool:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    try:
        return bool(await client.ping())
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()


async def _timed(check) -> tuple[bool, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    try:
        ok = await asyncio.wait_for(check, timeout=PROBE_TIMEOUT_S)
    except asyncio.TimeoutError:
        ok = False
    return ok, round((time.perf_counter() - started) * 1000, 2)


@router.get(
    "/health/ready",
    name="health.ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is not reachable"}},
)
async def ready(ctx: ContextDep) -> JSONResponse:
    """Ready when the database answers a query and, if ``L07_REDIS_URL`` is set, Redis answers PING."""
    checks = {"storage": ctx.db.ping()}
    if ctx.settings.redis_url:
        checks["event_stream"] = _redis_ok(ctx.settings.redis_url)
    results = dict(zip(checks, await asyncio.gather(*(_timed(c) for c in checks.values()))))
    body = Readiness(
        ready=all(ok for ok, _ in results.values()),
        dependencies_satisfied={k: ok for k, (ok, _) in results.items()},
        latency_ms={k: ms for k, (_, ms) in results.items()},
        timestamp=utcnow(),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)


# The contract's short path for the same probe.
router.add_api_route(
    "/ready",
    ready,
    methods=["GET"],
    name="health.ready_alias",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "A dependency is not reachable"}},
)
