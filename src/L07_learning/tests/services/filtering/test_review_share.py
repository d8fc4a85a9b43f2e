"""The review queue people can keep up with (issue 19): clean data rarely goes to REVIEW, planted problems are all
still caught, and conflicting L06 scores go to REVIEW (§1.7)."""

from __future__ import annotations

import pytest

from L07_learning.tests.factories.agent_traces import fleet_examples
from L07_learning.tests.factories.curation import planted_set
from L07_learning.services.example_quality_filter import ExampleQualityFilter
from L07_learning.services.filtering.decisions import Decision
from L07_learning.services.training_data_extractor import TrainingDataExtractor
from L07_learning.settings import Settings

MAX_REVIEW_SHARE = 0.05


@pytest.mark.parametrize("n,agents,families", [
    (400, 6, None),                      # a mixed fleet
    (1000, 6, None),                     # a larger batch: the outlier rule's share does not grow with it
    (400, 1, None),                      # one agent: nobody to crowd out
    (400, 3, ["ticket_triage"]),         # one task type: diversity is low for everything
])
async def test_clean_batches_send_at_most_five_percent_to_review(n, agents, families):
    batch = fleet_examples(n, seed=n + agents, agents=agents, families=families)
    report = await ExampleQualityFilter().filter_detailed(batch)
    review = [d for d in report.decisions if d.decision is Decision.REVIEW]
    dropped = [d for d in report.decisions if d.decision in (Decision.REJECT, Decision.QUARANTINE)]
    assert len(review) / n <= MAX_REVIEW_SHARE, report.counts()
    assert not dropped, report.counts()


async def test_low_end_of_clean_quality_is_accepted_even_for_short_common_tasks():
    # q 75-78 with no steps on a single task type: the case the contract's composite of 70 sent to REVIEW.
    batch = fleet_examples(60, seed=7, families=["sql_report"], quality=(75.0, 78.0))
    for ex in batch:
        ex.execution_length = ex.tool_count = 0
    report = await ExampleQualityFilter().filter_detailed(batch)
    assert all(d.decision is Decision.ACCEPT for d in report.decisions), report.counts()


async def test_planted_problems_in_a_large_clean_batch_are_all_caught():
    planted, expected = planted_set()
    batch = fleet_examples(400, seed=11) + planted  # > 100 examples: the outlier rule runs too
    report = await ExampleQualityFilter().filter_detailed(batch)
    got = {d.example_id: (d.decision.value, d.reason) for d in report.decisions}
    missed = {k: (v, got[k]) for k, v in expected.items() if got[k] != v}
    assert not missed
    clean_review = [d for d in report.decisions if d.example_id not in expected and d.decision is not Decision.ACCEPT]
    assert len(clean_review) <= MAX_REVIEW_SHARE * 430, report.counts()


async def test_an_extreme_execution_is_still_an_anomaly():
    batch = fleet_examples(300, seed=5)
    odd = fleet_examples(1, seed=99)[0].model_copy(update={"example_id": "odd", "execution_length": 90,
                                                           "tool_count": 3})
    report = await ExampleQualityFilter().filter_detailed(batch + [odd])
    decided = {d.example_id: (d.decision, d.reason) for d in report.decisions}
    assert decided["odd"] == (Decision.REVIEW, "anomaly")


def _score(exec_id: str, q: float, method: str, time: str) -> dict:
    return {"specversion": "1.0", "type": "com.agentic.evaluation.quality_score_computed",
            "source": "https://agentic.local/layers/l06", "id": f"{exec_id}-{method}-{q}", "time": time,
            "data": {"execution_id": exec_id, "quality_score": q, "confidence_level": 0.95,
                     "task_type": "flight_booking", "evaluation_method": method}}


def _trace(exec_id: str) -> dict:
    return {"specversion": "1.0", "type": "com.agentic.execution.trace_generated",
            "source": "https://agentic.local/layers/l02", "id": f"{exec_id}-trace", "time": "2026-02-10T09:15:02Z",
            "data": {"execution_id": exec_id, "agent_id": "agent-1", "task_type": "flight_booking",
                     "task_definition": {"goal": f"Book the cheapest flight for request {exec_id}"},
                     "execution_trace": [{"step": 1, "action": "search_flights", "parameters": {"q": exec_id},
                                          "output": "2 flights"}],
                     "final_answer": f"Booked the cheapest flight for {exec_id}", "outcome": "success"}}


async def test_conflicting_scores_go_to_review_unless_a_person_settled_them(db, tmp_path):
    extractor = TrainingDataExtractor(db=db, settings=Settings(home=tmp_path / "home"))
    events = [
        _score("exec-conflict", 92.0, "automated", "2026-02-10T09:15:03Z"),
        _score("exec-conflict", 71.0, "automated", "2026-02-10T09:15:04Z"),
        _score("exec-settled", 92.0, "automated", "2026-02-10T09:15:03Z"),
        _score("exec-settled", 70.5, "human_review", "2026-02-10T09:15:04Z"),
        _score("exec-agree", 90.0, "automated", "2026-02-10T09:15:03Z"),
        _score("exec-agree", 85.0, "automated", "2026-02-10T09:15:04Z"),
        _trace("exec-conflict"), _trace("exec-settled"), _trace("exec-agree"),
    ]
    examples = await extractor.extract_batch(events)
    report = await ExampleQualityFilter().filter_detailed(examples)
    by_exec = {ex.execution_id: d for ex, d in zip(examples, report.decisions)}
    assert (by_exec["exec-conflict"].decision, by_exec["exec-conflict"].reason) == (Decision.REVIEW, "score_conflict")
    assert by_exec["exec-settled"].decision is Decision.ACCEPT
    assert by_exec["exec-agree"].decision is Decision.ACCEPT
