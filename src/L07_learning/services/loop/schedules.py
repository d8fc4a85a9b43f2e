"""Cron schedules of the loop (UTC), run by the leader only, each at most once per period (contract §7.4, §9).

A schedule's period is the time since its most recent cron fire. Before running, the leader claims the period in
``l07_loop_schedules`` with a conditional update, so neither a restart nor a second process (say, an old leader
that has not yet noticed it lost its lease) runs the same period twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter

from ...models._base import utcnow
from ...store.db import Database
from ...store.repositories.events import ProcessedEventRepository
from ...store.repositories.loop import LoopRepository
from ..model_registry import ModelRegistry
from ..registry.signing import SigningKeyring
from ..retention import RetentionService

log = logging.getLogger(__name__)

Action = Callable[[], Awaitable[dict[str, Any]]]

# Contract §7.4: keys rotate every 90 days; processed-event keys are kept at least 7 days (the other retention
# periods live in services/retention.py).
KEY_MAX_AGE = timedelta(days=90)
PROCESSED_EVENT_RETENTION_DAYS = 7.0


@dataclass(frozen=True)
class ScheduledTask:
    """A named action and its cron expression (five fields, UTC)."""

    name: str
    cron: str
    action: Action

    def period_start(self, now: datetime) -> datetime:
        """The most recent fire time at or before ``now``."""
        it = croniter(self.cron, now + timedelta(microseconds=1))
        return it.get_prev(datetime)

    def next_run(self, now: datetime) -> datetime:
        return croniter(self.cron, now).get_next(datetime)


class Scheduler:
    """Runs the due tasks of a list.

    Args:
        db: Where each task's last run is recorded.
        tasks: The schedules.
        holder: This process's lease holder name (recorded with each run).
    """

    def __init__(self, db: Database, tasks: list[ScheduledTask], holder: str) -> None:
        for task in tasks:
            if not croniter.is_valid(task.cron):
                raise ValueError(f"schedule {task.name}: invalid cron expression {task.cron!r}")
        self.db = db
        self.tasks = tasks
        self.holder = holder

    async def run_due(self, now: datetime | None = None, *,
                      still_leading: Callable[[], Awaitable[bool]] | None = None) -> dict[str, str]:
        """Run every task whose current period has not run yet; a failing task is recorded and the rest still run.

        Args:
            now: The time the periods are judged at (default now).
            still_leading: Renews the leader lease before each task; once it says False the rest are left to the new
                leader.

        Returns:
            ``{name: "OK" | "FAILED"}`` for the tasks run now.
        """
        now = now or utcnow()
        ran: dict[str, str] = {}
        for task in self.tasks:
            if still_leading is not None and not await still_leading():
                log.warning("loop leadership lost; the new leader runs the remaining schedules")
                break
            async with self.db.session() as session:
                claimed = await LoopRepository(session).claim_schedule(task.name, task.period_start(now), self.holder, now)
            if not claimed:
                continue
            status, result, error = "OK", {}, None
            try:
                result = await task.action()
            except Exception as exc:  # noqa: BLE001 - one broken schedule must not stop the loop or the others
                log.exception("schedule %s failed", task.name)
                status, error = "FAILED", f"{exc.__class__.__name__}: {exc}"
            async with self.db.session() as session:
                await LoopRepository(session).finish_schedule(task.name, status, result, error)
            ran[task.name] = status
        return ran

    async def status(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Per schedule: cron, last run and its outcome, next run."""
        now = now or utcnow()
        async with self.db.session() as session:
            stored = await LoopRepository(session).schedules()
        out = []
        for task in self.tasks:
            s = stored.get(task.name)
            out.append({"name": task.name, "cron": task.cron,
                        "last_run_at": s.last_run_at.isoformat() if s and s.last_run_at else None,
                        "last_status": s.last_status if s else None, "last_error": s.last_error if s else None,
                        "next_run_at": task.next_run(now).isoformat()})
        return out


async def rotate_key_when_old(registry: ModelRegistry, keyring: SigningKeyring) -> dict[str, Any]:
    """Rotate the signing key once the active one is older than 90 days; an external key is only reported."""
    active = next(k for k in registry.list_signing_keys() if k.status == "active")
    age = utcnow() - active.created_at
    out: dict[str, Any] = {"active": active.version, "age_days": round(age.total_seconds() / 86400, 2), "rotated": False}
    if age < KEY_MAX_AGE:
        return out
    if keyring.external:
        log.warning("the external signing key is older than 90 days: rotate it where it is managed",
                    extra={"key_version": active.version})
        out["external"] = True
        return out
    rotated = await registry.rotate_signing_key(actor="l07-loop")
    out.update(rotated=True, new=rotated["key"].version, models_on_retired_keys=rotated["models_on_retired_keys"])
    return out


def default_tasks(service: Any) -> list[ScheduledTask]:
    """The schedules of the issue: daily mining and strategy advice, archive, retention purge, join sweep,
    processed-event purge and the key-rotation check, bound to a built ``LearningService``."""
    db: Database = service.db

    async def mine() -> dict[str, Any]:
        result = await service.patterns.mine()
        recommendations = await service.strategies.recommend()
        return {"patterns": len(result.patterns), "events_published": result.events_published,
                "strategies_recommended": sum(1 for r in recommendations if r.recommended)}

    async def archive() -> dict[str, Any]:
        return {"archived": await service.registry.archive_superseded()}

    async def retention() -> dict[str, Any]:
        # Everything contract §7.4 keeps for a limited time, not only loop runs (``services/retention.py``).
        report = await RetentionService(db, service.settings).purge(actor="l07-loop")
        return {"purged": report.counts, "files_removed": len(report.files_removed), "verified": report.verified}

    async def sweep() -> dict[str, Any]:
        summary = await service.ingestion.sweep()
        return {"expired_joins": summary.expired_joins, "pending_join": summary.pending_join}

    async def purge_processed() -> dict[str, Any]:
        async with db.session() as session:
            return {"purged": await ProcessedEventRepository(session).purge_older_than(PROCESSED_EVENT_RETENTION_DAYS)}

    async def key_check() -> dict[str, Any]:
        return await rotate_key_when_old(service.registry, service.registry.keyring)

    return [
        ScheduledTask("pattern_mining", "0 3 * * *", mine),
        ScheduledTask("archive_superseded", "30 2 * * *", archive),
        ScheduledTask("retention_purge", "0 2 * * *", retention),
        ScheduledTask("join_sweep", "*/5 * * * *", sweep),
        ScheduledTask("processed_event_purge", "15 4 * * *", purge_processed),
        ScheduledTask("key_rotation_check", "0 5 * * *", key_check),
    ]
