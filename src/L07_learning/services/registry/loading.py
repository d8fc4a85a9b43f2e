"""Where a registered model's verified files are, for anything that runs it (validation, serving)."""

from __future__ import annotations

from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelType


async def resolve_model_dirs(registry: Any, model_id: str) -> tuple[str, str | None]:
    """Verified local folders for a registered model: (model dir, adapter dir or None)."""
    model = await registry.get_model(model_id)
    path = str(await registry.local_path(model_id))
    if model.model_type is ModelType.LORA_ADAPTER:
        if not model.parent_model_id:
            raise L07Error(L07ErrorCode.ADAPTER_LOADING_FAILURE, f"adapter {model_id} has no parent model")
        parent_dir, parent_adapter = await resolve_model_dirs(registry, model.parent_model_id)
        if parent_adapter is not None:
            raise L07Error(L07ErrorCode.ADAPTER_INCOMPATIBILITY, "stacked adapters are not supported")
        return parent_dir, path
    if model.model_type is ModelType.REWARD_MODEL:
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY, "a reward model cannot serve chat completions")
    return path, None
