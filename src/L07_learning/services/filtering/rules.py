"""The filter's rules (contract §5.2), one small class each, run in the contract's order by ``ExampleQualityFilter``.

A rule sees the whole batch (so a check that is cheaper on arrays runs on arrays) and marks candidates through
``Candidate.decide``: the first rule to mark an example decides it. Rule 1 (``Completeness``) reads the inputs and so
comes before the others; rules 2-4 live in ``content_rules`` and ``duplicate_rules``, rules 5-9 here.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from ...models.error_codes import L07ErrorCode
from ...models.training_example import TrainingExample
from ...observability.metrics import ERRORS
from .config import FilterConfig
from .decisions import Batch, Candidate, Decision, FilterDecision, alert
from .outliers import agent_quality_outliers, isolation_outliers
from .pool import ExamplePool
from .scoring import batch_scores

log = logging.getLogger(__name__)


class Rule(Protocol):
    """One filter rule: marks the candidates of a batch it decides (asynchronous, as the duplicate check reads the
    store)."""

    async def apply(self, batch: Batch) -> None: ...


class Completeness:
    """Rule 1: an input that is not a complete example (schema, blank text, no agent or task type, scores out of
    range) is rejected as ``incomplete``; the others become the batch's candidates."""

    def read(self, examples: list[TrainingExample | dict[str, Any]]) -> tuple[Batch, list[FilterDecision | None]]:
        decisions: list[FilterDecision | None] = [None] * len(examples)
        candidates: list[Candidate] = []
        for i, raw in enumerate(examples):
            problem = ""
            example: TrainingExample | None = None
            try:
                example = raw if isinstance(raw, TrainingExample) else TrainingExample.model_validate(raw)
            except ValidationError as exc:
                problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            except (TypeError, ValueError) as exc:
                problem = f"not an example: {exc}"
            if example is not None:
                problem = _missing(example)
            if problem:
                eid = example.example_id if example else (raw.get("example_id") if isinstance(raw, dict) else None)
                decisions[i] = FilterDecision(
                    i, eid, Decision.REJECT, "incomplete", L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH.value,
                    "completeness", problem, example=example,
                    domain=example.domain if example else "general", raw=None if example else raw,
                )
                continue
            candidates.append(Candidate(i, example))  # type: ignore[arg-type]
        return Batch(candidates, len(examples)), decisions


def _missing(ex: TrainingExample) -> str:
    problems = []
    if not ex.input_text.strip():
        problems.append("input_text is blank")
    if not ex.output_text.strip():
        problems.append("output_text is blank")
    if not (ex.metadata.get("agent_id") or ex.agent_id):
        problems.append("metadata.agent_id missing")
    if not (ex.metadata.get("task_type") or ex.task_type):
        problems.append("metadata.task_type missing")
    if not (math.isfinite(ex.quality_score) and 0 <= ex.quality_score <= 100):
        problems.append("quality_score outside 0-100")
    if ex.confidence is not None and not (math.isfinite(ex.confidence) and 0 <= ex.confidence <= 1):
        problems.append("confidence outside 0-1")
    return "; ".join(problems)


