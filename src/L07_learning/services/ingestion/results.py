"""What one ingestion call returns: per-event outcomes in input order and the batch's counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...models.training_example import TrainingExample


@dataclass
class ItemResult:
    """What became of one input event: ``extracted``, ``pending``, ``processed``, ``duplicate``, ``ignored`` or
    ``rejected`` (then ``code`` and ``reason`` are set)."""

    status: str
    code: str | None = None
    reason: str | None = None
    examples: list[TrainingExample] = field(default_factory=list)


@dataclass
class IngestSummary:
    """Counts of one or more ingested batches (the ``--json`` output of ``l07 ingest``)."""

    events_read: int = 0
    examples_extracted: int = 0
    examples_stored: int = 0
    events_rejected: int = 0
    duplicates: int = 0
    ignored: int = 0
    pending_join: int = 0
    reward_signals: int = 0
    preference_pairs: int = 0
    rejected_by_code: dict[str, int] = field(default_factory=dict)
    expired_joins: int = 0
    orphan_scores: int = 0
    model_outcomes: int = 0

    def add(self, other: "IngestSummary") -> None:
        """Accumulate ``other`` (pending_join is a level, so the newest value wins)."""
        for name in ("events_read", "examples_extracted", "examples_stored", "events_rejected", "duplicates", "ignored",
                     "reward_signals", "preference_pairs", "expired_joins", "orphan_scores",
                     "model_outcomes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, n in other.rejected_by_code.items():
            self.rejected_by_code[code] = self.rejected_by_code.get(code, 0) + n
        self.pending_join = other.pending_join

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


@dataclass
class BatchResult:
    """The outcome of one ``ingest`` call: per-input results in input order, plus the summary."""

    items: list[ItemResult]
    summary: IngestSummary

    @property
    def examples(self) -> list[TrainingExample]:
        """Every extracted example, in the order of the events that completed them."""
        return [ex for item in self.items for ex in item.examples]
