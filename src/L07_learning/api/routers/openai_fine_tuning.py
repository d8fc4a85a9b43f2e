"""OpenAI-compatible fine-tuning (contract §9): ``/v1/files``, ``/v1/fine_tuning/jobs`` and ``/v1/models``, so code
written against the OpenAI SDK moves here by changing its ``base_url``, key and model name. Errors answer in
OpenAI's shape (``api/errors.py``); the work is ``services/openai_compat``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from starlette.datastructures import UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ...models.error_codes import L07Error, L07ErrorCode
from ...services.openai_compat import shapes
from ..auth import Permission, PermissionDenied, Principal
from ..deps import CanGetJob, CanGetModel, CanListModels, CanManageJobs, CanTrain, ContextDep
from ..errors import openai_error_responses

router = APIRouter(prefix="/v1", tags=["openai_fine_tuning"],
                   responses=openai_error_responses(400, 401, 403, 404, 500))

Id = Annotated[str, Path(min_length=1, max_length=128)]
After = Annotated[str | None, Query(max_length=128, description="Id of the last item of the previous page")]
Limit = Annotated[int, Query(ge=1, le=100)]


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: dict[str, Any] | None = None
    dpo: dict[str, Any] | None = None


class JobCreate(BaseModel):
    """OpenAI's create-job request (``method``: ``supervised`` or ``dpo``). ``hyperparameters`` may also name
    JobConfig fields, or RLHFConfig fields for ``dpo`` (an L07 extension)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=128)
    validation_file: str | None = Field(default=None, max_length=128)
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    hyperparameters: dict[str, Any] | None = None
    method: Method | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


def _owner_or(principal: Principal, owner: str, permission: Permission, what: str) -> None:
    if owner != principal.key_id and permission not in principal.permissions:
        raise PermissionDenied(principal, what)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


@router.post("/files", name="openai.files.create", responses=openai_error_responses(413))
async def create_file(request: Request, principal: CanTrain, ctx: ContextDep) -> dict[str, Any]:
    """Upload a JSONL training file: multipart/form-data with ``file`` and ``purpose`` (``fine-tune``), as the
    OpenAI SDK sends it. Its lines pass the quality filter when a job uses it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "send multipart/form-data with file and purpose",
                       param="file")
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None or isinstance(upload, str):
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "no file part", param="file")
    if not isinstance(purpose, str):
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "no purpose", param="purpose")
    row = await ctx.fine_tuning.files.upload(upload.filename or "upload.jsonl", purpose, _chunks(upload),
                                             principal.key_id, ctx.config.max_request_bytes)
    request.state.audit_resource_id = row["file_id"]
    return shapes.file_object(row)


@router.get("/files", name="openai.files.list")
async def list_files(_: CanGetJob, ctx: ContextDep, purpose: str | None = None, after: After = None,
                     limit: Limit = 100) -> dict[str, Any]:
    rows = await ctx.fine_tuning.files.list(purpose)
    return shapes.page([shapes.file_object(r) for r in rows], after, limit)


@router.get("/files/{file_id}", name="openai.files.retrieve")
async def retrieve_file(file_id: Id, _: CanGetJob, ctx: ContextDep) -> dict[str, Any]:
    return shapes.file_object(await ctx.fine_tuning.files.get(file_id))


@router.delete("/files/{file_id}", name="openai.files.delete")
async def delete_file(request: Request, file_id: Id, principal: CanTrain, ctx: ContextDep) -> dict[str, Any]:
    """Delete the file's bytes and row (its uploader or an admin); examples imported from it stay."""
    row = await ctx.fine_tuning.files.get(file_id)
    _owner_or(principal, row["created_by"], Permission.DATASET_GET_TRAINING_DATA, f"delete file {file_id}")
    await ctx.fine_tuning.files.delete(file_id)
    request.state.audit_resource_id = file_id
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/files/{file_id}/content", name="openai.files.content", response_class=FileResponse)
async def file_content(file_id: Id, principal: CanGetJob, ctx: ContextDep) -> FileResponse:
    """The file's bytes, for its uploader or a role that may read training data."""
    row = await ctx.fine_tuning.files.get(file_id)
    _owner_or(principal, row["created_by"], Permission.DATASET_GET_TRAINING_DATA, f"read file {file_id}")
    return FileResponse(row["path"], media_type="application/jsonl", filename=row["filename"])


@router.post("/fine_tuning/jobs", name="openai.jobs.create")
async def create_job(request: Request, principal: CanTrain, ctx: ContextDep, body: JobCreate) -> dict[str, Any]:
    """Import the training file through the quality filter, build a dataset version and queue the training job."""
    job = await ctx.fine_tuning.jobs.create(body.model_dump(mode="json", exclude_none=True), principal.key_id)
    request.state.audit_resource_id = job["id"]
    return job


@router.get("/fine_tuning/jobs", name="openai.jobs.list")
async def list_jobs(_: CanGetJob, ctx: ContextDep, after: After = None, limit: Limit = 20) -> dict[str, Any]:
    return await ctx.fine_tuning.jobs.list(after, limit)


@router.get("/fine_tuning/jobs/{job_id}", name="openai.jobs.retrieve")
async def retrieve_job(job_id: Id, _: CanGetJob, ctx: ContextDep) -> dict[str, Any]:
    return await ctx.fine_tuning.jobs.retrieve(job_id)


@router.post("/fine_tuning/jobs/{job_id}/cancel", name="openai.jobs.cancel")
async def cancel_job(request: Request, job_id: Id, principal: CanManageJobs, ctx: ContextDep) -> dict[str, Any]:
    """Cancel a job (its submitter or an admin)."""
    owner = await ctx.fine_tuning.jobs.owner(job_id)
    if owner != principal.key_id and not principal.is_admin:
        raise PermissionDenied(principal, f"cancel fine-tuning job {job_id} submitted by another key")
    request.state.audit_resource_id = job_id
    return await ctx.fine_tuning.jobs.cancel(job_id, principal.key_id)


@router.get("/fine_tuning/jobs/{job_id}/events", name="openai.jobs.events")
async def job_events(job_id: Id, _: CanGetJob, ctx: ContextDep, after: After = None,
                     limit: Limit = 20) -> dict[str, Any]:
    """What the files became (accepted, filtered with reasons, refused lines with codes) and the training's
    progress, newest first."""
    return await ctx.fine_tuning.jobs.events(job_id, after, limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", name="openai.jobs.checkpoints")
async def job_checkpoints(job_id: Id, _: CanGetJob, ctx: ContextDep, after: After = None,
                          limit: Limit = 10) -> dict[str, Any]:
    return await ctx.fine_tuning.jobs.checkpoints(job_id, after, limit)


@router.get("/models", name="openai.models.list")
async def list_models(_: CanListModels, ctx: ContextDep) -> dict[str, Any]:
    """Registered models that may be trained or served (neither ARCHIVED nor REJECTED)."""
    return await ctx.fine_tuning.models()


@router.get("/models/{model:path}", name="openai.models.retrieve")
async def retrieve_model(model: str, _: CanGetModel, ctx: ContextDep) -> dict[str, Any]:
    """A model by id, or a base model by its name (``HuggingFaceTB/SmolLM2-135M-Instruct``)."""
    return await ctx.fine_tuning.model(model)
