"""``l07 train``, ``l07 worker`` and ``l07 jobs list|show|watch|cancel|events``.

``l07 train`` queues a job and, by default, runs it in this process's worker (the embedded default) behind a progress
bar; with ``--no-worker`` it only queues it for ``l07 worker`` processes (any number, on any machine sharing the DB).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import typer

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..models.training_job import JobStatus, JobType, TrainingJob
from ..services.fine_tuning_engine import FineTuningEngine, load_preset
from ..services.learning_service import LearningService
from ._common import JsonOpt, console, emit_json, run, services, table

app = typer.Typer(help="Training jobs: list, inspect, watch, cancel.", no_args_is_help=True)


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set needs key=value, got {pair!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _summary(job: TrainingJob) -> dict[str, Any]:
    m = job.metrics or {}
    return {"job_id": job.job_id, "type": job.job_type.value, "status": job.status.value,
            "step": (job.progress or {}).get("step"), "loss": (job.progress or {}).get("loss"),
            "eval_loss": m.get("eval_loss"), "accuracy": m.get("eval_accuracy"),
            "output_model_id": job.output_model_id, "error": job.error_code, "created_at": job.created_at}


async def _watch(engine: FineTuningEngine, job_id: str, json_out: bool, poll_s: float = 1.0) -> TrainingJob:
    """Follow a job until it is terminal, with a rich progress bar over optimizer steps."""
    if json_out:
        return await engine.wait(job_id, poll_s=poll_s)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task(job_id[:8], total=None, info="")
        while True:
            job = await engine.get_job_status(job_id)
            progress = job.progress or {}
            loss = progress.get("loss")
            info = f"{job.status.value}" + (f" loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
            bar.update(task, total=progress.get("total_steps") or None, completed=progress.get("step") or 0, info=info)
            if job.status.terminal:
                return job
            await asyncio.sleep(poll_s)


def _recipe_line(job: TrainingJob) -> str:
    recipe = (job.config.get("extra", {}) if isinstance(job.config, dict) else job.config.extra).get("recipe") or {}
    if not recipe:
        return "none (a complete config was given)"
    return f"{recipe.get('preset')} ({recipe.get('reason')})"


def _print_job(job: TrainingJob, json_out: bool) -> None:
    if json_out:
        emit_json(job)
        return
    m = job.metrics or {}
    rows = [("job_id", job.job_id), ("type", job.job_type.value), ("status", job.status.value),
            ("dataset", f"{job.dataset_id} {job.dataset_version}"), ("base_model_id", job.base_model_id),
            ("output_model_id", job.output_model_id), ("retries", job.retry_count),
            ("recipe", _recipe_line(job)),
            ("verdict", (m.get("verdict") or {}).get("verdict")),
            ("error", f"{job.error_code} {job.error_message}" if job.error_code else None),
            ("checkpoint", job.checkpoint_location)]
    for key in ("train_loss", "initial_eval_loss", "eval_loss", "test_loss", "base_accuracy", "eval_accuracy",
                "tokens_per_second", "duration_seconds"):
        if m.get(key) is not None:
            rows.append((key, round(m[key], 4) if isinstance(m[key], float) else m[key]))
    table(f"training job {job.job_id[:8]}", ["field", "value"], rows)


def register(root: typer.Typer) -> None:
    """Add the top-level ``train`` and ``worker`` commands."""

    @root.command("train")
    @run
    async def train(
        dataset: str = typer.Option(..., "--dataset", help="Dataset id."),
        base: str | None = typer.Option(None, "--base", help="Base model id (default: the registered SmolLM2 base)."),
        preset: str | None = typer.Option(
            None, "--preset", help="Config preset (tiny, cpu-small, cpu-small-large, gpu) or a YAML file; default: the "
                                   "recipe measured for this device, the base model's size and the dataset's size."),
        sets: list[str] = typer.Option([], "--set", help="Override a JobConfig field: key=value (JSON values)."),
        job_type: str = typer.Option("sft", "--type", help="sft, rlhf or distillation."),
        worker: bool = typer.Option(True, "--worker/--no-worker", help="Run the job in this process (else only queue)."),
        json_out: bool = JsonOpt,
    ) -> None:
        """Queue a fine-tuning job and (by default) run it here with a progress bar.

        With no ``--preset`` the job gets the recipe measured for this device, the base model's size and the dataset's
        size; ``--set`` fields go on top of either. A job whose tuned model is no better than its base ends FAILED
        with E7035 and registers nothing.
        """
        overrides = _parse_sets(sets)
        # A dict (not a JobConfig) asks the engine for the recipe, with these fields on top.
        config = load_preset(preset, overrides) if preset else overrides
        async with services() as service:
            engine = service.sft_engine
            job = await engine.start_training(dataset, base, config, job_type=JobType(job_type))
            if not json_out:
                typer.echo(f"recipe: {_recipe_line(job)}")
            if not worker:
                emit_json(job) if json_out else typer.echo(f"queued {job.job_id} ({job.status.value})")
                return
            runner = asyncio.create_task(engine.run_worker_once())
            try:
                job = await _watch(engine, job.job_id, json_out)
                await runner
            except BaseException:
                runner.cancel()
                raise
        _print_job(job, json_out)
        if job.status != JobStatus.COMPLETED:
            raise typer.Exit(code=1)

    @root.command("worker")
    @run
    async def worker_cmd(
        once: bool = typer.Option(False, "--once", help="Run at most one job, then exit."),
        poll: float = typer.Option(2.0, "--poll", help="Seconds between queue polls."),
        json_out: bool = JsonOpt,
    ) -> None:
        """Claim and run training jobs (several workers on several machines can share one PostgreSQL queue), with
        the outbox relay delivering the events they write."""
        service = LearningService.build()
        await service.initialize()
        try:
            if once:
                job = await service.sft_engine.run_worker_once()
                await service.relay.run_once()
                emit_json(job) if json_out else typer.echo(f"{job.job_id} {job.status.value}" if job else "no job waiting")
                return
            await service.sft_engine.runner().run_forever(poll_s=poll)
        finally:
            await service.cleanup()


@app.command("list")
@run
async def list_jobs(status: str | None = typer.Option(None, help="Filter by status."),
                    limit: int = typer.Option(50), json_out: bool = JsonOpt) -> None:
    """List jobs, newest first."""
    async with services() as service:
        jobs = await service.sft_engine.list_jobs(status, limit=limit)
    if json_out:
        emit_json([_summary(j) for j in jobs])
        return
    table("training jobs", ["job_id", "type", "status", "step", "loss", "eval_loss", "accuracy", "output_model_id",
                            "error", "created_at"],
          [[v if not isinstance(v, float) else round(v, 4) for v in _summary(j).values()] for j in jobs])


@app.command("show")
@run
async def show(job_id: str, json_out: bool = JsonOpt) -> None:
    """Show one job with its metrics."""
    async with services() as service:
        job = await service.sft_engine.get_job_status(job_id)
    _print_job(job, json_out)


@app.command("watch")
@run
async def watch(job_id: str, json_out: bool = JsonOpt) -> None:
    """Follow a job with a progress bar until it ends."""
    async with services() as service:
        job = await _watch(service.sft_engine, job_id, json_out)
    _print_job(job, json_out)


@app.command("cancel")
@run
async def cancel(job_id: str, json_out: bool = JsonOpt) -> None:
    """Cancel a job (idempotent; its worker stops it within seconds)."""
    async with services() as service:
        await service.sft_engine.cancel_job(job_id, actor="cli")
        job = await service.sft_engine.get_job_status(job_id)
    emit_json(_summary(job)) if json_out else typer.echo(f"{job_id}: {job.status.value}"
                                                         + ("" if job.status.terminal else " (cancel requested)"))


@app.command("events")
@run
async def events(job_id: str, kind: list[str] = typer.Option([], "--kind", help="step, eval, checkpoint, status..."),
                 json_out: bool = JsonOpt) -> None:
    """Stored per-step losses, evals, checkpoints and state changes."""
    async with services() as service:
        rows = await service.sft_engine.job_events(job_id, kind or None)
    if json_out:
        emit_json(rows)
        return
    table(f"events of {job_id[:8]}", ["id", "kind", "step", "payload"],
          [[e["id"], e["kind"], e["step"], json.dumps(e["payload"], default=str)[:100]] for e in rows])
