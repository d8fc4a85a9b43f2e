"""L07 state in the OpenAI API's object shapes: files, fine-tuning jobs, events, checkpoints, models, list envelopes
with ``after``/``limit`` pagination."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ...models.model_artifact import ModelArtifact
from ...models.training_job import JobStatus, TrainingJob

STATUS = {
    JobStatus.PENDING: "queued",
    JobStatus.INITIALIZING: "running",
    JobStatus.PREPARING_DATA: "running",
    JobStatus.RUNNING: "running",
    JobStatus.VALIDATING: "running",
    JobStatus.RETRYING: "running",
    JobStatus.COMPLETED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
"""L07 job state -> OpenAI fine-tuning job status."""


def ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """A list envelope of up to ``limit`` items following the one whose id is ``after`` (items newest first)."""
    start = 0
    if after is not None:
        ids = [i["id"] for i in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    chunk = items[start:start + limit]
    return {"object": "list", "data": chunk, "has_more": start + limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["file_id"], "object": "file", "bytes": row["bytes"], "created_at": ts(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


HYPERPARAMETER_NAMES = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
                        "dpo": ("beta", "n_epochs", "batch_size", "learning_rate_multiplier")}


def hyperparameters(config: dict[str, Any], multiplier: float | str, kind: str = "supervised") -> dict[str, Any]:
    """The method's hyperparameters as the job ran them: the SFT job's config, or a dpo job's RLHF settings."""
    if kind == "dpo":
        rlhf = (config.get("extra") or {}).get("rlhf") or {}
        return {"beta": rlhf.get("dpo_beta", "auto"), "n_epochs": rlhf.get("epochs", "auto"),
                "batch_size": rlhf.get("batch_size", "auto"), "learning_rate_multiplier": multiplier}
    return {"n_epochs": config.get("epochs", "auto"), "batch_size": config.get("batch_size", "auto"),
            "learning_rate_multiplier": multiplier}


def job_object(row: dict[str, Any], job: TrainingJob | None) -> dict[str, Any]:
    """A fine-tuning job; its state is the L07 training job's when there is one."""
    status, error, finished, model, tokens = row["status"] or "validating_files", row["error"], None, None, None
    config = dict(job.config) if job is not None and isinstance(job.config, dict) else (
        job.config.model_dump(mode="json") if job is not None else {})
    if job is not None:
        status = STATUS[job.status]
        finished = ts(job.completed_at) if job.status.terminal else None
        tokens = (job.metrics or {}).get("tokens_seen")
        if status == "succeeded":
            model = job.output_model_id
        if status == "failed":
            error = {"code": job.error_code, "message": job.error_message or "the training job failed", "param": None}
    kind = (row["method"] or {}).get("type", "supervised")
    multiplier = row["hyperparameters"].get("learning_rate_multiplier", "auto")
    params = hyperparameters(config, multiplier, kind) if config else {
        k: row["hyperparameters"].get(k, "auto") for k in HYPERPARAMETER_NAMES[kind]}
    return {
        "object": "fine_tuning.job", "id": row["ft_job_id"], "model": row["model"],
        "created_at": ts(row["created_at"]), "finished_at": finished, "fine_tuned_model": model,
        "organization_id": "l07", "result_files": [], "status": status, "validation_file": row["validation_file"],
        "training_file": row["training_file"], "hyperparameters": params, "trained_tokens": tokens, "error": error,
        "seed": row["seed"], "estimated_finish": None, "integrations": [], "metadata": None,
        "method": {"type": kind, kind: {"hyperparameters": params}},
        "user_provided_suffix": row["suffix"],
    }


def event_object(event_id: str, created: datetime, level: str, message: str, data: dict[str, Any],
                 kind: str = "message") -> dict[str, Any]:
    return {"object": "fine_tuning.job.event", "id": event_id, "created_at": ts(created), "level": level,
            "message": message, "data": data, "type": kind}


def _numbers(payload: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric measurements of an event payload, nested ones named ``outer.inner``."""
    out: dict[str, float] = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            out |= _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = value
    return out


def job_events(ft_job_id: str, job: TrainingJob | None, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training job's status, step and checkpoint events as OpenAI events (oldest first)."""
    out = []
    total = None
    for e in events:
        p, eid = e["payload"], f"ftevent-{ft_job_id[6:]}-job-{e['id']}"
        if e["kind"] == "status" and p.get("status"):
            level = "error" if p["status"] == JobStatus.FAILED.value else "info"
            text = f"Job {STATUS.get(JobStatus(p['status']), p['status'])} ({p['status']})"
            if p["status"] == JobStatus.FAILED.value and job is not None and job.error_message:
                text += f": {job.error_code} {job.error_message}"
            if p["status"] == JobStatus.COMPLETED.value and job is not None and job.output_model_id:
                text += f"; fine-tuned model {job.output_model_id}"
            out.append(event_object(eid, e["created_at"], level, text, p))
        elif e["kind"] == "step":
            total = p.get("total_steps") or total
            # An RLHF (dpo) job trains its reward model, then the policy: each phase counts its own steps.
            phase = f" ({p['phase'].replace('_', ' ')})" if p.get("phase") else ""
            out.append(event_object(eid, e["created_at"], "info", f"Step {p.get('step')}/{total}{phase}: training "
                                    f"loss={p.get('loss', float('nan')):.4f}",
                                    {"step": p.get("step"), "total_steps": total, "train_loss": p.get("loss"),
                                     **({"phase": p["phase"]} if p.get("phase") else {})}, "metrics"))
        elif e["kind"] == "eval" and "eval_loss" not in p:  # an RLHF job's measurements of its reward model / policy
            out.append(event_object(eid, e["created_at"], "info", f"Evaluation ({p.get('phase', 'model')}): " +
                                    ", ".join(f"{k}={v:.4g}" for k, v in _numbers(p).items()), p, "metrics"))
        elif e["kind"] == "eval":
            out.append(event_object(eid, e["created_at"], "info", f"Step {p.get('step')}: validation loss="
                                    f"{p.get('eval_loss', float('nan')):.4f}",
                                    {"step": p.get("step"), "valid_loss": p.get("eval_loss")}, "metrics"))
        elif e["kind"] == "checkpoint":
            out.append(event_object(eid, e["created_at"], "info", f"Checkpoint created at step {p.get('step')}",
                                    {"step": p.get("step")}))
    return out


def checkpoint_objects(ft_job_id: str, job: TrainingJob | None, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checkpoints of the training job, newest first; each names the step and the loss at it."""
    losses = {e["payload"].get("step"): e["payload"].get("loss") for e in events if e["kind"] == "step"}
    out = []
    for e in events:
        if e["kind"] != "checkpoint":
            continue
        step = e["payload"].get("step")
        out.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{ft_job_id[6:]}-{e['id']}",
                    "created_at": ts(e["created_at"]), "fine_tuning_job_id": ft_job_id, "step_number": step,
                    "fine_tuned_model_checkpoint": f"{job.job_id if job else ft_job_id}:ckpt-step-{step}",
                    "metrics": {"step": step, "train_loss": losses.get(step)}})
    return list(reversed(out))


def model_object(model: ModelArtifact) -> dict[str, Any]:
    return {"id": model.model_id, "object": "model", "created": ts(model.created_at), "owned_by": "l07",
            "name": model.name, "model_type": model.model_type.value, "stage": model.stage.value}
