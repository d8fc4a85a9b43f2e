"""RLHF recipe: a pairwise reward model, then preference optimisation of a LoRA policy (contract §5.5, §8 #27).

Phase 1 is ``rlhf.reward_model.train_reward_model`` (TRL's ``RewardTrainer``, E7301 on a train-val gap).

Phase 2, ``optimize_policy``: ``RLHFConfig.algorithm`` picks offline DPO (TRL ``DPOTrainer``, default), GRPO or RLOO
(TRL, the reward model as reward function), or PPO (our own loop in ``rlhf.ppo``, since TRL 1.16 ships none). The
policy is a fresh LoRA adapter on top of the starting model (the base, or the base with an SFT adapter merged in);
the starting model with the adapter switched off is the frozen reference. ``rlhf.guard.PolicyGuard`` checks, every
``guard_every_steps``, the mean per-token KL to the reference (over budget: restore the last good weights, stop,
E7306), and reward against held-out validation (reward up while validation falls: stop, E7305).

``entry`` runs both phases in a job's child process. The components under ``rlhf/`` never import this module.
Only ``models/`` and ``rlhf/`` are imported at module level; torch, transformers, peft and trl inside functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.reward_signal import PreferencePair, RLHFConfig
from .rlhf import common
from .rlhf.common import PolicyResult, Triplet, as_triplets, format_prompt, load_tokenizer, split_pairs
from .rlhf.guard import PolicyGuard
from .rlhf.ppo import run_ppo
from .rlhf.reward_model import RewardScorer, train_reward_model

# The recipe's own functions, and the component functions that services and test helpers reach through it.
__all__ = [
    "entry", "format_prompt", "load_policy", "load_tokenizer", "optimize_policy", "split_pairs", "train_reward_model",
]


def load_policy(base_model_dir: str | Path, config: RLHFConfig,
                sft_adapter_dir: str | Path | None = None):  # type: ignore[no-untyped-def]
    """The starting policy as a ``PeftModel`` with a fresh, trainable LoRA adapter.

    The base model (with the SFT adapter merged in when given) is the frozen reference: switching the new adapter
    off (``disable_adapter()``) gives it back exactly.

    Raises:
        L07Error: E7032 base model, E7604 SFT adapter, E7036 target modules that do not resolve.
    """
    import torch
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(config.seed)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_model_dir))
    except (OSError, ValueError) as exc:
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load {base_model_dir}: {exc}") from exc
    if sft_adapter_dir is not None:
        try:
            model = PeftModel.from_pretrained(model, str(sft_adapter_dir)).merge_and_unload()
        except (OSError, ValueError) as exc:
            raise L07Error(L07ErrorCode.ADAPTER_LOADING_FAILURE, f"cannot load SFT adapter: {exc}") from exc
    targets: Any = config.target_modules or "all-linear"
    if config.target_modules:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = sorted(set(config.target_modules) - names)
        if missing:
            raise L07Error(L07ErrorCode.LORA_ADAPTER_CONFIG_INVALID, f"target modules not in the model: {missing}",
                           missing=missing)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_rank, lora_alpha=config.lora_alpha,
                      lora_dropout=0.0, target_modules=targets)
    policy = get_peft_model(model, lora)
    policy.to(common.default_device())
    return policy

def optimize_policy(
    base_model_dir: str | Path,
    reward_model_dir: str | Path,
    train_pairs: Sequence[PreferencePair | Triplet | dict[str, Any]],
    val_pairs: Sequence[PreferencePair | Triplet | dict[str, Any]],
    out_dir: str | Path,
    config: RLHFConfig | None = None,
    *,
    sft_adapter_dir: str | Path | None = None,
    progress: common.ProgressFn | None = None,
    should_stop: common.StopFn | None = None,
) -> PolicyResult:
    """Optimise a LoRA policy against preferences / a reward model, with KL and reward-hacking guards.

    Args:
        base_model_dir: Causal-LM folder of the base model.
        reward_model_dir: Folder written by ``train_reward_model``.
        train_pairs: Training preferences (DPO uses the pairs; GRPO/RLOO/PPO use their prompts).
        val_pairs: Held-out pairs: their prompts measure reward, the pairs measure validation accuracy and KL.
        out_dir: ``adapter/`` (always) and ``merged/`` (when starting from an SFT adapter) are written here.
        config: ``RLHFConfig`` (defaults: DPO).
        sft_adapter_dir: SFT LoRA adapter to start from (recommended for online methods: an untrained policy earns
            flat rewards and never learns).
        progress: Called after each optimizer step / PPO rollout.
        should_stop: Polled after each step; True stops training (``stopped_reason = "cancelled"``).

    Returns:
        ``PolicyResult`` with before/after measurements, guard history and alerts (E7306 KL, E7305 hacking).

    Raises:
        L07Error: E7032/E7604/E7036 loading; E7303 when training itself fails (loss not finite, trainer error).
    """
    config = config or RLHFConfig()
    started = time.perf_counter()
    train = as_triplets(train_pairs)
    val = as_triplets(val_pairs)
    if not train or not val:
        raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, "need training and held-out preference pairs",
                       train=len(train), val=len(val))
    out = Path(out_dir)
    tokenizer = load_tokenizer(base_model_dir)
    common.check_lengths(tokenizer, train + val, config.max_length)
    policy = load_policy(base_model_dir, config, sft_adapter_dir)
    scorer = RewardScorer(reward_model_dir)
    guard = PolicyGuard(policy, tokenizer, scorer, val, [p.prompt for p in val], config)
    before = guard.start()
    if progress is not None:
        progress({"phase": "policy", "step": 0, "baseline": before})

    train_metrics: dict[str, Any]
    cancelled = False
    try:
        if config.algorithm == "ppo":
            train_metrics = run_ppo(policy, tokenizer, scorer, [format_prompt(tokenizer, t.prompt) for t in train],
                                    config, guard=guard, progress=progress, should_stop=should_stop)
            cancelled = bool(train_metrics.get("cancelled"))
            steps = int(train_metrics.get("iterations", 0))
            if train_metrics.get("stopped") == "plateau":
                guard.stopped_reason = "plateau"
        else:
            trainer = _trl_trainer(config, policy, tokenizer, scorer, train, out)
            control = common.ControlCallback("policy", progress, should_stop, guard)
            trainer.add_callback(control)
            common.quiet(trainer)
            trainer.train()
            cancelled = control.cancelled
            steps = trainer.state.global_step
            train_metrics = {"loss_curve": control.losses}
    except L07Error:
        raise
    except Exception as exc:  # noqa: BLE001 - trainer failures surface as the RLHF instability code
        raise L07Error(L07ErrorCode.PPO_TRAINING_INSTABILITY, f"{config.algorithm} training failed: {exc}") from exc
    losses = train_metrics.get("loss_curve") or []
    if losses and not all(math.isfinite(x) for x in losses):
        raise L07Error(L07ErrorCode.PPO_TRAINING_INSTABILITY, "loss became NaN or infinite", algorithm=config.algorithm)

    if cancelled:
        guard.stopped_reason = "cancelled"
    elif guard.stopped_reason in {"completed", "plateau"} and (not guard.history or guard.history[-1]["step"] != steps):
        guard.check(steps)  # the final weights must pass the same guard as every intermediate one
    after = guard.measure() if guard.stopped_reason == "kl_exceeded" else (guard.history[-1] if guard.history else before)
    adapter_dir = out / "adapter"
    policy.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    merged_dir = None
    if sft_adapter_dir is not None:
        merged_dir = out / "merged"
        policy.merge_and_unload().save_pretrained(str(merged_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(merged_dir))
    common.remove_scratch(out / "_trainer")
    return PolicyResult(algorithm=config.algorithm, adapter_dir=str(adapter_dir),
                        merged_dir=str(merged_dir) if merged_dir else None, steps=steps,
                        before=before, after={k: v for k, v in after.items() if k != "step"},
                        history=guard.history, stopped_reason=guard.stopped_reason,
                        wall_s=time.perf_counter() - started, train_metrics=train_metrics, alerts=guard.alerts)


def dpo_loss(config: RLHFConfig) -> dict[str, Any]:
    """TRL's loss settings for DPO: the preference (sigmoid) loss, plus the NLL on the chosen answer when weighted."""
    if config.dpo_sft_weight <= 0:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.dpo_sft_weight]}


