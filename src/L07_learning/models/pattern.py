"""Behaviour patterns and planning strategies (contract §3.7)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import Field

from ._base import L07Model, new_id, utcnow


class PatternConfidence(str, Enum):
    """Confidence bands: LOW 0.5-0.7, MEDIUM 0.7-0.9, HIGH >= 0.9; below 0.5 nothing is published."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"

    @classmethod
    def from_score(cls, confidence: float) -> "PatternConfidence | None":
        if confidence >= 0.9:
            return cls.HIGH
        if confidence >= 0.7:
            return cls.MEDIUM
        if confidence >= 0.5:
            return cls.LOW
        return None


class BehavioralPattern(L07Model):
    """A tool-call sequence (or constraint/recovery habit) that goes with success or failure."""

    pattern_id: str = Field(default_factory=new_id)
    agent_type: str
    task_type: str | None = None
    pattern_type: str = "tool_sequence"
    description: str = ""
    tool_sequence: list[str] = Field(default_factory=list)
    support_count: int = Field(default=0, ge=0)
    success_rate: float = Field(default=0.0, ge=0, le=1)
    baseline_success_rate: float = Field(default=0.0, ge=0, le=1)
    improvement: float = 0.0
    lift: float = 0.0
    p_value: float = Field(default=1.0, ge=0, le=1)
    q_value: float | None = None
    confidence: float = Field(default=0.0, ge=0, le=1)
    confidence_level: PatternConfidence | None = None
    polarity: str = "success"
    evidence_execution_ids: list[str] = Field(default_factory=list)
    discovered_at: datetime = Field(default_factory=utcnow)


class PlanningStrategy(L07Model):
    """A planning strategy per task type, with its observed outcomes."""

    strategy_id: str = Field(default_factory=new_id)
    task_type: str
    pruning_rules: list[str] = Field(default_factory=list)
    search_depth: int | None = None
    decomposition_style: str | None = None
    constraint_order: list[str] = Field(default_factory=list)
    plans_analysed: int = 0
    successes: int = 0
    success_rate: float = 0.0
    baseline_success_rate: float = 0.0
    expected_improvement: float = 0.0
    confidence_level: float = Field(default=0.0, ge=0, le=1)
    validated: bool = False
    recommended_at: datetime | None = None
