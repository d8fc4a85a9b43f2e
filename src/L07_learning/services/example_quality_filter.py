"""``ExampleQualityFilter``: the contract's filter rules (§5.2) and composite score (§5.1).

Rules run in the contract's order and the first failing rule decides. No rule raises for one bad record: every
example gets a decision with a reason and a code, every decision is counted in ``l07_examples_filtered_total``, and
every non-accept decision is stored (``l07 examples rejected``). Secrets are masked before anything is stored.

The parts live in ``filtering/``: the keep / drop-with-reason record (``decisions``), the rules (``rules``,
``content_rules``, ``duplicate_rules``), the pool a batch is compared with (``pool``), the score (``scoring``) and
storage of the decisions (``persistence``).
"""

from __future__ import annotations

import time
from typing import Any

from ..models.training_example import TrainingExample
from ..settings import Settings, get_settings
from ..store.db import Database
from .filtering.config import FilterConfig
from .filtering.content_rules import ContentScan, Pii, Poisoning, Secrets, TriggerCooccurrence
from .filtering.decisions import Decision, FilterDecision, FilterReport, count_outcomes
from .filtering.duplicate_rules import ExactDuplicates, NearDuplicates
from .filtering.gc_pause import paused_gc
from .filtering.persistence import persist
from .filtering.pool import ExamplePool
from .filtering.redaction import StorageRedactor
from .filtering.rules import (
    BatchPoisoning,
    Completeness,
    ExposureAlerts,
    Outliers,
    Rule,
    ScoreGates,
    SourceShareCap,
)
from .filtering.scan import ContentScanner
from .filtering.scoring import composite_score, example_score

__all__ = ["Decision", "ExampleQualityFilter", "FilterDecision", "FilterReport", "composite_score"]


class ExampleQualityFilter:
    """Decides which examples may enter datasets (contract §5.2) and persists every decision.

    Args:
        db: Database for persisting decisions and reading the stored pool; without one the filter runs in memory
            (dedup and diversity against what this instance has seen) and persists nothing.
        settings: Settings (default ``get_settings()``).
        config: Filter configuration (default: from settings).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None, config: FilterConfig | None = None) -> None:
        self.db = db
        self.settings = settings or get_settings()
        self.config = cfg = config or FilterConfig.from_settings(self.settings)
        self.scanner = ContentScanner(cfg)
        self.redactor = StorageRedactor(cfg.pii_custom_names)
        self.pool = ExamplePool(cfg, db)
        self.completeness = Completeness()
        # Rules 2-9 in the contract's order: the first to mark an example decides it.
        self.rules: list[Rule] = [
            ContentScan(self.scanner), Secrets(), Poisoning(), TriggerCooccurrence(cfg), Pii(cfg),
            ExactDuplicates(self.pool), NearDuplicates(cfg, self.pool),
            ScoreGates(cfg, self.pool), Outliers(cfg), BatchPoisoning(cfg), ExposureAlerts(), SourceShareCap(cfg),
        ]

    async def filter(self, examples: list[TrainingExample | dict[str, Any]]) -> list[TrainingExample]:
        """The ACCEPT examples, in input order, as stored (status ACCEPTED, PII redacted).

        REVIEW, REJECT and QUARANTINE examples are persisted with their reason (when a database is configured) and
        counted in ``l07_examples_filtered_total``.
        """
        return (await self.filter_detailed(examples)).accepted

    async def score_example(self, example: TrainingExample) -> float:
        """Composite score 0-100 (§5.1) against the accepted pool; no side effects."""
        await self.pool.refresh()
        return example_score(example, self.pool)

    async def filter_detailed(self, examples: list[TrainingExample | dict[str, Any]]) -> FilterReport:
        """Run every rule and return one decision per input example, in input order."""
        # A batch allocates several objects per example that all live until it ends: the cyclic collector would
        # walk them (and the whole pool) again and again for nothing, as in ingestion.
        with paused_gc():
            return await self._filter_detailed(examples)

    async def _filter_detailed(self, examples: list[TrainingExample | dict[str, Any]]) -> FilterReport:
        started = time.perf_counter()
        await self.pool.refresh()
        batch, decisions = self.completeness.read(examples)
        for rule in self.rules:
            await rule.apply(batch)
        for c in batch.candidates:
            decisions[c.index] = c.finish()
        report = FilterReport(decisions=[d for d in decisions if d is not None], alerts=batch.alerts)
        if self.db is not None:
            await persist(self.db, report, self.redactor)
        self.pool.remember(batch.candidates, report, batch.signatures)
        count_outcomes(report)
        report.duration_s = time.perf_counter() - started
        return report