def _trl_trainer(config: RLHFConfig, policy: Any, tokenizer: Any, scorer: RewardScorer, train: list[Triplet],
                 out: Path):  # type: ignore[no-untyped-def]
    """The TRL trainer for DPO, GRPO or RLOO over our PeftModel (adapter off = reference)."""
    from datasets import Dataset

    shared = common.training_args(out / "_trainer", config.epochs, config.batch_size, config.learning_rate_policy,
                                  config.seed, config.max_steps)
    prompts = [format_prompt(tokenizer, t.prompt) for t in train]
    if config.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list([{"prompt": p, "chosen": t.chosen, "rejected": t.rejected}
                                  for p, t in zip(prompts, train, strict=True)])
        args = DPOConfig(**shared, beta=config.dpo_beta, max_length=config.max_length, **dpo_loss(config))
        return DPOTrainer(model=policy, args=args, train_dataset=data, processing_class=tokenizer)

    def reward_fn(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return scorer.score_formatted(prompts, completions)

    reward_fn.__name__ = "reward_model"
    data = Dataset.from_list([{"prompt": p} for p in prompts])
    # TRL needs the generation batch to be a multiple of num_generations: one prompt group per device batch at least.
    batch = max(config.batch_size, config.num_generations)
    batch -= batch % config.num_generations
    online = dict(shared, per_device_train_batch_size=batch, num_generations=config.num_generations,
                  max_completion_length=config.max_new_tokens, beta=config.kl_penalty_coeff)
    if config.algorithm == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOTrainer(model=policy, reward_funcs=[reward_fn], args=GRPOConfig(**online), train_dataset=data,
                           processing_class=tokenizer)
    if config.algorithm == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        return RLOOTrainer(model=policy, reward_funcs=[reward_fn], args=RLOOConfig(**online), train_dataset=data,
                           processing_class=tokenizer)
    raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"unknown algorithm {config.algorithm!r}")