class ScoreGates:
    """Rules 5-7: confidence, L06 quality, then the composite score; each below its threshold is REVIEW, below its
    review floor REJECT. A missing confidence can only reach REVIEW (E7021); conflicting L06 scores (§1.7) too."""

    def __init__(self, config: FilterConfig, pool: ExamplePool) -> None:
        self.config = config
        self.pool = pool

    async def apply(self, batch: Batch) -> None:
        cfg = self.config
        live = batch.undecided()
        if not live:
            return
        composite = batch_scores([c.example for c in live], self.pool)
        conf = np.array([c.example.confidence for c in live], dtype=float)  # None -> nan
        quality = np.array([c.example.quality_score for c in live], dtype=float)
        # Only examples that fail some gate need the rule-by-rule walk below (which names the first failing rule).
        conflicted = np.array([bool(c.example.metadata.get("score_conflict")) for c in live], dtype=bool)
        failing = conflicted | np.isnan(conf) | (conf < cfg.min_confidence) | (quality < cfg.min_quality_score) | (
            composite < cfg.min_composite_score)
        for c, value in zip(live, composite.tolist()):
            c.composite = value
        for pos in np.flatnonzero(failing).tolist():
            self._walk(live[pos])

    def _walk(self, it: Candidate) -> None:
        cfg = self.config
        c, q, composite = it.example.confidence, it.example.quality_score, it.composite
        assert composite is not None
        review_composite = cfg.composite_review_factor * cfg.min_composite_score
        if it.example.metadata.get("score_conflict"):
            # §1.7: two L06 scores more than 20 points apart; which one is right is a person's call.
            it.decide(Decision.REVIEW, "score_conflict", None, "score_conflict",
                      "L06 scores for this execution differ by more than 20 points")
        elif c is None:
            it.decide(Decision.REVIEW, "low_confidence", L07ErrorCode.QUALITY_SIGNAL_UNAVAILABLE.value, "confidence",
                      "no confidence: REVIEW only (E7021)")
        elif c < cfg.confidence_review_floor:
            it.decide(Decision.REJECT, "low_confidence", None, "confidence",
                      f"confidence {c:.2f} < {cfg.confidence_review_floor}")
        elif c < cfg.min_confidence:
            it.decide(Decision.REVIEW, "low_confidence", None, "confidence",
                      f"confidence {c:.2f} in review band [{cfg.confidence_review_floor}, {cfg.min_confidence})")
        elif q < cfg.quality_review_floor:
            it.decide(Decision.REJECT, "low_quality", None, "quality", f"quality {q:.1f} < {cfg.quality_review_floor}")
        elif q < cfg.min_quality_score:
            it.decide(Decision.REVIEW, "low_quality", None, "quality",
                      f"quality {q:.1f} in review band [{cfg.quality_review_floor}, {cfg.min_quality_score})")
        elif composite < review_composite:
            it.decide(Decision.REJECT, "low_composite", None, "composite",
                      f"composite {composite:.1f} < {review_composite:.1f}")
        elif composite < cfg.min_composite_score:
            it.decide(Decision.REVIEW, "low_composite", None, "composite", f"composite {composite:.1f} in review band")


class Outliers:
    """Rule 8: IsolationForest on [execution_length, quality, confidence], and quality more than k sigma from its
    agent's batch mean, send an example to REVIEW (batches above ``outlier_min_batch`` only)."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    async def apply(self, batch: Batch) -> None:
        cfg = self.config
        candidates = batch.candidates
        if batch.size <= cfg.outlier_min_batch or not candidates:
            return
        feats = np.asarray(
            [[c.example.execution_length, c.example.quality_score, c.example.confidence or 0.0] for c in candidates],
            dtype=float,
        )
        try:
            forest = isolation_outliers(feats, cfg.outlier_contamination, cfg.outlier_trees, cfg.outlier_seed,
                                        cfg.outlier_min_z)
        except (ValueError, MemoryError) as exc:
            code = L07ErrorCode.ANOMALY_DETECTOR_ERROR.value
            log.warning("%s outlier detection skipped: %s", code, exc, extra={"error_code": code})
            ERRORS.labels(code, "data").inc()
            forest = np.zeros(len(candidates), dtype=bool)
        by_agent = agent_quality_outliers(
            [c.example.agent_id for c in candidates], [c.example.quality_score for c in candidates], cfg.agent_sigma,
            cfg.agent_min_examples,
        )
        for pos, c in enumerate(candidates):
            if c.decision is not None:
                continue
            if forest[pos]:
                c.decide(Decision.REVIEW, "anomaly", None, "isolation_forest",
                         "IsolationForest outlier on [execution_length, quality, confidence]")
            elif pos in by_agent:
                c.decide(Decision.REVIEW, "anomaly", None, "agent_quality_sigma",
                         f"quality more than {cfg.agent_sigma} sigma from agent {c.example.agent_id}'s mean")


class BatchPoisoning:
    """Rule 9: more poisoning flags than ``batch_poison_threshold`` from one rule or one agent is an incident: every
    example of the agents involved is quarantined, and a critical alert raised."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    async def apply(self, batch: Batch) -> None:
        threshold = self.config.batch_poison_threshold
        candidates = batch.candidates
        poisoned = [c for c in candidates if c.decision is not None and c.decision.decision is Decision.QUARANTINE
                    and c.decision.reason != "pii"]
        by_rule = Counter(c.decision.rule for c in poisoned)  # type: ignore[union-attr]
        by_agent = Counter(c.example.agent_id for c in poisoned)
        incident_agents: dict[str | None, str] = {}
        for rule, n in by_rule.items():
            if n > threshold:
                for c in poisoned:
                    if c.decision.rule == rule:  # type: ignore[union-attr]
                        incident_agents.setdefault(c.example.agent_id, f"{n} examples flagged by {rule}")
        for agent, n in by_agent.items():
            if n > threshold:
                incident_agents.setdefault(agent, f"{n} flagged examples from agent {agent}")
        code = L07ErrorCode.TRAINING_DATA_CONTAMINATION_DETECTED.value
        for agent, why in incident_agents.items():
            hit = 0
            for c in candidates:
                if c.example.agent_id == agent and (c.decision is None or c.decision.decision is not Decision.QUARANTINE):
                    c.overrule(Decision.QUARANTINE, "batch_poisoning", code, "batch_poisoning",
                               f"agent's batch quarantined: {why}")
                    hit += 1
            log.error("%s batch poisoning incident, agent %s: %s", code, agent, why, extra={"error_code": code})
            batch.alerts.append(alert("training_data_poisoning", "critical", code,
                                      f"batch poisoning: {why}; {hit} more examples of agent {agent} quarantined",
                                      {"agent_id": agent, "reason": why, "quarantined_extra": hit}))


