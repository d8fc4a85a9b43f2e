"""The per-model outcome series, written in the ingestion transaction (contract §9 "Production feedback").

Which model served an execution comes from ``model.response_logged`` (``model_name``, §1.5) or from a trace's
``metadata.model_id`` / ``metadata.model_name`` (§1.2); the execution's quality and error come from its L06 score
(``failure_classification`` ``error`` or ``timeout`` is an error; without a classification the trace's outcome
decides). A batch's events are merged per execution here, then ``OutcomeRepository.merge`` joins them with what is
stored, in whichever order they arrive. A reported name that is a registered model id, or the name of a model with
an ACTIVE version, is stored as that model's id; anything else is kept as reported (an external model).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ...events.cloudevent import RESPONSE, SCORE, TRACE
from ...store.repositories.outcomes import OutcomeRepository
from .parsing import Parsed

ERROR_CLASSES = frozenset({"error", "timeout"})


def _time(value: Any, default: datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return default
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=default.tzinfo)
    return default


def _fields(p: Parsed, now: datetime) -> dict[str, Any]:
    rec = p.record or {}
    at = _time(p.event.time if p.event else None, now)
    if p.kind == RESPONSE:
        return {"model_ref": rec["model_name"], "model_source": "response", "served_at": at,
                "latency_ms": rec["latency_ms"], "total_tokens": rec["token_usage"]["total_tokens"]}
    if p.kind == TRACE:
        out: dict[str, Any] = {"task_type": rec.get("task_type"), "failure": rec["outcome"],
                               "is_error": rec["outcome"] in ERROR_CLASSES}
        ref = rec.get("model_id") or rec.get("model_name")
        if ref:
            out.update(model_ref=ref, model_source="trace", served_at=_time(rec.get("end_time"), at))
        return out
    failure = rec.get("failure_classification")
    return {"task_type": rec.get("task_type"), "quality_score": rec["quality_score"],
            "failure": failure, "is_error": None if failure is None else failure in ERROR_CLASSES,
            "scored_at": _time(rec.get("timestamp"), at)}


def outcome_rows(work: list[Parsed], now: datetime) -> dict[str, dict[str, Any]]:
    """One row per execution from a batch's valid trace, response and score events; the first value of each field
    wins, except that a score's failure classification replaces a trace's outcome."""
    rows: dict[str, dict[str, Any]] = {}
    for p in work:
        if p.kind not in (TRACE, RESPONSE, SCORE) or not p.record or not p.record.get("execution_id"):
            continue
        row = rows.setdefault(p.record["execution_id"], {"execution_id": p.record["execution_id"]})
        fields = _fields(p, now)
        scored = p.kind == SCORE and fields["is_error"] is not None and row.get("quality_score") is None
        for key, value in fields.items():
            if value is not None and (row.get(key) is None or (scored and key in ("failure", "is_error"))):
                row[key] = value
    return rows


async def record_outcomes(session: AsyncSession, work: list[Parsed], now: datetime) -> int:
    """Merge the batch's outcome information into ``l07_model_outcomes``; returns the executions touched."""
    rows = outcome_rows(work, now)
    if not rows:
        return 0
    repo = OutcomeRepository(session)
    resolved = await repo.resolve({r["model_ref"] for r in rows.values() if r.get("model_ref")})
    for row in rows.values():
        if row.get("model_ref"):
            row["model_id"] = resolved.get(row["model_ref"], row["model_ref"])
    await repo.merge(list(rows.values()), now)
    return len(rows)
