"""The DISTILLATION job kind, worker side: its spec for ``pipelines/distillation_pipeline.py`` and the registration
of the trained student (public API: ``services/distillation_engine.py``).
"""

from __future__ import annotations

from typing import Any

from ...models.model_artifact import ModelType
from ...models.tool_calls import plain_messages
from ...models.training_job import JobConfig, TrainingJob
from ..registry.loading import resolve_model_dirs
from .context import RunnerContext, job_config, split_rows
from .register import Provenance, default_name, model_record

# Where the distillation settings travel inside the job's JobConfig (``extra`` is the model's open slot).
EXTRA_KEY = "distillation"


async def prepare(job: TrainingJob, config: JobConfig, ctx: RunnerContext) -> dict[str, Any]:
    """Spec for the child: verified teacher (and student) folders, the dataset's splits as chat rows, settings.

    Raises:
        L07Error: E7250/E7201/E7207 from the registry, E7028/E7031 for the dataset.
    """
    settings = dict(config.extra.get(EXTRA_KEY) or {})
    teacher_dir, adapter_dir = await resolve_model_dirs(ctx.registry, job.base_model_id)
    splits = await split_rows(job, config, ctx)
    student_model_id = settings.get("student_model_id")
    distillation = dict(settings.get("config") or {})
    carrier = settings.get("carrier") or {}
    if carrier and distillation:
        # Retries adjust the carrier (contract §4.1); carry the same change over to the distillation settings.
        distillation["learning_rate"] *= config.learning_rate / carrier["learning_rate"]
        if config.batch_size != carrier["batch_size"]:
            distillation["batch_size"] = config.batch_size
    spec: dict[str, Any] = {
        "teacher_dir": teacher_dir,
        "teacher_adapter_dir": adapter_dir,
        # The distillation pipeline reads text turns: tool conversations go in the one tool-call format's text.
        "train_rows": [plain_messages(r) for r in splits["train"]],
        "test_rows": [plain_messages(r) for r in splits["test"]],
        "distillation": distillation,
        "student": settings.get("student") or {},
        "output_dir": str(ctx.workdir / "student"),
        "max_new_tokens_eval": 32,
    }
    if student_model_id:
        spec["student_dir"] = await ctx.registry.local_path(student_model_id)
    return spec


async def register(job: TrainingJob, result: dict[str, Any], ctx: RunnerContext) -> str | None:
    """Register the trained student as DISTILLED with lineage to its teacher, the job and the dataset version."""
    teacher = await ctx.registry.get_model(job.base_model_id)
    config = job_config(job)
    metrics = result.get("metrics", {})
    settings = config.extra.get(EXTRA_KEY) or {}
    artifact = model_record(
        config.model_name or default_name(teacher, "distilled"), ModelType.DISTILLED, teacher, Provenance.of(job),
        # The student shares the teacher's root base model, not the teacher itself.
        base_model_name=teacher.base_model_name or teacher.name,
        base_model_version=teacher.base_model_version or teacher.version,
        metrics={
            "training_metrics": {k: v for k, v in metrics.items()
                                 if k not in ("loss_curve", "kd_loss_curve", "teacher_accuracy", "eval_accuracy",
                                              "score_ratio", "latency_ratio")},
            "validation_metrics": {k: metrics.get(k) for k in ("teacher_accuracy", "eval_accuracy", "score_ratio",
                                                                "latency_ratio", "generation_eval_examples")},
            "baseline_comparison": {"baseline_model_id": teacher.model_id,
                                    "improvement_percent": 100 * metrics["improvement_vs_baseline"]
                                    if metrics.get("improvement_vs_baseline") is not None else None,
                                    "cost_ratio": metrics.get("parameter_ratio")},
        },
        config={"distillation": settings.get("config"), "student": settings.get("student"),
                "student_model_id": settings.get("student_model_id"), "teacher_model_id": teacher.model_id},
        tags=["distillation", str(metrics.get("method", "logit"))],
    )
    return await ctx.registry.register_model(artifact, source_dir=result["output_dir"])