class ExposureAlerts:
    """Not a gate: credentials quarantined and PII redacted in the batch each raise one alert (rotate, review)."""

    async def apply(self, batch: Batch) -> None:
        candidates = batch.candidates
        secrets = [c for c in candidates if c.decision is not None and c.decision.reason == "secret"]
        if secrets:
            code = L07ErrorCode.SECRET_DETECTED_IN_TRAINING_DATA.value
            batch.alerts.append(alert(
                "secret_in_training_data", "critical", code,
                f"{len(secrets)} example(s) carried credentials; they are quarantined masked, rotate the credentials",
                {"example_ids": [c.example.example_id for c in secrets][:50],
                 "kinds": sorted({f.kind for c in secrets for f in (c.scan.secrets if c.scan else [])})},
            ))
        redacted = [c for c in candidates if c.updates.get("metadata", {}).get("pii_redacted")]
        if redacted:
            code = L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA.value
            kinds = Counter(k for c in redacted for k in c.updates["metadata"].get("pii_kinds", []))
            log.warning("%s PII redacted in %d example(s): %s", code, len(redacted), dict(kinds),
                        extra={"error_code": code})
            batch.alerts.append(alert("pii_in_training_data", "warning", code, f"PII redacted in {len(redacted)} example(s)",
                                      {"example_ids": [c.example.example_id for c in redacted][:50],
                                       "kinds": dict(kinds)}))


class SourceShareCap:
    """Rule 9: where several agents contribute, one may hold at most ``max_source_share`` of a batch's accepts; the
    rest go to REVIEW."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    async def apply(self, batch: Batch) -> None:
        cfg = self.config
        accepted = batch.undecided()
        if len(accepted) < cfg.source_share_min_batch or len({c.example.agent_id for c in accepted}) < 2:
            # One agent's batch has nobody to crowd out: capping it sent half of a single-agent stream to REVIEW.
            return
        cap = max(1, math.floor(cfg.max_source_share * len(accepted)))
        kept: Counter[str | None] = Counter()
        for c in accepted:
            agent = c.example.agent_id
            kept[agent] += 1
            if kept[agent] > cap:
                c.decide(Decision.REVIEW, "source_share_cap", None, "source_share_cap",
                         f"agent {agent} above {cfg.max_source_share:.0%} of this batch's accepted examples")
