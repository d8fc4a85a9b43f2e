"""The join window and the late-join TTL (contract §1.7 rule 2): joins left waiting past their window become
``pending_evaluation`` (a trace without a score, E7011) or ``orphan_score`` (scores without a trace, kept as unprocessed
reward signals); ``pending_evaluation`` rows past the TTL become ``expired``. Runs inside an ingestion transaction (or
``IngestionPipeline.sweep``'s own)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ...models.error_codes import L07ErrorCode
from ...observability.metrics import ERRORS
from ...settings import Settings
from ...store.repositories.joins import JoinRepository, window_cutoff
from ...store.repositories.rewards import RewardRepository
from . import examples as build
from .results import IngestSummary
from .rewards import compute_rewards

log = logging.getLogger(__name__)


async def sweep_joins(session: AsyncSession, settings: Settings, redact: Callable[[Any], Any],
                      summary: IngestSummary) -> None:
    """Apply the join window and the late-join TTL now, adding what changed to ``summary``."""
    now = utcnow()
    joins = JoinRepository(session)
    window = window_cutoff(now, settings.join_window_s)
    ttl = window_cutoff(now, settings.late_join_ttl_s)
    to_pending, to_orphan, orphan_signals = [], [], []
    for row in await joins.due("waiting", window):
        if row.trace is not None:
            to_pending.append(row.key)
        elif row.scores:
            to_orphan.append(row.key)
            score, _ = build.pick_score(row.scores)
            orphan_signals.append(build.reward_signal(score, None, score.get("task_type") or "general", False))
    expired = [r.key for r in await joins.due("pending_evaluation", ttl)]
    await joins.set_status(to_pending, "pending_evaluation")
    await joins.set_status(to_orphan, "orphan_score")
    await joins.set_status(expired, "expired")
    if orphan_signals:
        batch = compute_rewards(orphan_signals)
        await RewardRepository(session, redact=redact).add_signals([(s, None) for s in batch.rewards])
    if to_pending:
        ERRORS.labels(error_code=L07ErrorCode.QUALITY_SCORE_NOT_FOUND.value, error_type="data").inc(len(to_pending))
        log.warning("E7011 %d traces without a score after %.0f s: pending_evaluation", len(to_pending),
                    settings.join_window_s)
    summary.expired_joins += len(expired)
    summary.orphan_scores += len(to_orphan)
