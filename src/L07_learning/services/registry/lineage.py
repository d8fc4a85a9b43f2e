"""Lineage of a registered model: model -> training job -> dataset version -> source events, parents recursively."""

from __future__ import annotations

from ...models.model_artifact import ModelLineage, ModelType
from ...store.repositories.models import ModelRepository

# At most this many models in one lineage tree, so a long or corrupt parent chain cannot make the answer unbounded.
_LINEAGE_MAX_DEPTH = 16


async def model_lineage(repo: ModelRepository, model_id: str, seen: set[str] | None = None) -> ModelLineage:
    """The lineage of ``model_id``; an id that points nowhere gives a lineage with the id only."""
    seen = set() if seen is None else seen
    seen.add(model_id)
    model = await repo.get(model_id, with_history=False)
    if model is None:
        return ModelLineage(model_id=model_id)
    job = await repo.training_job(model.training_job_id) if model.training_job_id else None
    dataset_id = model.dataset_id or (job or {}).get("dataset_id")
    dataset_version = model.dataset_version or (job or {}).get("dataset_version")
    version = await repo.dataset_version(dataset_id, dataset_version) if dataset_id else None
    events = list((version or {}).get("lineage", {}).get("source_event_ids") or [])
    parent_ids = [p for p in dict.fromkeys([model.parent_model_id, (job or {}).get("base_model_id")]) if p]
    parents = []
    for pid in parent_ids:
        if pid not in seen and len(seen) < _LINEAGE_MAX_DEPTH:
            parents.append(await model_lineage(repo, pid, seen))
    base_name = model.base_model_name or (model.name if model.model_type is ModelType.BASE else None)
    if base_name is None:
        base_name = next((p.base_model_name for p in parents if p.base_model_name), None)
    return ModelLineage(
        model_id=model.model_id, parent_model_id=model.parent_model_id, base_model_name=base_name,
        base_model_version=model.base_model_version, training_job_id=model.training_job_id,
        dataset_id=dataset_id, dataset_version=(version or {}).get("version", dataset_version),
        dataset_checksum=(version or {}).get("checksum_sha256"),
        hyperparameters=(job or {}).get("config") or dict(model.config), source_event_count=len(events),
        source_event_ids=events, parents=parents,
    )
