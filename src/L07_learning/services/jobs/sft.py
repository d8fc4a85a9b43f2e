"""The SFT job kind, worker side: its spec for ``pipelines/sft_pipeline.py`` and the registration of its adapter.

The kind's three files: this one (worker side), ``pipelines/sft_pipeline.py`` (child side) and
``services/fine_tuning_engine.py`` (public API).
"""

from __future__ import annotations

from typing import Any

from ...models.model_artifact import ModelType
from ...models.training_job import JobConfig, TrainingJob
from ...pipelines.lora_targets import resolve_target_modules
from .context import RunnerContext, job_config, split_rows
from .register import Provenance, default_name, model_record


async def prepare(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, Any]:
    """Spec for SFT-style jobs: the verified base model folder and the dataset version's splits as chat rows.

    Raises:
        L07Error: E7032/E7201/E7207 from the registry, E7028/E7031 for the dataset.
    """
    base_dir = await ctx.registry.local_path(job.base_model_id)
    splits = await split_rows(job, config, ctx)
    return {
        "base_model_dir": str(base_dir),
        "train_rows": splits["train"],
        "val_rows": splits["val"],
        "test_rows": splits["test"],
        "config": config.model_dump(mode="json"),
        "target_modules": resolve_target_modules(config.target_modules, base_dir),
        "output_dir": str(ctx.workdir / "adapter"),
        "checkpoint_dir": str(ctx.workdir / "checkpoints"),
    }


async def register(job: TrainingJob, result: dict[str, Any], ctx: RunnerContext) -> str | None:
    """Register the trained LoRA adapter as LORA_ADAPTER with lineage to base model, job and dataset version."""
    base = await ctx.registry.get_model(job.base_model_id)
    config = job_config(job)
    metrics = result.get("metrics", {})
    artifact = model_record(
        config.model_name or default_name(base, "sft"), ModelType.LORA_ADAPTER, base, Provenance.of(job),
        metrics={"training_metrics": {k: v for k, v in metrics.items() if k not in ("loss_curve", "evals")}},
        config=config.model_dump(mode="json"),
        tags=[job.job_type.value.lower()],
    )
    return await ctx.registry.register_model(artifact, source_dir=result["adapter_dir"])
