"""The filter's record of each example: keep, or drop with a reason (contract §5.2).

Rules never remove an example from the batch: they mark it on its :class:`Candidate`, and the first rule to mark it
decides (:meth:`Candidate.decide`); a candidate no rule marked is accepted. :meth:`Candidate.finish` then turns the
candidate into its :class:`FilterDecision`, and :func:`count_outcomes` counts a batch's decisions in the metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ...models._base import new_id
from ...models.training_example import ExampleStatus, TrainingExample, normalise_text
from ...observability.metrics import DATA_POISONING_DETECTED, ERRORS, EXAMPLES_FILTERED
from .scan import ScanReport, hash_normalised, output_hash


class Decision(str, Enum):
    """Filter outcome of one example."""

    ACCEPT = "ACCEPT"
    REVIEW = "REVIEW"
    REJECT = "REJECT"
    QUARANTINE = "QUARANTINE"

    @property
    def status(self) -> ExampleStatus:
        return _STATUS[self]


_STATUS = {Decision.ACCEPT: ExampleStatus.ACCEPTED, Decision.REVIEW: ExampleStatus.REVIEW,
           Decision.REJECT: ExampleStatus.REJECTED, Decision.QUARANTINE: ExampleStatus.QUARANTINED}


@dataclass(slots=True)
class FilterDecision:
    """The decision on one input example.

    Attributes:
        index: Position in the input batch.
        example_id: The example's id (``None`` when the input could not be read as an example).
        decision: ACCEPT, REVIEW, REJECT or QUARANTINE.
        reason: Short reason (``accepted``, ``incomplete``, ``secret``, ``pii``, ``duplicate``, ``low_quality``...).
        code: The contract's error code for the reason, when it has one.
        rule: The detector or sub-rule that decided (``secret:aws_access_key_id``, ``near_duplicate``...).
        detail: Human-readable detail (never a secret value).
        composite: Composite score (§5.1) when computed.
        example: The example as stored: redacted PII, masked secrets, new status.
    """

    index: int
    example_id: str | None
    decision: Decision
    reason: str
    code: str | None = None
    rule: str | None = None
    detail: str = ""
    composite: float | None = None
    example: TrainingExample | None = None
    domain: str = "general"
    raw: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "example_id": self.example_id, "decision": self.decision.value, "reason": self.reason,
            "code": self.code, "rule": self.rule, "detail": self.detail, "composite": self.composite,
        }


@dataclass
class FilterReport:
    """Per-example decisions of one ``filter_detailed`` call, in input order."""

    decisions: list[FilterDecision]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def accepted(self) -> list[TrainingExample]:
        return [d.example for d in self.decisions if d.decision is Decision.ACCEPT and d.example is not None]

    def counts(self) -> dict[str, int]:
        """Number of decisions per ``DECISION/reason``."""
        return dict(Counter(f"{d.decision.value}/{d.reason}" for d in self.decisions))


@dataclass(slots=True)
class Candidate:
    """One complete example while the rules run: its keys, its scan, the rewrites of its text, and the decision."""

    index: int
    example: TrainingExample
    content_hash: str = ""
    output_key: str = ""
    scan: ScanReport | None = None
    signature: str | None = None  # from a trusted extraction-time cache; None: compute it from the text
    sig: int = -1  # row of the batch's signature matrix once the near-duplicate rule has it
    decision: FilterDecision | None = None
    composite: float | None = None
    updates: dict[str, Any] = field(default_factory=dict)
    norm: tuple[str, str] | None = None

    def texts(self) -> tuple[str, str]:
        """Input and output as they will be stored (after masking and redaction)."""
        return (self.updates.get("input_text", self.example.input_text),
                self.updates.get("output_text", self.example.output_text))

    def normalised(self) -> tuple[str, str]:
        if self.norm is None:
            inp, out = self.texts()
            self.norm = (normalise_text(inp), normalise_text(out))
        return self.norm

    def rekey(self) -> None:
        """Content hash and output key from the (current) text."""
        inp, out = self.normalised()
        self.content_hash = hash_normalised(inp, out)
        self.output_key = output_hash(out)

    def decide(self, decision: Decision, reason: str, code: str | None, rule: str, detail: str) -> None:
        """Record a rule's verdict unless an earlier rule already decided (the contract's order: first failing rule)."""
        if self.decision is None:
            self.decision = FilterDecision(self.index, self.example.example_id, decision, reason, code, rule, detail,
                                           domain=self.example.domain)

    def overrule(self, decision: Decision, reason: str, code: str | None, rule: str, detail: str) -> None:
        """Replace the earlier verdict: a batch-level incident outranks what the per-example rules found."""
        self.decision = None
        self.decide(decision, reason, code, rule, detail)

    def finish(self) -> FilterDecision:
        """The final decision, with the example as it will be stored (rewritten text, status, content hash)."""
        d = self.decision or FilterDecision(self.index, self.example.example_id, Decision.ACCEPT, "accepted",
                                            domain=self.example.domain)
        ex = self.example
        updates = dict(self.updates)
        flags = self.scan.flags if self.scan is not None else []
        if updates or "scan" in ex.metadata or ex.metadata.get("scan_flags") != flags:
            # The extraction-time cache is a hand-off to this filter, not part of the decided example: it would only
            # bloat stored rows and dataset exports, and after redaction it no longer describes the text.
            metadata = dict(updates.get("metadata", ex.metadata))
            metadata["scan_flags"] = flags
            metadata.pop("scan", None)
            updates["metadata"] = metadata
        updates["status"] = d.decision.status
        updates["content_hash"] = self.content_hash
        d.composite = self.composite
        d.example = _copy_with(ex, updates)
        return d


@dataclass
class Batch:
    """What the rules share: the complete examples of one call, its input size, alerts raised, MinHash rows."""

    candidates: list[Candidate]
    size: int
    alerts: list[dict[str, Any]] = field(default_factory=list)
    signatures: np.ndarray | None = None

    def undecided(self) -> list[Candidate]:
        return [c for c in self.candidates if c.decision is None]


def alert(name: str, severity: str, code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    """A ``learning.learning_system_alert`` payload from the data domain."""
    return {"alert_id": new_id(), "alert_name": name, "severity": severity, "error_code": code, "domain": "data",
            "message": message, "details": details, "circuit_breaker_state": None}


def count_outcomes(report: FilterReport) -> None:
    """Count a batch's decisions in ``l07_examples_filtered_total`` and the error and poisoning counters."""
    # Counted per label set, not per example: one metric update per distinct outcome of the batch.
    outcomes = Counter((d.decision, d.reason, d.domain, d.code) for d in report.decisions)
    for (decision, reason, domain, code), n in outcomes.items():
        EXAMPLES_FILTERED.labels(decision.value.lower(), reason, domain).inc(n)
        if code:
            ERRORS.labels(code, "security" if decision is Decision.QUARANTINE else "data").inc(n)
        if decision is Decision.QUARANTINE and reason not in ("pii", "secret"):
            DATA_POISONING_DETECTED.labels(domain).inc(n)


def _copy_with(ex: TrainingExample, updates: dict[str, Any]) -> TrainingExample:
    """``ex.model_copy(update=updates)`` (a shallow copy, values unvalidated) without pydantic's generic copy path,
    which costs about twice as much and runs once per example."""
    new = TrainingExample.__new__(TrainingExample)
    fields = ex.__dict__.copy()
    fields.update(updates)
    object.__setattr__(new, "__dict__", fields)
    object.__setattr__(new, "__pydantic_fields_set__", ex.__pydantic_fields_set__ | updates.keys())
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new
