"""The FastAPI app factory.

``create_app()`` builds an app bound to one database: the configured one by default, or the ``Database`` a test or
an embedding program passes in. Nothing heavy is imported here; services are built on first use (``context.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import __version__
from ..settings import Settings, get_settings
from ..store.db import Database
from .config import ApiConfig
from .context import AppContext
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware
from .routers import ROUTERS

DESCRIPTION = """\
REST interface of the L07 Learning Layer: event ingestion, training jobs, datasets, the model registry with its
approval rules, validation, audit, health and metrics.

Authenticate with an API key (`l07 keys create --role ROLE`) sent as `Authorization: Bearer <key>` or `X-API-Key`.
Every error answers `{code, name, message, detail}` with an E7xxx code. Send `X-Request-ID` to correlate logs,
audit rows and published events; the response echoes it (or the id the service assigned).
"""


def create_app(settings: Settings | None = None, db: Database | None = None, config: ApiConfig | None = None) -> FastAPI:
    """Build the L07 REST app.

    Args:
        settings: Layer settings; ``get_settings()`` by default.
        db: Database to serve from; by default one is opened from ``settings.database_url`` and closed on shutdown.
        config: REST limits (body size, rate limit); read from ``L07_API_*`` by default.

    Returns:
        The FastAPI application.
    """
    settings = settings or get_settings()
    config = config or ApiConfig()
    owns_db = db is None
    if db is None:
        db = Database(settings.database_url or "", auto_migrate=bool(settings.auto_migrate))
    context = AppContext(settings, db, config, owns_db=owns_db)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await context.close()

    app = FastAPI(title="L07 Learning Layer", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.l07 = context
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_request_bytes=config.max_request_bytes)
    for router in ROUTERS:
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with FastAPI's default 422 answers removed: this API answers validation errors with
    400 and the shared error body (documented per route)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    app.openapi_schema = schema
    return schema
