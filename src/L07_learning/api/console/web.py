"""What every console page and action shares: the templates, the signed-in caller, the CSRF check on forms, and
L07 errors shown as pages (with the status the REST API would answer) instead of JSON bodies."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...models.error_codes import L07Error
from ..auth import AuthenticationError, Permission, PermissionDenied, Principal
from ..context import AppContext
from .session import ConsoleSession, SessionCodec

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _when(value: Any) -> str:
    """A stored time as ``2026-12-06 09:15:02Z`` (UTC), whatever form it came in."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


templates.env.filters["when"] = _when

# Navigation: (path, label, permission needed to see it).
NAV = [
    ("/ui/", "Overview", Permission.MODEL_LIST),
    ("/ui/examples", "Examples", Permission.DATASET_GET_TRAINING_DATA),
    ("/ui/datasets", "Datasets", Permission.DATASET_LIST),
    ("/ui/jobs", "Jobs", Permission.JOB_GET),
    ("/ui/models", "Models", Permission.MODEL_LIST),
    ("/ui/outcomes", "Outcomes", Permission.MODEL_GET),
    ("/ui/audit", "Audit", Permission.AUDIT_LOG),
]


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in form, then back."""

    def __init__(self, back_to: str) -> None:
        super().__init__(back_to)
        self.back_to = back_to


def codec(request: Request) -> SessionCodec:
    return request.app.state.l07_console


def context(request: Request) -> AppContext:
    return request.app.state.l07


async def signed_in(request: Request) -> Principal:
    """The caller of a console page: the key of a valid session, re-read now (revoked keys are out at once)."""
    session = codec(request).read(request)
    if session is None or session.key_id is None:
        raise SignInRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    try:
        principal = await context(request).auth.principal_for_key(session.key_id)
    except AuthenticationError:
        raise SignInRequired(request.url.path) from None
    request.state.principal = principal  # the middleware audits the call under this key
    request.state.console_session = session
    return principal


Caller = Annotated[Principal, Depends(signed_in)]


async def form(request: Request) -> dict[str, str]:
    """The posted urlencoded form (single values), after its CSRF token matched the session's (403 otherwise)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    fields = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
    session: ConsoleSession | None = getattr(request.state, "console_session", None) or codec(request).read(request)
    if session is None or not session.csrf_ok(fields.get("csrf_token")):
        raise CsrfRejected()
    return fields


class CsrfRejected(Exception):
    """A form post without the session's CSRF token: a forged or stale request, answered 403 and audited."""


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    """A page with the layout's shared values: the caller, their navigation, the CSRF token, a pending flash."""
    principal: Principal | None = getattr(request.state, "principal", None)
    session: ConsoleSession | None = getattr(request.state, "console_session", None)
    flash = codec(request).take_flash(request)
    nav = [(path, label) for path, label, perm in NAV if principal is not None and principal.can(perm)]
    response = templates.TemplateResponse(request, template, {
        "principal": principal, "nav": nav, "csrf_token": session.csrf if session else "", "flash": flash,
        "path": request.url.path, **values}, status_code=status_code)
    if flash is not None:
        response.delete_cookie("l07_console_flash", path="/ui")
    return response


def error_page(request: Request, exc: L07Error) -> HTMLResponse:
    """An L07 error as a page, with the REST API's status for it."""
    request.state.error_code = exc.code.value
    return render(request, "error.html", status_code=exc.http_status, error=exc)


def forbidden(request: Request, principal: Principal, permission: Permission | str) -> HTMLResponse:
    return error_page(request, PermissionDenied(principal, permission))


def done(request: Request, to: str, message: str, ok: bool = True) -> Response:
    """Post/redirect/get: back to ``to`` with a one-time message."""
    response = RedirectResponse(to, status_code=303)
    codec(request).flash(request, response, message, ok)
    return response


def sign_in_redirect(back_to: str) -> RedirectResponse:
    return RedirectResponse("/ui/login?next=" + quote(back_to, safe="/"), status_code=303)
