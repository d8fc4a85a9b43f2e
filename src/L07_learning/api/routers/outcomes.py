"""Production feedback over HTTP (contract §4.2, §9): a model's outcome series and its release watch.

``GET /api/v1/models/{id}/outcomes`` reads the series every ingestion path writes; ``POST /api/v1/models/{id}/watch``
runs the watch of a released model now (the loop runs it on every tick), rolling it back on a sustained drop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from ...services.feedback import ReleaseWatch, model_outcomes
from ..deps import CanGetModel, CanRollback, ContextDep
from ..errors import error_responses

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=error_responses(400, 401, 403, 500))

# Outcome series are also kept for external models, named as the gateway reported them (up to 256 characters).
OutcomeModelId = Annotated[str, Path(min_length=1, max_length=256, description="Model id (or an external model's name)")]


class Outcomes(BaseModel):
    """Scored executions the model served in ``[since, until)``: totals, per task type, time buckets (when asked),
    its release watch and incidents."""

    model_id: str
    model_name: str | None
    registered: bool
    since: datetime | None
    until: datetime | None
    summary: dict[str, Any] = Field(description="samples, quality_mean, quality_variance, errors, error_rate, ...")
    unscored: int = Field(description="Executions served whose L06 score has not arrived")
    by_task_type: list[dict[str, Any]]
    series: list[dict[str, Any]]
    bucket_seconds: float | None
    watch: dict[str, Any] | None
    incidents: list[dict[str, Any]]


class Watch(BaseModel):
    """The model's release watch after this look: status (WATCHING, ROLLED_BACK, ...), windows judged, last verdict."""

    model_id: str
    model_name: str
    baseline_model_id: str | None
    status: str
    state: str | None
    windows_evaluated: int
    canary_status: str | None = Field(description="RUNNING, PASSED, FAILED, INCONCLUSIVE; null without a canary")
    canary: dict[str, Any]
    window_size: int
    false_alarm_rate: float
    last_result: dict[str, Any]
    since_release: dict[str, Any]
    incidents: list[dict[str, Any]]


@router.get("/{model_id}/outcomes", name="models.outcomes", response_model=Outcomes, responses=error_responses(404))
async def outcomes(
    model_id: OutcomeModelId,
    _: CanGetModel,
    ctx: ContextDep,
    since: Annotated[datetime | None, Query(description="Window start (RFC 3339), inclusive")] = None,
    until: Annotated[datetime | None, Query(description="Window end (RFC 3339), exclusive")] = None,
    bucket_seconds: Annotated[float | None, Query(gt=0, le=366 * 86400, description="Time-bucket width for the series")] = None,
) -> Outcomes:
    """The model's outcome series (scored executions joined with the model that served them)."""
    bucket = timedelta(seconds=bucket_seconds) if bucket_seconds else None
    return Outcomes.model_validate(await model_outcomes(ctx.db, model_id, since, until, bucket))


@router.post("/{model_id}/watch", name="models.watch", response_model=Watch, responses=error_responses(404))
async def watch(model_id: OutcomeModelId, _: CanRollback, ctx: ContextDep) -> Watch:
    """Judge the released model's completed windows against its predecessor now; roll back on a sustained drop."""
    watcher = ReleaseWatch(ctx.db, ctx.registry, ctx.settings)
    return Watch.model_validate(await watcher.evaluate(model_id))
