"""Datasets, immutable versions, splits, statistics and lineage (contract §3.2, §4.3, §5.4)."""

from __future__ import annotations

import math
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field, field_validator

from ._base import L07Model, check_semver, new_id, utcnow
from .training_example import TrainingExample

DEFAULT_SPLIT_RATIOS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}


class DatasetSplit(str, Enum):
    """Split names; wire keys are lower-case."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class ChangeType(str, Enum):
    MAJOR = "MAJOR"
    MINOR = "MINOR"
    PATCH = "PATCH"


def validate_split_ratios(ratios: dict[str, float]) -> dict[str, float]:
    """Check ratios: keys train/val/test, each in (0,1) (train may be 1 alone), summing to 1 +- 1e-6.

    Raises:
        ValueError: naming the offending key or the sum (the curator maps it to E7029).
    """
    allowed = {s.value for s in DatasetSplit}
    unknown = set(ratios) - allowed
    if unknown:
        raise ValueError(f"split_ratios has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in ratios.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < 1:
            raise ValueError(f"split_ratios[{key!r}] = {value!r} must be in (0, 1)")
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split_ratios must sum to 1 (got {total:.6f})")
    return {k: float(v) for k, v in ratios.items()}


class DatasetStatistics(L07Model):
    """Counts and distributions of one dataset version."""

    total_examples: int = 0
    train_split_count: int = 0
    val_split_count: int = 0
    test_split_count: int = 0
    examples_by_difficulty: dict[str, int] = Field(default_factory=dict)
    examples_by_task_type: dict[str, int] = Field(default_factory=dict)
    examples_by_domain: dict[str, int] = Field(default_factory=dict)
    examples_by_source_type: dict[str, int] = Field(default_factory=dict)
    task_type_by_split: dict[str, dict[str, int]] = Field(default_factory=dict)
    min_quality_score: float | None = None
    avg_quality_score: float | None = None
    quality_score_stddev: float | None = None
    avg_confidence: float | None = None
    length_chars: dict[str, float] = Field(default_factory=dict)
    quality_histogram: dict[str, int] = Field(default_factory=dict)
    max_class_share: float = 0.0
    label_entropy: float = 0.0
    below_minimum: bool = False
    notes: list[str] = Field(default_factory=list)


class DatasetLineage(L07Model):
    """Where a dataset version came from, enough to rebuild and verify it."""

    source_event_ids: list[str] = Field(default_factory=list)
    source_event_digest: str | None = None
    filter_config_hash: str | None = None
    min_quality_score: float | None = None
    min_confidence: float | None = None
    feature_version: str = "2.0"
    extraction_version: str = "1.0"
    code_version: str | None = None
    parent_dataset_id: str | None = None
    parent_version: str | None = None


class DatasetVersion(L07Model):
    """One immutable, content-addressed version of a dataset."""

    dataset_id: str
    version: str
    parent_version: str | None = None
    change_type: ChangeType = ChangeType.MAJOR
    added_example_ids: list[str] = Field(default_factory=list)
    removed_example_ids: list[str] = Field(default_factory=list)
    split_counts: dict[str, int] = Field(default_factory=dict)
    checksum_sha256: str = ""
    split_seed: int = 42
    created_at: datetime = Field(default_factory=utcnow)
    reason: str | None = None

    _v = field_validator("version")(lambda cls, v: check_semver(v))


class Dataset(L07Model):
    """A dataset at one version (by default the latest)."""

    dataset_id: str = Field(default_factory=new_id)
    name: str = Field(min_length=1)
    version: str = "1.0.0"
    examples: list[TrainingExample] = Field(default_factory=list)
    splits: dict[str, list[str]] = Field(default_factory=lambda: {"train": [], "val": [], "test": []})
    statistics: DatasetStatistics = Field(default_factory=DatasetStatistics)
    created_at: datetime = Field(default_factory=utcnow)
    lineage: DatasetLineage = Field(default_factory=DatasetLineage)
    storage_location: str | None = None
    format: str = "jsonl"
    compression: str = "none"
    size_bytes: int = 0
    checksum_sha256: str = ""
    split_seed: int = 42
    split_ratios: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SPLIT_RATIOS))
    manifest: dict[str, Any] = Field(default_factory=dict)
    created_by: str = "l07"
    expires_at: datetime | None = None
    curriculum_ordered: bool = False
    curriculum_schedule: list[Any] | None = None
    processing_duration_seconds: float = 0.0
    notes: str | None = None

    _v = field_validator("version")(lambda cls, v: check_semver(v))

    @field_validator("split_ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        return validate_split_ratios(v)

    def split_examples(self, split: DatasetSplit | str) -> list[TrainingExample]:
        """The loaded examples of one split, in split order."""
        key = split.value if isinstance(split, DatasetSplit) else split
        by_id = {e.example_id: e for e in self.examples}
        return [by_id[i] for i in self.splits.get(key, []) if i in by_id]
