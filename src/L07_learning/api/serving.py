"""An OpenAI-compatible chat endpoint for one registered model, so the L04 gateway can route traffic to it.

``l07 serve-model MODEL_ID`` loads the model through the registry (hash and signature verified, adapters merged onto
their verified base) and serves ``POST /v1/chat/completions`` and ``GET /v1/models``. L04 registers it as an
OpenAI-compatible provider with ``base_url=http://HOST:PORT/v1`` and ``model=<model_id>``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from ..models.error_codes import L07Error, L07ErrorCode
from ..services.release.serving_model import ServedModel
from .errors import install_error_handlers


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(default=128, ge=1, le=2048)
    temperature: float | None = Field(default=None, ge=0, le=2, description="Ignored: decoding is greedy")


def create_serving_app(model_dir: str, adapter_dir: str | None, model_id: str) -> FastAPI:
    """A FastAPI app serving one loaded model (greedy decoding, one request at a time)."""
    served = ServedModel.load(model_dir, adapter_dir)
    lock = asyncio.Lock()  # one forward pass at a time: the model is not re-entrant
    app = FastAPI(title=f"L07 model {model_id}", version="1")
    install_error_handlers(app)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "l07"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> dict[str, Any]:
        if req.model not in (None, model_id):
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"this server serves {model_id}, not {req.model}")
        messages = [m.model_dump() for m in req.messages]
        prompt_tokens = served.prompt_tokens(messages)
        async with lock:
            out = await asyncio.to_thread(served.generate, messages, req.max_tokens)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                         "finish_reason": "length" if out.new_tokens >= req.max_tokens else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out.new_tokens,
                      "total_tokens": prompt_tokens + out.new_tokens},
        }

    return app
