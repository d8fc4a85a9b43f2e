"""The release watch on a real registry and database: a sustained drop rolls back exactly once (also with two
watchers racing on PostgreSQL), noise within the §4.2 thresholds never does."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select, text

from L07_learning.models import ServingState
from L07_learning.observability.metrics import REGISTRY
from L07_learning.services.breakers import ComponentBreakers
from L07_learning.services.feedback import ReleaseWatch
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.store.tables import SqlAuditLog, SqlIncident, SqlModelWatch, SqlOutboxEvent
from L07_learning.tests.conftest import PG_URL
from L07_learning.tests.factories import feedback as fb

FAILED_EVENT = "com.agentic.learning.model_deployment_failed"


async def _count(db: Database, table, *where) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _assert_rolled_back_once(db: Database, registry: ModelRegistry, v1: str, v2: str, kind: str) -> None:
    assert (await registry.get_model(v1)).serving_state is ServingState.ACTIVE
    assert (await registry.get_model(v2)).serving_state is ServingState.STANDBY
    async with db.session() as s:
        incidents = (await s.scalars(select(SqlIncident))).all()
        failed = (await s.scalars(select(SqlOutboxEvent).where(SqlOutboxEvent.event_type == FAILED_EVENT))).all()
        watch = await s.get(SqlModelWatch, v2)
        policy = await LoopRepository(s).get_policy(fb.POLICY)
    assert len(incidents) == 1
    assert incidents[0].model_id == v2 and incidents[0].rolled_back_to == v1 and incidents[0].kind == kind
    assert incidents[0].policy == fb.POLICY and incidents[0].details["verdict"]["rollback"] is True
    assert len(failed) == 1 and failed[0].payload["data"]["rolled_back_to"] == v1 and failed[0].subject == v2
    assert watch.status == "ROLLED_BACK"
    assert policy.paused and policy.breaker_state == "OPEN" and v2 in policy.breaker_reason
    assert await _count(db, SqlAuditLog, SqlAuditLog.action == "model.rollback") == 1
    assert await _count(db, SqlAuditLog, SqlAuditLog.action == "model.watch_rollback") == 1
    assert await _count(db, SqlAuditLog, SqlAuditLog.action == "loop.pause") == 1
    assert (await ComponentBreakers(db).status())["deployment"]["state"] == "OPEN"


async def test_sustained_quality_drop_rolls_back_exactly_once(db, settings, tmp_path):
    registry = ModelRegistry(db=db, settings=settings)
    v1, v2 = await fb.release_pair(registry, db, tmp_path)
    watch = ReleaseWatch(db, registry, settings)
    before = _metric("l07_model_rollback_total", reason="quality_degradation")
    # The first window is as good as the predecessor; the second is 12% worse: judged window by window.
    await fb.add_outcomes(db, v2, fb.outcomes(1000, 79.5, 10.0, 0.02, seed=11))
    assert (await watch.tick()) == {v2: "within thresholds"}
    # Exported for Prometheus under the model's name (ids are forbidden labels, contract §7.2).
    assert _metric("l07_model_outcome_samples", model_name=fb.NAME) == 1000
    assert abs(_metric("l07_model_outcome_quality_mean", model_name=fb.NAME) - 79.5) < 1.0
    assert 0.97 < _metric("l07_model_watch_quality_ratio", model_name=fb.NAME) < 1.02
    await fb.add_outcomes(db, v2, fb.outcomes(999, 70.0, 10.0, 0.02, seed=12))
    assert (await watch.evaluate(v2))["windows_evaluated"] == 1  # 999 of 1000: not a full window yet
    await fb.add_outcomes(db, v2, fb.outcomes(1, 70.0, 10.0, 0.02, seed=13))
    view = await watch.evaluate(v2)
    assert view["status"] == "ROLLED_BACK" and view["windows_evaluated"] == 2
    assert view["last_result"]["quality_degraded"] and view["last_result"]["quality_ratio"] < 0.9
    await _assert_rolled_back_once(db, registry, v1, v2, "quality_degradation")
    assert _metric("l07_model_rollback_total", reason="quality_degradation") == before + 1
    # More bad outcomes and more looks change nothing: the watch is closed, v1 (no predecessor) is not rolled back.
    await fb.add_outcomes(db, v2, fb.outcomes(1000, 60.0, 10.0, 0.02, seed=14))
    await watch.tick()
    await watch.tick()
    await _assert_rolled_back_once(db, registry, v1, v2, "quality_degradation")
    assert (await watch.evaluate(v1))["status"] == "NO_BASELINE"


async def test_error_rate_rise_rolls_back(sqlite_db, settings, tmp_path):
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    v1, v2 = await fb.release_pair(registry, sqlite_db, tmp_path)
    await fb.add_outcomes(sqlite_db, v2, fb.outcomes(1000, 80.0, 10.0, 0.08, seed=21))
    view = await ReleaseWatch(sqlite_db, registry, settings).evaluate(v2)
    assert view["status"] == "ROLLED_BACK" and view["last_result"]["error_rate_up"]
    assert not view["last_result"]["quality_degraded"]
    await _assert_rolled_back_once(sqlite_db, registry, v1, v2, "error_rate")


async def test_noise_within_thresholds_never_rolls_back(sqlite_db, settings, tmp_path):
    """10,000 outcomes 2% below the predecessor's quality with 0.5 point more errors: inside §4.2, so no rollback
    (the stated false-alarm rate bounds this at 1% even at the thresholds themselves; see test_watch_stats)."""
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    v1, v2 = await fb.release_pair(registry, sqlite_db, tmp_path)
    await fb.add_outcomes(sqlite_db, v2, fb.outcomes(10_000, 78.4, 10.0, 0.025, seed=31))
    watch = ReleaseWatch(sqlite_db, registry, settings)
    assert (await watch.tick()) == {v2: "within thresholds"}
    view = await watch.evaluate(v2)
    assert view["status"] == "WATCHING" and view["windows_evaluated"] == 10
    assert view["since_release"]["samples"] == 10_000
    assert (await registry.get_model(v2)).serving_state is ServingState.ACTIVE
    assert await _count(sqlite_db, SqlIncident) == 0
    assert await _count(sqlite_db, SqlOutboxEvent, SqlOutboxEvent.event_type == FAILED_EVENT) == 0


async def _overlapping(db: Database, model_id: str, ticks: list) -> list:
    """Run ``ticks`` while a third connection holds the watch row, until both wait on it: both have read the same
    state and judged the same window before either can store its verdict, a real overlap."""
    async with db.engine.connect() as holder:
        tx = await holder.begin()
        await holder.execute(select(SqlModelWatch.model_id).where(SqlModelWatch.model_id == model_id).with_for_update())
        task = asyncio.ensure_future(asyncio.gather(*ticks))
        try:
            for _ in range(600):
                await holder.execute(text("SELECT pg_stat_clear_snapshot()"))
                waiting = await holder.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"))
                if waiting >= len(ticks) or task.done():
                    break
                await asyncio.sleep(0.05)
            assert waiting >= len(ticks), "the watchers never overlapped"
        finally:
            await tx.rollback()
        return await task


async def test_two_watchers_on_postgres_roll_back_once(pg_db, settings, tmp_path):
    registry = ModelRegistry(db=pg_db, settings=settings)
    v1, v2 = await fb.release_pair(registry, pg_db, tmp_path)
    await fb.add_outcomes(pg_db, v2, fb.outcomes(3000, 70.0, 10.0, 0.02, seed=41))
    other_db = Database(PG_URL, schema=pg_db.schema)  # a second process's engine and connections
    try:
        watchers = [ReleaseWatch(pg_db, registry, settings, holder="run-a"),
                    ReleaseWatch(other_db, ModelRegistry(db=other_db, settings=settings), settings, holder="run-b")]
        assert await watchers[0].open_new() == [v2]
        reports = await _overlapping(pg_db, v2, [w.tick() for w in watchers])
        again = await asyncio.gather(*(w.tick() for w in watchers))
    finally:
        await other_db.dispose()
    assert all(v2 in r for r in reports) and all(v2 not in r for r in again)
    await _assert_rolled_back_once(pg_db, registry, v1, v2, "quality_degradation")
