"""``GET /health``: one block per component; a Redis that does not answer (a closed port) makes the layer degraded,
not crashed; an open breaker and outbox lag show up too."""

from __future__ import annotations

import socket
from datetime import timedelta

import httpx
from sqlalchemy import update

from L07_learning.api import create_app
from L07_learning.api.config import ApiConfig
from L07_learning.events.publisher import EventPublisher
from L07_learning.models._base import utcnow
from L07_learning.services.breakers import ComponentBreakers
from L07_learning.store.tables import SqlOutboxEvent
from L07_learning.tests.conftest import REDIS_URL


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _health(db, settings) -> httpx.Response:  # type: ignore[no-untyped-def]
    app = create_app(settings=settings, db=db, config=ApiConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test") as api:
        return await api.get("/health")


async def test_health_reports_every_component_and_a_live_redis(sqlite_db, settings):
    r = await _health(sqlite_db, settings.model_copy(update={"redis_url": REDIS_URL}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "healthy"
    assert set(body["components"]) == {"database", "redis", "outbox", "workers", "breakers"}
    assert body["components"]["redis"]["status"] == "ok" and body["components"]["database"]["status"] == "ok"
    assert set(body["components"]["breakers"]["components"]) == {"training", "validation", "deployment"}
    assert body["circuit_breaker"] == {"state": "CLOSED", "failures_detected": 0}


async def test_stopped_redis_is_degraded_not_a_crash(sqlite_db, settings):
    r = await _health(sqlite_db, settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "degraded"
    redis = body["components"]["redis"]
    assert redis["status"] == "degraded" and "Connection" in redis["error"]
    assert body["components"]["database"]["status"] == "ok"


async def test_open_breaker_and_outbox_lag_degrade(sqlite_db, settings):
    breakers = ComponentBreakers(sqlite_db)
    async with sqlite_db.session() as s:
        for _ in range(2):
            await breakers.record(s, "deployment", ok=False, reason="gateway refused the release")
        await EventPublisher().publish(s, "learning.dataset_ready", {"dataset_id": "ds-1"}, subject="ds-1")
    async with sqlite_db.session() as s:
        await s.execute(update(SqlOutboxEvent).values(created_at=utcnow() - timedelta(minutes=10)))
    body = (await _health(sqlite_db, settings)).json()
    assert body["status"] == "degraded" and "redis" not in body["components"]
    assert body["components"]["breakers"]["status"] == "degraded"
    assert body["components"]["breakers"]["components"]["deployment"]["state"] == "OPEN"
    assert body["circuit_breaker"]["state"] == "OPEN"
    outbox = body["components"]["outbox"]
    # The deployment breaker's trip alert is pending too, written now; the dataset event is 10 minutes old.
    assert outbox["status"] == "degraded" and outbox["pending"] >= 1 and outbox["oldest_pending_age_s"] >= 590


async def test_database_down_is_unhealthy(tmp_path, settings):
    from L07_learning.store.db import Database

    dead = Database(f"postgresql+asyncpg://nobody@127.0.0.1:{closed_port()}/none")
    try:
        r = await _health(dead, settings)
    finally:
        await dead.dispose()
    assert r.status_code == 503 and r.json()["status"] == "unhealthy"
    assert r.json()["components"]["database"]["status"] == "down"
