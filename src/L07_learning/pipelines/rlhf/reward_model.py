"""Phase 1 of RLHF: a pairwise reward model and the scorer that reads it (contract §5.5).

``train_reward_model`` puts a sequence-classification head (``num_labels=1``) on the base model and trains it with
TRL's ``RewardTrainer`` (pairwise loss); pairwise accuracy is measured on a held-out split and a train-val gap above
``OVERFIT_GAP`` raises the E7301 warning. ``RewardScorer`` loads the saved model and scores answers; the guard, PPO and
the online TRL trainers all score through it.

Only ``models/`` is imported at module level; torch, transformers, peft, trl and datasets inside functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import PreferencePair
from .common import (
    ControlCallback,
    GuardAlert,
    ProgressFn,
    RewardTrainResult,
    StopFn,
    Triplet,
    as_triplets,
    check_lengths,
    default_device,
    format_prompt,
    load_tokenizer,
    quiet,
    remove_scratch,
    split_pairs,
    training_args,
)

log = logging.getLogger(__name__)

OVERFIT_GAP = 0.1
"""A reward model whose train accuracy beats its held-out accuracy by more than this raises E7301 (§5.5)."""


class RewardScorer:
    """Scores (prompt, answer) pairs with a saved sequence-classification reward model (one scalar per answer)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.tokenizer = load_tokenizer(model_dir)
        self.device = device or default_device()
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=1)
        except (OSError, ValueError) as exc:
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load reward model: {exc}") from exc
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self._torch = torch

    def score_formatted(self, formatted_prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Rewards for answers to prompts that are already chat-formatted (EOS appended as in training)."""
        eos = self.tokenizer.eos_token or ""
        texts = [p + c + ("" if c.endswith(eos) else eos) for p, c in zip(formatted_prompts, completions, strict=True)]
        out: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True)
            with self._torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
            out.extend(float(x) for x in logits[:, 0].float().cpu())
        return out

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Rewards for answers to raw prompts."""
        return self.score_formatted([format_prompt(self.tokenizer, p) for p in prompts], completions)

    def pairwise_accuracy(self, pairs: Sequence[Triplet]) -> float:
        """Share of pairs whose chosen answer scores strictly above the rejected one."""
        if not pairs:
            return 0.0
        chosen = self.score([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = self.score([p.prompt for p in pairs], [p.rejected for p in pairs])
        return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def train_reward_model(
    base_model_dir: str | Path,
    pairs: Sequence[PreferencePair | Triplet | dict[str, Any]],
    out_dir: str | Path,
    *,
    epochs: int = 5,
    learning_rate: float = 1e-4,
    validation_split: float = 0.2,
    batch_size: int = 8,
    lora_rank: int | None = 16,
    max_length: int = 1024,
    seed: int = 42,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> RewardTrainResult:
    """Train a pairwise reward model with TRL's ``RewardTrainer`` and measure held-out pairwise accuracy.

    Args:
        base_model_dir: A causal-LM folder (config, weights, tokenizer); its body gets a 1-output score head.
        pairs: Preference pairs (``PreferencePair``, ``Triplet`` or ``{prompt, chosen, rejected}``).
        out_dir: Where the merged reward model (plain ``...ForSequenceClassification`` folder) is saved.
        epochs: Training epochs (contract default 5).
        learning_rate: Contract default 1e-4.
        validation_split: Held-out share (contract default 0.2).
        batch_size: Pairs per step.
        lora_rank: LoRA rank (score head fully trained); ``None`` trains every weight (tiny models).
        max_length: Longest prompt+answer in tokens; longer pairs are rejected with E7037 (never dropped silently).
        seed: Split and training seed.
        progress: Called after each optimizer step with ``{phase, step, max_steps, loss}``.
        should_stop: Polled after each step; True cancels (E7300 is *not* raised; the result is not saved).

    Returns:
        ``RewardTrainResult``; ``alerts`` holds E7301 when the train-val gap exceeds 0.1.

    Raises:
        L07Error: E7300 when there are too few pairs, training fails or is cancelled; E7032 when the base model does
            not load; E7037 for pairs over ``max_length``.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    started = time.perf_counter()
    triplets = as_triplets(pairs)
    train, val = split_pairs(triplets, validation_split, seed)
    out = Path(out_dir)
    tokenizer = load_tokenizer(base_model_dir)
    check_lengths(tokenizer, triplets, max_length)
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(base_model_dir), num_labels=1)
    except (OSError, ValueError) as exc:
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load {base_model_dir}: {exc}") from exc
    model.config.pad_token_id = tokenizer.pad_token_id
    peft_config = None
    if lora_rank is not None:
        from peft import LoraConfig, TaskType

        peft_config = LoraConfig(task_type=TaskType.SEQ_CLS, r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                 target_modules="all-linear", modules_to_save=["score"])

    def rows(ts: list[Triplet]) -> Dataset:
        return Dataset.from_list([{"prompt": format_prompt(tokenizer, t.prompt), "chosen": t.chosen,
                                   "rejected": t.rejected} for t in ts])

    args = RewardConfig(**training_args(out / "_trainer", epochs, batch_size, learning_rate, seed, None),
                        max_length=None, center_rewards_coefficient=None)
    control = ControlCallback("reward_model", progress, should_stop, None)
    try:
        trainer = RewardTrainer(model=model, args=args, train_dataset=rows(train), processing_class=tokenizer,
                                peft_config=peft_config, callbacks=[control])
        quiet(trainer)
        trainer.train()
    except L07Error:
        raise
    except Exception as exc:  # noqa: BLE001 - any trainer failure is E7300 for the caller
        raise L07Error(L07ErrorCode.REWARD_MODEL_TRAINING_FAILURE, f"reward training failed: {exc}") from exc
    if control.cancelled:
        raise L07Error(L07ErrorCode.REWARD_MODEL_TRAINING_FAILURE, "reward model training cancelled", cancelled=True)
    trained = trainer.model
    if lora_rank is not None:
        trained = trained.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    remove_scratch(out / "_trainer")

    scorer = RewardScorer(out, batch_size=max(batch_size, 16))
    train_acc = scorer.pairwise_accuracy(train)
    val_acc = scorer.pairwise_accuracy(val)
    gap = train_acc - val_acc
    alerts: list[GuardAlert] = []
    if gap > OVERFIT_GAP:
        alerts.append(GuardAlert(L07ErrorCode.REWARD_MODEL_OVERFITTING.value,
                                 f"train-val accuracy gap {gap:.3f} > {OVERFIT_GAP}",
                                 details={"train_accuracy": train_acc, "val_accuracy": val_acc}))
        log.warning("E7301 reward model overfits: train %.3f, val %.3f", train_acc, val_acc)
    return RewardTrainResult(model_dir=str(out), train_pairs=len(train), val_pairs=len(val), train_accuracy=train_acc,
                             val_accuracy=val_acc, train_val_gap=gap, loss_curve=control.losses,
                             wall_s=time.perf_counter() - started, alerts=alerts)
