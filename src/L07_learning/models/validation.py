"""Validation results of the release gates (contract §3.8, §5.6)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field

from ._base import L07Model, new_id, utcnow


class Recommendation(str, Enum):
    DEPLOY = "DEPLOY"
    REVIEW = "REVIEW"
    REJECT = "REJECT"


class Verdict(str, Enum):
    APPROVED = "APPROVED"
    CONDITIONAL = "CONDITIONAL"
    REJECTED = "REJECTED"


class StageOutcome(str, Enum):
    PASS = "PASS"
    REVIEW = "REVIEW"
    FAIL = "FAIL"


class StageResult(L07Model):
    """One validation stage: outcome, measured metrics, and every issue found (no stop at the first)."""

    passed: bool
    outcome: StageOutcome
    metrics: dict[str, Any] = Field(default_factory=dict)
    issues: list[str] = Field(default_factory=list)


class TestResults(L07Model):
    """Golden-suite results of one model."""

    __test__ = False  # not a pytest test class

    total: int = 0
    passed: int = 0
    failed: int = 0
    pass_rate: float = 0.0
    candidate_accuracy: float = 0.0
    baseline_accuracy: float | None = None
    by_difficulty: dict[str, float] = Field(default_factory=dict)
    by_task_type: dict[str, float] = Field(default_factory=dict)
    failures: list[dict[str, Any]] = Field(default_factory=list)


class ValidationResult(L07Model):
    """The validator's report; ``passed`` is true exactly when the recommendation is DEPLOY."""

    validation_id: str = Field(default_factory=new_id)
    model_id: str
    baseline_model_id: str | None = None
    passed: bool
    stages: dict[str, StageResult] = Field(default_factory=dict)
    regression_detected: bool = False
    recommendation: Recommendation
    verdict: Verdict
    started_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None
    report_url: str | None = None
