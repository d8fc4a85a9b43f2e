"""``l07 rlhf``: train a reward model, optimise a policy against it, submit RLHF jobs, check the feedback loop."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.reward_signal import PreferencePair, RLHFConfig
from ..models.training_job import JobConfig, JobType
from ._common import JsonOpt, emit_json, run, services, table

app = typer.Typer(help="RLHF: pairwise reward models and preference optimisation (DPO, GRPO, RLOO, PPO).",
                  no_args_is_help=True)

PairsOpt = typer.Option(None, "--pairs", help="JSONL file of {prompt, chosen, rejected}; default: the stored pairs.")


def _read_pairs(path: Path | None) -> list[Any] | None:
    if path is None:
        return None
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, f"cannot read {path}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            pairs.append(PreferencePair.model_validate(json.loads(line)))
        except ValueError as exc:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{path}:{n}: {exc}", line=n) from None
    return pairs


def _config(**overrides: Any) -> RLHFConfig:
    try:
        return RLHFConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, str(exc)) from None


async def _with_engine(fn: Any) -> Any:
    async with services() as service:
        return await fn(service.rlhf_engine)


@app.command("reward")
@run
async def reward(
    pairs_file: Path = PairsOpt,
    base_model_id: str = typer.Option(None, "--base-model-id", help="Registered base; default: the default base."),
    name: str = typer.Option(None, "--name", help="Registry name of the reward model."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs (default 5)."),
    learning_rate: float = typer.Option(None, "--lr", help="Learning rate (default 1e-4)."),
    lora_rank: int = typer.Option(None, "--lora-rank", help="LoRA rank (default 16)."),
    full: bool = typer.Option(False, "--full", help="Train every weight instead of LoRA (tiny models)."),
    json_out: bool = JsonOpt,
) -> None:
    """Train a pairwise reward model and register it as REWARD_MODEL."""
    cfg = _config(reward_training_epochs=epochs, reward_learning_rate=learning_rate, reward_lora_rank=lora_rank)
    if full:
        cfg = cfg.model_copy(update={"reward_lora_rank": None})
    pairs = _read_pairs(pairs_file)

    async with services() as service:
        train_pairs = pairs if pairs is not None else await service.queries.preference_pairs()
        rm = await service.rlhf_engine.train_reward_model(train_pairs, base_model_id, cfg, name=name)
    if json_out:
        emit_json(rm)
        return
    table("reward model", ["reward_model_id", "train pairs", "val pairs", "val accuracy", "train-val gap"],
          [(rm.reward_model_id, rm.train_pairs, rm.val_pairs, f"{rm.val_pairwise_accuracy:.3f}",
            f"{rm.train_val_gap:.3f}")])


@app.command("optimize")
@run
async def optimize(
    reward_model_id: str = typer.Option(..., "--reward-model-id", help="Registered REWARD_MODEL."),
    base_model_id: str = typer.Option(None, "--base-model-id", help="Registered base; default: the default base."),
    sft_model_id: str = typer.Option(None, "--sft-model-id", help="SFT LORA_ADAPTER to start from (online methods)."),
    algorithm: str = typer.Option("dpo", "--algorithm", help="dpo, grpo, rloo or ppo."),
    pairs_file: Path = PairsOpt,
    name: str = typer.Option(None, "--name", help="Registry name of the policy."),
    learning_rate: float = typer.Option(None, "--lr", help="Policy learning rate (default 5e-5)."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs over the pairs / prompts (default 1)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many steps (PPO: rollouts)."),
    max_kl: float = typer.Option(None, "--max-kl", help="KL budget to the reference (default 0.05, E7306 above)."),
    json_out: bool = JsonOpt,
) -> None:
    """Optimise a LoRA policy against the reward model and register it (guards: E7306, E7305)."""
    cfg = _config(algorithm=algorithm, learning_rate_policy=learning_rate, epochs=epochs, max_steps=max_steps,
                  max_kl_divergence=max_kl)
    pairs = _read_pairs(pairs_file)
    model = await _with_engine(lambda e: e.optimize_policy(base_model_id, reward_model_id, cfg, preference_pairs=pairs,
                                                           sft_model_id=sft_model_id, name=name))
    tm = model.metrics.get("training_metrics", {})
    if json_out:
        emit_json(model)
        return
    table("policy", ["model_id", "name", "version", "type", "reward before", "reward after", "val before", "val after",
                     "kl", "stopped"],
          [(model.model_id, model.name, model.version, model.model_type.value, f"{tm['reward_before']:.3f}",
            f"{tm['reward_after']:.3f}", f"{tm['validation_accuracy_before']:.3f}",
            f"{tm['validation_accuracy_after']:.3f}", f"{tm['kl']:.4f}", tm["stopped_reason"])])


@app.command("submit")
@run
async def submit(
    dataset_id: str = typer.Option(..., "--dataset-id", help="Dataset whose examples form the preference pairs."),
    base_model_id: str = typer.Option(None, "--base-model-id", help="Registered base; default: the default base."),
    reward_model_id: str = typer.Option(None, "--reward-model-id", help="Reuse a reward model; default: train one."),
    sft_model_id: str = typer.Option(None, "--sft-model-id", help="SFT LORA_ADAPTER to start from."),
    algorithm: str = typer.Option("dpo", "--algorithm", help="dpo, grpo, rloo or ppo."),
    name: str = typer.Option(None, "--name", help="Registry name of the policy."),
    stored_pairs: bool = typer.Option(
        False, "--stored-pairs", help="Train on the pairs imported with the dataset's examples (`l07 import "
        "openai-preference`) instead of pairs built from them by the §5.5 rules."),
    json_out: bool = JsonOpt,
) -> None:
    """Queue a durable RLHF job (progress, cancel and resume like SFT jobs: see ``l07 jobs``)."""
    cfg = _config(algorithm=algorithm)
    extra = {"rlhf": cfg.model_dump(mode="json"), "reward_model_id": reward_model_id, "sft_model_id": sft_model_id,
             "preference_pairs": "stored" if stored_pairs else None}
    job_config = JobConfig(model_name=name, extra={k: v for k, v in extra.items() if v is not None})
    async with services() as service:
        job = await service.sft_engine.start_training(dataset_id, base_model_id, job_config, job_type=JobType.RLHF)
    if json_out:
        emit_json(job)
    else:
        typer.echo(f"queued RLHF job {job.job_id} ({job.status.value})")


@app.command("check-loop")
@run
async def check_loop(
    name: str = typer.Argument(..., help="Model name (track) of the RLHF policies."),
    baseline: float = typer.Option(None, "--baseline", help="Baseline quality; default: the first model's start."),
    json_out: bool = JsonOpt,
) -> None:
    """Check the track for a negative feedback loop (E7402: exit code 2 and a critical alert when found)."""
    report = await _with_engine(lambda e: e.check_feedback_loop(name, baseline))
    if json_out:
        emit_json(asdict(report))
    else:
        typer.echo(f"{name}: no negative feedback loop ({len(report.model_qualities)} models checked)")
