"""Planning-strategy optimiser: Thompson sampling over the strategies seen per task type (contract §1.4, §2.1, §5.7).

Each distinct strategy (search depth, pruning rules, constraint order, decomposition style) of a task type is an arm
with a Beta posterior over its success rate (prior Beta(1, 1), updated by the stored planning outcomes). Choosing a
strategy for the next plan draws from the posteriors (Thompson sampling), except for a uniform holdout share that keeps
measuring every arm and gives an unbiased baseline.

A strategy is recommended only when

* its posterior probability of being the best arm is at least ``confidence`` (default 0.9, the HIGH band of
  contract §3.7), and
* its expected improvement over uniform choice (posterior mean of ``p_best - mean(p_arms)``) exceeds 1 %
  (contract §5.7).

Posterior probabilities are Monte-Carlo estimates with a fixed generator seed, so the same data give the same answer.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from ..events.publisher import EventPublisher
from ..models import L07Error, L07ErrorCode, PlanningStrategy
from ..models._base import utcnow
from ..observability.metrics import STRATEGY_RECOMMENDATIONS
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.audit import audit
from ..store.repositories.patterns import PlanningRepository, strategy_key
from .pattern_extractor import two_proportion_z_test

log = logging.getLogger(__name__)

_STRATEGY_NS = uuid.UUID("2b0e4c8e-91a4-4f0b-8c3c-5d0f6a7e9b21")


class StrategySpec(BaseModel):
    """The settings that make up one planning strategy."""

    pruning_rules: list[str] = Field(default_factory=list)
    search_depth: int | None = Field(default=None, ge=0)
    constraint_order: list[str] = Field(default_factory=list)
    decomposition_style: str | None = None

    def key(self, task_type: str) -> str:
        """Canonical key of this strategy within ``task_type``."""
        return strategy_key(task_type, self.pruning_rules, self.search_depth, self.constraint_order, self.decomposition_style)


class PlanningOutcome(BaseModel):
    """One planning decision and whether the plan succeeded (``None``: no outcome yet, stored but not counted)."""

    plan_id: str = Field(min_length=1)
    task_type: str = Field(default="general", min_length=1)
    strategy: StrategySpec
    success: bool | None = None
    holdout: bool = False

    @classmethod
    def from_event_data(cls, data: dict[str, Any]) -> "PlanningOutcome":
        """Build from a planning-decision event's ``data`` (contract §1.4).

        Raises:
            L07Error: E7010 when ``plan_id`` or ``planning_trace`` is missing or malformed.
        """
        if not isinstance(data, dict) or not data.get("plan_id") or not isinstance(data.get("planning_trace"), dict):
            raise L07Error(L07ErrorCode.TRACE_MISSING_FIELDS, "planning decision needs plan_id and planning_trace")
        trace = data["planning_trace"]
        rules = data.get("pruning_rules") or trace.get("pruning_rules_applied") or []
        constraints = data.get("constraints") or []
        try:
            order = [str(c["type"]) for c in sorted(constraints, key=lambda c: int(c.get("priority", 1)))]
            outcome = data.get("outcome")
            return cls(
                plan_id=str(data["plan_id"]), task_type=str(data.get("task_type") or "general"),
                strategy=StrategySpec(pruning_rules=[str(r) for r in rules], search_depth=trace.get("search_depth"),
                                      constraint_order=order,
                                      decomposition_style=data.get("decomposition_style") or trace.get("decomposition_style")),
                success=bool(outcome["success"]) if isinstance(outcome, dict) and "success" in outcome else None,
                holdout=bool(data.get("holdout", False)),
            )
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise L07Error(L07ErrorCode.TRACE_MISSING_FIELDS, f"planning decision malformed: {exc}") from None


class StrategyOptimizerConfig(BaseModel):
    """Thresholds of the optimiser.

    Attributes:
        confidence: Posterior probability of being best a recommendation needs.
        min_expected_improvement: Expected improvement over uniform choice a recommendation needs (contract §5.7).
        holdout_share: Share of choices made uniformly at random (baseline and exploration).
        min_plans: Fewest plans with an outcome before a task type is considered.
        posterior_samples: Monte-Carlo draws for the posterior probabilities.
        seed: Seed of those draws (deterministic answers).
    """

    confidence: float = Field(default=0.9, gt=0, lt=1)
    min_expected_improvement: float = Field(default=0.01, ge=0)
    holdout_share: float = Field(default=0.1, ge=0, le=1)
    min_plans: int = Field(default=20, ge=1)
    posterior_samples: int = Field(default=20_000, ge=100)
    seed: int = 0


class ThompsonSampler:
    """Beta-Bernoulli Thompson sampling with a uniform holdout share.

    Args:
        arms: Arm keys.
        holdout_share: Probability that a choice is uniform at random.
        rng: Random generator for choices (a seeded ``random.Random`` makes runs repeatable).
    """

    def __init__(self, arms: Iterable[str], holdout_share: float = 0.1, rng: random.Random | None = None) -> None:
        self.arms = list(dict.fromkeys(arms))
        if not self.arms:
            raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, "Thompson sampling needs at least one strategy")
        self.holdout_share = holdout_share
        self.rng = rng or random.Random()
        self.successes = {a: 0 for a in self.arms}
        self.failures = {a: 0 for a in self.arms}

    def update(self, arm: str, success: bool) -> None:
        """Add one observed outcome (an unseen arm is added)."""
        if arm not in self.successes:
            self.arms.append(arm)
            self.successes[arm] = self.failures[arm] = 0
        if success:
            self.successes[arm] += 1
        else:
            self.failures[arm] += 1

    def choose(self) -> tuple[str, bool]:
        """The arm for the next plan and whether it was a uniform holdout choice."""
        if self.rng.random() < self.holdout_share:
            return self.rng.choice(self.arms), True
        draws = {a: self.rng.betavariate(1 + self.successes[a], 1 + self.failures[a]) for a in self.arms}
        return max(draws, key=draws.__getitem__), False

    def posterior_draws(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` joint draws from the arms' posteriors, shape ``(n, arms)``."""
        gen = np.random.default_rng(seed)
        a = np.array([1 + self.successes[k] for k in self.arms], dtype=float)
        b = np.array([1 + self.failures[k] for k in self.arms], dtype=float)
        return gen.beta(a, b, size=(n, len(self.arms)))

    def summary(self, n: int = 20_000, seed: int = 0) -> dict[str, dict[str, float]]:
        """Per arm: plans, successes, posterior mean, probability of being best, expected gain over uniform choice."""
        draws = self.posterior_draws(n, seed)
        best = np.argmax(draws, axis=1)
        gain = draws - draws.mean(axis=1, keepdims=True)
        out: dict[str, dict[str, float]] = {}
        for i, arm in enumerate(self.arms):
            s, f = self.successes[arm], self.failures[arm]
            out[arm] = {
                "plans": s + f, "successes": s, "posterior_mean": (1 + s) / (2 + s + f),
                "probability_best": float(np.mean(best == i)), "expected_improvement": float(gain[:, i].mean()),
            }
        return out


