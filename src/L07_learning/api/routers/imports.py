"""``POST /api/v1/imports``: bring a file in (``l07 import`` over HTTP): OpenAI chat or preference JSONL, a Langfuse
or LangSmith export, a Hugging Face Parquet file. The answer is the per-line report: imported, filtered (with the
filter's reasons), refused (line number and E7xxx code)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError

from ...models.error_codes import L07Error, L07ErrorCode
from ...services.importers import FORMATS
from ...settings import private_dir
from ..deps import CanTrain, ContextDep
from ..errors import error_responses

router = APIRouter(prefix="/api/v1/imports", tags=["imports"], responses=error_responses(400, 401, 403, 413, 500))


class ImportOptions(BaseModel):
    format: str = Field(description=f"One of {', '.join(FORMATS)}")
    filename: str = Field(default="upload", min_length=1, max_length=256)
    quality: Annotated[float | None, Field(ge=0, le=100)] = Field(
        default=None, description="Quality declared for records without their own score (default: 100 for "
                                  "training files, none for traces, whose unscored records go to REVIEW)")
    agent_id: str | None = Field(default=None, max_length=128)
    task_type: str | None = Field(default=None, max_length=128)


class ImportJson(ImportOptions):
    content: str = Field(min_length=1, description="The file's text (JSONL or JSON)")


async def _read(request: Request) -> tuple[ImportOptions, bytes]:
    kind = request.headers.get("content-type", "")
    try:
        if kind.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "multipart import needs a 'file' part")
            fields = {k: v for k, v in form.items() if k != "file" and isinstance(v, str) and v != ""}
            options = ImportOptions.model_validate({"filename": upload.filename or "upload", **fields})
            return options, await upload.read()
        body = ImportJson.model_validate_json(await request.body())
        return body, body.content.encode()
    except ValidationError as exc:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "invalid import request: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])) from None


@router.post("", name="imports.create", responses=error_responses(404))
async def create_import(request: Request, principal: CanTrain, ctx: ContextDep) -> dict[str, Any]:
    """Import a file (multipart ``file`` + ``format``, or JSON ``{format, content}``) through the quality filter."""
    options, data = await _read(request)
    if options.format not in FORMATS:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"unknown import format {options.format!r}; one of {', '.join(FORMATS)}")
    folder = private_dir(FsPath(ctx.settings.home) / "imports")
    fd, name = tempfile.mkstemp(dir=folder, suffix="-" + FsPath(options.filename).name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        report = await ctx.fine_tuning.importer.import_file(
            options.format, FsPath(name), file_name=options.filename, quality=options.quality,
            agent_id=options.agent_id, task_type=options.task_type)
    finally:
        os.unlink(name)
    request.state.audit_details = {"format": options.format, "file": options.filename, **report.counts()}
    return report.to_dict()
