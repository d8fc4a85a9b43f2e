"""What the retention purge may delete (contract §7.4 "Retention"), and the deletes themselves.

Selection and deletion are separate so a dry run counts exactly what a real run would delete. Nothing that is still
in use is selected: the latest version of a dataset, a version a model was trained on or a live job or loop run
points at, a model another model descends from, the production outcomes an open release watch still reads.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from ..tables import (
    SqlDataset,
    SqlDatasetMember,
    SqlDatasetVersion,
    SqlJobEvent,
    SqlLoopPolicy,
    SqlLoopRun,
    SqlModel,
    SqlModelApproval,
    SqlModelOutcome,
    SqlModelStageHistory,
    SqlRejectedEvent,
    SqlRejectedExample,
    SqlTrainingJob,
    SqlValidationResult,
)
from ._upsert import chunks

FAILED_JOB_STATUSES = ("FAILED", "CANCELLED")
FAILED_RUN_STATUSES = ("FAILED", "REJECTED")


class RetentionRepository:
    """Selects and deletes expired rows."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- failed runs ----------------------------------------------------------------------------------------------

    async def failed_jobs(self, cutoff: datetime) -> list[tuple[str, str | None]]:
        """``(job_id, checkpoint_location)`` of FAILED and CANCELLED jobs that ended before ``cutoff``."""
        ended = func.coalesce(SqlTrainingJob.completed_at, SqlTrainingJob.created_at)
        rows = await self.session.execute(
            select(SqlTrainingJob.job_id, SqlTrainingJob.checkpoint_location)
            .where(SqlTrainingJob.status.in_(FAILED_JOB_STATUSES), ended < cutoff, SqlTrainingJob.output_model_id.is_(None))
        )
        return [(r[0], r[1]) for r in rows.all()]

    async def failed_loop_runs(self, cutoff: datetime) -> list[str]:
        rows = await self.session.scalars(select(SqlLoopRun.run_id).where(
            SqlLoopRun.status.in_(FAILED_RUN_STATUSES), SqlLoopRun.finished_at < cutoff))
        return list(rows.all())

    # --- datasets -------------------------------------------------------------------------------------------------

    async def expired_dataset_versions(self, cutoff: datetime) -> list[tuple[str, str]]:
        """``(dataset_id, version)`` created before ``cutoff`` that nothing uses any more."""
        candidates = (await self.session.execute(
            select(SqlDatasetVersion.dataset_id, SqlDatasetVersion.version)
            .join(SqlDataset, SqlDataset.dataset_id == SqlDatasetVersion.dataset_id)
            .where(SqlDatasetVersion.created_at < cutoff, SqlDatasetVersion.version != SqlDataset.latest_version)
        )).all()
        if not candidates:
            return []
        in_use: set[tuple[str, str]] = set()
        for stmt in (
            select(SqlModel.dataset_id, SqlModel.dataset_version),
            select(SqlTrainingJob.dataset_id, SqlTrainingJob.dataset_version)
            .where(SqlTrainingJob.status.not_in(FAILED_JOB_STATUSES)),
            select(SqlLoopRun.dataset_id, SqlLoopRun.dataset_version).where(SqlLoopRun.status.not_in(FAILED_RUN_STATUSES)),
            select(SqlLoopPolicy.dataset_id, SqlLoopPolicy.dataset_version),
        ):
            in_use.update((r[0], r[1]) for r in (await self.session.execute(stmt)).all() if r[0] and r[1])
        return sorted((r[0], r[1]) for r in candidates if (r[0], r[1]) not in in_use)

    # --- archived models ------------------------------------------------------------------------------------------

    async def expired_archived_models(self, cutoff: datetime) -> list[tuple[str, str]]:
        """``(model_id, artifact_path)`` of models ARCHIVED before ``cutoff`` that no kept model descends from."""
        archived_at = (
            select(SqlModelStageHistory.model_id, func.max(SqlModelStageHistory.created_at).label("at"))
            .where(SqlModelStageHistory.to_stage == "ARCHIVED").group_by(SqlModelStageHistory.model_id).subquery()
        )
        rows = (await self.session.execute(
            select(SqlModel.model_id, SqlModel.artifact_path)
            .outerjoin(archived_at, archived_at.c.model_id == SqlModel.model_id)
            .where(SqlModel.stage == "ARCHIVED", func.coalesce(archived_at.c.at, SqlModel.updated_at) < cutoff)
        )).all()
        expired = {r[0]: r[1] for r in rows}
        if not expired:
            return []
        children = await self.session.scalars(select(SqlModel.parent_model_id).where(
            SqlModel.parent_model_id.in_(list(expired)), SqlModel.model_id.not_in(list(expired))))
        for parent in set(children.all()):
            expired.pop(parent, None)
        return sorted(expired.items())

    # --- payloads of refused input --------------------------------------------------------------------------------

    async def count_rejected_events(self, cutoff: datetime) -> int:
        return int(await self.session.scalar(
            select(func.count()).select_from(SqlRejectedEvent).where(SqlRejectedEvent.created_at < cutoff)) or 0)

    async def count_filter_rejections(self, cutoff: datetime) -> int:
        return int(await self.session.scalar(
            select(func.count()).select_from(SqlRejectedExample).where(SqlRejectedExample.created_at < cutoff)) or 0)

    # --- production outcomes ------------------------------------------------------------------------------------

    async def outcome_holds(self, watches: list[tuple[str, str | None, datetime]],
                            baseline_samples: int) -> dict[str, datetime | None]:
        """Model id -> the time from which its outcomes must stay (None: all of them), for ``(model_id,
        baseline_model_id, started_at)`` of the release watches.

        A watch reads its model's outcomes completed since the release (in windows counted from the release, so
        none of them may go), and for its predecessor the newest ``baseline_samples`` completed before the release
        (the baseline) plus those served since (the canary's incumbent side)."""
        holds: dict[str, datetime | None] = {}

        def hold(model_id: str, since: datetime | None) -> None:
            if model_id in holds and (holds[model_id] is None or (since is not None and holds[model_id] <= since)):
                return
            holds[model_id] = since

        for model_id, baseline_id, started in watches:
            started = _utc(started)
            hold(model_id, started)
            if baseline_id is None:
                continue
            oldest = await self.session.scalar(
                select(SqlModelOutcome.completed_at)
                .where(SqlModelOutcome.model_id == baseline_id, SqlModelOutcome.completed_at < started)
                .order_by(SqlModelOutcome.completed_at.desc(), SqlModelOutcome.execution_id.desc())
                .offset(baseline_samples - 1).limit(1))
            # Fewer than ``baseline_samples`` before the release: the baseline is all of them.
            hold(baseline_id, min(_utc(oldest), started) if oldest is not None else None)
        return holds

    @staticmethod
    def _expired_outcomes(cutoff: datetime, holds: dict[str, datetime | None]) -> Any:
        """Outcomes older than ``cutoff`` (by completion, or by arrival while the score never came) and not held."""
        o = SqlModelOutcome
        old = or_(o.completed_at < cutoff, and_(o.completed_at.is_(None), o.created_at < cutoff))
        if not holds:
            return old

        def before(column: Any, since: datetime) -> Any:
            return or_(column.is_(None), column < since)

        released = [and_(o.model_id == m, before(o.completed_at, since), before(o.served_at, since))
                    for m, since in holds.items() if since is not None]
        return and_(old, or_(o.model_id.is_(None), o.model_id.not_in(list(holds)), *released))

    async def count_model_outcomes(self, cutoff: datetime, holds: dict[str, datetime | None]) -> int:
        return int(await self.session.scalar(
            select(func.count()).select_from(SqlModelOutcome).where(self._expired_outcomes(cutoff, holds))) or 0)

    # --- deletes --------------------------------------------------------------------------------------------------

    async def delete_jobs(self, job_ids: list[str]) -> int:
        deleted = 0
        for part in chunks(job_ids):
            await self.session.execute(delete(SqlJobEvent).where(SqlJobEvent.job_id.in_(part)))
            deleted += (await self.session.execute(delete(SqlTrainingJob).where(SqlTrainingJob.job_id.in_(part)))).rowcount
        return deleted

    async def delete_loop_runs(self, run_ids: list[str]) -> int:
        deleted = 0
        for part in chunks(run_ids):
            deleted += (await self.session.execute(delete(SqlLoopRun).where(SqlLoopRun.run_id.in_(part)))).rowcount
        return deleted

    async def delete_dataset_versions(self, versions: list[tuple[str, str]]) -> int:
        deleted = 0
        for part in chunks(versions):
            await self.session.execute(delete(SqlDatasetMember).where(
                tuple_(SqlDatasetMember.dataset_id, SqlDatasetMember.version).in_(part)))
            deleted += (await self.session.execute(delete(SqlDatasetVersion).where(
                tuple_(SqlDatasetVersion.dataset_id, SqlDatasetVersion.version).in_(part)))).rowcount
        return deleted

    async def delete_models(self, model_ids: list[str]) -> int:
        deleted = 0
        for part in chunks(model_ids):
            for table in (SqlModelStageHistory, SqlModelApproval, SqlValidationResult):
                await self.session.execute(delete(table).where(table.model_id.in_(part)))
            deleted += (await self.session.execute(delete(SqlModel).where(SqlModel.model_id.in_(part)))).rowcount
        return deleted

    async def delete_rejected_events(self, cutoff: datetime) -> int:
        return (await self.session.execute(delete(SqlRejectedEvent).where(SqlRejectedEvent.created_at < cutoff))).rowcount

    async def delete_filter_rejections(self, cutoff: datetime) -> int:
        return (await self.session.execute(
            delete(SqlRejectedExample).where(SqlRejectedExample.created_at < cutoff))).rowcount

    async def delete_model_outcomes(self, cutoff: datetime, holds: dict[str, datetime | None]) -> int:
        return (await self.session.execute(
            delete(SqlModelOutcome).where(self._expired_outcomes(cutoff, holds)))).rowcount

    # --- verification ---------------------------------------------------------------------------------------------

    async def remaining(self, purged: dict[str, Any], cutoffs: dict[str, datetime],
                        outcome_holds: dict[str, datetime | None]) -> dict[str, int]:
        """Rows a finished purge should have removed that are still there (all zero when the deletion held)."""
        out: dict[str, int] = {}

        async def count(stmt: Any) -> int:
            return int(await self.session.scalar(stmt) or 0)

        out["training_jobs"] = sum([await count(select(func.count()).select_from(SqlTrainingJob)
                                                .where(SqlTrainingJob.job_id.in_(p))) for p in chunks(purged["training_jobs"])])
        out["loop_runs"] = sum([await count(select(func.count()).select_from(SqlLoopRun)
                                            .where(SqlLoopRun.run_id.in_(p))) for p in chunks(purged["loop_runs"])])
        out["dataset_versions"] = sum([await count(
            select(func.count()).select_from(SqlDatasetMember).where(
                tuple_(SqlDatasetMember.dataset_id, SqlDatasetMember.version).in_(p))) + await count(
            select(func.count()).select_from(SqlDatasetVersion).where(
                tuple_(SqlDatasetVersion.dataset_id, SqlDatasetVersion.version).in_(p)))
            for p in chunks(purged["dataset_versions"])])
        out["archived_models"] = sum([await count(select(func.count()).select_from(SqlModel)
                                                  .where(SqlModel.model_id.in_(p))) for p in chunks(purged["archived_models"])])
        out["rejected_events"] = await self.count_rejected_events(cutoffs["rejected_payloads"])
        out["filter_rejections"] = await self.count_filter_rejections(cutoffs["rejected_payloads"])
        out["model_outcomes"] = await self.count_model_outcomes(cutoffs["model_outcomes"], outcome_holds)
        return out


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; every stored time is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def as_pairs(rows: list[tuple[str, str]]) -> list[list[str]]:
    """JSON-friendly form of ``(dataset_id, version)`` pairs."""
    return [[a, b] for a, b in rows]


__all__ = ["FAILED_JOB_STATUSES", "FAILED_RUN_STATUSES", "RetentionRepository", "as_pairs"]
