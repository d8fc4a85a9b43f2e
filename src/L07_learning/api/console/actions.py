"""The console's buttons (POST forms): sign in and out, review an example, approve / promote / roll back a model,
cancel a job. Each checks the CSRF token, then the same permission and calls the same service as its REST route;
the middleware audits each call under the signed-in key, and the service writes its own audit row of the change."""

from __future__ import annotations

from urllib.parse import unquote

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...models.error_codes import L07Error
from ...models.model_artifact import ModelStage
from ...services.example_review import ExampleReview
from ..auth import AuthenticationError, Permission
from ..middleware import KEY_PREFIX_CHARS
from ..routers.models import STAGE_PERMISSION, _capacity_for, _enum_value
from ..routers.training_jobs import _cancel
from .web import Caller, codec, context, done, error_page, forbidden, form, render

router = APIRouter(prefix="/ui", tags=["console"], include_in_schema=False)


def _safe_next(value: str | None) -> str:
    """Only a console path: never another site (an open redirect)."""
    value = unquote(value or "")
    return value if value.startswith("/ui") and not value.startswith("//") and "\\" not in value else "/ui/"


@router.get("/login", name="console.login_form", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
    # An anonymous session carries the sign-in form's CSRF token (a signed-in one keeps its own).
    session = codec(request).read(request)
    fresh = session is None
    request.state.console_session = session = session or codec(request).new(None)
    response = render(request, "login.html", next=_safe_next(next))
    if fresh:
        codec(request).store(request, response, session)
    return response


@router.post("/login", name="console.login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    fields = await form(request)
    token = fields.get("api_key", "").strip()
    try:
        principal = await context(request).auth.authenticate(token)
    except AuthenticationError as exc:
        request.state.audit_details = {"key_prefix": token[:min(KEY_PREFIX_CHARS, len(token) // 2)] + "..."
                                       if token else None}
        return render(request, "login.html", status_code=401, error=exc.message, next=_safe_next(fields.get("next")))
    request.state.principal = principal
    response = RedirectResponse(_safe_next(fields.get("next")), status_code=303)
    # A new session, with a new CSRF token, for the signed-in key.
    codec(request).store(request, response, codec(request).new(principal.key_id))
    return response


@router.post("/logout", name="console.logout")
async def logout(request: Request, principal: Caller) -> Response:
    await form(request)
    response = RedirectResponse("/ui/login", status_code=303)
    codec(request).clear(response)
    return response


@router.post("/examples/{example_id}/review", name="console.examples.review")
async def review_example(request: Request, example_id: str, principal: Caller) -> Response:
    fields = await form(request)
    back = _safe_next(fields.get("back") or "/ui/examples?status=REVIEW")
    if not principal.can(Permission.EXAMPLE_REVIEW):
        return forbidden(request, principal, Permission.EXAMPLE_REVIEW)
    decision = fields.get("decision", "")
    # The edit form posts the corrected answer; the queue's buttons post none.
    edited = fields.get("output_text") if "output_text" in fields else None
    request.state.audit_details = {"decision": decision, "edited": edited is not None}
    try:
        outcome = await ExampleReview(context(request).db).decide(
            example_id, decision, principal.key_id, fields.get("note") or None, edited)  # type: ignore[arg-type]
    except L07Error as exc:
        return error_page(request, exc)
    return done(request, back, f"example {example_id} is now {outcome['status']}"
                + (" with the edited answer" if outcome["edited"] else ""))


@router.post("/models/{model_id}/approve", name="console.models.approve")
async def approve_model(request: Request, model_id: str, principal: Caller) -> Response:
    fields = await form(request)
    try:
        target = _enum_value(ModelStage, fields.get("stage", ""), "stage")
        capacity = _capacity_for(principal, target, fields.get("capacity") or None)
        request.state.audit_details = {"capacity": capacity.value, "to_stage": target.value}
        result = await context(request).registry.approve(model_id, capacity.value, principal.key_id, to_stage=target)
    except L07Error as exc:
        return error_page(request, exc)
    return done(request, f"/ui/models/{model_id}",
                f"approved {result['to_stage']} as {result['role']} (validation {result['validation_id'] or 'none'})")


@router.post("/models/{model_id}/promote", name="console.models.promote")
async def promote_model(request: Request, model_id: str, principal: Caller) -> Response:
    fields = await form(request)
    try:
        target = _enum_value(ModelStage, fields.get("stage", ""), "stage")
        principal.require(STAGE_PERMISSION[target])
        request.state.audit_details = {"to_stage": target.value}
        model = await context(request).registry.promote_model(model_id, target, actor=principal.key_id,
                                                              notes=fields.get("notes") or None)
    except L07Error as exc:
        return error_page(request, exc)
    return done(request, f"/ui/models/{model_id}", f"model is now {model.stage.value} ({model.serving_state.value})")


@router.post("/models/{model_id}/rollback", name="console.models.rollback")
async def rollback_model(request: Request, model_id: str, principal: Caller) -> Response:
    fields = await form(request)
    reason = fields.get("reason") or "manual"
    try:
        principal.require(Permission.MODEL_ROLLBACK)
        await context(request).registry.get_model(model_id)
        request.state.audit_details = {"reason": reason}
        active = await context(request).registry.rollback(model_id, actor=principal.key_id, reason=reason)
    except L07Error as exc:
        return error_page(request, exc)
    request.state.audit_resource_id = active.model_id
    return done(request, f"/ui/models/{active.model_id}", f"rolled back: {active.name} {active.version} is ACTIVE")


@router.post("/jobs/{job_id}/cancel", name="console.jobs.cancel")
async def cancel_job(request: Request, job_id: str, principal: Caller) -> Response:
    await form(request)
    try:
        principal.require(Permission.MODEL_TRAIN_LOG)
        job = await _cancel(job_id, context(request), principal)
    except L07Error as exc:
        return error_page(request, exc)
    return done(request, f"/ui/jobs/{job_id}", f"job {job_id} is {job.status}")
