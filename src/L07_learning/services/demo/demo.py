"""``l07 demo``: the whole loop on the embedded default, from nothing to a signed release.

generate sample events -> ingest (join, dedup, reject malformed) -> filter (PII, secrets, poisoning, duplicates) ->
dataset v1.0.0 -> register the base model -> LoRA fine-tune it for real -> validate against the base by running both ->
promote to STAGING -> publish ``model_ready_for_deployment`` through the outbox -> HTML report.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error
from ...settings import Settings
from ...store.db import Database
from ...store.repositories.events import RejectedEventRepository
from ...store.repositories.filter_decisions import FilterDecisionRepository
from ..learning_service import LearningService
from .report import render_report
from .sample_stream import generate

Progress = Callable[[str, dict[str, Any]], None]

DEMO_DATASET = "demo-agent-tasks"

# Training uses the recipe every job without a config gets (jobs/presets.select_recipe: on CPU with this 135M model
# and 154 training examples, configs/sft-cpu-small.yaml, whose settings were measured on this very dataset). The
# job's own generation check is skipped because the validator measures both models right after; the job's
# no-improvement verdict then falls back on the eval loss.
DEMO_OVERRIDES: dict[str, Any] = {"extra": {"generation_eval": False}}
# A subset of the generator's task types, so each gets enough examples for a CPU budget; with all six types, 140
# training examples reached only 28% held-out accuracy.
DEMO_TASK_TYPES = ["capital_qa", "meeting_scheduling", "ticket_routing"]
# 400 executions (198 training examples with the recipe's 3 epochs): 100% held-out (25 conversations) in transformers,
# so the contract's regression gate releases. 300 (152 examples) left one ambiguous ticket ("my invoice issue on
# order 8201") wrong in transformers, at 2 epochs and at 3 (llama.cpp's F16 got it right at 3): REVIEW, no release.
# 4 epochs on 300 also reached 100%; more data keeps the default recipe. Measured 2026-12-06 on 2 cores.
DEMO_EXECUTIONS = 400
# Measurement budgets only (the gate thresholds stay the contract's): on 2 CPU cores one generated token costs about
# 0.13 s, so the default latency profile (3 warm-up + 20 requests per model) alone would take a third of the demo.
# Batch 32 puts the 20 held-out cases, and the safety probes, in one generation each: the base model's validation
# took 113 s instead of 145 s at batch 16. With 6 latency requests and 6 safety prompts the whole demo measured
# 560-597 s, too close to its 10 minutes on a slow day; 4 and 4 (20 probes) take about 30 s less.
DEMO_VALIDATION_BUDGET: dict[str, Any] = {"latency_warmup": 1, "latency_requests": 4, "safety_prompts": 4,
                                          "batch_size": 32}


def _noop(_stage: str, _info: dict[str, Any]) -> None:
    return None


async def run_demo(home: Path, *, executions: int = DEMO_EXECUTIONS, seed: int = 7, reset: bool = True,
                   task_types: list[str] | None = None,
                   model_cache_dir: Path | None = None, progress: Progress = _noop,
                   training_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the loop in ``home`` and return the summary (the ``--json`` output of ``l07 demo``).

    Args:
        home: Folder for the demo's SQLite database, keys, artifacts, outbox and report (wiped when ``reset``).
        executions: Sample executions to generate (about 2.2 events each).
        seed: Seed of the generator, the splits and training.
        model_cache_dir: Where the converted base model is cached (kept across runs).
        progress: Called with (stage, info) as the loop advances.
        task_types: Task types in the generated stream (default ``DEMO_TASK_TYPES``).
        training_overrides: JobConfig fields on top of the recipe.
    """
    t0 = time.perf_counter()
    home = Path(home)
    if reset and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, model_cache_dir=model_cache_dir, minimum_dataset_size=100)
    service = LearningService.build(settings=settings, db=Database(settings.database_url or "", auto_migrate=True))
    await service.initialize(start_relay=False)
    service.validator.config = service.validator.config.model_copy(update=DEMO_VALIDATION_BUDGET)
    try:
        # 1. events
        stream = generate(executions=executions, seed=seed, task_types=task_types or DEMO_TASK_TYPES)
        events_path = home / "events.jsonl"
        stream.write(str(events_path))
        progress("events", {"events": len(stream.lines), "path": str(events_path)})

        # 2-3. ingest + filter, in batches, through the same path as every other source
        totals: dict[str, Any] = {}
        batch = 500
        for start in range(0, len(stream.lines), batch):
            part = await service.process_events(stream.lines[start:start + batch], transport="file")
            for k, v in part.items():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
            totals["pending_join"] = part.get("pending_join", 0)
            progress("ingest", {"done": min(start + batch, len(stream.lines)), "total": len(stream.lines)})
        rejected = await _rejections(service.db)
        progress("filter", {"accepted": totals.get("examples_accepted", 0), "rejected": rejected})

        # 4. dataset
        dataset = await service.create_training_dataset(DEMO_DATASET, min_examples=100)
        counts = {k: len(v) for k, v in dataset.splits.items()}
        progress("dataset", {"dataset_id": dataset.dataset_id, "version": dataset.version, "splits": counts})

        # 5. base model
        base = await service.registry.ensure_base_model()
        progress("base_model", {"model_id": base.model_id, "name": base.name})

        # 6. fine-tune (a worker process, watched here)
        overrides = {**DEMO_OVERRIDES, "seed": seed, **(training_overrides or {})}
        job = await service.train_model(dataset.dataset_id, overrides, base_model_id=base.model_id)
        progress("training_started", {"job_id": job.job_id, "recipe": job.metrics.get("recipe")})
        worker = asyncio.create_task(service.sft_engine.run_worker_once())
        last_event = 0
        while not worker.done():
            await asyncio.sleep(1.0)
            events = await service.sft_engine.job_events(job.job_id, ["step"], after_id=last_event)
            if events:
                last_event = events[-1]["id"]
                progress("training_step", events[-1])
        await worker
        job = await service.sft_engine.get_job_status(job.job_id)
        if job.output_model_id is None:
            raise L07Error(job.error_code or "E7910", f"training job ended {job.status.value}: {job.error_message}",
                           job_id=job.job_id)
        progress("training_done", {"model_id": job.output_model_id, "metrics": job.metrics})

        # 7-8. validate against the base, promote to STAGING, publish the release
        stage = "DEVELOPMENT"
        validation = None
        t_validate = time.perf_counter()
        try:
            validation = await service.deploy_model(job.output_model_id)
        except L07Error as exc:
            progress("rejected", {"code": exc.code.value, "message": exc.message, **exc.details})
        tuned = await service.registry.get_model(job.output_model_id)
        stage = tuned.stage.value
        pending = await service.relay.drain(timeout_s=10) if service.relay else 0
        if validation is None:
            validation = (await service.registry.get_validations(job.output_model_id) or [None])[-1]
        validation_s = time.perf_counter() - t_validate
        progress("validated", {"stage": stage, "recommendation": validation.recommendation.value if validation else None})

        summary = _summary(totals, rejected, dataset, job, tuned, validation, pending, t0)
        # Wall time of the validate-and-release step and the engine that ran it, so the fast backend's gain on the
        # whole step (issue 20) reads off this JSON: run it with L07_INFERENCE_BACKEND=transformers and without.
        summary["validation_seconds"] = round(validation_s, 1)
        summary["report"] = str(await _report(home, job, service, validation, summary, rejected))
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        return summary
    finally:
        await service.cleanup()


