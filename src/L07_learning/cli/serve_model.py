"""``l07 serve-model MODEL_ID``: an OpenAI-compatible endpoint for one registered (verified) model."""

from __future__ import annotations

import asyncio

import typer
import uvicorn

from ..api.serving import create_serving_app
from ..models.error_codes import L07Error
from ..services.registry.loading import resolve_model_dirs
from ._common import err_console, services


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve-model`` command."""
    app.command(name="serve-model")(serve_model)


def serve_model(
    model_id: str = typer.Argument(..., help="Registry id of the model or LoRA adapter to serve."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    port: int = typer.Option(8090, help="Listen port."),
) -> None:
    """Serve POST /v1/chat/completions for MODEL_ID (verified on load); L04 registers http://HOST:PORT/v1."""
    async def dirs() -> tuple[str, str | None]:
        async with services() as service:
            return await resolve_model_dirs(service.registry, model_id)

    try:
        model_dir, adapter_dir = asyncio.run(dirs())
    except L07Error as exc:
        err_console.print(f"[bold red]{exc.code.value} {exc.code.name}[/]: {exc.message}")
        raise typer.Exit(code=2) from None
    uvicorn.run(create_serving_app(model_dir, adapter_dir, model_id), host=host, port=port, log_level="info")
