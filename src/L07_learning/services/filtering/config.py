"""Configuration of ``ExampleQualityFilter`` (contract §5.1, §5.2), defaulted once from ``Settings``."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field

from ...settings import Settings


class FilterConfig(BaseModel):
    """Thresholds and detector options of the quality filter. Every field has the contract's default."""

    min_quality_score: float = Field(70.0, ge=0, le=100, description="q at or above passes (rule 6)")
    quality_review_floor: float = Field(60.0, ge=0, le=100, description="q in [floor, min) goes to REVIEW")
    min_confidence: float = Field(0.8, ge=0, le=1, description="c at or above passes (rule 5)")
    confidence_review_floor: float = Field(0.5, ge=0, le=1, description="c in [floor, min) goes to REVIEW")
    # 60, not the contract's 70 (measured 2026-12-06, tests/services/filtering/test_review_share.py): at 70 the
    # soft terms (diversity, informativeness) alone sent clean q 75-78 examples of short, common tasks to REVIEW.
    # An example that passed rules 5-6 (q >= 70, c >= 0.8) scores >= 58, so 60 leaves REVIEW only to examples at the
    # edge of both gates that also add nothing new; §5.2 "soft signals never reject on their own".
    min_composite_score: float = Field(60.0, ge=0, le=100, description="composite at or above is ACCEPT (rule 7)")
    composite_review_factor: float = Field(0.8, gt=0, le=1, description="REVIEW band starts at factor x threshold")

    near_duplicate_jaccard: float = Field(0.8, gt=0, le=1, description="shingle Jaccard that makes a near-duplicate")
    shingle_size: int = Field(3, ge=1, le=10, description="words per shingle")
    num_perm: int = Field(64, ge=16, le=512, description="MinHash permutations")
    num_bands: int = Field(16, ge=1, description="LSH bands (num_perm / num_bands rows each)")
    minhash_seed: int = 42

    pii_action: Literal["redact", "drop"] = "redact"
    pii_max_hits: int = Field(5, ge=0, description="more hits than this quarantines the example")
    pii_custom_names: list[str] = Field(default_factory=list, description="names redacted as <NAME_n>")
    extra_backdoor_triggers: list[str] = Field(default_factory=list, description="literal triggers besides PWNED:/INJECTION:")

    trigger_min_support: int = Field(5, ge=2, description="examples a rare token must appear in to be checked")
    trigger_max_doc_share: float = Field(0.1, gt=0, le=1, description="a token in more than this share is not rare")
    trigger_output_share: float = Field(0.9, gt=0, le=1, description="share of one output among the token's examples")

    outlier_min_batch: int = Field(100, ge=2, description="outlier detection runs on batches larger than this")
    outlier_contamination: float = Field(0.05, gt=0, le=0.5, description="most a batch's IsolationForest may propose")
    outlier_min_z: float = Field(4.0, gt=0, description="robust z-score a proposed outlier must reach on one feature")
    outlier_trees: int = Field(100, ge=10)
    outlier_seed: int = 0
    agent_sigma: float = Field(3.0, gt=0, description="quality this many sigma from its agent's mean is an anomaly")
    agent_min_examples: int = Field(10, ge=3, description="agent statistics need this many examples")

    batch_poison_threshold: int = Field(10, ge=1, description="more flags than this per rule or agent is an incident")
    max_source_share: float = Field(0.5, gt=0, le=1, description="largest share one agent may hold of a batch's accepts")
    source_share_min_batch: int = Field(50, ge=1, description="the share cap applies from this many accepts up")

    @classmethod
    def from_settings(cls, settings: Settings) -> "FilterConfig":
        """Defaults overlaid with the ``L07_*`` filter settings."""
        return cls(
            min_quality_score=settings.min_quality_score,
            min_confidence=settings.min_confidence,
            near_duplicate_jaccard=settings.near_duplicate_jaccard,
            pii_action=settings.pii_action,
            max_source_share=settings.max_source_share,
        )

    def config_hash(self) -> str:
        """sha256 of the canonical JSON form: pins the filter settings in a dataset's lineage."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()
