"""`l07 serve-model`: an OpenAI-compatible chat endpoint over a verified registered model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from L07_learning.models import ModelArtifact, ModelType
from L07_learning.models.error_codes import L07Error


async def test_chat_completions_over_a_verified_model_and_tampering_refused(sqlite_db, settings, tmp_path):
    from L07_learning.api.serving import create_serving_app
    from L07_learning.pipelines.base_model import build_tiny_model
    from L07_learning.services.registry.loading import resolve_model_dirs
    from L07_learning.services.model_registry import ModelRegistry

    from L07_learning.tests.factories.validation import chatty

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    src = chatty(build_tiny_model(tmp_path / "tiny", seed=0), tmp_path / "chatty")
    model_id = await registry.register_model(ModelArtifact(name="serve-me", model_type=ModelType.FINE_TUNED),
                                             source_dir=str(src))
    model_dir, adapter = await resolve_model_dirs(registry, model_id)
    assert adapter is None
    app = create_serving_app(model_dir, adapter, model_id)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model.test") as client:
        listed = (await client.get("/v1/models")).json()
        assert listed["data"][0]["id"] == model_id
        body = {"model": model_id, "messages": [{"role": "user", "content": "Which tool handles request 1?"}],
                "max_tokens": 6}
        first = (await client.post("/v1/chat/completions", json=body)).json()
        second = (await client.post("/v1/chat/completions", json=body)).json()
        assert first["choices"][0]["message"]["content"] and first["object"] == "chat.completion"
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
        assert first["usage"]["completion_tokens"] == 6 and first["choices"][0]["finish_reason"] == "length"
        wrong = await client.post("/v1/chat/completions", json={**body, "model": "other"})
        assert wrong.status_code == 404 and wrong.json()["code"] == "E7250"

    # A changed byte in the stored artifact: the model is never loaded for serving.
    stored = Path((await registry.get_model(model_id)).artifact_path.removeprefix("file://"))
    weights = next(stored.rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(L07Error) as info:
        await resolve_model_dirs(registry, model_id)
    assert info.value.code.value in ("E7207", "E7201")
