"""An OpenAI-compatible chat endpoint for one registered model, so agents and the L04 gateway call it like any model.

``l07 serve-model MODEL_ID`` loads the model through the registry (hash and signature verified, adapters merged onto
their verified base) and serves ``POST /v1/chat/completions`` (``tools`` and ``tool_choice`` in, ``tool_calls`` out,
``stream: true`` as server-sent events), ``GET /v1/models``, ``GET /health`` and ``GET /metrics``. Requests carry an
L07 API key whose role grants ``model.infer`` (``l07 keys create --role inference``). Concurrent requests are
decoded together (``services/release/batcher.py``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.tool_calls import TOOL_CALL_OPEN, parse_generation
from ..observability.metrics import SERVING_LATENCY, SERVING_TOKENS, render
from ..services.release.batcher import Batcher
from ..services.release.serving_model import ServedModel
from .auth import Permission, Principal
from .errors import PayloadTooLarge, install_error_handlers

Authenticate = Callable[[str | None], Awaitable[Principal]]


class ServingLimits(BaseModel):
    """What one request may ask of the server."""

    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_prompt_tokens: int = Field(4096, ge=16)
    max_completion_tokens: int = Field(1024, ge=1)
    max_batch: int = Field(8, ge=1, le=64)


class FunctionCall(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(max_length=100_000)


class ToolCall(BaseModel):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)

    def as_dict(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):  # OpenAI content parts: only text parts mean anything to a text model
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ToolSpec(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: dict[str, str]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # sampling knobs other clients send are accepted and unused

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=512)
    tools: list[ToolSpec] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, description="Ignored: decoding is greedy")


def _prefill(req: ChatRequest) -> str:
    """Text the answer is forced to start with: a named or required tool call starts its block itself."""
    if not req.tools or req.tool_choice in (None, "auto", "none"):
        return ""
    if isinstance(req.tool_choice, NamedToolChoice):
        name = req.tool_choice.function.get("name", "")
        if name not in {t.function.name for t in req.tools}:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"tool_choice names unknown tool {name!r}")
        return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": '
    return f'{TOOL_CALL_OPEN}\n{{"name": "'


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (chunked bodies included)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit, int(declared))
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise PayloadTooLarge(limit, len(body))
    return bytes(body)


def _held_back(text: str) -> int:
    """How many trailing characters could still be the start of a ``<tool_call>`` tag (not streamed yet)."""
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-k:]):
            return k
    return 0


def create_serving_app(served: ServedModel, model_id: str, authenticate: Authenticate,
                       limits: ServingLimits | None = None) -> FastAPI:
    """A FastAPI app serving one loaded model to callers whose key ``authenticate`` accepts."""
    limits = limits or ServingLimits()
    batcher = Batcher(served, max_batch=limits.max_batch)
    bearer = HTTPBearer(auto_error=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title=f"L07 model {model_id}", version="1", lifespan=lifespan)
    install_error_handlers(app)

    async def caller(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        principal = await authenticate(creds.credentials if creds is not None else request.headers.get("x-api-key"))
        principal.require(Permission.MODEL_INFER)
        return principal

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # The engine answering (transformers, ctranslate2, llama_cpp, vllm): what an operator checks first when
        # latency is not what the fast-cpu extra promised.
        return {"status": "ok", "model": model_id, "engine": served.backend_name}

    @app.get("/metrics")
    async def metrics(_: Principal = Depends(caller)) -> Response:
        return Response(content=render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(_: Principal = Depends(caller)) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "l07", "created": 0}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request, _: Principal = Depends(caller)) -> dict[str, Any] | StreamingResponse:
        # The body is read here, after the key check, so an unauthenticated caller cannot make the server read it.
        started = time.perf_counter()
        try:
            req = ChatRequest.model_validate_json(await _read_body(request, limits.max_request_bytes))
        except ValidationError as exc:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"invalid chat request: {exc.errors(include_url=False, include_input=False)}") from None
        if req.model not in (None, model_id):
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"this server serves {model_id}, not {req.model}")
        limit = req.max_completion_tokens or req.max_tokens or min(256, limits.max_completion_tokens)
        if limit > limits.max_completion_tokens:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"max_tokens {limit} is above this server's limit of {limits.max_completion_tokens}")
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools and req.tool_choice != "none" else None
        prefill = _prefill(req)
        prompt = served.render([m.as_dict() for m in req.messages], tools) + prefill
        prompt_tokens = served.count_tokens(prompt)
        if prompt_tokens > limits.max_prompt_tokens:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"prompt is {prompt_tokens} tokens, above this server's limit of {limits.max_prompt_tokens}")
        SERVING_TOKENS.labels("prompt").inc(prompt_tokens)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(
                _sse(batcher, completion_id, model_id, prompt, prefill, limit, bool(tools), started),
                media_type="text/event-stream")
        out = await batcher.complete(prompt, limit)
        content, calls = parse_generation(prefill + out.text) if tools else (out.text, [])
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls else ("length" if out.new_tokens >= limit else "stop")
        SERVING_LATENCY.labels("false").observe(time.perf_counter() - started)
        return {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out.new_tokens,
                      "total_tokens": prompt_tokens + out.new_tokens},
        }

    return app


async def _sse(batcher: Batcher, completion_id: str, model_id: str, prompt: str, prefill: str, limit: int,
               tools: bool, started: float) -> AsyncIterator[bytes]:
    """Server-sent chat.completion.chunk events: text as it is produced; with tools, text that may open a
    ``<tool_call>`` is held back, and the calls go out as one delta once the answer is complete."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model_id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    text, sent = prefill, len(prefill)
    in_call = bool(prefill)
    async for piece in batcher.stream(prompt, limit):
        text += piece
        if in_call or not tools:
            if not tools:
                yield chunk({"content": piece})
                sent = len(text)
            continue
        opened = text.find(TOOL_CALL_OPEN, sent)
        if opened >= 0:
            in_call = True
            if opened > sent:
                yield chunk({"content": text[sent:opened]})
            sent = opened
            continue
        safe = len(text) - _held_back(text)
        if safe > sent:
            yield chunk({"content": text[sent:safe]})
            sent = safe
    finish = "stop"
    if tools:
        content, calls = parse_generation(text)
        if calls:
            finish = "tool_calls"
            yield chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
        elif len(text) > sent:
            yield chunk({"content": text[sent:]})
    SERVING_LATENCY.labels("true").observe(time.perf_counter() - started)
    yield chunk({}, finish)
    yield b"data: [DONE]\n\n"
