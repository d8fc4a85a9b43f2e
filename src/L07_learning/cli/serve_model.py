"""``l07 serve-model MODEL_ID``: an OpenAI-compatible endpoint for one registered (verified) model."""

from __future__ import annotations

import asyncio

import typer
import uvicorn

from ..api.auth import AuthService, Principal
from ..api.serving import ServingLimits, create_serving_app
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.model_artifact import ModelStage
from ..services.learning_service import LearningService
from ..services.registry.loading import resolve_model_dirs
from ..services.release.serving_model import ServedModel
from ._common import err_console, services

SERVABLE = (ModelStage.STAGING, ModelStage.PRODUCTION)


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve-model`` command."""
    app.command(name="serve-model")(serve_model)


class _KeyCheck:
    """Checks keys against the L07 database from inside the server's own event loop (an async engine belongs to the
    loop that created it, so it is built on first use there)."""

    def __init__(self) -> None:
        self.service: LearningService | None = None

    async def __call__(self, token: str | None) -> Principal:
        if self.service is None:
            self.service = LearningService.build()
        return await AuthService(self.service.access).authenticate(token)


def serve_model(
    model_id: str = typer.Argument(..., help="Registry id of the model or LoRA adapter to serve."),
    host: str = typer.Option("127.0.0.1", help="Listen address."),
    port: int = typer.Option(8090, help="Listen port."),
    allow_stage: list[str] = typer.Option(
        [], "--allow-stage", help="Also serve a model in this stage (repeatable); STAGING and PRODUCTION always are."),
    max_batch: int = typer.Option(8, min=1, max=64, help="Most concurrent requests decoded in one forward batch."),
    max_prompt_tokens: int = typer.Option(4096, min=16, help="Longest prompt accepted, in tokens (tools included)."),
    max_tokens: int = typer.Option(1024, min=1, help="Largest max_tokens a request may ask for."),
    max_request_bytes: int = typer.Option(1_000_000, min=1024, help="Largest request body accepted."),
) -> None:
    """Serve POST /v1/chat/completions for MODEL_ID (verified on load) to keys with the inference role.

    Agents call it with the openai client: base_url=http://HOST:PORT/v1, api_key=<an `l07 keys create --role
    inference` key>, model=MODEL_ID; tools in the request, tool_calls in the answer.
    """
    try:
        allowed = set(SERVABLE) | {ModelStage(s) for s in allow_stage}
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow-stage") from None

    async def dirs() -> tuple[str, str | None]:
        async with services() as service:
            model = await service.registry.get_model(model_id)
            if model.stage not in allowed:
                raise L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                               f"{model_id} is {model.stage.value}; serve-model serves "
                               f"{', '.join(sorted(s.value for s in allowed))} (add --allow-stage {model.stage.value})")
            return await resolve_model_dirs(service.registry, model_id)

    limits = ServingLimits(max_batch=max_batch, max_prompt_tokens=max_prompt_tokens,
                           max_completion_tokens=max_tokens, max_request_bytes=max_request_bytes)
    try:
        model_dir, adapter_dir = asyncio.run(dirs())
        served = ServedModel.load(model_dir, adapter_dir)
    except L07Error as exc:
        err_console.print(f"[bold red]{exc.code.value} {exc.code.name}[/]: {exc.message}")
        raise typer.Exit(code=2) from None
    # Which engine answers (L07_INFERENCE_BACKEND; auto: llama.cpp, then CTranslate2, when installed).
    err_console.print(f"inference backend: {served.backend_name}")
    app = create_serving_app(served, model_id, _KeyCheck(), limits)
    uvicorn.run(app, host=host, port=port, log_level="info")
