"""``l07 serve``: the REST service on uvicorn."""

from __future__ import annotations

import typer
import uvicorn

from ..api.config import ApiConfig
from ..observability.logging import configure_logging
from ..settings import get_settings
from ._common import JsonOpt, emit_json


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve`` command to the ``l07`` app."""

    @app.command()
    def serve(
        host: str | None = typer.Option(None, help="Listen address (default L07_API_HOST or 127.0.0.1)."),
        port: int | None = typer.Option(None, help="Listen port (default L07_API_PORT or 8707)."),
        workers: int = typer.Option(1, min=1, help="Worker processes (rate limits are per process)."),
        log_level: str | None = typer.Option(None, help="Log level (default L07_LOG_LEVEL)."),
        json_out: bool = JsonOpt,
    ) -> None:
        """Run the REST API (FastAPI on uvicorn) with JSON logs carrying the request id, and the outbox relay."""
        settings = get_settings()
        config = ApiConfig()
        level = (log_level or settings.log_level).upper()
        configure_logging(level, settings.log_format)
        bind = {"host": host or config.host, "port": port or config.port, "workers": workers}
        if json_out:
            emit_json({"serving": f"http://{bind['host']}:{bind['port']}", **bind})
        else:
            docs = "docs at /docs" if config.public_docs else "schema at /openapi.json with a key; L07_API_PUBLIC_DOCS=true for /docs"
            typer.echo(f"L07 API on http://{bind['host']}:{bind['port']} ({docs})", err=True)
        uvicorn.run(
            "L07_learning.api.app:create_served_app",
            factory=True,
            host=bind["host"],
            port=bind["port"],
            workers=workers,
            log_level=level.lower(),
            # Our middleware writes one structured access line per request with the request id.
            access_log=False,
            log_config=None,
        )
