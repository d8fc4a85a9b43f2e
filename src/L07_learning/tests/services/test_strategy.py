"""Planning-strategy optimiser: Thompson sampling beats uniform choice on a replayed stream and recommends the best."""

from __future__ import annotations

import random

import pytest

from L07_learning.models import L07Error, L07ErrorCode
from L07_learning.services.strategy_optimizer import (
    PlanningOutcome,
    StrategyOptimizer,
    StrategyOptimizerConfig,
    StrategySpec,
    ThompsonSampler,
)
from L07_learning.store.repositories.outbox import OutboxRepository

TASK = "trip_planning"
ARMS = {
    "shallow": (StrategySpec(search_depth=2, pruning_rules=["budget"]), 0.55),
    "deep-pruned": (StrategySpec(search_depth=5, pruning_rules=["budget", "time_window"], constraint_order=["budget", "time"]), 0.70),
    "deep": (StrategySpec(search_depth=5), 0.50),
    "greedy": (StrategySpec(search_depth=1, decomposition_style="greedy"), 0.40),
}


async def replay(opt: StrategyOptimizer, true_rates: dict[str, float], days: int, plans_per_day: int,
                 seed: int) -> float:
    """Run the optimiser as production would: each day choose strategies from the stored posteriors, observe the
    generated outcomes, store them. Returns the cumulative regret against always using the truly best strategy."""
    env = random.Random(seed)
    choice_rng = random.Random(seed + 1)
    by_key = {spec.key(TASK): name for name, (spec, _) in ARMS.items()}
    best = max(true_rates.values())
    regret = 0.0
    plan_no = 0
    for _ in range(days):
        sampler = await opt.sampler(TASK, [spec for spec, _ in ARMS.values()], rng=choice_rng)
        outcomes = []
        for _ in range(plans_per_day):
            key, holdout = sampler.choose()
            name = by_key[key]
            success = env.random() < true_rates[name]
            sampler.update(key, success)
            regret += best - true_rates[name]
            outcomes.append(PlanningOutcome(plan_id=f"plan-{seed}-{plan_no}", task_type=TASK, strategy=ARMS[name][0],
                                            success=success, holdout=holdout))
            plan_no += 1
        stored = await opt.record_outcomes(outcomes)
        assert stored.stored == plans_per_day
    return regret


async def test_replay_regret_below_uniform_and_true_best_recommended(db) -> None:
    opt = StrategyOptimizer(db=db, config=StrategyOptimizerConfig(holdout_share=0.1))
    true_rates = {name: p for name, (_, p) in ARMS.items()}
    days, per_day = 15, 100
    regret = await replay(opt, true_rates, days, per_day, seed=3)
    # uniform choice's expected regret is exact: T * (p_best - mean p)
    uniform = days * per_day * (max(true_rates.values()) - sum(true_rates.values()) / len(true_rates))
    assert regret < 0.5 * uniform, (regret, uniform)

    [answer] = await opt.recommend(TASK)
    assert answer.recommended, answer.reason
    assert answer.spec == ARMS["deep-pruned"][0]
    assert answer.probability_best >= 0.9
    assert answer.strategy.expected_improvement > 0.01
    assert answer.strategy.plans_analysed > answer.arms[ARMS["greedy"][0].key(TASK)]["plans"]

    async with db.session() as session:
        events = await OutboxRepository(session).list("com.agentic.learning.planning_strategy_recommended")
    assert len(events) == 1
    data = events[0]["event"]["data"]
    assert data["task_type"] == TASK
    assert data["recommended_strategy"] == {"pruning_rules": ["budget", "time_window"], "search_depth": 5,
                                            "constraint_order": ["budget", "time"], "decomposition_style": None}
    assert data["expected_improvement"] > 0.01 and 0.9 <= data["confidence_level"] <= 1
    assert data["evidence"]["plans_analysed"] == days * per_day
    assert data["evidence"]["candidate_success_rate"] > data["evidence"]["baseline_success_rate"]
    assert data["evidence"]["holdout_plans"] > 0  # the uniform share really ran

    stored = await opt.list_strategies(TASK)
    assert len(stored) == 4
    assert [s.strategy_id for s in await opt.list_strategies(TASK, recommended_only=True)] == [answer.strategy.strategy_id]


