"""What the RLHF components share: the pair and result types, tokenizer and prompt helpers, trainer plumbing.

Only ``models/`` is imported at module level; torch, transformers and datasets are imported inside functions.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import PreferencePair

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


class StepGuard(Protocol):
    """What a trainer callback needs of a guard: how often to ask, and whether training must stop."""

    every: int

    def check(self, step: int) -> bool: ...


@dataclass
class Triplet:
    """One preference pair as the pipelines see it: raw prompt, better answer, worse answer."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class GuardAlert:
    """A guard or quality alert raised during training (code, message, step, measurements)."""

    code: str
    message: str
    step: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardTrainResult:
    """What ``train_reward_model`` produced and measured."""

    model_dir: str
    train_pairs: int
    val_pairs: int
    train_accuracy: float
    val_accuracy: float
    train_val_gap: float
    loss_curve: list[float]
    wall_s: float
    alerts: list[GuardAlert] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PolicyResult:
    """What ``optimize_policy`` produced and measured (``before`` = the starting policy, ``after`` = the result)."""

    algorithm: str
    adapter_dir: str
    merged_dir: str | None
    steps: int
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]]
    stopped_reason: str
    wall_s: float
    train_metrics: dict[str, Any] = field(default_factory=dict)
    alerts: list[GuardAlert] = field(default_factory=list)

    @property
    def reward_gain(self) -> float:
        return self.after["mean_reward"] - self.before["mean_reward"]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reward_gain"] = self.reward_gain
        return out


def as_triplets(pairs: Sequence[PreferencePair | Triplet | dict[str, Any]]) -> list[Triplet]:
    """Normalise ``PreferencePair`` objects or ``{prompt, chosen, rejected}`` dicts into ``Triplet`` objects.

    Raises:
        L07Error: E7110 when a pair lacks a field or an answer is empty.
    """
    out: list[Triplet] = []
    for i, p in enumerate(pairs):
        if isinstance(p, Triplet):
            out.append(p)
            continue
        d = p.model_dump() if isinstance(p, PreferencePair) else dict(p)
        try:
            t = Triplet(str(d["prompt"]), str(d["chosen"]), str(d["rejected"]))
        except KeyError as exc:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"pair {i} lacks {exc}", index=i) from None
        if not (t.prompt.strip() and t.chosen.strip() and t.rejected.strip()):
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"pair {i} has an empty field", index=i)
        out.append(t)
    return out


def split_pairs(pairs: Sequence[Triplet], validation_split: float, seed: int) -> tuple[list[Triplet], list[Triplet]]:
    """Shuffle deterministically and hold out ``validation_split`` of the pairs (at least one each side).

    Raises:
        L07Error: E7300 with fewer than 2 pairs.
    """
    if len(pairs) < 2:
        raise L07Error(L07ErrorCode.REWARD_MODEL_TRAINING_FAILURE, "need at least 2 preference pairs", pairs=len(pairs))
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_val = min(len(shuffled) - 1, max(1, round(len(shuffled) * validation_split)))
    return shuffled[n_val:], shuffled[:n_val]


def load_tokenizer(model_dir: str | Path):  # type: ignore[no-untyped-def]
    """The model's tokenizer with a pad token set (the EOS token when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def format_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model sees it before its answer: the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_lengths(tokenizer: Any, triplets: Sequence[Triplet], max_length: int) -> None:
    """Reject, never drop, a pair whose prompt plus either answer (and EOS) exceeds ``max_length`` tokens.

    Raises:
        L07Error: E7037 naming the first pair too long.
    """
    for i, t in enumerate(triplets):
        prompt = format_prompt(tokenizer, t.prompt)
        longest = max(len(tokenizer(prompt + t.chosen)["input_ids"]), len(tokenizer(prompt + t.rejected)["input_ids"]))
        if longest + 1 > max_length:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR, f"pair {i} has {longest} tokens > max_length {max_length}",
                           index=i, tokens=longest, max_length=max_length)


def greedy_answers(model: Any, tokenizer: Any, formatted_prompts: Sequence[str], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Deterministic greedy answers (left-padded batches), decoded without special tokens."""
    import torch

    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for i in range(0, len(formatted_prompts), batch_size):
            enc = tokenizer(list(formatted_prompts[i : i + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return out


class ControlCallback:
    """Bridges a TRL/transformers trainer to our progress report, cancellation and guard checks."""

    def __new__(cls, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        # Subclass TrainerCallback lazily so that importing this module does not import transformers.
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self, phase: str, progress: ProgressFn | None, should_stop: StopFn | None,
                         guard: StepGuard | None) -> None:
                self.phase, self.progress, self.should_stop, self.guard = phase, progress, should_stop, guard
                self.losses: list[float] = []
                self.cancelled = False

            def on_log(self, args, state, control, logs=None, **kw):  # type: ignore[no-untyped-def]
                if logs and "loss" in logs:
                    self.losses.append(float(logs["loss"]))

            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                if self.progress is not None:
                    self.progress({"phase": self.phase, "step": state.global_step, "max_steps": state.max_steps,
                                   "epoch": float(state.epoch or 0.0),
                                   "loss": self.losses[-1] if self.losses else None})
                if self.should_stop is not None and self.should_stop():
                    self.cancelled = True
                    control.should_training_stop = True
                    return control
                if self.guard is not None and state.global_step % self.guard.every == 0:
                    if self.guard.check(state.global_step):
                        control.should_training_stop = True
                return control

        return Callback(*args, **kwargs)


def training_args(out_dir: Path, epochs: int, batch_size: int, lr: float, seed: int,
                  max_steps: int | None) -> dict[str, Any]:
    """The ``TrainingArguments`` fields every TRL trainer here shares (constant LR, no saving, our own logging)."""
    import torch

    return {
        "output_dir": str(out_dir),
        "num_train_epochs": epochs,
        "max_steps": max_steps if max_steps else -1,
        "per_device_train_batch_size": batch_size,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
    }


def quiet(trainer: Any) -> None:
    """Drop the trainer's stdout log printer: progress goes through our callback and the logger instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def remove_scratch(path: Path) -> None:
    """Delete a trainer's scratch folder; a folder already gone is fine."""
    shutil.rmtree(path, ignore_errors=True)
