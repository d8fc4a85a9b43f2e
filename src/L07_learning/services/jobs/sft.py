"""The SFT job kind, worker side: its spec for ``pipelines/sft_pipeline.py`` and the registration of its adapter.

The kind's three files: this one (worker side), ``pipelines/sft_pipeline.py`` (child side) and
``services/fine_tuning_engine.py`` (public API).
"""

from __future__ import annotations

from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelType
from ...models.training_example import TrainingExample
from ...models.training_job import JobConfig, TrainingJob
from ...pipelines.lora_targets import resolve_target_modules
from ...pipelines.matching import MATCH_MODES
from ..curriculum_planner import curriculum_mode, training_order
from .context import RunnerContext, job_config, split_rows
from .register import Provenance, default_name, model_record


async def prepare(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, Any]:
    """Spec for SFT-style jobs: the verified base model folder and the dataset version's splits as chat rows.

    Raises:
        L07Error: E7032/E7201/E7207 from the registry, E7028/E7031 for the dataset.
    """
    base_dir = await ctx.registry.local_path(job.base_model_id)
    splits = await split_rows(job, config, ctx)
    dataset = await ctx.curator.get_dataset(job.dataset_id, job.dataset_version, verify=False)
    train_order = curriculum_order(config, dataset.split_examples("train"), len(splits["train"]))
    # The validator's rule per held-out example (its metadata may name a match mode), so the job's eval_accuracy
    # counts the same answers as correct as the validator does.
    # A mode named in an example's metadata holds for each of its turns; "auto" lets each turn's text decide.
    test_modes = [str(ex.metadata["match_mode"]) if ex.metadata.get("match_mode") in MATCH_MODES else "auto"
                  for ex in dataset.split_examples("test")]
    return {
        "base_model_dir": str(base_dir),
        "train_rows": splits["train"],
        "train_order": train_order,
        "val_rows": splits["val"],
        "test_rows": splits["test"],
        "test_match_modes": test_modes,
        "config": config.model_dump(mode="json"),
        "target_modules": resolve_target_modules(config.target_modules, base_dir),
        "output_dir": str(ctx.workdir / "adapter"),
        "checkpoint_dir": str(ctx.workdir / "checkpoints"),
    }


def curriculum_order(config: JobConfig, examples: list[TrainingExample], n_train: int) -> list[list[int]] | None:
    """The curriculum planner's order of the train split (indices per epoch), or None with ``use_curriculum`` off.

    ``examples`` are the train split of the version pinned at submission, which ``split_rows`` verified and turned
    into rows in this same order; the plan indexes those rows.

    Raises:
        L07Error: E7031 when the split does not match the rows (the dataset changed while the job was prepared).
    """
    if curriculum_mode(config) == "none":
        return None
    if len(examples) != n_train:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, "the train split changed while the job was prepared")
    return training_order(examples, config)


def check_improvement(config: JobConfig, metrics: dict[str, Any]) -> None:
    """The no-improvement verdict: a tuned model no better than its base is not registered.

    The verdict is the child's (``sft_pipeline.improvement_verdict``: held-out accuracy against the base by a sign
    test, or the eval loss where no held-out score was measured). ``extra.require_improvement: false`` registers
    the model anyway (the verdict stays in its metrics).

    Raises:
        L07Error: E7035 (VALIDATION_FAILURE, not retried): the job ends FAILED with the reason and registers nothing.
    """
    verdict = metrics.get("verdict") or {}
    if verdict.get("verdict") == "no_improvement" and config.extra.get("require_improvement", True) is not False:
        raise L07Error(L07ErrorCode.VALIDATION_FAILURE, f"no improvement on the base model: {verdict.get('reason')}; "
                       "nothing registered", verdict="no_improvement", measure=verdict.get("measure"))


async def register(job: TrainingJob, result: dict[str, Any], ctx: RunnerContext) -> str | None:
    """Register the trained LoRA adapter as LORA_ADAPTER with lineage to base model, job and dataset version.

    Raises:
        L07Error: E7035 when the adapter did not improve on its base (:func:`check_improvement`).
    """
    config = job_config(job)
    metrics = result.get("metrics", {})
    check_improvement(config, metrics)
    base = await ctx.registry.get_model(job.base_model_id)
    artifact = model_record(
        config.model_name or default_name(base, "sft"), ModelType.LORA_ADAPTER, base, Provenance.of(job),
        metrics={"training_metrics": {k: v for k, v in metrics.items() if k not in ("loss_curve", "evals")}},
        config=config.model_dump(mode="json"),
        tags=[job.job_type.value.lower()],
    )
    return await ctx.registry.register_model(artifact, source_dir=result["adapter_dir"])