async def test_no_recommendation_when_strategies_are_equally_good(db) -> None:
    opt = StrategyOptimizer(db=db)
    equal = {name: 0.6 for name in ARMS}
    await replay(opt, equal, days=6, plans_per_day=100, seed=5)
    [answer] = await opt.recommend(TASK)
    assert not answer.recommended
    assert "P(best)" in answer.reason or "expected improvement" in answer.reason
    async with db.session() as session:
        assert await OutboxRepository(session).list("com.agentic.learning.planning_strategy_recommended") == []


async def test_too_few_plans_gives_no_answer(db) -> None:
    opt = StrategyOptimizer(db=db)
    await opt.record_outcomes([PlanningOutcome(plan_id=f"p{i}", task_type=TASK, strategy=ARMS["deep"][0], success=True)
                               for i in range(5)])
    [answer] = await opt.recommend(TASK)
    assert not answer.recommended and "need 20" in answer.reason


async def test_planning_events_are_parsed_stored_once_and_bad_ones_counted(db) -> None:
    opt = StrategyOptimizer(db=db)
    event = {
        "plan_id": "plan-1", "task_type": "scheduling",
        "planning_trace": {"search_depth": 3, "nodes_explored": 40, "constraints_checked": 5, "final_plan_length": 4,
                           "search_duration_ms": 12.5, "pruning_rules_applied": ["dominance"]},
        "constraints": [{"type": "deadline", "priority": 2}, {"type": "budget", "priority": 1}],
        "outcome": {"success": True, "constraint_violations": 0, "execution_time_vs_estimate": 1.1},
    }
    no_outcome = dict(event, plan_id="plan-2")
    no_outcome.pop("outcome")
    result = await opt.record_outcomes([event, event, no_outcome, {"plan_id": "x"}, {"planning_trace": {}}])
    assert (result.stored, result.duplicates, result.rejected) == (2, 1, {"E7010": 2})
    again = await opt.record_outcomes([event])
    assert (again.stored, again.duplicates) == (0, 1)

    parsed = PlanningOutcome.from_event_data(event)
    assert parsed.strategy == StrategySpec(search_depth=3, pruning_rules=["dominance"], constraint_order=["budget", "deadline"])
    assert parsed.success is True and PlanningOutcome.from_event_data(no_outcome).success is None
    sampler = await opt.sampler("scheduling")
    key = parsed.strategy.key("scheduling")
    assert (sampler.successes[key], sampler.failures[key]) == (1, 0)  # the outcome-less plan does not count


async def test_choose_strategy_explores_unseen_candidates_and_exploits_evidence(db) -> None:
    opt = StrategyOptimizer(db=db, config=StrategyOptimizerConfig(holdout_share=0.0))
    good, bad = ARMS["deep-pruned"][0], ARMS["greedy"][0]
    await opt.record_outcomes(
        [PlanningOutcome(plan_id=f"g{i}", task_type=TASK, strategy=good, success=i % 10 != 0) for i in range(50)]
        + [PlanningOutcome(plan_id=f"b{i}", task_type=TASK, strategy=bad, success=i % 10 == 0) for i in range(50)]
    )
    rng = random.Random(0)
    picks = [(await opt.choose_strategy(TASK, rng=rng))[0] for _ in range(20)]
    assert picks.count(good) == 20
    with pytest.raises(L07Error) as exc:
        await opt.sampler("never-seen")
    assert exc.value.code == L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID


def test_holdout_share_is_uniform() -> None:
    sampler = ThompsonSampler(["a", "b", "c"], holdout_share=1.0, rng=random.Random(1))
    for _ in range(200):
        sampler.update("a", True)
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(3000):
        arm, holdout = sampler.choose()
        assert holdout
        counts[arm] += 1
    assert all(900 < c < 1100 for c in counts.values())


def test_cli_strategies_recommend_records_events_first(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    rng = random.Random(9)
    lines = []
    for i in range(600):
        depth, p = (5, 0.8) if i % 2 else (2, 0.4)
        lines.append(json.dumps({"plan_id": f"p{i}", "task_type": "routing",
                                 "planning_trace": {"search_depth": depth, "pruning_rules_applied": []},
                                 "outcome": {"success": rng.random() < p, "constraint_violations": 0,
                                             "execution_time_vs_estimate": 1.0}}))
    events = tmp_path / "plans.jsonl"
    events.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "L07_HOME": str(tmp_path / "home")}
    env.pop("L07_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", "strategies", "recommend", "--input", str(events),
                          "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["recorded"]["stored"] == 600
    [answer] = body["data"]
    assert answer["recommended"] and answer["spec"]["search_depth"] == 5
