"""Curriculum: difficulty bands, stages and learning paths (contract §3.7, §5.3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import Field, field_validator

from ._base import L07Model, new_id, utcnow


class DifficultyLevel(str, Enum):
    """Difficulty bands: EASY < 0.33 <= MEDIUM < 0.66 <= HARD."""

    EASY = "EASY"
    MEDIUM = "MEDIUM"
    HARD = "HARD"

    @classmethod
    def from_score(cls, difficulty: float) -> "DifficultyLevel":
        """Band of a difficulty score in [0, 1]."""
        if difficulty < 0.33:
            return cls.EASY
        if difficulty < 0.66:
            return cls.MEDIUM
        return cls.HARD


# Contract §5.3: difficulty = 0.3 min(steps/10, 1) + 0.3 min(unique_tools/5, 1) + 0.4 (1 - q/100).
DIFFICULTY_WEIGHTS: Mapping[str, float] = {"trace_length": 0.3, "tool_steps": 0.3, "quality": 0.4}
NEUTRAL_DIFFICULTY = 0.5  # the contract's value when the formula cannot be computed (E7013/E7027)


def difficulty_terms(steps: Any, unique_tools: Any, quality: Any,
                     minimum: Callable[[Any, Any], Any] = min) -> dict[str, Any]:
    """The three terms of the §5.3 formula, keyed as in ``DIFFICULTY_WEIGHTS``.

    ``minimum`` is ``min`` for single values; the quality filter passes ``numpy.minimum`` to score a whole batch at
    once with the same operations, hence the same floats.
    """
    return {"trace_length": minimum(steps / 10, 1.0), "tool_steps": minimum(unique_tools / 5, 1.0),
            "quality": 1 - quality / 100}


def weighted_difficulty(terms: Mapping[str, Any], weights: Mapping[str, float] = DIFFICULTY_WEIGHTS) -> Any:
    """``sum(w * term) / sum(w)``: with the contract's weights (summing to 1) exactly the §5.3 value, unclamped."""
    return sum(weights[k] * terms[k] for k in weights) / sum(weights.values())


def bounded_difficulty(value: float) -> float:
    """``value`` clamped to [0, 1], or ``NEUTRAL_DIFFICULTY`` when it is not a finite number (contract §5.3)."""
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else NEUTRAL_DIFFICULTY


def difficulty(steps: int, unique_tools: int, quality: float) -> float:
    """Contract §5.3 difficulty of one example, clamped to [0, 1]; ``NEUTRAL_DIFFICULTY`` when not computable."""
    try:
        return bounded_difficulty(weighted_difficulty(difficulty_terms(steps, unique_tools, quality)))
    except TypeError:
        return NEUTRAL_DIFFICULTY


class CurriculumStage(L07Model):
    """One stage of a curriculum: the cumulative levels it trains on and its example ids."""

    stage_index: int = Field(ge=0)
    levels: list[DifficultyLevel]
    epochs: int = Field(default=1, ge=1)
    target_mean_difficulty: float = Field(default=0.5, ge=0, le=1)
    example_ids: list[str] = Field(default_factory=list)


class LearningPath(L07Model):
    """An ordered list of stages over one dataset version."""

    path_id: str = Field(default_factory=new_id)
    dataset_id: str
    dataset_version: str
    stages: list[CurriculumStage] = Field(default_factory=list)
    difficulty_signals: list[str] = Field(default_factory=lambda: ["quality_score", "task_complexity"])
    total_epochs: int = Field(default=3, ge=1)
    pacing: str = "staged"
    created_at: datetime = Field(default_factory=utcnow)

    @field_validator("difficulty_signals")
    @classmethod
    def _signals(cls, v: list[str]) -> list[str]:
        allowed = {"quality_score", "task_complexity", "frequency", "learner_uncertainty", "trace_length",
                   "tool_steps", "failure_history", "model_loss"}
        bad = [s for s in v if s not in allowed]
        if bad:
            raise ValueError(f"unknown difficulty signals {bad}; allowed: {sorted(allowed)}")
        return v
