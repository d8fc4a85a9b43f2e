"""The loop's stored state (contract §9): policy state and breakers, runs, the compute ledger, schedules, leases.

Every claim (a lease, a schedule's period, a run to advance) is one conditional ``UPDATE ... WHERE`` whose row count
says who won: SQLite serialises writers and PostgreSQL re-checks the ``WHERE`` on the locked row, so on both exactly
one of two racing processes sees a count of 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models.training_example import TrainingExample
from ...models.training_job import TERMINAL_JOB_STATES
from ..tables import (
    SqlDataset,
    SqlDatasetMember,
    SqlLease,
    SqlLoopBudget,
    SqlLoopPolicy,
    SqlLoopRun,
    SqlLoopSchedule,
    SqlModel,
    SqlPreferencePair,
    SqlTrainingExample,
    SqlTrainingJob,
)
from ._upsert import insert_ignore
from .examples import to_model

OPEN_RUN_STATES = ("TRAINING", "VALIDATING")


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


@dataclass(frozen=True)
class PolicyState:
    """What the loop remembers about one policy between ticks and restarts."""

    policy: str
    dataset_id: str | None = None
    dataset_version: str | None = None
    dataset_at: datetime | None = None
    examples_at_last_run: int = 0
    last_run_id: str | None = None
    last_run_at: datetime | None = None
    last_verdict: str | None = None
    consecutive_failures: int = 0
    breaker_state: str = "CLOSED"
    breaker_opened_at: datetime | None = None
    breaker_reason: str | None = None
    paused: bool = False
    created_at: datetime | None = None


@dataclass(frozen=True)
class LoopRun:
    """One triggered run."""

    run_id: str
    policy: str
    job_type: str
    dataset_id: str
    dataset_version: str
    examples: int
    status: str
    job_id: str | None = None
    model_id: str | None = None
    verdict: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("started_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


@dataclass(frozen=True)
class ScheduleState:
    name: str
    last_run_at: datetime | None
    last_status: str | None
    last_error: str | None
    last_result: dict[str, Any]


def _policy(row: SqlLoopPolicy) -> PolicyState:
    values = {k: getattr(row, k) for k in PolicyState.__dataclass_fields__}
    return PolicyState(**{k: _aware(v) if isinstance(v, datetime) else v for k, v in values.items()})


def _run(row: SqlLoopRun) -> LoopRun:
    values = {k: getattr(row, k) for k in LoopRun.__dataclass_fields__}
    return LoopRun(**{k: _aware(v) if isinstance(v, datetime) else v for k, v in values.items()})


class LoopRepository:
    """Data access for the ``l07_loop_*`` tables and ``l07_leases``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- policy state ---------------------------------------------------------------------------------------------

    async def ensure_policy(self, name: str, now: datetime) -> PolicyState:
        """The policy's state, created (closed breaker, no runs) on first sight."""
        table = SqlLoopPolicy.__table__
        await self.session.execute(insert_ignore(self.session, table),
                                   [{"policy": name, "examples_at_last_run": 0, "consecutive_failures": 0,
                                     "breaker_state": "CLOSED", "paused": False, "created_at": now, "updated_at": now}])
        state = await self.get_policy(name)
        assert state is not None
        return state

    async def get_policy(self, name: str) -> PolicyState | None:
        row = await self.session.get(SqlLoopPolicy, name, populate_existing=True)
        return _policy(row) if row is not None else None

    async def list_policies(self) -> list[PolicyState]:
        rows = await self.session.scalars(select(SqlLoopPolicy).order_by(SqlLoopPolicy.policy))
        return [_policy(r) for r in rows.all()]

    async def update_policy(self, name: str, now: datetime, **values: Any) -> None:
        await self.session.execute(update(SqlLoopPolicy).where(SqlLoopPolicy.policy == name)
                                   .values(updated_at=now, **values))

    # --- runs -----------------------------------------------------------------------------------------------------

    async def add_run(self, run: LoopRun) -> bool:
        """Insert a run; False when the policy already has a run for that dataset version (a retried trigger)."""
        table = SqlLoopRun.__table__
        values = {k: v for k, v in run.__dict__.items() if v is not None}
        result = await self.session.execute(insert_ignore(self.session, table).returning(table.c.run_id), [values])
        return bool(result.all())

    async def run_for_dataset(self, policy: str, dataset_id: str, version: str) -> LoopRun | None:
        row = await self.session.scalar(select(SqlLoopRun).where(
            SqlLoopRun.policy == policy, SqlLoopRun.dataset_id == dataset_id, SqlLoopRun.dataset_version == version))
        return _run(row) if row is not None else None

    async def runs(self, policy: str | None = None, status: str | None = None, limit: int = 100) -> list[LoopRun]:
        """Runs, newest first."""
        stmt = select(SqlLoopRun).order_by(SqlLoopRun.started_at.desc()).limit(limit)
        if policy is not None:
            stmt = stmt.where(SqlLoopRun.policy == policy)
        if status is not None:
            stmt = stmt.where(SqlLoopRun.status == status)
        return [_run(r) for r in (await self.session.scalars(stmt)).all()]

    async def open_runs(self) -> list[LoopRun]:
        rows = await self.session.scalars(select(SqlLoopRun).where(SqlLoopRun.status.in_(OPEN_RUN_STATES))
                                          .order_by(SqlLoopRun.started_at))
        return [_run(r) for r in rows.all()]

    async def claim_run(self, run_id: str, holder: str, now: datetime, stale_before: datetime) -> bool:
        """Take a run to advance: unclaimed, already ours, or claimed by a process silent since ``stale_before``."""
        result = await self.session.execute(
            update(SqlLoopRun)
            .where(SqlLoopRun.run_id == run_id, SqlLoopRun.status.in_(OPEN_RUN_STATES),
                   or_(SqlLoopRun.claimed_by.is_(None), SqlLoopRun.claimed_by == holder,
                       SqlLoopRun.claimed_at < stale_before))
            .values(claimed_by=holder, claimed_at=now))
        return result.rowcount == 1

    async def update_claimed_run(self, run_id: str, holder: str, **values: Any) -> bool:
        """Move an open run that ``holder`` still claims; False when another process took it over (or it is closed),
        and then the caller must not act on it (no charge, no breaker count)."""
        result = await self.session.execute(
            update(SqlLoopRun)
            .where(SqlLoopRun.run_id == run_id, SqlLoopRun.claimed_by == holder,
                   SqlLoopRun.status.in_(OPEN_RUN_STATES))
            .values(**values))
        return result.rowcount == 1

    async def review_queue_size(self) -> int:
        """Runs whose model waits for a reviewer (REVIEW verdict, model still in DEVELOPMENT)."""
        stmt = (select(func.count()).select_from(SqlLoopRun)
                .join(SqlModel, SqlModel.model_id == SqlLoopRun.model_id)
                .where(SqlLoopRun.status == "REVIEW", SqlModel.stage == "DEVELOPMENT"))
        return int(await self.session.scalar(stmt) or 0)

    async def purge_runs(self, statuses: tuple[str, ...], finished_before: datetime) -> int:
        """Delete finished runs in ``statuses`` older than the cutoff (retention)."""
        result = await self.session.execute(delete(SqlLoopRun).where(
            SqlLoopRun.status.in_(statuses), SqlLoopRun.finished_at < finished_before))
        return int(result.rowcount or 0)

    # --- compute ledger -------------------------------------------------------------------------------------------

    async def charge(self, day: str, cpu_s: float, gpu_s: float, now: datetime) -> None:
        """Add job seconds to one UTC day's ledger (an increment in SQL, so concurrent charges add up)."""
        await self.session.execute(insert_ignore(self.session, SqlLoopBudget.__table__),
                                   [{"day": day, "cpu_seconds": 0.0, "gpu_seconds": 0.0, "updated_at": now}])
        await self.session.execute(update(SqlLoopBudget).where(SqlLoopBudget.day == day).values(
            cpu_seconds=SqlLoopBudget.cpu_seconds + cpu_s, gpu_seconds=SqlLoopBudget.gpu_seconds + gpu_s,
            updated_at=now))

    async def spent(self, day: str) -> tuple[float, float]:
        row = await self.session.get(SqlLoopBudget, day, populate_existing=True)
        return (row.cpu_seconds, row.gpu_seconds) if row is not None else (0.0, 0.0)

    # --- schedules ------------------------------------------------------------------------------------------------

    async def schedules(self) -> dict[str, ScheduleState]:
        rows = (await self.session.scalars(select(SqlLoopSchedule))).all()
        return {r.name: ScheduleState(r.name, _aware(r.last_run_at), r.last_status, r.last_error, r.last_result or {})
                for r in rows}

    async def claim_schedule(self, name: str, period_start: datetime, holder: str, now: datetime) -> bool:
        """Mark the schedule as run for the period that began at ``period_start``; False when it already ran in it."""
        await self.session.execute(insert_ignore(self.session, SqlLoopSchedule.__table__),
                                   [{"name": name, "last_result": {}}])
        result = await self.session.execute(
            update(SqlLoopSchedule)
            .where(SqlLoopSchedule.name == name,
                   or_(SqlLoopSchedule.last_run_at.is_(None), SqlLoopSchedule.last_run_at < period_start))
            .values(last_run_at=now, last_status="RUNNING", last_holder=holder, last_error=None))
        return result.rowcount == 1

    async def finish_schedule(self, name: str, status: str, result: dict[str, Any], error: str | None = None) -> None:
        await self.session.execute(update(SqlLoopSchedule).where(SqlLoopSchedule.name == name).values(
            last_status=status, last_result=result, last_error=error))

    # --- leases ---------------------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
        """Take or renew the lease: free, expired, or already ours. True when ``holder`` holds it afterwards."""
        expires = now + timedelta(seconds=ttl_s)
        table = SqlLease.__table__
        inserted = await self.session.execute(
            insert_ignore(self.session, table).returning(table.c.name),
            [{"name": name, "holder": holder, "expires_at": expires, "acquired_at": now}])
        if inserted.all():
            return True
        result = await self.session.execute(
            update(SqlLease)
            .where(SqlLease.name == name, or_(SqlLease.holder == holder, SqlLease.expires_at < now))
            .values(holder=holder, expires_at=expires))
        return result.rowcount == 1

    async def release_lease(self, name: str, holder: str, now: datetime) -> None:
        """Give the lease up at once (orderly shutdown), so the next process need not wait for it to expire."""
        await self.session.execute(update(SqlLease).where(SqlLease.name == name, SqlLease.holder == holder)
                                   .values(expires_at=now - timedelta(seconds=1)))

    async def lease(self, name: str) -> tuple[str, datetime] | None:
        row = await self.session.get(SqlLease, name, populate_existing=True)
        return (row.holder, _aware(row.expires_at)) if row is not None else None

    # --- what the policies look at --------------------------------------------------------------------------------

    def _group(self, agent_id: str | None, task_type: str | None) -> Any:
        clauses = [SqlTrainingExample.status == "ACCEPTED"]
        if agent_id is not None:
            clauses.append(SqlTrainingExample.agent_id == agent_id)
        if task_type is not None:
            clauses.append(SqlTrainingExample.task_type == task_type)
        return and_(*clauses)

    def _not_in(self, dataset_id: str | None, version: str | None) -> Any:
        if dataset_id is None or version is None:
            return true()
        return ~exists().where(SqlDatasetMember.dataset_id == dataset_id, SqlDatasetMember.version == version,
                               SqlDatasetMember.example_id == SqlTrainingExample.example_id)

    async def group_examples(self, agent_id: str | None, task_type: str | None, labels: list[str],
                             dataset_id: str | None = None, version: str | None = None) -> list[TrainingExample]:
        """ACCEPTED examples of a group (all its ``labels`` present), minus the members of a dataset version."""
        stmt = (select(SqlTrainingExample)
                .where(self._group(agent_id, task_type), self._not_in(dataset_id, version))
                .order_by(SqlTrainingExample.created_at, SqlTrainingExample.example_id))
        examples = [to_model(r) for r in (await self.session.scalars(stmt)).all()]
        wanted = set(labels)
        return [e for e in examples if wanted <= set(e.labels)] if wanted else examples

    async def count_group(self, agent_id: str | None, task_type: str | None, labels: list[str],
                          dataset_id: str | None = None, version: str | None = None) -> int:
        """``len(group_examples(...))``, counted in SQL when no label selector needs the rows."""
        if labels:
            return len(await self.group_examples(agent_id, task_type, labels, dataset_id, version))
        stmt = (select(func.count()).select_from(SqlTrainingExample)
                .where(self._group(agent_id, task_type), self._not_in(dataset_id, version)))
        return int(await self.session.scalar(stmt) or 0)

    async def dataset_head(self, name: str) -> tuple[str, str] | None:
        """``(dataset_id, latest_version)`` of the dataset with this name."""
        row = (await self.session.execute(select(SqlDataset.dataset_id, SqlDataset.latest_version)
                                          .where(SqlDataset.name == name))).first()
        return (row[0], row[1]) if row is not None else None

    async def accepted_task_types(self) -> list[str]:
        """The task types of the ACCEPTED examples, sorted. A skip scan of the (status, task_type, ...) index: one
        seek per task type (each the next one after the last), not a read of every accepted example."""
        e = SqlTrainingExample

        def after(previous: Any) -> Any:
            stmt = select(e.task_type).where(e.status == "ACCEPTED")
            stmt = stmt if previous is None else stmt.where(e.task_type > previous)
            return stmt.order_by(e.task_type).limit(1).scalar_subquery()

        types = select(after(None).label("task_type")).cte("task_types", recursive=True)
        types = types.union_all(select(after(types.c.task_type)).where(types.c.task_type.is_not(None)))
        stmt = select(types.c.task_type).where(types.c.task_type.is_not(None))
        return sorted(t for t in (await self.session.scalars(stmt)).all() if t)

    async def preference_pairs(self, task_type: str | None) -> int:
        stmt = select(func.count()).select_from(SqlPreferencePair)
        if task_type is not None:
            stmt = stmt.where(SqlPreferencePair.task_type == task_type)
        return int(await self.session.scalar(stmt) or 0)

    async def active_jobs(self) -> dict[str, int]:
        """Jobs not yet terminal, by status."""
        stmt = (select(SqlTrainingJob.status, func.count())
                .where(SqlTrainingJob.status.not_in([s.value for s in TERMINAL_JOB_STATES]))
                .group_by(SqlTrainingJob.status))
        return {status: int(n) for status, n in (await self.session.execute(stmt)).all()}

    async def models_per_stage(self) -> dict[str, int]:
        stmt = select(SqlModel.stage, func.count()).group_by(SqlModel.stage)
        return {stage: int(n) for stage, n in (await self.session.execute(stmt)).all()}
