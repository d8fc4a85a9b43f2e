"""Training jobs and their event log (``l07_training_jobs``, ``l07_job_events``).

Claiming is the only concurrency-sensitive operation. On PostgreSQL a claim selects the oldest claimable row with
``FOR UPDATE SKIP LOCKED``, so several workers on several machines share one queue without blocking each other. On
SQLite (one writer at a time) it is a single conditional ``UPDATE ... WHERE job_id = ? AND <still claimable>``; a worker
whose update matched no row lost the race and tries the next candidate.

A job is claimable when it is PENDING, or when it is in a running state and its worker's heartbeat is older than the
stale limit (the worker died): the next worker resumes it from its last checkpoint.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.training_job import JOB_TRANSITIONS, JobStatus, TrainingJob
from ..tables import SqlJobEvent, SqlTrainingJob

# Columns of l07_training_jobs; every other TrainingJob field lives in the `data` JSON column.
_COLUMNS = {
    "job_id", "job_type", "status", "config", "dataset_id", "dataset_version", "base_model_id", "output_model_id",
    "metrics", "retry_count", "error_code", "error_message", "checkpoint_location", "idempotency_key", "created_by",
    "created_at", "started_at", "completed_at",
}
# States in which a worker owns the job (a stale heartbeat in these means the worker died).
ACTIVE_STATES = (JobStatus.INITIALIZING, JobStatus.PREPARING_DATA, JobStatus.RUNNING, JobStatus.VALIDATING,
                 JobStatus.RETRYING)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _to_domain(row: SqlTrainingJob) -> TrainingJob:
    data = dict(row.data or {})
    fields: dict[str, Any] = {c: getattr(row, c) for c in _COLUMNS}
    for key in ("created_at", "started_at", "completed_at"):
        fields[key] = _aware(fields[key])
    fields["metrics"] = fields["metrics"] or {}
    data.pop("worker", None)
    return TrainingJob(**{**data, **{k: v for k, v in fields.items() if v is not None}})


def _split(job: TrainingJob) -> tuple[dict[str, Any], dict[str, Any]]:
    dumped = job.model_dump(mode="json")
    cols = {k: v for k, v in dumped.items() if k in _COLUMNS}
    for key in ("created_at", "started_at", "completed_at"):
        cols[key] = getattr(job, key)
    data = {k: v for k, v in dumped.items() if k not in _COLUMNS}
    return cols, data


def _lost(job_id: str, owner: str | None) -> L07Error:
    """E7901: the claim of ``job_id`` is no longer this worker's (taken over, or released)."""
    return L07Error(L07ErrorCode.CONTAINER_STARTUP_FAILURE,
                    f"job {job_id} is now owned by worker {owner}" if owner else f"job {job_id} is no longer claimed",
                    job_id=job_id, owner=owner)