class StrategyRecommendation(BaseModel):
    """The optimiser's answer for one task type: the leading strategy and whether it passed the gates."""

    task_type: str
    strategy: PlanningStrategy | None = None
    spec: StrategySpec | None = None
    recommended: bool = False
    probability_best: float = 0.0
    reason: str = ""
    arms: dict[str, dict[str, float]] = Field(default_factory=dict)


class RecordResult(BaseModel):
    """What ``record_outcomes`` stored and what it could not use."""

    stored: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)


def strategy_id_for(key: str) -> str:
    """Deterministic strategy id, so repeated analyses update the same row."""
    return str(uuid.uuid5(_STRATEGY_NS, key))


class StrategyOptimizer:
    """Learns which planning strategy works best per task type, and recommends it when the evidence is strong.

    Args:
        db: Database; default the configured one.
        settings: Settings; default ``get_settings()``.
        config: Thresholds.
        publisher: Event publisher (outbox).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None,
                 config: StrategyOptimizerConfig | None = None, publisher: EventPublisher | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self.config = config or StrategyOptimizerConfig()
        self.publisher = publisher or EventPublisher()

    async def record_outcomes(self, outcomes: Iterable[PlanningOutcome | dict[str, Any]]) -> RecordResult:
        """Store planning outcomes (``PlanningOutcome`` or planning-decision event data), idempotent on ``plan_id``.

        Unusable records are counted by error code in the result, never raised one by one.
        """
        result = RecordResult()
        rejected: dict[str, int] = {}
        parsed: dict[str, PlanningOutcome] = {}
        for item in outcomes:
            try:
                outcome = item if isinstance(item, PlanningOutcome) else PlanningOutcome.from_event_data(item)
            except L07Error as exc:
                rejected[exc.code.value] = rejected.get(exc.code.value, 0) + 1
                continue
            if outcome.plan_id in parsed:
                result.duplicates += 1
            else:
                parsed[outcome.plan_id] = outcome
        async with self.db.session() as session:
            repo = PlanningRepository(session)
            known = await repo.existing_plan_ids(list(parsed))
            for outcome in parsed.values():
                if outcome.plan_id in known:
                    result.duplicates += 1
                    continue
                data = {"strategy": outcome.strategy.model_dump(mode="json"), "holdout": outcome.holdout}
                repo.add_outcome(outcome.plan_id, outcome.task_type, outcome.strategy.key(outcome.task_type),
                                 outcome.success, data)
                result.stored += 1
        result.rejected = rejected
        return result

    async def _load(self, task_type: str) -> tuple[ThompsonSampler | None, dict[str, StrategySpec], list[dict[str, Any]]]:
        async with self.db.session() as session:
            rows = await PlanningRepository(session).outcomes(task_type)
        specs: dict[str, StrategySpec] = {}
        for r in rows:
            specs.setdefault(r["strategy_key"], StrategySpec.model_validate(r["data"].get("strategy") or {}))
        if not specs:
            return None, specs, rows
        sampler = ThompsonSampler(specs, holdout_share=self.config.holdout_share)
        for r in rows:
            if r["success"] is not None:
                sampler.update(r["strategy_key"], bool(r["success"]))
        return sampler, specs, rows

    async def sampler(self, task_type: str, candidates: Iterable[StrategySpec] = (),
                      rng: random.Random | None = None) -> ThompsonSampler:
        """A Thompson sampler whose posteriors hold every stored outcome of ``task_type`` (plus unseen candidates).

        Raises:
            L07Error: E7500 when the task type has no stored strategy and no candidates were given.
        """
        loaded, _, _ = await self._load(task_type)
        arms = list(loaded.arms) if loaded else []
        arms += [c.key(task_type) for c in candidates]
        sampler = ThompsonSampler(arms, holdout_share=self.config.holdout_share, rng=rng)
        if loaded:
            sampler.successes.update(loaded.successes)
            sampler.failures.update(loaded.failures)
        return sampler

    async def choose_strategy(self, task_type: str, candidates: Iterable[StrategySpec] = (),
                              rng: random.Random | None = None) -> tuple[StrategySpec, bool]:
        """Pick the strategy for the next plan of ``task_type`` by Thompson sampling (with the uniform holdout).

        Returns:
            The strategy and whether the choice was a holdout (uniform) one; report it back in the outcome.
        """
        candidates = list(candidates)
        _, specs, _ = await self._load(task_type)
        specs.update({c.key(task_type): c for c in candidates})
        sampler = await self.sampler(task_type, candidates, rng)
        arm, holdout = sampler.choose()
        return specs[arm], holdout

    async def recommend(self, task_type: str | None = None, publish: bool = True) -> list[StrategyRecommendation]:
        """Analyse stored outcomes, store per-strategy statistics and publish the recommendations that pass the gates.

        Args:
            task_type: Only this task type; default every task type with outcomes.
            publish: Write ``learning.planning_strategy_recommended`` to the outbox for each recommendation.

        Returns:
            One answer per task type analysed (``recommended`` False with a reason when a gate failed).
        """
        if task_type:
            task_types = [task_type]
        else:
            async with self.db.session() as session:
                task_types = await PlanningRepository(session).task_types()
        answers: list[StrategyRecommendation] = []
        for tt in task_types:
            answers.append(await self._recommend_one(tt, publish))
        return answers

    async def _recommend_one(self, task_type: str, publish: bool) -> StrategyRecommendation:
        cfg = self.config
        sampler, specs, rows = await self._load(task_type)
        scored = [r for r in rows if r["success"] is not None]
        if sampler is None or len(scored) < cfg.min_plans:
            return StrategyRecommendation(task_type=task_type, reason=f"{len(scored)} plans with outcomes, need {cfg.min_plans}")
        arms = sampler.summary(cfg.posterior_samples, cfg.seed)
        baseline = float(np.mean([a["posterior_mean"] for a in arms.values()]))
        best_key = max(arms, key=lambda k: arms[k]["probability_best"])
        best = arms[best_key]
        holdout = [r for r in scored if r["data"].get("holdout")]
        h_n, h_s = len(holdout), sum(bool(r["success"]) for r in holdout)
        reasons = []
        if len(arms) < 2:
            reasons.append("only one strategy observed")
        if best["probability_best"] < cfg.confidence:
            reasons.append(f"P(best)={best['probability_best']:.3f} < {cfg.confidence}")
        if best["expected_improvement"] <= cfg.min_expected_improvement:
            reasons.append(f"expected improvement {best['expected_improvement']:.4f} <= {cfg.min_expected_improvement}")
        recommended = not reasons
        now = utcnow()
        strategies: list[PlanningStrategy] = []
        for key, a in arms.items():
            spec = specs[key]
            is_best = recommended and key == best_key
            # validated: the recommended strategy also beats the uniform holdout plans it was never chosen for
            validated = bool(is_best and h_n >= cfg.min_plans and best["successes"] / max(best["plans"], 1) > h_s / h_n
                             and two_proportion_z_test(int(best["successes"]), int(best["plans"]), h_s, h_n) < 0.05)
            strategies.append(PlanningStrategy(
                strategy_id=strategy_id_for(key), task_type=task_type, pruning_rules=spec.pruning_rules,
                search_depth=spec.search_depth, decomposition_style=spec.decomposition_style,
                constraint_order=spec.constraint_order, plans_analysed=int(a["plans"]), successes=int(a["successes"]),
                success_rate=a["successes"] / a["plans"] if a["plans"] else 0.0, baseline_success_rate=baseline,
                expected_improvement=a["expected_improvement"], confidence_level=a["probability_best"],
                validated=validated, recommended_at=now if is_best else None,
            ))
        chosen = next(s for s in strategies if s.strategy_id == strategy_id_for(best_key))
        async with self.db.session() as session:
            repo = PlanningRepository(session)
            for s in strategies:
                if s.recommended_at is None:
                    previous = await repo.get_strategy(s.strategy_id)
                    if previous is not None and previous.recommended_at is not None and not recommended:
                        s.recommended_at = previous.recommended_at  # keep the last recommendation until a new one
                await repo.save_strategy(s)
            if recommended and publish:
                await self.publisher.publish(session, "learning.planning_strategy_recommended", {
                    "task_type": task_type,
                    "recommended_strategy": {"pruning_rules": chosen.pruning_rules, "search_depth": chosen.search_depth,
                                             "constraint_order": chosen.constraint_order,
                                             "decomposition_style": chosen.decomposition_style},
                    "expected_improvement": chosen.expected_improvement,
                    "confidence_level": chosen.confidence_level,
                    "evidence": {"plans_analysed": len(scored), "baseline_success_rate": baseline,
                                 "candidate_success_rate": chosen.success_rate, "holdout_plans": h_n,
                                 "holdout_success_rate": (h_s / h_n) if h_n else None, "validated": chosen.validated},
                    "strategy_id": chosen.strategy_id,
                }, subject=chosen.strategy_id)
                STRATEGY_RECOMMENDATIONS.inc()
            await audit(session, "strategies.recommend", "planning_strategy", chosen.strategy_id if recommended else None,
                        result="success" if recommended else "skipped",
                        details={"task_type": task_type, "plans": len(scored), "probability_best": best["probability_best"],
                                 "reasons": reasons})
        log.info("strategy analysis %s: best P=%.3f gain=%.4f recommended=%s", task_type, best["probability_best"],
                 best["expected_improvement"], recommended)
        return StrategyRecommendation(task_type=task_type, strategy=chosen, spec=specs[best_key], recommended=recommended,
                                      probability_best=best["probability_best"], reason="; ".join(reasons), arms=arms)

    async def list_strategies(self, task_type: str | None = None, recommended_only: bool = False) -> list[PlanningStrategy]:
        """Stored strategy statistics."""
        async with self.db.session() as session:
            return await PlanningRepository(session).list_strategies(task_type, recommended_only)
