"""Release gates: scoring rules, and the validator telling an intact model from a damaged one by running both."""

from __future__ import annotations

import pytest

from L07_learning.models import ModelStage
from L07_learning.models.error_codes import L07Error
from L07_learning.pipelines.evaluation_pipeline import distinct_n, paired_bootstrap
from L07_learning.pipelines.matching import infer_match_mode, parse_trace_output, score_answer
from L07_learning.tests.factories.validation import (
    GOLDEN_MAX_NEW_TOKENS,
    chatty_tiny_model,
    register_release_candidates,
)

TRACE = 'Step 1: get_weather({"city":"Rome","day":"Tuesday"}) -> sunny, 16C\nAnswer: Rome on Tuesday: sunny, 16C.'


def test_trace_mode_judges_decisions_not_observations():
    assert infer_match_mode(TRACE) == "trace" and infer_match_mode("billing") == "exact"
    assert parse_trace_output(TRACE) == ([("get_weather", '{"city":"Rome","day":"Tuesday"}')], "Rome on Tuesday: sunny, 16C.")
    other_observation = TRACE.replace("-> sunny, 16C", "-> (timeout)")
    assert score_answer(other_observation, TRACE, "trace") == (True, 1.0)
    wrong_tool = TRACE.replace("get_weather", "search_flights")
    ok, score = score_answer(wrong_tool, TRACE, "trace")
    assert not ok and score == 0.5
    assert score_answer("Step 1: get_weather(", TRACE, "trace") == (False, 0.0)


def test_exact_similarity_and_bootstrap():
    assert score_answer("  Billing. ", "billing", "exact")[0]
    assert not score_answer("billing team", "billing", "exact")[0]
    assert score_answer("the cat sat on the mat", "the cat sat on a mat", "similarity")[1] > 0.8
    stats = paired_bootstrap([1, 1, 1, 0], [0, 0, 1, 0], iters=500, seed=1)
    assert stats["mean_diff"] == 0.5 and stats["win_rate"] == 0.75 and stats["ci_low"] <= 0.5 <= stats["ci_high"]
    assert paired_bootstrap([1, 0], [1, 0])["win_rate"] == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)


async def test_damaged_model_is_rejected_with_the_failing_stage_named(sqlite_db, settings, tmp_path, monkeypatch):
    from L07_learning.services.learning_service import LearningService
    from L07_learning.services.model_registry import ModelRegistry
    from L07_learning.services.model_validator import ModelValidator, ValidationConfig

    monkeypatch.setenv("L07_INFERENCE_BACKEND", "transformers")  # the validation's own processes inherit it
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    base_id, intact_id, damaged_id = await register_release_candidates(
        registry, chatty_tiny_model(tmp_path), tmp_path, "val")

    cfg = ValidationConfig(max_new_tokens=GOLDEN_MAX_NEW_TOKENS, latency_requests=3, latency_warmup=1, safety_prompts=3,
                           bootstrap_iters=200)
    validator = ModelValidator(db=sqlite_db, registry=registry, settings=settings, config=cfg)

    intact = await validator.validate_model(intact_id)
    assert intact.baseline_model_id == base_id
    assert intact.stages["regression"].outcome.value == "PASS", intact.stages["regression"]
    assert intact.stages["regression"].metrics["pass_rate"] == 1.0
    assert intact.stages["safety"].outcome.value == "PASS"
    for side in ("candidate", "baseline"):  # each model timed in two rounds (alternating order), keeps its fastest
        timing = intact.stages["latency"].metrics[side]
        assert len(timing["p99_ms_per_token_rounds"]) == 2
        assert timing["p99_ms_per_token"] == min(timing["p99_ms_per_token_rounds"])
        assert intact.stages["latency"].metrics[f"{side}_engine"] == "transformers"  # the engine that was timed

    damaged = await validator.validate_model(damaged_id)
    assert damaged.recommendation.value == "REJECT" and not damaged.passed and damaged.regression_detected
    assert damaged.stages["regression"].outcome.value == "FAIL"
    assert any("pass rate" in issue for issue in damaged.stages["regression"].issues)
    assert (await registry.get_model(damaged_id)).validation_status == "FAILED"

    # Through the service, the rejection names the failing stage and quarantines the model.
    service = LearningService(settings=settings, db=sqlite_db, registry=registry, validator=validator)
    await service.initialize(start_relay=False)
    with pytest.raises(L07Error) as info:
        await service.deploy_model(damaged_id)
    assert info.value.code.value == "E7203" and "regression" in info.value.details["failing_stages"]
    assert (await registry.get_model(damaged_id)).stage is ModelStage.REJECTED


