"""Export of a registered model for runtimes outside L07 (llama.cpp, Ollama, any Hugging Face loader).

An export is itself a registered model: the adapter merged into its base (``FINE_TUNED``; a full model keeps its
type), with ``parent_model_id`` pointing at the exported model, its own signed manifest, and the GGUF file and
``Modelfile`` among its files, so every exported byte is hashed, signed and verified like any model. The export's
``config["export"]`` records source, format and quantisation; asking again for what an existing export already
holds returns that export instead of a copy.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage, ModelType
from ...pipelines.export import FORMATS, GGUF_FILE, MODELFILE, check_format, export_files
from ...store.repositories.audit import audit
from ...store.repositories.models import ModelRepository
from ..model_registry import ModelRegistry
from ..registry.loading import resolve_model_dirs

# Each format includes the ones before it (an ollama export holds the GGUF and the merged folder).
_RANK = {f: i for i, f in enumerate(FORMATS)}


def _covers(export: dict[str, Any], fmt: str, quant: str) -> bool:
    have = export.get("format")
    if have not in _RANK or _RANK[have] < _RANK[fmt]:
        return False
    return fmt == "hf" or export.get("quant") == quant


async def _manifest(registry: ModelRegistry, model_id: str) -> dict[str, Any]:
    async with registry.db.session() as session:
        return await ModelRepository(session).get_manifest(model_id) or {}


async def artifact_files(registry: ModelRegistry, model: ModelArtifact) -> list[dict[str, Any]]:
    """The exported artifacts of an export model: one entry per format with its URI and sha256 (the merged folder's
    entry is the signed manifest's checksum, since a folder has no single hash)."""
    export = model.config.get("export") or {}
    if not export:
        return []
    files = {f["path"]: f for f in (await _manifest(registry, model.model_id)).get("files", [])}
    base = model.artifact_path.rstrip("/")
    base = base if "://" in base else f"file://{base}"
    out = [{"model_id": model.model_id, "format": "hf", "uri": base + "/", "sha256": model.checksum.removeprefix("sha256:"),
            "size_bytes": sum(f["size"] for p, f in files.items() if p not in (GGUF_FILE, MODELFILE))}]
    for fmt, name in (("gguf", GGUF_FILE), ("ollama", MODELFILE)):
        if name in files:
            out.append({"model_id": model.model_id, "format": fmt, "uri": f"{base}/{name}",
                        "sha256": files[name]["sha256"], "size_bytes": files[name]["size"],
                        **({"quant": export.get("quant")} if fmt == "gguf" else {})})
    return out


async def exports_of(registry: ModelRegistry, model_id: str) -> list[ModelArtifact]:
    """Registered exports whose source is ``model_id``, newest first."""
    async with registry.db.session() as session:
        candidates = await ModelRepository(session).list()
    return [m for m in candidates
            if m.parent_model_id == model_id and (m.config.get("export") or {}).get("source_model_id") == model_id]


async def exported_artifacts(registry: ModelRegistry, model_id: str) -> list[dict[str, Any]]:
    """Every exported artifact of ``model_id``: its own files when it is an export, and those of its exports."""
    model = await registry.get_model(model_id)
    found = await artifact_files(registry, model)
    for export in await exports_of(registry, model_id):
        found += await artifact_files(registry, export)
    return found


async def export_model(registry: ModelRegistry, model_id: str, fmt: str = "hf", quant: str = "q8_0",
                       actor: str = "l07") -> dict[str, Any]:
    """Export ``model_id`` as ``fmt`` (``hf`` | ``gguf`` | ``ollama``) and register the result.

    Returns:
        ``{"model_id", "source_model_id", "name", "version", "format", "quant", "reused", "artifacts": [...]}``;
        ``artifacts`` lists each exported file with ``uri`` and ``sha256``.

    Raises:
        L07Error: E7250 unknown model; E7110 unknown format or quantisation; E7203 the model was REJECTED by
        validation (an export is a release channel); E7208 a reward model or a non-Llama/non-ChatML model for
        gguf/ollama; E7207/E7201 the source fails verification; E7604 the adapter cannot be merged.
    """
    fmt, quant = check_format(fmt, quant)
    source = await registry.get_model(model_id)
    if source.stage is ModelStage.REJECTED:
        raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                       f"model {model_id} was rejected by validation; it is not exported", model_id=model_id)
    if source.model_type is ModelType.REWARD_MODEL:
        raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY, "a reward model has no chat runtime to export to",
                       model_id=model_id)
    for prior in await exports_of(registry, model_id):
        if _covers(prior.config["export"], fmt, quant):
            return await _answer(registry, prior, model_id, reused=True)

    model_dir, adapter_dir = await resolve_model_dirs(registry, model_id)  # verified: hashes and signature
    work = Path(tempfile.mkdtemp(prefix="l07-export-", dir=_scratch(registry)))
    try:
        out = work / "export"
        made = await asyncio.to_thread(export_files, model_dir, adapter_dir, out, fmt, quant)
        base_name = source.base_model_name
        if adapter_dir is not None and not base_name and source.parent_model_id:
            base_name = (await registry.get_model(source.parent_model_id)).name
        export_info = {"source_model_id": model_id, "source_name": source.name, "source_version": source.version,
                       "source_checksum": source.checksum, "format": made["format"], "quant": made["quant"],
                       "merged_adapter": adapter_dir is not None}
        artifact = ModelArtifact(
            name=f"{source.name}-merged" if adapter_dir is not None else f"{source.name}-export",
            model_type=ModelType.FINE_TUNED if adapter_dir is not None else source.model_type,
            parent_model_id=model_id, dataset_id=source.dataset_id, dataset_version=source.dataset_version,
            base_model_name=base_name, base_model_version=source.base_model_version,
            config={**source.config, "export": export_info}, metrics=dict(source.metrics),
            artifact_format="safetensors" if fmt == "hf" else "safetensors+gguf",
            tags=sorted({*source.tags, "export", fmt}),
            notes=f"{fmt} export of {source.name} {source.version} ({model_id})",
        )
        new_id = await registry.register_model(artifact, source_dir=str(out), actor=actor)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    exported = await registry.get_model(new_id)
    answer = await _answer(registry, exported, model_id, reused=False)
    async with registry.db.session() as session:
        await audit(session, "model.export", "model", model_id, actor=actor, details={
            "export_model_id": new_id, "format": fmt, "quant": answer["quant"],
            "artifacts": [{k: a[k] for k in ("format", "uri", "sha256")} for a in answer["artifacts"]]})
    return answer


def _scratch(registry: ModelRegistry) -> str:
    path = Path(registry.settings.home) / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


async def _answer(registry: ModelRegistry, export: ModelArtifact, source_id: str, reused: bool) -> dict[str, Any]:
    info = export.config["export"]
    return {"model_id": export.model_id, "source_model_id": source_id, "name": export.name,
            "version": export.version, "model_type": export.model_type.value, "format": info["format"],
            "quant": info.get("quant"), "reused": reused, "artifacts": await artifact_files(registry, export)}
