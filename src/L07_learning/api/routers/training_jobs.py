"""Training jobs over HTTP (contract §7.1): submit (202), follow, cancel. The job itself runs in a worker process."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage
from ...models.training_job import JobConfig, JobType, TrainingJob
from ..auth import Principal, PermissionDenied
from ..deps import CanGetJob, CanManageJobs, CanTrain, ContextDep
from ..errors import error_responses
from ..types import as_utc

router = APIRouter(prefix="/api/v1/training/jobs", tags=["training_jobs"], responses=error_responses(400, 401, 403, 500))

JobId = Annotated[str, Path(min_length=1, max_length=128, description="Training job id")]


class TrainingJobCreate(BaseModel):
    """Contract §7.1 request: the dataset, the base model (by id, by registered name, or the default SmolLM2 base
    when neither is given), the method and its config."""

    dataset_id: str = Field(min_length=1, max_length=128)
    base_model_id: str | None = Field(default=None, min_length=1, max_length=128)
    model_name: str | None = Field(
        default=None, min_length=1, max_length=256, description="Registered name of the base model (newest usable version)"
    )
    training_type: Literal["sft", "rlhf", "distillation"] = "sft"
    config: JobConfig | None = Field(
        default=None, description="JobConfig fields; those left out come from the recipe measured for the device, "
                                  "the base model's size and the dataset's size (configs/sft-*.yaml)")
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=160,
        description="Sending the same key again with the same API key returns the first job; keys are per caller"
    )


class TrainingJobAccepted(BaseModel):
    """The 202 answer."""

    job_id: str
    status: str
    job_type: str
    estimated_duration_seconds: float | None
    estimated_gpu_hours: float | None
    cost_estimate_usd: float
    status_url: str


class TrainingJobPublic(BaseModel):
    """Live state of a job, in the shape of the progress event (contract §2.1)."""

    job_id: str
    job_type: str
    status: str
    dataset_id: str | None
    dataset_version: str | None
    base_model_id: str | None
    output_model_id: str | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    timing: dict[str, Any]
    checkpoints: dict[str, Any]
    retry_count: int
    error: dict[str, Any] | None
    created_by: str


def _estimate(job: TrainingJob, key: str) -> float | None:
    for source in (job.progress, job.metrics):
        value = source.get(key) if isinstance(source, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def to_public(job: TrainingJob) -> TrainingJobPublic:
    """A job in the API's shape."""
    end = as_utc(job.completed_at) if job.completed_at else utcnow()
    elapsed = (end - as_utc(job.started_at)).total_seconds() if job.started_at else 0.0
    return TrainingJobPublic(
        job_id=job.job_id,
        job_type=job.job_type.value.lower(),
        status=job.status.value,
        dataset_id=job.dataset_id,
        dataset_version=job.dataset_version,
        base_model_id=job.base_model_id,
        output_model_id=job.output_model_id,
        progress=job.progress or {},
        metrics=job.metrics or {},
        timing={
            "created_at": as_utc(job.created_at),
            "started_at": as_utc(job.started_at) if job.started_at else None,
            "completed_at": as_utc(job.completed_at) if job.completed_at else None,
            "elapsed_seconds": round(max(elapsed, 0.0), 3),
            "estimated_remaining_seconds": _estimate(job, "estimated_remaining_seconds"),
        },
        checkpoints={"checkpoint_location": job.checkpoint_location, "checkpoint_size_bytes": job.checkpoint_size_bytes},
        retry_count=job.retry_count,
        error={"code": job.error_code, "message": job.error_message} if job.error_code else None,
        created_by=job.created_by,
    )


async def _base_model_id(ctx: Any, body: TrainingJobCreate) -> str | None:
    if body.base_model_id is not None or body.model_name is None:
        return body.base_model_id  # None: the engine uses the default base model
    usable = [
        m for m in await ctx.registry.list_models(name=body.model_name)
        if m.stage not in (ModelStage.ARCHIVED, ModelStage.REJECTED)
    ]
    if not usable:
        raise L07Error(
            L07ErrorCode.MODEL_NOT_FOUND, f"no usable model named {body.model_name!r} is registered", name=body.model_name
        )
    return usable[0].model_id  # list_models is newest first


