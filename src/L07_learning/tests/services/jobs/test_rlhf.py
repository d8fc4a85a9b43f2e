"""RLHF: reward formula and pairs (§5.5), reward model, DPO / PPO policy optimisation, guards (E7301-E7306, E7402).

Training tests use a tiny word-level Llama (``rlhf_data.build_word_model``) on generated support-desk preferences:
helpful answers are preferred over dismissive ones; held-out pairs use topics never seen in training.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from L07_learning.models import (
    ExampleSource,
    L07Error,
    ModelArtifact,
    ModelType,
    PreferencePair,
    RewardSignal,
    RLHFConfig,
    TrainingExample,
)
from L07_learning.observability.metrics import REGISTRY
from L07_learning.services.ingestion.rewards import build_preference_pairs, compute_rewards, pair_from_correction
from L07_learning.services.rlhf_engine import detect_negative_feedback_loop

from ...factories.rlhf import TOPICS, build_word_model, make_pairs, sft_tiny, train_and_heldout

# --------------------------------------------------------------------------------------------------------------------
# Reward formula (§5.5) and preference pairs


def _signal(q: float, c: float | None = 0.9, outcome: str = "success") -> RewardSignal:
    return RewardSignal(quality_score=q, confidence_level=c, outcome=outcome)


def test_reward_pipeline_matches_the_contracts_worked_example():
    batch = compute_rewards([_signal(80, 0.9, "timeout"), _signal(30, 0.8), _signal(95, 1.0, "error")])
    first = batch.rewards[0]
    assert first.r_normalized == pytest.approx(0.6)
    assert first.r_weighted == pytest.approx(0.54)
    assert first.r_penalized == pytest.approx(0.04)
    assert batch.standardised
    finals = [s.r_final for s in batch.rewards]
    assert sum(finals) == pytest.approx(0.0, abs=1e-9)  # standardised over the batch
    assert all(-2 <= f <= 2 for f in finals)


def test_standardised_rewards_are_clipped_to_two():
    # One outlier among many equal signals standardises to about +4.4 before the clip.
    batch = compute_rewards([_signal(50, 1.0)] * 19 + [_signal(100, 1.0)])
    assert batch.rewards[-1].r_final == 2.0


def test_zero_variance_batch_skips_standardisation_with_e7302():
    batch = compute_rewards([_signal(100, 1.0), _signal(100, 1.0)])
    assert not batch.standardised and batch.warnings == ["E7302"]
    assert [s.r_final for s in batch.rewards] == [1.0, 1.0]  # clip(r_pen), not a division by zero
    single = compute_rewards([_signal(5, 0.9, "timeout")])
    assert single.warnings == ["E7302"] and single.rewards[0].r_final == pytest.approx(-0.81 - 0.5)


def test_low_confidence_signals_are_dropped_with_a_reason_and_counted():
    before = REGISTRY.get_sample_value("l07_reward_signals_dropped_total", {"reason": "low_confidence"}) or 0
    batch = compute_rewards([_signal(90, 0.4), _signal(90, None), _signal(90, 0.5), _signal(20, 0.9)])
    assert [r for _, r in batch.dropped] == ["low_confidence", "no_confidence"]
    assert len(batch.rewards) == 2
    after = REGISTRY.get_sample_value("l07_reward_signals_dropped_total", {"reason": "low_confidence"})
    assert after == before + 1


def test_unknown_reward_mode_is_rejected():
    with pytest.raises(L07Error) as err:
        compute_rewards([_signal(80)], mode="bogus")
    assert err.value.code.value == "E7500"


def test_multi_objective_mode_needs_latency_and_cost():
    s = RewardSignal(quality_score=80, confidence_level=1.0, metrics={"latency_ms": 500.0, "token_cost": 0.5})
    batch = compute_rewards([s], mode="multi_objective", latency_target_ms=1000, token_budget=1.0)
    # 0.5*0.8 + 0.3*0.5 + 0.2*0.5 = 0.65 -> r_norm 0.3
    assert batch.rewards[0].r_normalized == pytest.approx(0.3)
    with pytest.raises(L07Error) as err:
        compute_rewards([_signal(80)], mode="multi_objective")
    assert err.value.code.value == "E7110"


def _example(inp: str, out: str, q: float, task: str = "qa") -> TrainingExample:
    return TrainingExample(source_type=ExampleSource.EXECUTION_TRACE, input_text=inp, output_text=out,
                           quality_score=q, confidence=0.9, metadata={"agent_id": "a", "task_type": task})


def test_preference_pairs_need_a_ten_point_margin_and_prefer_the_higher_score():
    exs = [_example("Reset my password", "Click 'forgot password'.", 90),
           _example("  reset MY password ", "No.", 40),
           _example("Reset my password", "Use the link.", 85),
           _example("Other question", "Answer", 99)]
    pairs = build_preference_pairs(exs)
    assert {(p.chosen, p.rejected) for p in pairs} == {("Click 'forgot password'.", "No."), ("Use the link.", "No.")}
    assert all(p.margin >= 10 for p in pairs)  # 90 vs 85 is not a pair
    assert pairs[0].chosen_example_id == exs[0].example_id and pairs[0].rejected_example_id == exs[1].example_id


def test_preference_pairs_fall_back_to_task_type_when_no_input_repeats():
    exs = [_example("Q1", "good", 90, "travel"), _example("Q2", "bad", 30, "travel"), _example("Q3", "x", 10, "qa")]
    pairs = build_preference_pairs(exs)
    assert len(pairs) == 1 and pairs[0].task_type == "travel" and pairs[0].source == "extractor_task_type"


def test_a_correction_becomes_a_pair_and_an_empty_one_is_rejected():
    ex = _example("Capital of France?", "Lyon", 20)
    pair = pair_from_correction(ex, "Paris")
    assert (pair.chosen, pair.rejected, pair.margin, pair.source) == ("Paris", "Lyon", 80, "correction")
    with pytest.raises(L07Error) as err:
        pair_from_correction(ex, " lyon ")
    assert err.value.code.value == "E7110"


# --------------------------------------------------------------------------------------------------------------------
# Negative feedback loop (§5.7)


def test_three_consecutive_low_models_trip_the_feedback_loop():
    assert not detect_negative_feedback_loop([0.9, 0.93, 0.96, 0.9, 0.94], baseline=1.0).detected  # never 3 in a row
    report = detect_negative_feedback_loop([0.97, 0.9, 0.93, 0.94], baseline=1.0)
    assert report.detected and report.reasons == ["low_model_run"]


def test_a_significant_falling_data_quality_trend_trips_the_feedback_loop():
    report = detect_negative_feedback_loop([1.0, 1.0, 1.0, 1.0, 1.0], 1.0, data_qualities=[80, 77, 75, 71, 68])
    assert report.detected and report.reasons == ["declining_data_quality"] and report.slope < 0
    noisy = detect_negative_feedback_loop([1.0] * 4, 1.0, data_qualities=[80, 70, 82, 69])
    assert not noisy.detected


# --------------------------------------------------------------------------------------------------------------------
# Training on a tiny model


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine this is several times faster than oversubscribing."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    """Base word model, its SFT warm-up (mostly dismissive answers) and a reward model trained on the base."""
    import torch

    from L07_learning.pipelines.rlhf.reward_model import train_reward_model

    # Seeded here: in a full run, earlier modules have consumed torch's global RNG, and these tiny models (and so the
    # tests built on them) must not depend on what ran before.
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("rlhf")
    train, held = train_and_heldout(n_train_topics=24, per_topic=2)
    base = build_word_model(root / "base")
    sft = sft_tiny(base, root / "sft", train, epochs=5)
    rm = train_reward_model(base, train, root / "rm", epochs=3, learning_rate=3e-3, lora_rank=None, batch_size=8)
    return {"root": root, "base": base, "sft": sft, "rm": rm, "train": train, "held": held}


def _policy_config(**kw) -> RLHFConfig:
    values = dict(learning_rate_policy=5e-3, epochs=2, batch_size=8, lora_rank=8, lora_alpha=16.0, max_new_tokens=16,
                  max_kl_divergence=5.0, guard_every_steps=6, learning_rate_value_fn=1e-2, rollout_size=16,
                  mini_batch_size=8, optimization_epochs=2, early_stopping_patience=0)
    values.update(kw)
    return RLHFConfig(**values)


def test_reward_model_ranks_held_out_pairs(tiny):
    from L07_learning.pipelines.rlhf.common import as_triplets
    from L07_learning.pipelines.rlhf.reward_model import RewardScorer

    rm = tiny["rm"]
    assert rm.val_accuracy >= 0.8 and rm.val_pairs >= 8
    assert rm.loss_curve[-1] < rm.loss_curve[0]
    # Pairs about topics the reward model never saw.
    assert RewardScorer(rm.model_dir).pairwise_accuracy(as_triplets(tiny["held"])) >= 0.8


def test_reward_model_training_rejects_too_few_pairs(tiny, tmp_path):
    from L07_learning.pipelines.rlhf.reward_model import train_reward_model

    with pytest.raises(L07Error) as err:
        train_reward_model(tiny["base"], tiny["train"][:1], tmp_path / "rm", epochs=1)
    assert err.value.code.value == "E7300"


def _lora_b_norm(adapter_dir: str) -> float:
    from safetensors.torch import load_file

    weights = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    return sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k)


def test_dpo_policy_earns_more_reward_on_held_out_prompts_without_losing_validation(tiny):
    from L07_learning.pipelines.rlhf_pipeline import optimize_policy

    result = optimize_policy(tiny["sft"], tiny["rm"].model_dir, tiny["train"], tiny["held"], tiny["root"] / "dpo",
                             _policy_config(algorithm="dpo"))
    assert result.stopped_reason == "completed" and not result.alerts
    assert result.after["mean_reward"] > result.before["mean_reward"] + 0.5
    assert result.after["validation_accuracy"] >= result.before["validation_accuracy"]
    assert _lora_b_norm(result.adapter_dir) > 0  # the adapter really trained (LoRA B starts at zero)


def test_dpo_keeps_the_chosen_answers_likely_with_its_supervised_term(tiny):
    # Without the NLL term on the chosen answer, DPO may push chosen and rejected down together (on SmolLM2 it took
    # exact tool calls from 33% to 0%); with the default weight the chosen answers end more likely than without it.
    from L07_learning.pipelines.rlhf_pipeline import optimize_policy

    runs = {w: optimize_policy(tiny["sft"], tiny["rm"].model_dir, tiny["train"], tiny["held"],
                               tiny["root"] / f"dpo-sft-{w}", _policy_config(algorithm="dpo", dpo_sft_weight=w))
            for w in (0.0, RLHFConfig().dpo_sft_weight)}
    plain, with_sft = runs[0.0], runs[RLHFConfig().dpo_sft_weight]
    assert with_sft.after["chosen_logprob"] > plain.after["chosen_logprob"]
    assert with_sft.after["chosen_logprob"] > with_sft.before["chosen_logprob"]


def test_kl_budget_overrun_stops_and_keeps_the_previous_weights(tiny):
    from L07_learning.pipelines.rlhf_pipeline import optimize_policy

    cfg = _policy_config(algorithm="dpo", max_kl_divergence=1e-4, guard_every_steps=1, max_steps=3)
    result = optimize_policy(tiny["sft"], tiny["rm"].model_dir, tiny["train"], tiny["held"], tiny["root"] / "kl", cfg)
    assert result.stopped_reason == "kl_exceeded"
    assert [a.code for a in result.alerts] == ["E7306"]
    assert result.steps == 1 and result.after["kl"] <= 1e-4  # the step-0 weights were restored and saved
    assert _lora_b_norm(result.adapter_dir) == 0


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_online_methods_train_the_policy_against_the_reward_model(tiny, algorithm):
    from L07_learning.pipelines.rlhf_pipeline import optimize_policy

    cfg = _policy_config(algorithm=algorithm, max_steps=2, guard_every_steps=2, num_generations=4)
    result = optimize_policy(tiny["sft"], tiny["rm"].model_dir, tiny["train"], tiny["held"],
                             tiny["root"] / algorithm, cfg)
    assert result.steps == 2 and result.stopped_reason == "completed"
    assert all(math.isfinite(x) for x in result.train_metrics["loss_curve"])
    assert result.after["kl"] > 0 and _lora_b_norm(result.adapter_dir) > 0


def test_ppo_raises_the_rollout_reward(tiny):
    from L07_learning.pipelines.rlhf_pipeline import optimize_policy

    cfg = _policy_config(algorithm="ppo", learning_rate_policy=3e-3, max_steps=6, guard_every_steps=6)
    result = optimize_policy(tiny["sft"], tiny["rm"].model_dir, tiny["train"], tiny["held"], tiny["root"] / "ppo", cfg)
    curve = result.train_metrics["reward_curve"]
    assert len(curve) == 6 and all(math.isfinite(x) for x in result.train_metrics["loss_curve"])
    assert max(curve[-2:]) > curve[0] + 0.5
    assert result.after["kl"] > 0 and _lora_b_norm(result.adapter_dir) > 0


# --------------------------------------------------------------------------------------------------------------------
# Engine: registry, lineage, quarantine


@pytest.fixture
async def engine(sqlite_db, settings):
    from L07_learning.services.model_registry import ModelRegistry
    from L07_learning.services.rlhf_engine import RLHFEngine

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    return RLHFEngine(db=sqlite_db, registry=registry, settings=settings)


async def test_engine_registers_reward_model_and_policy_with_lineage(engine, tiny):
    base = await engine.registry.register_base(str(tiny["sft"]), name="word-tiny-sft")
    cfg = _policy_config(algorithm="dpo", reward_training_epochs=3, reward_learning_rate=3e-3, reward_lora_rank=None)
    rm = await engine.train_reward_model(tiny["train"], base.model_id, cfg)
    assert rm.val_pairwise_accuracy >= 0.8
    rm_artifact = await engine.registry.get_model(rm.reward_model_id)
    assert rm_artifact.model_type == ModelType.REWARD_MODEL and rm_artifact.parent_model_id == base.model_id
    assert rm_artifact.config["preference_data"]["pairs"] == len(tiny["train"])

    policy = await engine.optimize_policy(base.model_id, rm, cfg, preference_pairs=tiny["train"] + tiny["held"])
    assert policy.model_type == ModelType.LORA_ADAPTER and policy.parent_model_id == base.model_id
    assert policy.config["reward_model_id"] == rm.reward_model_id
    assert policy.config["preference_data"]["digest"].startswith("sha256:")
    tm = policy.metrics["training_metrics"]
    assert tm["reward_after"] > tm["reward_before"]
    assert tm["validation_accuracy_after"] >= tm["validation_accuracy_before"]
    # The registered files load through the verified path.
    assert (Path(await engine.registry.local_path(policy.model_id)) / "adapter_config.json").is_file()


async def test_online_method_without_sft_policy_is_refused(engine, tiny):
    base = await engine.registry.register_base(str(tiny["base"]), name="word-tiny")
    with pytest.raises(L07Error) as err:
        await engine.optimize_policy(base.model_id, "unused", RLHFConfig(algorithm="grpo"))
    assert err.value.code.value == "E7500"


async def test_reward_hacking_is_detected_and_the_policy_quarantined(engine, tiny):
    """The reward model prefers helpful answers, but L06's held-out judgements here prefer the dismissive ones (the
    reward model is mis-specified for them). PPO chases the reward while agreement with L06 falls: reward hacking."""
    src = await engine.registry.register_model(
        ModelArtifact(name="word-tiny-sft-ft", model_type=ModelType.FINE_TUNED), source_dir=str(tiny["sft"]))
    rm = await engine.registry.register_model(
        ModelArtifact(name="word-tiny-reward", model_type=ModelType.REWARD_MODEL, parent_model_id=src),
        source_dir=tiny["rm"].model_dir)
    judged = [PreferencePair(prompt=p.prompt, chosen=p.rejected, rejected=p.chosen) for p in tiny["train"]]
    cfg = _policy_config(algorithm="ppo", learning_rate_policy=3e-3, max_steps=8, guard_every_steps=2)
    with pytest.raises(L07Error) as err:
        await engine.optimize_policy(src, rm, cfg, preference_pairs=judged)
    assert err.value.code.value == "E7305"
    quarantined = await engine.registry.get_model(err.value.details["model_id"])
    assert quarantined.validation_status == "FAILED" and "quarantined" in quarantined.tags
    alerts = quarantined.metrics["training_metrics"]["alerts"]
    assert [a["code"] for a in alerts] == ["E7305"]


async def test_falling_quality_across_rlhf_models_opens_the_training_breaker(engine, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "adapter_config.json").write_text("{}")
    ids = []
    for after in (0.97, 0.9, 0.92, 0.93):
        ids.append(await engine.registry.register_model(ModelArtifact(
            name="support-rlhf", model_type=ModelType.LORA_ADAPTER, tags=["rlhf", "dpo"],
            metrics={"training_metrics": {"validation_accuracy_before": 1.0, "validation_accuracy_after": after}},
        ), source_dir=str(files)))
    with pytest.raises(L07Error) as err:
        await engine.check_feedback_loop("support-rlhf")
    assert err.value.code.value == "E7402"
    assert err.value.details["reasons"] == ["low_model_run"] and err.value.details["last_good_model_id"] == ids[0]
    with pytest.raises(L07Error) as blocked:
        await engine.optimize_policy(None, "any", RLHFConfig())
    assert blocked.value.code.value == "E7402"
    engine.reset_feedback_breaker()
    assert engine.training_blocked is None


# --------------------------------------------------------------------------------------------------------------------
# Durable job (job_type=RLHF) through the fine-tuning engine's runner


@pytest.mark.slow  # a worker subprocess imports torch and trains twice: about a minute on a shared 2-core machine
async def test_rlhf_job_trains_reward_model_and_policy_in_a_worker(sqlite_db, settings, tiny):
    from L07_learning.models import JobConfig, JobStatus, JobType
    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.services.fine_tuning_engine import FineTuningEngine
    from L07_learning.services.model_registry import ModelRegistry

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    curator = DatasetCurator(db=sqlite_db, settings=settings)
    base = await registry.register_base(str(tiny["sft"]), name="word-tiny-sft")
    # Two scored executions per task: the helpful answer scored 90, the dismissive one 30 (§5.5 pairs them).
    examples = []
    for p in make_pairs(TOPICS, per_topic=1, seed=3):
        examples.append(_example(p.prompt, p.chosen, 90, "support"))
        examples.append(_example(p.prompt, p.rejected, 30, "support"))
    dataset = await curator.create_dataset("support-prefs", examples, min_examples=10)
    # 2 DPO epochs left the greedy answers unchanged in one CI run (reward gain exactly 0; the worker's results vary
    # run to run); 4 epochs measured gains of 2.4 and 3.2 at KL 0.5 (limit 5.0).
    rlhf = _policy_config(algorithm="dpo", epochs=4, reward_training_epochs=3, reward_learning_rate=3e-3,
                          reward_lora_rank=None)
    engine = FineTuningEngine(db=sqlite_db, registry=registry, curator=curator, settings=settings)
    job = await engine.start_training(
        dataset.dataset_id, base.model_id,
        JobConfig(max_seq_length=256, model_name="support-rlhf", extra={"rlhf": rlhf.model_dump(mode="json")}),
        job_type=JobType.RLHF)
    done = await engine.run_worker_once()
    assert done is not None and done.job_id == job.job_id
    assert done.status == JobStatus.COMPLETED, (done.error_code, done.error_message)
    policy = await registry.get_model(done.output_model_id)
    assert policy.model_type == ModelType.LORA_ADAPTER and policy.name == "support-rlhf"
    assert (policy.training_job_id, policy.dataset_id) == (job.job_id, dataset.dataset_id)
    print(json.dumps({k: policy.metrics["training_metrics"].get(k) for k in ("reward_gain", "stopped_reason", "kl")}))
    assert policy.metrics["training_metrics"]["reward_gain"] > 0
    reward_models = await registry.list_models(model_type="REWARD_MODEL")
    assert [m.training_job_id for m in reward_models] == [job.job_id]
    assert policy.config["reward_model_id"] == reward_models[0].model_id
    steps = await engine.job_events(job.job_id, kinds=["step"])
    assert {e["payload"].get("phase") for e in steps} >= {"reward_model", "policy"}


# --------------------------------------------------------------------------------------------------------------------
# CLI


def _l07(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "L07_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("L07_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "L07_learning.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_rejects_a_malformed_pairs_file(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "hello"}\n')
    res = _l07("rlhf", "reward", "--pairs", str(bad), "--json", home=tmp_path / "home")
    assert res.returncode == 2
    assert json.loads(res.stdout)["error"]["code"] == "E7110"


@pytest.mark.slow  # three CLI processes, each importing torch
def test_cli_trains_a_reward_model_then_optimises_a_policy(tiny, tmp_path):
    home = tmp_path / "home"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(p.model_dump_json() + "\n" for p in tiny["train"] + tiny["held"]))
    base = _l07("models", "register-base", str(tiny["sft"]), "--name", "word-tiny-sft", "--json", home=home)
    assert base.returncode == 0, base.stderr
    base_id = json.loads(base.stdout)["model_id"]
    rm = _l07("rlhf", "reward", "--pairs", str(pairs), "--base-model-id", base_id, "--full", "--epochs", "3",
              "--lr", "3e-3", "--json", home=home)
    assert rm.returncode == 0, rm.stderr[-2000:]
    reward = json.loads(rm.stdout)
    assert reward["val_pairwise_accuracy"] >= 0.8
    pol = _l07("rlhf", "optimize", "--reward-model-id", reward["reward_model_id"], "--base-model-id", base_id,
               "--pairs", str(pairs), "--lr", "5e-3", "--epochs", "2", "--max-kl", "5", "--json", home=home)
    assert pol.returncode == 0, pol.stderr[-2000:]
    tm = json.loads(pol.stdout)["metrics"]["training_metrics"]
    assert tm["reward_after"] > tm["reward_before"]
