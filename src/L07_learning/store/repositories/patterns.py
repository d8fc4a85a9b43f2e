"""Behaviour patterns, planning strategies and planning outcomes (``l07_patterns``, ``l07_planning_strategies``,
``l07_planning_outcomes``), plus the read-only trace view the pattern miner needs from ``l07_training_examples``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models import BehavioralPattern, PlanningStrategy
from ...models._base import utcnow
from ..tables import SqlPattern, SqlPlanningOutcome, SqlPlanningStrategy, SqlTrainingExample


class PatternRepository:
    """Data access for mined behaviour patterns."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def save(self, pattern: BehavioralPattern) -> None:
        """Insert or replace one pattern (keyed by ``pattern_id``)."""
        row = await self.session.get(SqlPattern, pattern.pattern_id)
        data = pattern.model_dump(mode="json")
        if row is None:
            self.session.add(SqlPattern(pattern_id=pattern.pattern_id, agent_type=pattern.agent_type,
                                        pattern_type=pattern.pattern_type, data=data, discovered_at=pattern.discovered_at))
        else:
            row.agent_type, row.pattern_type, row.data = pattern.agent_type, pattern.pattern_type, data
            row.discovered_at = pattern.discovered_at

    async def get(self, pattern_id: str) -> BehavioralPattern | None:
        row = await self.session.get(SqlPattern, pattern_id)
        return BehavioralPattern.model_validate(row.data) if row is not None else None

    async def list(self, agent_type: str | None = None, pattern_type: str | None = None, limit: int = 1000) -> list[BehavioralPattern]:
        """Stored patterns, newest first."""
        stmt = select(SqlPattern).order_by(SqlPattern.discovered_at.desc(), SqlPattern.pattern_id).limit(limit)
        if agent_type:
            stmt = stmt.where(SqlPattern.agent_type == agent_type)
        if pattern_type:
            stmt = stmt.where(SqlPattern.pattern_type == pattern_type)
        return [BehavioralPattern.model_validate(r.data) for r in (await self.session.scalars(stmt)).all()]

    async def trace_rows(self, agent_type: str | None = None, task_type: str | None = None,
                         limit: int = 100_000) -> list[dict[str, Any]]:
        """Stored training examples reduced to what the miner needs: ids, agent/task type, tool steps, labels."""
        stmt = select(SqlTrainingExample).order_by(SqlTrainingExample.created_at, SqlTrainingExample.example_id).limit(limit)
        if agent_type:
            stmt = stmt.where(SqlTrainingExample.agent_id == agent_type)
        if task_type:
            stmt = stmt.where(SqlTrainingExample.task_type == task_type)
        out: list[dict[str, Any]] = []
        for r in (await self.session.scalars(stmt)).all():
            data = r.data or {}
            out.append({
                "example_id": r.example_id,
                "execution_id": r.execution_id or r.example_id,
                "agent_id": r.agent_id,
                "task_type": r.task_type,
                "expected_actions": data.get("expected_actions") or [],
                "labels": data.get("labels") or [],
                "metadata": data.get("metadata") or {},
            })
        return out


def strategy_key(task_type: str, pruning_rules: list[str], search_depth: int | None, constraint_order: list[str],
                 decomposition_style: str | None) -> str:
    """Canonical identity of a strategy: the same settings always map to the same key (and row)."""
    rules = ",".join(sorted(pruning_rules))
    order = ">".join(constraint_order)
    return f"{task_type}|depth={search_depth}|rules={rules}|order={order}|decomp={decomposition_style or ''}"


class PlanningRepository:
    """Data access for planning outcomes (the optimiser's evidence) and the strategies derived from them."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def existing_plan_ids(self, plan_ids: list[str]) -> set[str]:
        """The subset of ``plan_ids`` already stored."""
        found: set[str] = set()
        for i in range(0, len(plan_ids), 500):  # bounded IN lists
            chunk = plan_ids[i:i + 500]
            rows = await self.session.scalars(select(SqlPlanningOutcome.plan_id).where(SqlPlanningOutcome.plan_id.in_(chunk)))
            found.update(rows.all())
        return found

    def add_outcome(self, plan_id: str, task_type: str, key: str, success: bool | None, data: dict[str, Any]) -> None:
        """Stage one planning outcome for insertion (callers skip known ``plan_id``s first)."""
        self.session.add(SqlPlanningOutcome(plan_id=plan_id, task_type=task_type, strategy_key=key, success=success,
                                            data=data, created_at=utcnow()))

    async def outcomes(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Stored outcomes in arrival order (``plan_id``, ``task_type``, ``strategy_key``, ``success``, ``data``)."""
        stmt = select(SqlPlanningOutcome).order_by(SqlPlanningOutcome.created_at, SqlPlanningOutcome.plan_id)
        if task_type:
            stmt = stmt.where(SqlPlanningOutcome.task_type == task_type)
        return [
            {"plan_id": r.plan_id, "task_type": r.task_type, "strategy_key": r.strategy_key, "success": r.success, "data": r.data}
            for r in (await self.session.scalars(stmt)).all()
        ]

    async def task_types(self) -> list[str]:
        rows = await self.session.scalars(select(SqlPlanningOutcome.task_type).distinct())
        return sorted(rows.all())

    async def save_strategy(self, strategy: PlanningStrategy) -> None:
        """Insert or replace one strategy (keyed by ``strategy_id``)."""
        row = await self.session.get(SqlPlanningStrategy, strategy.strategy_id)
        data = strategy.model_dump(mode="json")
        if row is None:
            self.session.add(SqlPlanningStrategy(strategy_id=strategy.strategy_id, task_type=strategy.task_type, data=data,
                                                 recommended_at=strategy.recommended_at, created_at=utcnow()))
        else:
            row.data, row.recommended_at = data, strategy.recommended_at

    async def get_strategy(self, strategy_id: str) -> PlanningStrategy | None:
        row = await self.session.get(SqlPlanningStrategy, strategy_id)
        return PlanningStrategy.model_validate(row.data) if row is not None else None

    async def list_strategies(self, task_type: str | None = None, recommended_only: bool = False) -> list[PlanningStrategy]:
        stmt = select(SqlPlanningStrategy).order_by(SqlPlanningStrategy.task_type, SqlPlanningStrategy.strategy_id)
        if task_type:
            stmt = stmt.where(SqlPlanningStrategy.task_type == task_type)
        if recommended_only:
            stmt = stmt.where(SqlPlanningStrategy.recommended_at.is_not(None))
        return [PlanningStrategy.model_validate(r.data) for r in (await self.session.scalars(stmt)).all()]
