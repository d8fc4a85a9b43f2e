"""One model's outcome series over a time window: what ``l07 models outcomes`` and
``GET /api/v1/models/{id}/outcomes`` show (summary, per task type, time buckets, the release watch, incidents)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...store.db import Database
from ...store.repositories.feedback import WatchRepository
from ...store.repositories.outcomes import OutcomeRepository

MAX_BUCKETS = 500


def _aware(value: datetime | None) -> datetime | None:
    # A time without a zone is taken as UTC, the zone every stored time is in.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _buckets(points: list[tuple[datetime, float, bool]], since: datetime, width: timedelta) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for at, quality, is_error in points:
        i = int((at - since) / width)
        b = out.setdefault(i, {"start": since + i * width, "samples": 0, "quality_sum": 0.0, "errors": 0})
        b["samples"] += 1
        b["quality_sum"] += quality
        b["errors"] += is_error
    return [{"start": b["start"], "samples": b["samples"], "quality_mean": b["quality_sum"] / b["samples"],
             "error_rate": b["errors"] / b["samples"]} for _, b in sorted(out.items())]


async def model_outcomes(db: Database, model_id: str, since: datetime | None = None, until: datetime | None = None,
                         bucket: timedelta | None = None) -> dict[str, Any]:
    """The scored outcomes of ``model_id`` completed in ``[since, until)``.

    Raises:
        L07Error: E7110 for an empty window or a bucket that would cut it into more than 500 parts; E7250 when the
            id is neither registered nor seen in any outcome.
    """
    since, until = _aware(since), _aware(until)
    if since is not None and until is not None and until <= since:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"--until ({until}) must be after --since ({since})")
    async with db.session() as session:
        repo = OutcomeRepository(session)
        registered = await repo.served_models([model_id])
        rows = await repo.summary(model_id, since, until)
        summary = rows[0] if rows else {}
        if not registered and not summary.get("samples") and not await repo.unscored(model_id):
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND,
                           f"no model {model_id!r}: not registered and no execution reported it", model_id=model_id)
        by_task = await repo.summary(model_id, since, until, by_task_type=True)
        unscored = await repo.unscored(model_id, since, until)
        series: list[dict[str, Any]] = []
        if bucket is not None and summary.get("samples"):
            start = since or summary["first_at"]
            end = until or summary["last_at"] + bucket
            if bucket.total_seconds() <= 0 or (end - start) / bucket > MAX_BUCKETS:
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                               f"bucket {bucket} cuts the window into more than {MAX_BUCKETS} parts")
            series = _buckets(await repo.points(model_id, since, until), start, bucket)
        watches = WatchRepository(session)
        watch = await watches.get(model_id)
        incidents = await watches.incidents(model_id)
    return {"model_id": model_id, "model_name": registered.get(model_id), "registered": bool(registered),
            "since": since, "until": until, "summary": summary, "unscored": unscored, "by_task_type": by_task,
            "series": series, "bucket_seconds": bucket.total_seconds() if bucket else None,
            "watch": watch, "incidents": incidents}
