"""Reward signals (``l07_reward_signals``) and preference pairs (``l07_preference_pairs``), contract §3.6 / §5.5.

A signal is stored when its score arrives (numbers, outcome, the L06 metrics); the answer it rated (prompt and output
text) is attached only once the quality filter accepted that answer's example, and only accepted answers are paired.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models.reward_signal import PreferencePair, RewardSignal
from ..tables import SqlPreferencePair, SqlRewardSignal
from ._upsert import chunks, insert_ignore


class RewardRepository:
    """Data access for reward signals and preference pairs.

    Args:
        session: The unit of work.
        redact: Storage form of the signals' and pairs' content (the service layer passes its secret and PII
            redactor); ids, hashes and numbers must survive it.
    """

    def __init__(self, session: AsyncSession, redact: Callable[[Any], Any] | None = None) -> None:
        self.session = session
        self.redact = redact or (lambda value: value)

    async def add_signals(self, signals: list[tuple[RewardSignal, dict[str, Any] | None]]) -> None:
        """Store signals (idempotent on ``signal_id``). The optional dict is the scored answer
        ``{prompt_hash, prompt, example_id, output_text}`` used to pair executions of the same task later."""
        rows = []
        for sig, answer in signals:
            data = sig.model_dump(mode="json")
            if answer:
                data["answer"] = {k: v for k, v in answer.items() if k != "prompt_hash"}
            data = self.redact(data)
            rows.append(
                {
                    "signal_id": sig.signal_id,
                    "execution_id": sig.execution_id,
                    "task_type": sig.task_type,
                    "quality_score": sig.quality_score,
                    "prompt_hash": answer.get("prompt_hash") if answer else None,
                    "r_final": sig.r_final,
                    "processed_by_learning": sig.processed_by_learning,
                    "data": data,
                    "created_at": sig.timestamp,
                }
            )
        table = SqlRewardSignal.__table__
        for part in chunks(rows):
            await self.session.execute(insert_ignore(self.session, table), part)

    async def attach_answers(self, answers: list[tuple[str, str, dict[str, Any]]]) -> int:
        """Attach accepted answers to their stored signals: ``(signal_id, prompt_hash, {prompt, example_id,
        output_text})`` each. Returns how many signals were found (a signal dropped for low confidence has none)."""
        found = 0
        by_id = {sid: (h, a) for sid, h, a in answers}
        for part in chunks(sorted(by_id)):
            rows = (await self.session.execute(
                select(SqlRewardSignal.signal_id, SqlRewardSignal.data).where(SqlRewardSignal.signal_id.in_(part))
            )).all()
            values = [{"signal_id": sid, "prompt_hash": by_id[sid][0],
                       "data": {**(data or {}), "answer": self.redact(by_id[sid][1])}} for sid, data in rows]
            if values:
                await self.session.execute(update(SqlRewardSignal), values)  # bulk UPDATE by primary key
            found += len(values)
        return found

    async def answers_by_prompt(self, prompt_hashes: list[str], per_prompt: int = 5) -> dict[str, list[dict[str, Any]]]:
        """The ``per_prompt`` most recent scored answers per prompt hash, newest first:
        ``{example_id, output_text, quality_score, prompt}`` (bounded, so hot prompts stay cheap)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for part in chunks(sorted(set(prompt_hashes))):
            ranked = (
                select(
                    SqlRewardSignal.prompt_hash,
                    SqlRewardSignal.quality_score,
                    SqlRewardSignal.data,
                    func.row_number()
                    .over(partition_by=SqlRewardSignal.prompt_hash,
                          order_by=(SqlRewardSignal.created_at.desc(), SqlRewardSignal.signal_id))
                    .label("rn"),
                )
                .where(SqlRewardSignal.prompt_hash.in_(part))
                .subquery()
            )
            stmt = select(ranked.c.prompt_hash, ranked.c.quality_score, ranked.c.data).where(ranked.c.rn <= per_prompt)
            for h, q, data in (await self.session.execute(stmt)).all():
                answer = (data or {}).get("answer")
                if answer:
                    out.setdefault(h, []).append({**answer, "quality_score": q})
        return out

    async def list_signals(self, processed: bool | None = None, limit: int | None = None) -> list[RewardSignal]:
        stmt = select(SqlRewardSignal).order_by(SqlRewardSignal.created_at)
        if processed is not None:
            stmt = stmt.where(SqlRewardSignal.processed_by_learning == processed)
        if limit:
            stmt = stmt.limit(limit)
        return [RewardSignal.model_validate({k: v for k, v in r.data.items() if k != "answer"})
                for r in (await self.session.scalars(stmt)).all()]

    async def add_pairs(self, pairs: list[PreferencePair]) -> int:
        """Store preference pairs (idempotent on ``pair_id``); returns how many were new."""
        table = SqlPreferencePair.__table__
        inserted = 0
        for part in chunks(pairs):
            rows = [
                {
                    "pair_id": p.pair_id,
                    "task_type": p.task_type,
                    "source": p.source,
                    "chosen_example_id": p.chosen_example_id,
                    "rejected_example_id": p.rejected_example_id,
                    "data": self.redact(p.model_dump(mode="json")),
                    "created_at": p.created_at,
                }
                for p in part
            ]
            result = await self.session.execute(insert_ignore(self.session, table).returning(table.c.pair_id), rows)
            inserted += len(result.all())
        return inserted

    async def list_pairs(self, task_type: str | None = None, limit: int | None = None) -> list[PreferencePair]:
        stmt = select(SqlPreferencePair).order_by(SqlPreferencePair.created_at, SqlPreferencePair.pair_id)
        if task_type:
            stmt = stmt.where(SqlPreferencePair.task_type == task_type)
        if limit:
            stmt = stmt.limit(limit)
        return [PreferencePair.model_validate(r.data) for r in (await self.session.scalars(stmt)).all()]

    async def pairs_for_examples(self, example_ids: list[str]) -> list[PreferencePair]:
        """The stored pairs whose chosen answer is one of ``example_ids`` (an imported preference file's pairs, found
        through the examples its accepted lines became), oldest first."""
        out: list[PreferencePair] = []
        for part in chunks(sorted(set(example_ids))):
            stmt = (select(SqlPreferencePair).where(SqlPreferencePair.chosen_example_id.in_(part))
                    .order_by(SqlPreferencePair.created_at, SqlPreferencePair.pair_id))
            out += [PreferencePair.model_validate(r.data) for r in (await self.session.scalars(stmt)).all()]
        return sorted(out, key=lambda p: (p.created_at, p.pair_id))

    async def count_signals(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(SqlRewardSignal)) or 0)

    async def count_pairs(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(SqlPreferencePair)) or 0)
