"""The console's pages (GET): each reads through the same service calls as the REST route of the same resource and
checks the same permission; a role without it gets the 403 page the API would answer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, Response

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage
from ...models.training_job import JobStatus
from ...services.curation.archive import export_archive
from ...services.curation.export import FORMATS
from ...services.example_review import ExampleReview
from ...services.feedback.timeline import quality_timeline
from ...services.overview import FUNNEL_STAGES, WINDOWS, Overview
from ..auth import Permission
from ..routers.loop import _loop
from ..routers.models import ValidationReport, _enum_value, to_public
from ..routers.training_jobs import to_public as job_public
from .views import job_view, model_actions
from .web import Caller, context, error_page, forbidden, render

router = APIRouter(prefix="/ui", tags=["console"], include_in_schema=False)

PAGE_SIZE = 50
Text = Annotated[str | None, Query(max_length=200)]


@router.get("/", name="console.overview", response_class=HTMLResponse)
async def overview(request: Request, principal: Caller) -> HTMLResponse:
    if not principal.can(Permission.MODEL_LIST):
        return forbidden(request, principal, Permission.MODEL_LIST)
    ctx = context(request)
    funnel = await Overview(ctx.db).funnel()
    running = [job_public(j) for j in await ctx.engine.list_jobs(status=JobStatus.RUNNING.value, limit=20)]
    return render(request, "overview.html", funnel=funnel, stages=FUNNEL_STAGES, windows=list(WINDOWS),
                  running=running)


@router.get("/overview/loop", name="console.overview_loop", response_class=HTMLResponse)
async def overview_loop(request: Request, principal: Caller) -> HTMLResponse:
    """The loop's policies (``GET /api/v1/loop``): loaded into the overview after it renders, because evaluating
    every policy's trigger counts its group's examples; without JavaScript, a page of its own."""
    if not principal.can(Permission.MODEL_LIST):
        return forbidden(request, principal, Permission.MODEL_LIST)
    status = await (await _loop(request, context(request))).status()
    fragment = request.headers.get("HX-Request") == "true"
    return render(request, "overview_loop.html" if fragment else "loop.html", loop_status=status)


@router.get("/examples", name="console.examples", response_class=HTMLResponse)
async def examples(
    request: Request, principal: Caller, status: Text = None, reason: Text = None, task_type: Text = None,
    agent_id: Text = None, q: Text = None, page: Annotated[int, Query(ge=1, le=200_000)] = 1,
) -> HTMLResponse:
    request.state.audit_read = True  # a read of training data: audited, allowed or not (contract §7.4)
    if not principal.can(Permission.DATASET_GET_TRAINING_DATA):
        return forbidden(request, principal, Permission.DATASET_GET_TRAINING_DATA)
    review = ExampleReview(context(request).db)
    filters = {"status": status, "reason": reason, "task_type": task_type, "agent_id": agent_id, "q": q}
    try:
        result = await review.page(status=status, reason=reason, task_type=task_type, agent_id=agent_id, text=q,
                                   limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, actor=principal.key_id)
    except L07Error as exc:
        return error_page(request, exc)
    count = result["count"]
    pages = max(1, -(-count // PAGE_SIZE)) if count is not None else page + int(result["more"])
    return render(request, "examples.html", rows=result["data"], count=count, page=page, pages=pages,
                  filters=filters, query={k: v for k, v in filters.items() if v}, choices=await review.choices(),
                  statuses=["PENDING", "ACCEPTED", "REVIEW", "REJECTED", "QUARANTINED"],
                  can_review=principal.can(Permission.EXAMPLE_REVIEW))


@router.get("/datasets", name="console.datasets", response_class=HTMLResponse)
async def datasets(request: Request, principal: Caller) -> HTMLResponse:
    if not principal.can(Permission.DATASET_LIST):
        return forbidden(request, principal, Permission.DATASET_LIST)
    return render(request, "datasets.html", datasets=await context(request).curator.list_datasets())


@router.get("/datasets/{dataset_id}", name="console.dataset", response_class=HTMLResponse)
async def dataset(request: Request, dataset_id: str, principal: Caller,
                  version: Annotated[str | None, Query(max_length=64)] = None) -> HTMLResponse:
    if not principal.can(Permission.DATASET_LIST):
        return forbidden(request, principal, Permission.DATASET_LIST)
    curator = context(request).curator
    try:
        ds = await curator.get_dataset(dataset_id, version)
        versions = await curator.list_versions(dataset_id)
    except L07Error as exc:
        return error_page(request, exc)
    return render(request, "dataset.html", ds=ds, versions=versions, formats=FORMATS,
                  can_download=principal.can(Permission.DATASET_GET_TRAINING_DATA),
                  split_counts={k: len(v) for k, v in ds.splits.items()},
                  statistics=ds.statistics.model_dump(mode="json"), lineage=ds.lineage.model_dump(mode="json"))


@router.get("/datasets/{dataset_id}/diff", name="console.dataset_diff", response_class=HTMLResponse)
async def dataset_diff(request: Request, dataset_id: str, principal: Caller,
                       v1: Annotated[str, Query(alias="from", max_length=64)],
                       v2: Annotated[str, Query(alias="to", max_length=64)]) -> HTMLResponse:
    """What changed between two versions (``l07 datasets diff``): example ids, split sizes and statistics only."""
    if not principal.can(Permission.DATASET_LIST):
        return forbidden(request, principal, Permission.DATASET_LIST)
    try:
        diff = await context(request).curator.diff(dataset_id, v1, v2)
    except L07Error as exc:
        return error_page(request, exc)
    return render(request, "dataset_diff.html", diff=diff, v1=v1, v2=v2)


@router.get("/datasets/{dataset_id}/download", name="console.dataset_download")
async def dataset_download(request: Request, dataset_id: str, principal: Caller,
                           version: Annotated[str | None, Query(max_length=64)] = None,
                           format: Annotated[str, Query(max_length=16)] = "jsonl") -> Response:  # noqa: A002
    """A version's export as one zip (``l07 datasets export``): training data, so the REST permission to read it and
    an audited read, allowed or not (contract §7.4)."""
    request.state.audit_read = True
    if not principal.can(Permission.DATASET_GET_TRAINING_DATA):
        return forbidden(request, principal, Permission.DATASET_GET_TRAINING_DATA)
    request.state.audit_details = {"version": version, "format": format}
    try:
        name, body = await export_archive(context(request).curator, dataset_id, version, format)
    except L07Error as exc:
        return error_page(request, exc)
    return Response(body, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/jobs", name="console.jobs", response_class=HTMLResponse)
async def jobs(request: Request, principal: Caller, status: Text = None) -> HTMLResponse:
    if not principal.can(Permission.JOB_GET):
        return forbidden(request, principal, Permission.JOB_GET)
    known = [s.value for s in JobStatus]
    if status and status.upper() not in known:
        return error_page(request, L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                                            f"unknown job status {status!r}; allowed: {', '.join(known)}"))
    found = await context(request).engine.list_jobs(status=status.upper() if status else None, limit=200)
    return render(request, "jobs.html", jobs=[job_public(j) for j in found], status=status,
                  statuses=known)


async def _job(request: Request, job_id: str, principal: Any, template: str) -> HTMLResponse:
    if not principal.can(Permission.JOB_GET):
        return forbidden(request, principal, Permission.JOB_GET)
    engine = context(request).engine
    try:
        job = await engine.get_job_status(job_id)
        events = await engine.job_events(job_id, kinds=["step", "eval"])
    except L07Error as exc:
        return error_page(request, exc)
    return render(request, template, **job_view(job_public(job), events, principal))


@router.get("/jobs/{job_id}", name="console.job", response_class=HTMLResponse)
async def job(request: Request, job_id: str, principal: Caller) -> HTMLResponse:
    return await _job(request, job_id, principal, "job.html")


@router.get("/jobs/{job_id}/live", name="console.job_live", response_class=HTMLResponse)
async def job_live(request: Request, job_id: str, principal: Caller) -> HTMLResponse:
    """The live part of the job page (progress and curves), polled while the job runs."""
    return await _job(request, job_id, principal, "job_live.html")


@router.get("/models", name="console.models", response_class=HTMLResponse)
async def models(request: Request, principal: Caller, stage: Text = None) -> HTMLResponse:
    if not principal.can(Permission.MODEL_LIST):
        return forbidden(request, principal, Permission.MODEL_LIST)
    try:
        chosen = _enum_value(ModelStage, stage, "stage") if stage else None
        found = await context(request).registry.list_models(status=chosen)
    except L07Error as exc:
        return error_page(request, exc)
    return render(request, "models.html", models=[to_public(m) for m in found], stage=stage,
                  stages=[s.value for s in ModelStage])


@router.get("/models/{model_id}", name="console.model", response_class=HTMLResponse)
async def model(request: Request, model_id: str, principal: Caller) -> HTMLResponse:
    if not principal.can(Permission.MODEL_GET):
        return forbidden(request, principal, Permission.MODEL_GET)
    registry = context(request).registry
    try:
        found = await registry.get_model(model_id)
        reports = [ValidationReport.of(r) for r in await registry.get_validations(model_id)]
        lineage = await registry.lineage(model_id)
    except L07Error as exc:
        return error_page(request, exc)
    return render(request, "model.html", model=to_public(found, with_history=True), reports=reports,
                  lineage=lineage.model_dump(mode="json"), actions=model_actions(found, principal))


@router.get("/outcomes", name="console.outcomes", response_class=HTMLResponse)
async def outcomes(request: Request, principal: Caller, days: Annotated[int, Query(ge=1, le=366)] = 30,
                   bucket_hours: Annotated[int, Query(ge=1, le=24 * 31)] = 24) -> HTMLResponse:
    """Production quality per model over time with release and rollback markers (``GET .../outcomes`` per model)."""
    if not principal.can(Permission.MODEL_GET):
        return forbidden(request, principal, Permission.MODEL_GET)
    until = datetime.now(timezone.utc)
    try:
        timeline = await quality_timeline(context(request).db, until - timedelta(days=days), until,
                                          timedelta(hours=bucket_hours))
    except L07Error as exc:
        return error_page(request, exc)
    chart = {"models": [{"id": m["model_id"], "label": m["model_name"] or m["model_id"],
                         "points": [[b["start"].timestamp(), b["quality_mean"]] for b in m["series"]]}
                        for m in timeline["models"]],
             "markers": [{"t": m["at"].timestamp(), "kind": m["kind"], "model": m["model_id"]}
                         for m in timeline["markers"]]}
    return render(request, "outcomes.html", timeline=timeline, chart=chart, days=days, bucket_hours=bucket_hours)


@router.get("/audit", name="console.audit", response_class=HTMLResponse)
async def audit(
    request: Request, principal: Caller, action: Text = None, actor: Text = None, resource_id: Text = None,
    result: Text = None, page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    if not principal.can(Permission.AUDIT_LOG):
        return forbidden(request, principal, Permission.AUDIT_LOG)
    filters = {"action": action, "actor": actor, "resource_id": resource_id, "result": result}
    rows, total = await context(request).queries.audit_log(
        **{k: v or None for k, v in filters.items()}, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return render(request, "audit.html", rows=rows, count=total, page=page, pages=max(1, -(-total // PAGE_SIZE)),
                  filters=filters, query={k: v for k, v in filters.items() if v})