@router.post(
    "",
    name="training_jobs.create",
    status_code=202,
    response_model=TrainingJobAccepted,
    responses=error_responses(402, 404, 409, 503),
)
async def create_job(
    request: Request, principal: CanTrain, ctx: ContextDep, body: TrainingJobCreate
) -> TrainingJobAccepted:
    """Submit a training job; it starts PENDING and a worker picks it up (E7500 for an invalid config, E7028 for an
    unknown dataset, E7250 for an unknown base model)."""
    # Unknown dataset first: cheap, and it spares preparing a default base model for a request that must fail.
    await ctx.curator.get_version(body.dataset_id)
    base_model_id = await _base_model_id(ctx, body)
    job = await ctx.engine.start_training(
        body.dataset_id,
        base_model_id,
        # Only the fields the client sent: the engine fills the rest from the recipe.
        body.config.model_dump(mode="json", exclude_unset=True) if body.config is not None else None,
        job_type=JobType(body.training_type),
        created_by=principal.key_id,
        idempotency_key=scoped_idempotency_key(principal.key_id, body.idempotency_key),
    )
    request.state.audit_resource_id = job.job_id
    request.state.audit_details = {
        "job_type": job.job_type.value, "dataset_id": body.dataset_id, "base_model_id": base_model_id,
        "idempotency_key": body.idempotency_key,
    }
    gpu_hours = _estimate(job, "estimated_gpu_hours")
    return TrainingJobAccepted(
        job_id=job.job_id,
        status=job.status.value,
        job_type=job.job_type.value.lower(),
        estimated_duration_seconds=_estimate(job, "estimated_duration_seconds"),
        estimated_gpu_hours=gpu_hours,
        cost_estimate_usd=float(job.estimated_cost_usd),
        status_url=str(request.url_for("training_jobs.get", job_id=job.job_id).path),
    )


@router.get("/{job_id}", name="training_jobs.get", response_model=TrainingJobPublic, responses=error_responses(404))
async def get_job(job_id: JobId, _: CanGetJob, ctx: ContextDep) -> TrainingJobPublic:
    """Live status, progress and metrics of a job."""
    return to_public(await ctx.engine.get_job_status(job_id))


def scoped_idempotency_key(key_id: str, key: str | None) -> str | None:
    """The stored form of a caller's idempotency key: prefixed with the caller's key id, so two callers choosing the
    same key get their own jobs and neither can read the other's job through it."""
    return f"api:{key_id}:{key}" if key else None


async def _cancel(job_id: str, ctx: Any, principal: Principal) -> TrainingJobPublic:
    job = await ctx.engine.get_job_status(job_id)  # E7410 for an unknown id, before any ownership answer
    if job.created_by != principal.key_id and not principal.is_admin:
        # Trainers follow and cancel their own jobs (contract §7.4 "train_log"); anyone else's needs an admin.
        raise PermissionDenied(principal, f"cancel job {job_id} submitted by another key")
    await ctx.engine.cancel_job(job_id, actor=principal.key_id)
    return to_public(await ctx.engine.get_job_status(job_id))


@router.post(
    "/{job_id}/cancel", name="training_jobs.cancel", response_model=TrainingJobPublic, responses=error_responses(404)
)
async def cancel_job(job_id: JobId, principal: CanManageJobs, ctx: ContextDep) -> TrainingJobPublic:
    """Cancel a job (idempotent; a terminal job stays as it is). The worker stops within one optimizer step.
    A trainer cancels only the jobs its key submitted; an admin any job (403 E7904 otherwise)."""
    return await _cancel(job_id, ctx, principal)


@router.delete(
    "/{job_id}", name="training_jobs.delete", response_model=TrainingJobPublic, responses=error_responses(404)
)
async def delete_job(job_id: JobId, principal: CanManageJobs, ctx: ContextDep) -> TrainingJobPublic:
    """Same as ``POST /{job_id}/cancel`` (contract §7.1 extension); the job's record is kept."""
    return await _cancel(job_id, ctx, principal)