def entry(spec: dict[str, Any], emit: Callable[[str, dict[str, Any]], None],
          should_cancel: common.StopFn) -> dict[str, Any]:
    """Job-runner entry point for ``JobType.RLHF`` (table in ``services/jobs/kinds.py``).

    Args:
        spec: ``base_model_dir``, ``reward_model_dir`` (None: train one first), ``sft_adapter_dir``, ``train_pairs``,
            ``val_pairs``, ``rlhf`` (RLHFConfig dict), ``output_dir``.
        emit: ``emit(kind, payload)``; ``step`` events carry the phase (``reward_model`` / ``policy``).
        should_cancel: Cooperative cancellation check.

    Returns:
        ``{"adapter_dir", "metrics", "cancelled", "reward_model", "policy"}`` (the last two as plain dicts).
    """
    config = RLHFConfig.model_validate(spec["rlhf"])
    out = Path(spec["output_dir"])
    train, val = as_triplets(spec["train_pairs"]), as_triplets(spec["val_pairs"])
    def step(payload: dict[str, Any]) -> None:
        # The runner's step events carry step, total_steps, epoch and a finite loss; other reports go as evals.
        if payload.get("loss") is None:
            emit("eval", payload)
            return
        emit("step", {**payload, "total_steps": payload.get("max_steps") or 0, "epoch": payload.get("epoch", 0.0)})

    reward_dict = None
    reward_dir = spec.get("reward_model_dir")
    if reward_dir is None:
        try:
            rm = train_reward_model(spec["base_model_dir"], train + val, out / "reward_model",
                                    epochs=config.reward_training_epochs, learning_rate=config.reward_learning_rate,
                                    validation_split=config.reward_validation_split,
                                    batch_size=config.reward_batch_size, lora_rank=config.reward_lora_rank,
                                    max_length=config.max_length, seed=config.seed, progress=step,
                                    should_stop=should_cancel)
        except L07Error as exc:
            if exc.details.get("cancelled"):
                return {"adapter_dir": None, "metrics": {}, "cancelled": True, "reward_model": None, "policy": None}
            raise
        emit("eval", {"phase": "reward_model", "val_pairwise_accuracy": rm.val_accuracy,
                      "train_pairwise_accuracy": rm.train_accuracy})
        reward_dict, reward_dir = rm.to_dict(), rm.model_dir
    result = optimize_policy(spec["base_model_dir"], reward_dir, train, val, out / "policy", config,
                             sft_adapter_dir=spec.get("sft_adapter_dir"), progress=step, should_stop=should_cancel)
    emit("eval", {"phase": "policy", **{f"after_{k}": v for k, v in result.after.items()},
                  "reward_gain": result.reward_gain})
    metrics = {"reward_before": result.before["mean_reward"], "reward_after": result.after["mean_reward"],
               "reward_gain": result.reward_gain, "eval_accuracy": result.after["validation_accuracy"],
               "kl": result.after["kl"], "stopped_reason": result.stopped_reason, "steps": result.steps,
               "global_step": result.steps,
               # The runner's sanity check needs a finite loss: the last policy loss (E7303 earlier if not finite).
               "train_loss": losses[-1] if (losses := result.train_metrics.get("loss_curve")) else None,
               "base_accuracy": result.before["validation_accuracy"]}
    return {"adapter_dir": result.merged_dir or result.adapter_dir, "metrics": metrics,
            "cancelled": result.stopped_reason == "cancelled", "reward_model": reward_dict, "policy": result.to_dict()}