async def _rejections(db: Database) -> dict[str, int]:
    async with db.session() as s:
        by_reason = await FilterDecisionRepository(s).counts_by_reason()
        by_code = await RejectedEventRepository(s).count_by_code()
    out = {f"event/{code}": n for code, n in by_code.items()}
    out.update({f"example/{k}": n for k, n in by_reason.items()})
    return out


def _summary(totals: dict[str, Any], rejected: dict[str, int], dataset: Any, job: Any, tuned: Any,
             validation: Any, pending: int, t0: float) -> dict[str, Any]:
    bench = validation.stages.get("benchmark") if validation else None
    latency = validation.stages.get("latency") if validation else None
    return {
        "events_read": totals.get("events_read", 0),
        "examples_extracted": totals.get("examples_extracted", 0),
        "examples_accepted": totals.get("examples_accepted", 0),
        "examples_rejected": sum(n for k, n in rejected.items() if k.startswith("example/")),
        "events_rejected": totals.get("events_rejected", 0),
        "dataset_id": dataset.dataset_id,
        "dataset_version": dataset.version,
        "dataset_splits": {k: len(v) for k, v in dataset.splits.items()},
        "job_id": job.job_id,
        "train_loss": job.metrics.get("train_loss"),
        "eval_loss": job.metrics.get("eval_loss"),
        "model_id": tuned.model_id,
        "stage": tuned.stage.value,
        "base_score": bench.metrics.get("baseline_accuracy") if bench else None,
        "tuned_score": bench.metrics.get("candidate_accuracy") if bench else None,
        "recommendation": validation.recommendation.value if validation else None,
        "inference_engine": latency.metrics.get("candidate_engine") if latency else None,
        "training_seconds": round(job.metrics["duration_seconds"], 1) if "duration_seconds" in job.metrics else None,
        "failing_stages": [k for k, v in validation.stages.items() if v.outcome.value != "PASS"] if validation else [],
        "release_events_pending": pending,
        "seconds": round(time.perf_counter() - t0, 1),
    }


async def _report(home: Path, job: Any, service: Any, validation: Any, summary: dict[str, Any],
                  rejected: dict[str, int]) -> Path:
    steps = await service.sft_engine.job_events(job.job_id, ["step"])
    evals = await service.sft_engine.job_events(job.job_id, ["eval"])
    loss_curve = [{"step": e["step"], "loss": e["payload"].get("loss")} for e in steps
                  if e.get("payload", {}).get("loss") is not None]
    eval_curve = [{"step": e["step"], "eval_loss": e["payload"].get("eval_loss")} for e in evals
                  if e.get("payload", {}).get("eval_loss") is not None]
    div = validation.stages.get("diversity") if validation else None
    base_by = (div.metrics.get("baseline_by_task_type") or {}) if div else {}
    tuned_by = (div.metrics.get("candidate_by_task_type") or {}) if div else {}
    return await asyncio.to_thread(
        render_report, home / "report.html", title="L07 demo: base vs fine-tuned", loss_curve=loss_curve,
        eval_curve=eval_curve, base_by_task=base_by, tuned_by_task=tuned_by, summary=summary,
        rejected_by_reason=rejected)
