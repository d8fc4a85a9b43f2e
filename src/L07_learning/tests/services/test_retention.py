"""The retention purge (contract §7.4 "Retention"): expired dataset versions, failed runs, archived models, refused
payloads and 7-year-old audit rows go, with their files; whatever is still in use stays; a dry run deletes nothing;
the deletion is verified and audited, and the audit chain still verifies afterwards."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update

import L07_learning.store.repositories.audit as audit_repo
from L07_learning.models._base import utcnow
from L07_learning.services.dataset_curator import DatasetCurator
from L07_learning.services.retention import RetentionService
from L07_learning.store.repositories.audit import audit, list_audit, verify_chain
from L07_learning.store.tables import (
    SqlDatasetMember,
    SqlDatasetVersion,
    SqlModel,
    SqlModelStageHistory,
    SqlRejectedEvent,
    SqlTrainingJob,
)
from L07_learning.tests.factories.curation import clean_examples

DAY = timedelta(days=1)


def _job(job_id: str, status: str, ended, dataset_version: str | None = None, dataset_id: str | None = None):  # type: ignore[no-untyped-def]
    return SqlTrainingJob(job_id=job_id, job_type="sft", status=status, config={}, dataset_id=dataset_id,
                          dataset_version=dataset_version, created_at=ended, completed_at=ended)


def _model(model_id: str, path: Path) -> SqlModel:
    return SqlModel(model_id=model_id, name=f"m-{model_id}", version="1.0.0", model_type="LORA_ADAPTER",
                    stage="ARCHIVED", serving_state="NONE", artifact_path=str(path), checksum="c", signature="s")


def _read_only_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter.bin").write_bytes(b"weights")
    (path / "adapter.bin").chmod(0o444)  # the registry stores artifacts write-once
    return path


async def _setup(db, settings):  # type: ignore[no-untyped-def]
    now = utcnow()
    curator = DatasetCurator(db=db, settings=settings)
    ds = await curator.create_dataset("ret", clean_examples(12, seed=1))
    await curator.add_examples(ds.dataset_id, clean_examples(4, start=100, seed=2))
    await curator.add_examples(ds.dataset_id, clean_examples(4, start=200, seed=3))  # 1.0.0, 1.1.0, 1.2.0 (latest)
    artifacts, jobs = Path(settings.artifact_root), Path(settings.home) / "jobs"
    old_model = _read_only_folder(artifacts / "m-old" / "1.0.0")
    recent_model = _read_only_folder(artifacts / "m-recent" / "1.0.0")
    _read_only_folder(jobs / "job-failed-old" / "checkpoints")
    async with db.session() as s:
        await s.execute(update(SqlDatasetVersion).values(created_at=now - 100 * DAY))
        s.add_all([
            _job("job-failed-old", "FAILED", now - 40 * DAY),
            _job("job-failed-new", "FAILED", now - 10 * DAY),
            _job("job-done", "COMPLETED", now - 40 * DAY, "1.1.0", ds.dataset_id),  # keeps dataset 1.1.0
            _model("m-old", old_model), _model("m-recent", recent_model),
            SqlModelStageHistory(model_id="m-old", to_stage="ARCHIVED", actor="t", created_at=now - 400 * DAY),
            SqlModelStageHistory(model_id="m-recent", to_stage="ARCHIVED", actor="t", created_at=now - 100 * DAY),
            SqlRejectedEvent(code="E7015", reason="old", raw_payload="{", created_at=now - 40 * DAY),
            SqlRejectedEvent(code="E7015", reason="new", raw_payload="{", created_at=now - DAY),
        ])
    return ds, old_model, recent_model, jobs / "job-failed-old"


async def test_purge_deletes_what_expired_keeps_what_is_used_and_verifies(db, settings, monkeypatch):  # type: ignore[no-untyped-def]
    eight_years_ago = utcnow() - timedelta(days=8 * 365)
    monkeypatch.setattr(audit_repo, "utcnow", lambda: eight_years_ago)
    async with db.session() as s:
        for i in range(3):
            await audit(s, "model.promote", "model", f"ancient-{i}")
    monkeypatch.undo()
    ds, old_model, recent_model, old_job_dir = await _setup(db, settings)
    service = RetentionService(db, settings)

    dry = await service.purge(dry_run=True)
    assert dry.counts == {"training_jobs": 1, "loop_runs": 0, "dataset_versions": 1, "archived_models": 1,
                          "rejected_events": 1, "filter_rejections": 0, "audit_rows": 3, "model_outcomes": 0}
    assert old_model.exists() and old_job_dir.exists()  # a dry run deletes nothing

    report = await service.purge()
    assert report.counts == dry.counts and report.verified is True
    assert not old_model.exists() and not old_job_dir.exists() and recent_model.exists()
    async with db.session() as s:
        versions = sorted((await s.scalars(select(SqlDatasetVersion.version))).all())
        members_of_old = await s.scalar(select(func.count()).select_from(SqlDatasetMember)
                                        .where(SqlDatasetMember.version == "1.0.0"))
        jobs = sorted((await s.scalars(select(SqlTrainingJob.job_id))).all())
        models = sorted((await s.scalars(select(SqlModel.model_id))).all())
        events = (await s.scalars(select(SqlRejectedEvent.reason))).all()
        chain = await verify_chain(s)
        rows, _ = await list_audit(s, action="retention.purge")
    assert versions == ["1.1.0", "1.2.0"] and members_of_old == 0  # 1.1.0 trained a job; 1.2.0 is the latest
    assert jobs == ["job-done", "job-failed-new"] and models == ["m-recent"] and events == ["new"]
    # The 7-year-old audit rows are gone, and the rest of the chain still verifies from its anchor.
    assert chain.ok, chain.broken
    assert chain.anchor_seq == 3 and chain.first_seq == 4
    [purge_row] = rows
    assert purge_row["details"]["counts"] == report.counts and purge_row["audit_id"] == report.audit_id
    await DatasetCurator(db=db, settings=settings).get_dataset(ds.dataset_id)  # the latest version still loads

    again = await service.purge()
    assert set(again.counts.values()) == {0} and again.verified is True


async def test_the_loops_daily_schedule_runs_the_whole_purge(sqlite_db, settings):  # type: ignore[no-untyped-def]
    from L07_learning.services.learning_service import LearningService
    from L07_learning.services.loop.schedules import default_tasks

    async with sqlite_db.session() as s:
        s.add_all([_job("job-expired", "CANCELLED", utcnow() - 31 * DAY),
                   SqlRejectedEvent(code="E7010", reason="old", raw_payload="{}", created_at=utcnow() - 31 * DAY)])
    task = {t.name: t for t in default_tasks(LearningService.build(settings, sqlite_db))}["retention_purge"]
    assert task.cron == "0 2 * * *"  # daily at 02:00 UTC (contract §7.4)
    result = await task.action()
    assert result["verified"] is True
    assert result["purged"]["training_jobs"] == 1 and result["purged"]["rejected_events"] == 1
    async with sqlite_db.session() as s:
        rows, _ = await list_audit(s, action="retention.purge")
    assert rows[0]["actor"]["identifier"] == "l07-loop"
