"""The web console at ``/ui``: server-rendered pages over the REST API's services, for the people who run the loop.

Pages work without JavaScript; the vendored htmx (live job progress) and uPlot (loss curves) only enhance them
(``static/``, with their licences; nothing is loaded from another site).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from ...models.error_codes import L07Error, L07ErrorCode
from ...settings import Settings
from . import actions, pages
from .session import SessionCodec, console_secret
from .web import HERE, CsrfRejected, SignInRequired, render, sign_in_redirect

__all__ = ["install_console"]


def install_console(app: FastAPI, settings: Settings) -> None:
    """Add the console's routes, static files and error pages to ``app``."""
    app.state.l07_console = SessionCodec(console_secret(settings))
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="console_static")
    app.include_router(actions.router)
    app.include_router(pages.router)

    async def to_sign_in(_: Request, exc: Exception) -> Response:
        return sign_in_redirect(getattr(exc, "back_to", "/ui/"))

    async def csrf_rejected(request: Request, _: Exception) -> Response:
        err = L07Error(L07ErrorCode.SERVICE_ACCOUNT_PERMISSION_ERROR,
                       "this form was not sent from a console page of this session (missing or wrong CSRF token)",
                       reason="csrf")
        request.state.error_code = err.code.value
        return render(request, "error.html", status_code=403, error=err)

    app.add_exception_handler(SignInRequired, to_sign_in)
    app.add_exception_handler(CsrfRejected, csrf_rejected)
