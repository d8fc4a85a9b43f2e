"""Registered golden cases (regression suites) for the validator."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import new_id, utcnow
from ..tables import SqlGoldenCase


class GoldenCaseRepository:
    """Data access for ``l07_golden_cases``."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, suite: str, cases: list[dict[str, Any]]) -> list[str]:
        """Store cases (``messages``, ``expected``, optional ``match_mode``, ``task_type``, ``difficulty``, ``case_id``)."""
        ids: list[str] = []
        for case in cases:
            case_id = str(case.get("case_id") or new_id())
            self.session.add(
                SqlGoldenCase(
                    case_id=case_id,
                    suite=suite,
                    task_type=str(case.get("task_type", "general")),
                    difficulty=str(case.get("difficulty", "MEDIUM")).upper(),
                    messages=list(case["messages"]),
                    expected=str(case["expected"]),
                    match_mode=str(case.get("match_mode", "exact")),
                    created_at=utcnow(),
                )
            )
            ids.append(case_id)
        await self.session.flush()
        return ids

    async def list_suite(self, suite: str) -> list[dict[str, Any]]:
        rows = (await self.session.scalars(select(SqlGoldenCase).where(SqlGoldenCase.suite == suite)
                                           .order_by(SqlGoldenCase.case_id))).all()
        return [
            {"case_id": r.case_id, "messages": r.messages, "expected": r.expected, "match_mode": r.match_mode,
             "task_type": r.task_type, "difficulty": r.difficulty}
            for r in rows
        ]
