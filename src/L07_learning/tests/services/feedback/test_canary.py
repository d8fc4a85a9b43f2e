"""The canary phase of a release (the registry's PRODUCTION promotion carries 20% / 60 min / "error_rate < 1%"):
after the window, candidate and incumbent are compared over the same window and task types; a worse candidate is
rolled back with E7205, a good one is approved for all traffic. The canary's hour is moved into the past in the
database (the test cannot wait an hour); everything else is the real registry, watch and database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from L07_learning.models import ServingState
from L07_learning.models._base import utcnow
from L07_learning.services.feedback import ReleaseWatch
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.tables import SqlAuditLog, SqlIncident, SqlModelWatch, SqlOutboxEvent
from L07_learning.tests.factories import feedback as fb


async def _canary_over(db, watch: ReleaseWatch, v2: str) -> None:  # type: ignore[no-untyped-def]
    """Open the watch, then place its canary hour 70 to 10 minutes ago."""
    assert await watch.open_new() == [v2]
    now = utcnow()
    async with db.session() as s:
        row = await s.get(SqlModelWatch, v2)
        assert row.canary_status == "RUNNING" and row.canary["config"]["traffic_percentage"] == 20
        assert row.canary["error_limit"] == pytest.approx(0.01)
        await s.execute(update(SqlModelWatch).where(SqlModelWatch.model_id == v2).values(
            started_at=now - timedelta(minutes=70),
            canary={**row.canary, "ends_at": (now - timedelta(minutes=10)).isoformat()}))


async def _release(db, settings, tmp_path):  # type: ignore[no-untyped-def]
    registry = ModelRegistry(db=db, settings=settings)
    v1 = await fb.register(registry, tmp_path, "1.0.0", seed=1)
    v2 = await fb.register(registry, tmp_path, "1.1.0", seed=2)
    await fb.to_production(registry, v1)
    await fb.to_production(registry, v2)
    await fb.loop_made(db, v2)
    return registry, v1, v2


@pytest.mark.parametrize("quality, errors, reason", [(70.0, 0.003, "of the predecessor's"),
                                                     (80.0, 0.04, "breaks the criterion")])
async def test_failed_canary_rolls_back_with_e7205(sqlite_db, settings, tmp_path, quality, errors, reason):
    registry, v1, v2 = await _release(sqlite_db, settings, tmp_path)
    watch = ReleaseWatch(sqlite_db, registry, settings)
    await _canary_over(sqlite_db, watch, v2)
    during = utcnow() - timedelta(minutes=40)
    await fb.add_outcomes(sqlite_db, v2, fb.outcomes(300, quality, 10.0, errors, seed=81, served_at=during))
    await fb.add_outcomes(sqlite_db, v1, fb.outcomes(1200, 80.0, 10.0, errors if errors < 0.01 else 0.035, seed=82,
                                                     served_at=during))
    # An incumbent task type the candidate never served is left out of the comparison.
    await fb.add_outcomes(sqlite_db, v1, fb.outcomes(500, 20.0, 5.0, 0.5, seed=83, task_type="billing", served_at=during))
    view = await watch.evaluate(v2)
    assert view["status"] == "ROLLED_BACK" and view["canary_status"] == "FAILED"
    assert reason in view["last_result"]["reason"] and view["last_result"]["task_types"] == ["support"]
    assert (await registry.get_model(v1)).serving_state is ServingState.ACTIVE
    async with sqlite_db.session() as s:
        incident = (await s.scalars(select(SqlIncident))).one()
        failed = (await s.scalars(select(SqlOutboxEvent).where(
            SqlOutboxEvent.event_type == "com.agentic.learning.model_deployment_failed"))).one()
    assert incident.kind == "canary_failure" and incident.error_code == "E7205" and incident.rolled_back_to == v1
    assert failed.payload["data"]["error_code"] == "E7205" and failed.payload["data"]["rolled_back_to"] == v1


async def test_passed_canary_is_approved_for_all_traffic_and_watching_goes_on(sqlite_db, settings, tmp_path):
    registry, v1, v2 = await _release(sqlite_db, settings, tmp_path)
    watch = ReleaseWatch(sqlite_db, registry, settings)
    await _canary_over(sqlite_db, watch, v2)
    during = utcnow() - timedelta(minutes=40)
    await fb.add_outcomes(sqlite_db, v2, fb.outcomes(300, 80.5, 10.0, 0.002, seed=91, served_at=during))
    await fb.add_outcomes(sqlite_db, v1, fb.outcomes(1200, 80.0, 10.0, 0.002, seed=92, served_at=during))
    view = await watch.evaluate(v2)
    assert view["status"] == "WATCHING" and view["canary_status"] == "PASSED"
    assert (await registry.get_model(v2)).serving_state is ServingState.ACTIVE
    async with sqlite_db.session() as s:
        approvals = (await s.scalars(select(SqlOutboxEvent).where(
            SqlOutboxEvent.event_type == "com.agentic.learning.model_deployment_approved",
            SqlOutboxEvent.subject == v2))).all()
        audited = (await s.scalars(select(SqlAuditLog).where(SqlAuditLog.action == "model.canary_passed"))).all()
    passed = [a.payload["data"] for a in approvals if a.payload["data"].get("canary_result")]
    assert len(passed) == 1 and passed[0]["canary_result"]["candidate_samples"] == 300
    assert passed[0]["version"] == "1.1.0" and len(audited) == 1
    await watch.evaluate(v2)  # decided once
    async with sqlite_db.session() as s:
        assert len((await s.scalars(select(SqlAuditLog).where(SqlAuditLog.action == "model.canary_passed"))).all()) == 1


async def test_canary_with_too_few_outcomes_is_inconclusive(sqlite_db, settings, tmp_path):
    registry, v1, v2 = await _release(sqlite_db, settings, tmp_path)
    watch = ReleaseWatch(sqlite_db, registry, settings)
    await _canary_over(sqlite_db, watch, v2)
    during = utcnow() - timedelta(minutes=40)
    await fb.add_outcomes(sqlite_db, v2, fb.outcomes(40, 50.0, 10.0, 0.3, seed=95, served_at=during))
    await fb.add_outcomes(sqlite_db, v1, fb.outcomes(1200, 80.0, 10.0, 0.002, seed=96, served_at=during))
    view = await watch.evaluate(v2)
    assert view["canary_status"] == "INCONCLUSIVE" and view["status"] == "WATCHING"
    assert view["canary"]["candidate_samples"] == 40
    assert (await registry.get_model(v2)).serving_state is ServingState.ACTIVE
