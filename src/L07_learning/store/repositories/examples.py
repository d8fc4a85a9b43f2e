"""Training examples in ``l07_training_examples``: bulk insert (idempotent), read back, count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models.training_example import ExampleStatus, TrainingExample
from ..tables import SqlTrainingExample
from ._upsert import chunks, insert_ignore


def example_row(ex: TrainingExample, composite: float | None, data: dict[str, Any]) -> dict[str, Any]:
    """The ``l07_training_examples`` row of a decided example; ``data`` is its (secret-masked) JSON form."""
    status = ex.status.value if isinstance(ex.status, ExampleStatus) else str(ex.status)
    return {
        "example_id": ex.example_id,
        "source_type": ex.source_type.value,
        "execution_id": ex.execution_id,
        "agent_id": ex.agent_id,
        "task_type": ex.task_type,
        "domain": ex.domain,
        "status": status,
        "content_hash": ex.content_hash,
        "quality_score": ex.quality_score,
        "confidence": ex.confidence,
        "composite_score": composite,
        "input_text": data.get("input_text", ex.input_text),
        "output_text": data.get("output_text", ex.output_text),
        "data": data,
        "created_at": ex.created_at,
    }


def to_model(row: SqlTrainingExample) -> TrainingExample:
    """The domain model of a stored row (its status column wins over the JSON copy)."""
    return TrainingExample.model_validate({**row.data, "status": row.status})


class ExampleRepository:
    """Data access for training examples."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, examples: list[TrainingExample],
                       stored_form: Callable[[TrainingExample], dict[str, Any]] | None = None) -> int:
        """Insert examples; one whose ``example_id`` is already stored is skipped (idempotency is on the id: several
        examples may share an execution, contract §9).

        Args:
            stored_form: The JSON form to persist per example (e.g. with secrets masked); default its plain dump.

        Returns:
            The number of rows actually inserted.
        """
        if not examples:
            return 0
        dump = stored_form or (lambda e: e.model_dump(mode="json"))
        table = SqlTrainingExample.__table__
        inserted = 0
        for part in chunks([example_row(e, None, dump(e)) for e in examples]):
            result = await self.session.execute(insert_ignore(self.session, table).returning(table.c.example_id), part)
            inserted += len(result.all())
        return inserted

    async def get_many(self, example_ids: list[str]) -> list[TrainingExample]:
        out: dict[str, TrainingExample] = {}
        for part in chunks(example_ids):
            rows = await self.session.scalars(select(SqlTrainingExample).where(SqlTrainingExample.example_id.in_(part)))
            out.update({r.example_id: to_model(r) for r in rows.all()})
        return [out[i] for i in example_ids if i in out]

    async def list(
        self, status: str | None = None, source_type: str | None = None, limit: int | None = None
    ) -> list[TrainingExample]:
        stmt = select(SqlTrainingExample).order_by(SqlTrainingExample.created_at, SqlTrainingExample.example_id)
        if status:
            stmt = stmt.where(SqlTrainingExample.status == status)
        if source_type:
            stmt = stmt.where(SqlTrainingExample.source_type == source_type)
        if limit:
            stmt = stmt.limit(limit)
        return [to_model(r) for r in (await self.session.scalars(stmt)).all()]

    async def count(self, status: str | None = None, source_type: str | None = None) -> int:
        stmt = select(func.count()).select_from(SqlTrainingExample)
        if status:
            stmt = stmt.where(SqlTrainingExample.status == status)
        if source_type:
            stmt = stmt.where(SqlTrainingExample.source_type == source_type)
        return int(await self.session.scalar(stmt) or 0)

    async def keys(self) -> list[tuple[str, str | None]]:
        """``(source_type, execution_id)`` of every stored example, one pair per example (several examples may share
        one execution)."""
        rows = await self.session.execute(select(SqlTrainingExample.source_type, SqlTrainingExample.execution_id))
        return [(r[0], r[1]) for r in rows.all()]
