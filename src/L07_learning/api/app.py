"""The FastAPI app factory.

``create_app()`` builds an app bound to one database: the configured one by default, or the ``Database`` a test or
an embedding program passes in. The services come from ``LearningService.build`` (``context.py``); none imports torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import __version__
from ..services.learning_service import LearningService
from ..services.loop import LearningLoop
from ..settings import Settings, get_settings
from .config import ApiConfig
from .console import install_console
from .context import AppContext
from .deps import PrincipalDep
from .errors import install_error_handlers
from .middleware import RequestContextMiddleware
from .routers import ROUTERS

DESCRIPTION = """\
REST interface of the L07 Learning Layer: event ingestion, training jobs, datasets, the model registry with its
approval rules, validation, audit, health and metrics.

Authenticate with an API key (`l07 keys create --role ROLE`) sent as `Authorization: Bearer <key>` or `X-API-Key`.
`/metrics` and `/openapi.json` need a key too unless `L07_API_PUBLIC_METRICS` / `L07_API_PUBLIC_DOCS` are set.
Every error answers `{code, name, message, detail}` with an E7xxx code. Send `X-Request-ID` to correlate logs,
audit rows and published events; the response echoes it (or the id the service assigned).
"""


def create_app(settings: Settings | None = None, db: Any = None, config: ApiConfig | None = None, *,
               loop: LearningLoop | None = None, relay: bool = False) -> FastAPI:
    """Build the L07 REST app.

    Args:
        settings: Layer settings; ``get_settings()`` by default.
        db: Database to serve from; by default one is opened from ``settings.database_url`` and closed on shutdown.
        config: REST limits (body size, rate limit); read from ``L07_API_*`` by default.
        loop: The loop of ``l07 run --api``: the app serves its services and its policies' status, and the caller
            starts and closes it. Without one the services are built from ``settings`` and ``db``, and
            ``GET /api/v1/loop`` reads the default policies' state.
        relay: Initialise the services on startup, which starts the outbox relay, and clean them up on shutdown
            (``l07 serve``: events written by its requests leave the database from this process).

    Returns:
        The FastAPI application.
    """
    settings = settings or get_settings()
    config = config or ApiConfig()
    service = loop.service if loop is not None else LearningService.build(settings, db)
    context = AppContext(service, config, owns_db=db is None and loop is None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if relay:
            await context.service.initialize()
        yield
        if relay:
            await context.operations.close()
            await context.service.cleanup()  # stops the relay, then closes the database
        else:
            await context.close()

    # The schema maps every endpoint and the browsable pages load it without a key, so all three are public only
    # when configured; otherwise any valid key may read the schema.
    public = config.public_docs
    app = FastAPI(title="L07 Learning Layer", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs" if public else None, redoc_url="/redoc" if public else None,
                  openapi_url="/openapi.json" if public else None)
    if not public:
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_for_key_holders(_: PrincipalDep) -> dict[str, Any]:
            return app.openapi()

    app.state.l07 = context
    app.state.l07_loop = loop or LearningLoop(service)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_request_bytes=config.max_request_bytes)
    for router in ROUTERS:
        app.include_router(router)
    install_console(app, settings)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def create_served_app() -> FastAPI:
    """The app of ``l07 serve`` (a uvicorn factory): the configured database, with the outbox relay running."""
    return create_app(relay=True)


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