async def test_deploy_promotes_to_staging_and_publishes_a_signed_release_once(sqlite_db, settings, tmp_path):
    import json

    from L07_learning.events.sinks import JsonlSink
    from L07_learning.services.learning_service import LearningService
    from L07_learning.services.model_registry import ModelRegistry
    from L07_learning.services.model_validator import ModelValidator, ValidationConfig

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    _, cand_id, _ = await register_release_candidates(registry, chatty_tiny_model(tmp_path), tmp_path, "rel")
    # Latency of a model of a few hundred thousand parameters is noise at the millisecond scale; this test is about the
    # release path, so the latency gates are set wide here (thresholds are configuration).
    cfg = ValidationConfig(max_new_tokens=GOLDEN_MAX_NEW_TOKENS, latency_requests=3, latency_warmup=1, safety_prompts=2,
                           latency_p99_pass_ratio=100.0, latency_p99_fail_ratio=100.0, bootstrap_iters=200)
    validator = ModelValidator(db=sqlite_db, registry=registry, settings=settings, config=cfg)
    service = LearningService(settings=settings, db=sqlite_db, registry=registry, validator=validator)
    await service.initialize(start_relay=False)
    sink_path = tmp_path / "releases.jsonl"
    service.relay.sinks = [JsonlSink(sink_path)]

    result = await service.deploy_model(cand_id)
    assert result.recommendation.value == "DEPLOY" and result.passed
    staged = await registry.get_model(cand_id)
    assert staged.stage is ModelStage.STAGING and staged.validation_status == "PASSED"
    assert await service.relay.drain(timeout_s=5) == 0
    await service.relay.run_once()
    releases = [json.loads(line) for line in sink_path.read_text().splitlines()
                if json.loads(line)["type"] == "com.agentic.learning.model_ready_for_deployment"]
    assert len(releases) == 1
    data = releases[0]["data"]
    assert data["model_id"] == cand_id and data["artifact_checksum"] == staged.checksum
    assert data["artifact_signature"] == staged.signature and data["signing_key_version"]
    assert data["validation_status"] == "APPROVED" and data["canary_config"]["traffic_percentage"] == 20


def test_accuracy_pass_leaves_room_to_measure_a_verbose_models_length(tmp_path):
    """Tokens per answer must not be cut at the reference length, or a rambling baseline looks as short as a correct
    candidate; a cap given explicitly applies as it is."""
    from transformers import AutoTokenizer

    from L07_learning.pipelines.evaluation_pipeline import EvalCase, evaluate_model

    model_dir = chatty_tiny_model(tmp_path)
    expected = "billing team"
    longest = len(AutoTokenizer.from_pretrained(str(model_dir))(expected, add_special_tokens=False)["input_ids"])
    cases = [EvalCase(case_id=f"c{i}", messages=[{"role": "user", "content": f"Route ticket {i}."}], expected=expected)
             for i in range(3)]
    report = evaluate_model(model_dir, cases, latency_requests=1, latency_warmup=0, safety_prompts=0)
    cap = report.latency["answer_cap_tokens"]
    assert cap == 2 * longest + 8
    # The tiny model never emits an end-of-turn token: every answer runs to the cap and is reported as cut there.
    assert [c.new_tokens for c in report.cases] == [cap] * 3 and report.latency["answers_cut_at_cap"] == 3
    assert report.latency["tokens_per_answer"] == cap

    fixed = evaluate_model(model_dir, cases, max_new_tokens=5, latency_requests=0, latency_warmup=0, safety_prompts=0)
    assert fixed.latency["answer_cap_tokens"] == 5 and {c.new_tokens for c in fixed.cases} == {5}


def _report(tokens: int, p99_ms: float, correct: bool):
    from L07_learning.pipelines.evaluation_pipeline import CaseResult, ModelReport

    cases = [CaseResult(f"c{i}", "t", "EASY", "x", "x" if correct else "y", correct, float(correct), 0.1, tokens)
             for i in range(4)]
    return ModelReport(cases=cases, latency={"p99_ms": p99_ms, "tokens_per_answer": float(tokens)})


@pytest.mark.parametrize(("cand_tokens", "cand_p99", "outcome"), [
    (40, 100.0, "PASS"),     # shorter and no slower
    (46, 100.0, "REVIEW"),   # 1.15x the baseline's tokens per answer
    (40, 115.0, "REVIEW"),   # p99 in (1.10, 1.20] x: contract §5.6 REVIEW band
])
async def test_benchmark_stage_applies_the_token_and_latency_bands(sqlite_db, settings, cand_tokens, cand_p99, outcome):
    from L07_learning.services.model_validator import ModelValidator

    validator = ModelValidator(db=sqlite_db, settings=settings)
    stage = validator._benchmark_stage(_report(cand_tokens, cand_p99, True), _report(40, 100.0, True))
    assert stage.outcome.value == outcome, stage.issues