class JobRepository:
    """Data access for training jobs and their per-step events."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, job: TrainingJob) -> TrainingJob:
        """Insert a new job."""
        cols, data = _split(job)
        self.session.add(SqlTrainingJob(**cols, data=data, cancel_requested=False))
        await self.session.flush()
        return job

    async def _row(self, job_id: str, lock: bool = False) -> SqlTrainingJob:
        stmt = select(SqlTrainingJob).where(SqlTrainingJob.job_id == job_id)
        if lock and self.session.bind.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = await self.session.scalar(stmt)
        if row is None:
            raise L07Error(L07ErrorCode.TRAINING_JOB_NOT_FOUND, f"no training job {job_id}", job_id=job_id)
        return row

    async def get(self, job_id: str) -> TrainingJob:
        """The job. Raises E7410 for an unknown id."""
        return _to_domain(await self._row(job_id))

    async def find_by_idempotency_key(self, key: str) -> TrainingJob | None:
        row = await self.session.scalar(select(SqlTrainingJob).where(SqlTrainingJob.idempotency_key == key))
        return _to_domain(row) if row else None

    async def list(self, status: JobStatus | None = None, job_type: str | None = None, limit: int = 100) -> list[TrainingJob]:
        """Jobs, newest first."""
        stmt = select(SqlTrainingJob).order_by(SqlTrainingJob.created_at.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(SqlTrainingJob.status == JobStatus(status).value)
        if job_type is not None:
            stmt = stmt.where(SqlTrainingJob.job_type == job_type)
        return [_to_domain(r) for r in (await self.session.scalars(stmt)).all()]

    async def worker_of(self, job_id: str) -> tuple[str | None, datetime | None, bool]:
        """``(worker_id, heartbeat_at, cancel_requested)`` of a job."""
        row = await self._row(job_id)
        return row.worker_id, _aware(row.heartbeat_at), bool(row.cancel_requested)

    async def update(self, job_id: str, status: JobStatus | None = None, *, lock: bool = True, owner: str | None = None,
                     **fields: Any) -> TrainingJob:
        """Change a job's fields and, optionally, its status (checked against contract §4.1).

        Args:
            owner: When given, the change is made only while this worker still owns the job's claim (a worker that was
                presumed dead must not overwrite what the worker that took the job over writes).

        Raises:
            L07Error: E7410 unknown job; E7500 when the transition is not in the state machine; E7901 when ``owner``
            no longer owns the job.
        """
        row = await self._row(job_id, lock=lock)
        if owner is not None and row.worker_id != owner:
            raise _lost(job_id, row.worker_id)
        current = JobStatus(row.status)
        if status is not None and status != current:
            if status not in JOB_TRANSITIONS[current]:
                raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                               f"job {job_id} cannot go from {current.value} to {status.value}",
                               job_id=job_id, current=current.value, requested=status.value)
            row.status = status.value
        data = dict(row.data or {})
        for key, value in fields.items():
            if key in _COLUMNS:
                setattr(row, key, value.model_dump(mode="json") if hasattr(value, "model_dump") else value)
            elif key in {"worker_id", "worker_pid", "heartbeat_at", "cancel_requested"}:
                setattr(row, key, value)
            else:
                data[key] = value
        row.data = data
        await self.session.flush()
        return _to_domain(row)

    async def request_cancel(self, job_id: str) -> TrainingJob:
        """Flag a job for cancellation; the owning worker stops it. An unclaimed PENDING job is cancelled at once."""
        row = await self._row(job_id, lock=True)
        status = JobStatus(row.status)
        if status.terminal:
            return _to_domain(row)
        row.cancel_requested = True
        if status == JobStatus.PENDING and row.worker_id is None:  # claimed ones are cancelled by their worker
            row.status = JobStatus.CANCELLED.value
            row.completed_at = utcnow()
        await self.session.flush()
        return _to_domain(row)

    async def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Refresh the worker's heartbeat; returns whether cancellation was requested.

        Raises:
            L07Error: E7901 when another worker has taken the job over (this worker was presumed dead).
        """
        row = await self._row(job_id)
        if row.worker_id != worker_id:
            raise _lost(job_id, row.worker_id)
        row.heartbeat_at = utcnow()
        await self.session.flush()
        return bool(row.cancel_requested)

    async def claim(self, worker_id: str, worker_pid: int, stale_before: datetime,
                    job_types: list[str] | None = None) -> tuple[TrainingJob, JobStatus] | None:
        """Claim the oldest PENDING job, or a job whose worker stopped heart-beating.

        Returns:
            ``(job, previous_status)`` or None when nothing is claimable. The job keeps its status; ``JobLifecycle`` moves it.
        """
        claimable = or_(
            and_(SqlTrainingJob.status == JobStatus.PENDING.value, SqlTrainingJob.worker_id.is_(None)),
            and_(SqlTrainingJob.status.in_([s.value for s in ACTIVE_STATES]),
                 or_(SqlTrainingJob.heartbeat_at.is_(None), SqlTrainingJob.heartbeat_at < stale_before)),
        )
        if job_types:
            claimable = and_(claimable, SqlTrainingJob.job_type.in_(job_types))
        now = utcnow()
        if self.session.bind.dialect.name == "postgresql":
            stmt = (select(SqlTrainingJob).where(claimable).order_by(SqlTrainingJob.created_at)
                    .limit(1).with_for_update(skip_locked=True))
            row = await self.session.scalar(stmt)
            if row is None:
                return None
            previous = JobStatus(row.status)
            row.worker_id, row.worker_pid, row.heartbeat_at = worker_id, worker_pid, now
            await self.session.flush()
            return _to_domain(row), previous
        candidates = (await self.session.execute(
            select(SqlTrainingJob.job_id, SqlTrainingJob.status, SqlTrainingJob.worker_id, SqlTrainingJob.heartbeat_at)
            .where(claimable).order_by(SqlTrainingJob.created_at).limit(10))).all()
        for job_id, status, seen_worker, seen_beat in candidates:
            # Compare-and-swap: only succeeds if nobody claimed or heart-beat the row since we read it.
            same_owner = (SqlTrainingJob.worker_id.is_(None) if seen_worker is None
                          else SqlTrainingJob.worker_id == seen_worker)
            same_beat = (SqlTrainingJob.heartbeat_at.is_(None) if seen_beat is None
                         else SqlTrainingJob.heartbeat_at == seen_beat)
            result = await self.session.execute(
                update(SqlTrainingJob)
                .where(and_(SqlTrainingJob.job_id == job_id, SqlTrainingJob.status == status, same_owner, same_beat,
                            claimable))
                .values(worker_id=worker_id, worker_pid=worker_pid, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                row = await self.session.scalar(
                    select(SqlTrainingJob).where(SqlTrainingJob.job_id == job_id).execution_options(populate_existing=True))
                return _to_domain(row), JobStatus(status)
        return None

    async def release(self, job_id: str, worker_id: str) -> None:
        """Give up ownership (job finished or handed back)."""
        await self.session.execute(
            update(SqlTrainingJob).where(and_(SqlTrainingJob.job_id == job_id, SqlTrainingJob.worker_id == worker_id))
            .values(worker_id=None, worker_pid=None).execution_options(synchronize_session=False))

    def add_event(self, job_id: str, kind: str, payload: dict[str, Any], step: int | None = None) -> None:
        """Append one job event (``step``, ``eval``, ``checkpoint``, ``status``, ``retry``, ``resumed``, ``log``)."""
        self.session.add(SqlJobEvent(job_id=job_id, kind=kind, step=step, payload=payload, created_at=utcnow()))

    async def events(self, job_id: str, kinds: list[str] | None = None, after_id: int = 0,
                     limit: int = 10_000) -> list[dict[str, Any]]:
        """A job's events in order, as ``{id, kind, step, payload, created_at}``."""
        stmt = (select(SqlJobEvent).where(SqlJobEvent.job_id == job_id, SqlJobEvent.id > after_id)
                .order_by(SqlJobEvent.id).limit(limit))
        if kinds:
            stmt = stmt.where(SqlJobEvent.kind.in_(kinds))
        return [
            {"id": e.id, "kind": e.kind, "step": e.step, "payload": e.payload, "created_at": _aware(e.created_at)}
            for e in (await self.session.scalars(stmt)).all()
        ]
