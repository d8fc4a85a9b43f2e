"""Defaults that learn (issue 19): the recipe a job gets without a config, the no-improvement verdict, the training
minimum, and one meaning of "correct" for the job's own eval and the validator.

The recipes' effect on SmolLM2 (held-out correctness on two task families, on CPU) is measured by
``benchmarks/recipes.py``; here the tiny 1.6M-parameter model keeps each test to seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest
import yaml

from L07_learning.models import JobConfig, JobStatus, L07Error, ModelType
from L07_learning.models.error_codes import L07ErrorCode
from L07_learning.store.db import Database
from L07_learning.tests.factories.curation import make_example
from L07_learning.tests.factories.sft import tool_examples

CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
SMOLLM2_PARAMETERS = 134_515_008


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


async def _stack(settings, db: Database, tiny_model: Path):  # type: ignore[no-untyped-def]
    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.services.fine_tuning_engine import FineTuningEngine
    from L07_learning.services.model_registry import ModelRegistry

    registry = ModelRegistry(db=db, settings=settings)
    curator = DatasetCurator(db=db, settings=settings)
    base = await registry.register_base(str(tiny_model), name="tiny-llama")
    return FineTuningEngine(db=db, registry=registry, curator=curator, settings=settings), registry, curator, base


# --- recipe selection ----------------------------------------------------------------------------------------------

def test_recipe_follows_device_model_size_and_dataset_size(tiny_model: Path) -> None:
    from L07_learning.services.jobs.presets import PRESETS_DIR, count_parameters, load_preset, select_recipe

    assert select_recipe("cpu", SMOLLM2_PARAMETERS, 240).preset == "cpu-small"
    assert select_recipe("cpu", SMOLLM2_PARAMETERS, 5000).preset == "cpu-small-large"
    assert select_recipe("cuda:0", SMOLLM2_PARAMETERS, 240).preset == "gpu"
    assert select_recipe("cuda:0", 1_600_000, 240).preset == "tiny"
    assert select_recipe("cpu", 1_700_000_000, 240).preset == "cpu-small"
    # The tiny model's size is read from its safetensors header, exactly as torch counts it.
    from transformers import AutoModelForCausalLM

    counted = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny_model)).parameters())
    assert count_parameters(tiny_model) == counted and select_recipe("cpu", counted, 32).preset == "tiny"

    cpu = load_preset("cpu-small")
    assert (cpu.learning_rate, cpu.target_modules, cpu.lora_alpha, cpu.lora_dropout, cpu.lora_top_layers,
            cpu.epochs, cpu.use_curriculum) == (1e-3, ["all-linear"], 32, 0.0, 20, 3, False)
    gpu = load_preset("gpu")
    defaults = JobConfig()
    assert (gpu.learning_rate, gpu.lora_rank, gpu.target_modules, gpu.batch_size, gpu.epochs) == (
        defaults.learning_rate, defaults.lora_rank, defaults.target_modules, defaults.batch_size, defaults.epochs)
    for path in sorted(PRESETS_DIR.glob("sft-*.yaml")):
        text = path.read_text()
        assert text.startswith("# ") and ("measure" in text.lower()), f"{path.name} must say what chose it"
        load_preset(path.stem[len("sft-"):])  # every shipped recipe is a valid JobConfig
        assert isinstance(yaml.safe_load(text), dict)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_no_config_gets_the_recipe_and_named_fields_stay_on_top(settings, db: Database,
                                                                      tiny_model: Path) -> None:
    engine, _, curator, base = await _stack(settings, db, tiny_model)
    dataset = await curator.create_dataset("tools", tool_examples(40, seed=0), min_examples=1)

    auto = await engine.start_training(dataset.dataset_id, base.model_id)
    assert auto.config["extra"]["recipe"]["preset"] == "tiny" and auto.metrics["recipe"]["preset"] == "tiny"
    assert auto.metrics["recipe"]["parameters"] < 20_000_000 and auto.config["learning_rate"] == 1e-3

    named = await engine.start_training(dataset.dataset_id, base.model_id, {"learning_rate": 5e-4, "epochs": 2})
    assert (named.config["learning_rate"], named.config["epochs"], named.config["lora_rank"]) == (5e-4, 2, 8)
    assert named.config["extra"]["recipe"]["preset"] == "tiny"

    explicit = await engine.start_training(dataset.dataset_id, base.model_id, JobConfig(max_seq_length=256))
    assert explicit.config["learning_rate"] == JobConfig().learning_rate  # a complete config is used as it is
    assert "recipe" not in explicit.config["extra"]


def test_cli_train_with_no_flags_prints_the_recipe(l07_home: Path, tiny_model: Path) -> None:
    from typer.testing import CliRunner

    from L07_learning.cli.main import app
    from L07_learning.services.learning_service import LearningService

    async def setup() -> tuple[str, str]:
        service = LearningService.build()
        await service.initialize(start_relay=False)
        try:
            base = await service.registry.register_base(str(tiny_model), name="tiny-llama")
            ds = await service.curator.create_dataset("tools", tool_examples(40, seed=0), min_examples=1)
            return base.model_id, ds.dataset_id
        finally:
            await service.cleanup()

    base_id, dataset_id = asyncio.run(setup())
    out = CliRunner().invoke(app, ["train", "--dataset", dataset_id, "--base", base_id, "--no-worker"])
    assert out.exit_code == 0, out.stdout
    assert "recipe: tiny (" in out.stdout and "queued" in out.stdout


async def test_rest_submission_without_config_gets_the_recipe(settings, sqlite_db: Database, tiny_model: Path) -> None:
    import httpx

    from L07_learning.api.app import create_app
    from L07_learning.api.config import ApiConfig
    from L07_learning.tests.api.test_api import auth, make_keys

    _, _, curator, base = await _stack(settings, sqlite_db, tiny_model)
    dataset = await curator.create_dataset("tools", tool_examples(40, seed=0), min_examples=1)
    keys = await make_keys(sqlite_db, settings)
    app = create_app(settings=settings, db=sqlite_db, config=ApiConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test") as api:
        r = await api.post("/api/v1/training/jobs", json={"dataset_id": dataset.dataset_id,
                                                          "base_model_id": base.model_id,
                                                          "config": {"epochs": 2}}, headers=auth(keys["trainer"]))
        assert r.status_code == 202, r.text
        job = (await api.get(r.json()["status_url"], headers=auth(keys["trainer"]))).json()
    assert job["metrics"]["recipe"]["preset"] == "tiny"


# --- minimum_dataset_size ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_a_train_split_below_minimum_dataset_size_is_refused_at_submission(settings, db: Database,
                                                                                 tiny_model: Path) -> None:
    engine, _, curator, base = await _stack(settings.model_copy(update={"minimum_dataset_size": 100}), db, tiny_model)
    dataset = await curator.create_dataset("tools", tool_examples(40, seed=0), min_examples=1)
    for config in (None, JobConfig(max_seq_length=256)):
        with pytest.raises(L07Error) as err:
            await engine.start_training(dataset.dataset_id, base.model_id, config)
        assert err.value.code is L07ErrorCode.INSUFFICIENT_EXAMPLES and err.value.details["minimum_dataset_size"] == 100
        assert err.value.details["train_examples"] == len(dataset.split_examples("train"))
    assert await engine.list_jobs() == []  # nothing queued
    engine.settings = settings.model_copy(update={"minimum_dataset_size": len(dataset.split_examples("train"))})
    assert (await engine.start_training(dataset.dataset_id, base.model_id)).status is JobStatus.PENDING


# --- the no-improvement verdict --------------------------------------------------------------------------------------

def _random_labels(n: int, seed: int = 0) -> list:  # type: ignore[type-arg]
    """Tool-selection requests whose answers are random word strings: nothing in a request predicts its answer."""
    rng = random.Random(seed)
    return [make_example(i, rng=rng, input_text=ex.input_text, metadata={"task_type": "random", "agent_id": "a"},
                         task_type="random", example_id=f"rl-{i}", execution_id=f"rl-exec-{i}")
            for i, ex in enumerate(tool_examples(n, seed=seed))]


@pytest.mark.slow  # two tiny training jobs in subprocesses, with generation on the held-out split
@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_random_labels_end_with_the_verdict_and_register_nothing(settings, db: Database,
                                                                       tiny_model: Path) -> None:
    engine, registry, curator, base = await _stack(settings, db, tiny_model)
    dataset = await curator.create_dataset("random", _random_labels(60), min_examples=1)
    job = await engine.start_training(dataset.dataset_id, base.model_id, {"epochs": 2})
    done = await engine.run_worker_once()
    assert done is not None and done.job_id == job.job_id
    assert done.status is JobStatus.FAILED and done.error_code == "E7035", (done.status, done.error_message)
    assert "no improvement" in done.error_message and done.output_model_id is None
    verdict = done.metrics["verdict"]
    assert verdict["verdict"] == "no_improvement" and verdict["measure"] == "held_out_accuracy"
    assert done.metrics["eval_accuracy"] <= done.metrics["base_accuracy"] + 0.2
    assert [m.model_type for m in await registry.list_models()] == [ModelType.BASE]  # nothing registered

    # The same job with the verdict waived registers the adapter (and keeps the verdict in its metrics).
    waived = await engine.start_training(dataset.dataset_id, base.model_id,
                                         {"epochs": 2, "extra": {"require_improvement": False}})
    done = await engine.run_worker_once()
    assert done.job_id == waived.job_id and done.status is JobStatus.COMPLETED and done.output_model_id
    assert done.metrics["verdict"]["verdict"] == "no_improvement"


def test_verdict_needs_improvement_beyond_chance() -> None:
    from L07_learning.pipelines.sft_pipeline import improvement_verdict, sign_test_p

    def verdict(**m):  # type: ignore[no-untyped-def]
        return improvement_verdict({"generation_eval_examples": 60, **m})["verdict"]

    assert verdict(eval_accuracy=1.0, base_accuracy=0.0, generation_wins=60, generation_losses=0) == "improved"
    assert verdict(eval_accuracy=0.0, base_accuracy=0.0, generation_wins=0, generation_losses=0) == "no_improvement"
    # Two lucky hits are chance (p 0.25), not improvement; a tie between newly right and newly wrong is none.
    assert verdict(eval_accuracy=2 / 60, base_accuracy=0.0, generation_wins=2, generation_losses=0) == "no_improvement"
    assert verdict(eval_accuracy=0.5, base_accuracy=0.5, generation_wins=9, generation_losses=9) == "no_improvement"
    assert sign_test_p(5, 0) == pytest.approx(1 / 32) and sign_test_p(0, 0) == 1.0
    # Without a held-out score the eval loss decides.
    assert improvement_verdict({"initial_eval_loss": 2.0, "eval_loss": 0.5})["verdict"] == "improved"
    assert improvement_verdict({"initial_eval_loss": 2.0, "eval_loss": 1.99})["verdict"] == "no_improvement"
    assert improvement_verdict({})["verdict"] == "unmeasured"


@pytest.mark.slow  # a tiny training job in a subprocess, with generation on the held-out split
async def test_the_loop_counts_the_verdict_toward_the_policys_breaker(settings, sqlite_db: Database,
                                                                      tiny_model: Path) -> None:
    from L07_learning.services.learning_service import LearningService
    from L07_learning.services.loop import LearningLoop, PolicySet
    from L07_learning.store.repositories.examples import ExampleRepository
    from L07_learning.store.repositories.loop import LoopRepository

    service = LearningService.build(settings, sqlite_db)
    base = await service.registry.register_base(str(tiny_model), name="tiny-llama")
    policies = PolicySet.model_validate({"policies": [  # no preset and no fields: the recipe
        {"name": "random", "group": {"task_type": "random"}, "trigger": {"min_new_examples": 40, "cooldown": 0},
         "training": {"kind": "sft", "base_model_id": base.model_id}}]})
    loop = LearningLoop(service, policies, tasks=[], run_worker=False, holder="only")
    try:
        examples = _random_labels(60, seed=1)
        for ex in examples:
            ex.status = "ACCEPTED"  # type: ignore[assignment]
        async with loop.db.session() as session:
            await ExampleRepository(session).add_many(examples)
        assert (await loop.tick())["policies"]["random"].startswith("triggered")
        job = await loop.service.sft_engine.run_worker_once()
        assert job is not None and job.status is JobStatus.FAILED and job.error_code == "E7035", job
        assert job.config["extra"]["recipe"]["preset"] == "tiny"
        assert list((await loop.tick())["runs"].values()) == ["failed"]
        async with loop.db.session() as session:
            repo = LoopRepository(session)
            (run,) = await repo.runs("random")
            state = await repo.get_policy("random")
        assert (run.status, run.error_code, run.model_id) == ("FAILED", "E7035", None)
        assert state is not None and state.consecutive_failures == 1
    finally:
        await loop.close()


# --- one meaning of "correct" ----------------------------------------------------------------------------------------

TRACE = 'Step 1: create_event({"attendee":"Priya","day":"Tuesday","duration_minutes":30}) -> ok\nAnswer: Booked.'


def test_tool_calls_match_by_name_and_parsed_arguments() -> None:
    from L07_learning.pipelines.matching import answer_matches, match_mode_for

    reordered = 'Step 1: create_event({"duration_minutes": 30.0, "day": "Tuesday", "attendee": "Priya"}) -> id 7\n' \
                "Answer: Booked."
    block = '<tool_call>{"name": "create_event", "arguments": {"day": "Tuesday", "attendee": "Priya", ' \
            '"duration_minutes": 30}}</tool_call>\nAnswer: Booked.'
    assert answer_matches(reordered, TRACE) and answer_matches(block, TRACE)
    assert not answer_matches(reordered.replace("30.0", "45"), TRACE)
    assert not answer_matches(reordered.replace("create_event", "create_task"), TRACE)
    assert not answer_matches(reordered.replace("Booked.", "Cancelled."), TRACE)
    assert match_mode_for(TRACE) == "trace" and match_mode_for("billing") == "exact"
    assert match_mode_for("billing", {"match_mode": "contains"}) == "contains"
    assert match_mode_for("billing", {"match_mode": "nonsense"}) == "exact"


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
async def test_job_eval_and_validator_judge_the_same_cases_the_same_way(settings, db: Database,
                                                                        tiny_model: Path) -> None:
    from L07_learning.models import ModelArtifact
    from L07_learning.pipelines.sft_pipeline import held_out_cases
    from L07_learning.services.jobs import sft
    from L07_learning.services.jobs.context import RunnerContext
    from L07_learning.services.model_validator import ModelValidator

    engine, registry, curator, base = await _stack(settings, db, tiny_model)
    examples = []
    for i, ex in enumerate(tool_examples(60, seed=2)):
        if i % 3 == 0:
            ex = ex.model_copy(update={"output_text": TRACE})
        elif i % 3 == 1:
            ex = ex.model_copy(update={"metadata": {**ex.metadata, "match_mode": "contains"}})
        examples.append(ex)
    dataset = await curator.create_dataset("mixed", examples, min_examples=1)
    config = JobConfig(max_seq_length=256, system_prompt="Answer with the tool name.", use_curriculum=False)
    job = await engine.start_training(dataset.dataset_id, base.model_id, config)
    ctx = RunnerContext(db, settings, registry, curator, settings.home / "jobs" / job.job_id)
    spec = await sft.prepare(job, config, ctx)
    job_cases = held_out_cases(spec["test_rows"], spec["test_match_modes"])  # what the job's eval_accuracy judges

    candidate = ModelArtifact(name="c", model_type=ModelType.LORA_ADAPTER, dataset_id=dataset.dataset_id,
                              dataset_version=dataset.version, config=config.model_dump(mode="json"))
    validator = ModelValidator(db=db, registry=registry, curator=curator, settings=settings)
    cases, _ = await validator._held_out_cases(candidate)
    validator_cases = [(c.prompt, c.expected, c.match_mode) for c in cases]
    assert job_cases == validator_cases
    assert {mode for *_, mode in job_cases} >= {"trace", "contains", "exact"}  # every kind took part
