"""Datasets over HTTP: metadata for every reader; example texts only for roles allowed to see training data."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from ...models.dataset import Dataset
from ...services.auth import Permission
from ..deps import CanListDatasets, ContextDep
from ..errors import error_responses
from ..types import UtcDateTime

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"], responses=error_responses(400, 401, 403, 500))

DatasetId = Annotated[str, Path(min_length=1, max_length=128, description="Dataset id")]


class DatasetExample(BaseModel):
    example_id: str
    split: str
    input_text: str
    output_text: str
    quality_score: float
    confidence: float | None
    task_type: str | None


class DatasetPublic(BaseModel):
    """One dataset version (contract §3.2)."""

    dataset_id: str
    name: str
    version: str
    created_at: UtcDateTime
    split_counts: dict[str, int]
    split_ratios: dict[str, float]
    statistics: dict[str, Any]
    lineage: dict[str, Any]
    checksum_sha256: str
    storage_location: str | None
    examples: list[DatasetExample] | None = Field(
        default=None, description="Only with include_examples=true and the dataset.get_training_data permission"
    )


class DatasetSummary(BaseModel):
    """A dataset at its latest version, as listed."""

    dataset_id: str
    name: str
    version: str
    versions: int
    created_at: UtcDateTime
    updated_at: UtcDateTime | None
    split_counts: dict[str, int]
    checksum_sha256: str | None


class DatasetList(BaseModel):
    data: list[DatasetSummary]
    count: int


def to_public(ds: Dataset, with_examples: bool = False) -> DatasetPublic:
    """A dataset in the API's shape."""
    examples = None
    if with_examples:
        split_of = {eid: split for split, ids in ds.splits.items() for eid in ids}
        examples = [
            DatasetExample(
                example_id=e.example_id, split=split_of.get(e.example_id, ""), input_text=e.input_text,
                output_text=e.output_text, quality_score=e.quality_score, confidence=e.confidence, task_type=e.task_type,
            )
            for e in ds.examples
        ]
    return DatasetPublic(
        dataset_id=ds.dataset_id,
        name=ds.name,
        version=ds.version,
        created_at=ds.created_at,
        split_counts={k: len(v) for k, v in ds.splits.items()},
        split_ratios=ds.split_ratios,
        statistics=ds.statistics.model_dump(mode="json"),
        lineage=ds.lineage.model_dump(mode="json"),
        checksum_sha256=ds.checksum_sha256,
        storage_location=ds.storage_location,
        examples=examples,
    )


@router.get("", name="datasets.list", response_model=DatasetList)
async def list_datasets(_: CanListDatasets, ctx: ContextDep) -> DatasetList:
    """Every dataset at its latest version (no example texts)."""
    datasets = await ctx.curator.list_datasets()
    return DatasetList(data=[DatasetSummary.model_validate(d) for d in datasets], count=len(datasets))


@router.get("/{dataset_id}", name="datasets.get", response_model=DatasetPublic, responses=error_responses(404))
async def get_dataset(
    dataset_id: DatasetId,
    principal: CanListDatasets,
    ctx: ContextDep,
    version: Annotated[str | None, Query(min_length=5, max_length=64, description="A version; default the latest")] = None,
    include_examples: Annotated[bool, Query(description="Add the example texts (reviewer and admin only)")] = False,
) -> DatasetPublic:
    """One dataset version with statistics and lineage; with ``include_examples`` also its examples."""
    if include_examples:
        principal.require(Permission.DATASET_GET_TRAINING_DATA)
    return to_public(await ctx.curator.get_dataset(dataset_id, version), with_examples=include_examples)
