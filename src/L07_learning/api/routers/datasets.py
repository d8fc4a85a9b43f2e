"""Datasets over HTTP: metadata for every reader; example texts only for roles allowed to see training data; a new
version from ACCEPTED examples for roles that train (the function a loop trigger uses)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from ...models.dataset import Dataset
from ...models.error_codes import L07Error, L07ErrorCode
from ..auth import Permission
from ...services.loop.datasets import version_group
from ...services.loop.policies import GroupSelector
from ..deps import CanListDatasets, CanTrain, ContextDep
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


class NothingNew(L07Error):
    """E7020 for a request: the selector finds nothing the dataset lacks (HTTP 409, the state, not the server)."""

    def __init__(self, error: L07Error) -> None:
        super().__init__(error.code, error.message, **error.details)

    @property
    def http_status(self) -> int:
        return 409


class DatasetCreate(BaseModel):
    """A new version of dataset ``name`` from the ACCEPTED examples the selector picks that it does not hold yet."""

    name: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    selector: GroupSelector = Field(default_factory=GroupSelector,
                                    description="agent_id, task_type, labels; every field given must match")
    min_examples: int | None = Field(default=None, ge=1, description="Below it the version is flagged "
                                                                     "below_minimum; default L07_MINIMUM_DATASET_SIZE")
    split_ratios: dict[str, float] | None = Field(default=None, description="First version only; later versions "
                                                                            "keep the existing splits")


@router.post("", name="datasets.create", response_model=DatasetPublic, status_code=201,
             responses=error_responses(409))
async def create_dataset(body: DatasetCreate, request: Request, principal: CanTrain, ctx: ContextDep) -> DatasetPublic:
    """Create the dataset (1.0.0) or its next MINOR version, existing members keeping their split; E7020 when the
    selector finds no ACCEPTED example that the dataset lacks."""
    request.state.audit_details = {"name": body.name, "selector": body.selector.model_dump()}
    try:
        dataset = await version_group(ctx.curator, ctx.db, body.name, body.selector,
                                      min_examples=body.min_examples or ctx.settings.minimum_dataset_size,
                                      reason=f"created over REST by {principal.key_id}", created_by=principal.key_id,
                                      split_ratios=body.split_ratios)
    except L07Error as exc:
        if exc.code is L07ErrorCode.INSUFFICIENT_EXAMPLES:
            raise NothingNew(exc) from None
        raise
    request.state.audit_resource_id = dataset.dataset_id
    return to_public(dataset)


@router.get("", name="datasets.list", response_model=DatasetList)
async def list_datasets(_: CanListDatasets, ctx: ContextDep) -> DatasetList:
    """Every dataset at its latest version (no example texts)."""
    datasets = await ctx.curator.list_datasets()
    return DatasetList(data=[DatasetSummary.model_validate(d) for d in datasets], count=len(datasets))


@router.get("/{dataset_id}", name="datasets.get", response_model=DatasetPublic, responses=error_responses(404))
async def get_dataset(
    dataset_id: DatasetId,
    request: Request,
    principal: CanListDatasets,
    ctx: ContextDep,
    version: Annotated[str | None, Query(min_length=5, max_length=64, description="A version; default the latest")] = None,
    include_examples: Annotated[bool, Query(description="Add the example texts (reviewer and admin only)")] = False,
) -> DatasetPublic:
    """One dataset version with statistics and lineage; with ``include_examples`` also its examples."""
    if include_examples:
        request.state.audit_read = True  # a read of training data: audited, allowed or not (contract §7.4)
        principal.require(Permission.DATASET_GET_TRAINING_DATA)
    return to_public(await ctx.curator.get_dataset(dataset_id, version), with_examples=include_examples)
