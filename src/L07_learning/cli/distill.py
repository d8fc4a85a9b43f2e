"""``l07 distill``: queue a teacher -> student distillation job (and optionally run it here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..models.error_codes import L07Error, L07ErrorCode
from ._common import JsonOpt, emit_json, run, services, table


def _student_config(value: str | None) -> dict[str, Any]:
    """``--student-config``: inline JSON, or a path to a JSON file, with StudentSpec fields."""
    if not value:
        return {}
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"cannot read student config {value}: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"student config is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, "student config must be a JSON object")
    return data


@run
async def distill(
    teacher: str = typer.Option(..., "--teacher", help="Registry id of the teacher (any model type)."),
    dataset_id: str = typer.Option(..., "--dataset", help="Dataset to distil on (train split; test split scores)."),
    student_config: str = typer.Option(
        None, "--student-config",
        help='Student derived from the teacher, inline JSON or a file: {"num_layers": 4, "hidden_size": 384, ...}.'),
    student_model_id: str = typer.Option(None, "--student-model-id", help="Train this registered model instead."),
    method: str = typer.Option("logit", "--method", help="logit (KL + hard label) or sequence (teacher answers)."),
    temperature: float = typer.Option(4.0, "--temperature", help="Softening temperature (0, 20]."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the distillation term (1 - alpha: hard label)."),
    steps: int = typer.Option(100, "--steps", help="Optimiser steps."),
    learning_rate: float = typer.Option(5e-4, "--lr", help="Peak learning rate."),
    batch_size: int = typer.Option(16, "--batch-size", help="Examples per step."),
    name: str = typer.Option(None, "--name", help="Registry name of the student (default <teacher>-distilled)."),
    wait: bool = typer.Option(False, "--wait", help="Run the job in this process's worker and wait for its end."),
    json_out: bool = JsonOpt,
) -> None:
    """Distil a registered teacher into a smaller student; the student is registered as DISTILLED."""
    async with services() as service:
        engine = service.distillation_engine
        job = await engine.start_distillation(
            teacher, dataset_id, student=_student_config(student_config), student_model_id=student_model_id,
            distillation={"method": method, "temperature": temperature, "alpha": alpha, "max_steps": steps,
                          "learning_rate": learning_rate, "batch_size": batch_size},
            model_name=name,
        )
        if wait:
            while not job.status.terminal:
                await engine.run_worker_once()
                job = await engine.get_job_status(job.job_id)
    if json_out:
        emit_json(job)
        return
    m = job.metrics or {}
    table("distillation job", ["field", "value"], [
        ("job_id", job.job_id), ("status", job.status.value), ("teacher", job.base_model_id),
        ("student model", job.output_model_id), ("teacher accuracy", m.get("teacher_accuracy")),
        ("student accuracy", m.get("eval_accuracy")), ("score ratio", m.get("score_ratio")),
        ("parameter ratio", m.get("parameter_ratio")), ("latency ratio", m.get("latency_ratio")),
        ("error", f"{job.error_code} {job.error_message}" if job.error_code else None),
    ])


def register(app: typer.Typer) -> None:
    """Add ``l07 distill`` as a top-level command."""
    app.command("distill")(distill)
