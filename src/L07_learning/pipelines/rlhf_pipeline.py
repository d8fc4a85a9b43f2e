"""RLHF compute: a pairwise reward model, then preference optimisation of a LoRA policy (contract §5.5, §8 #27).

Phase 1, ``train_reward_model``: a sequence-classification head (``num_labels=1``) on the base model, trained with
TRL's ``RewardTrainer`` (pairwise loss); pairwise accuracy is measured on a held-out split and a train-val gap above
0.1 raises the E7301 warning.

Phase 2, ``optimize_policy``: ``RLHFConfig.algorithm`` picks offline DPO (TRL ``DPOTrainer``, default), GRPO or RLOO
(TRL, the reward model as reward function), or PPO (our own loop in ``ppo_loop``, since TRL 1.16 ships none). The
policy is a fresh LoRA adapter on top of the starting model (the base, or the base with an SFT adapter merged in);
the starting model with the adapter switched off is the frozen reference. A ``PolicyGuard`` checks, every
``guard_every_steps``, the mean per-token KL to the reference (over budget: restore the last good weights, stop,
E7306), and reward against held-out validation (reward up while validation falls: stop, E7305).

Held-out validation here is the policy's agreement with L06's judgements on held-out pairs: the share of pairs where
the policy gives the chosen answer a higher mean token log-probability than the rejected one.

Only ``models/`` is imported at module level; torch, transformers, peft and trl are imported inside functions.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.reward_signal import PreferencePair, RLHFConfig

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]

OVERFIT_GAP = 0.1
"""A reward model whose train accuracy beats its held-out accuracy by more than this raises E7301 (§5.5)."""


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


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class RewardScorer:
    """Scores (prompt, answer) pairs with a saved sequence-classification reward model (one scalar per answer)."""

    def __init__(self, model_dir: str | Path, batch_size: int = 16, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        self.tokenizer = load_tokenizer(model_dir)
        self.device = device or _device()
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


class _ControlCallback:
    """Bridges a TRL/transformers trainer to our progress report, cancellation and guard checks."""

    def __new__(cls, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        # Subclass TrainerCallback lazily so that importing this module does not import transformers.
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self, phase: str, progress: ProgressFn | None, should_stop: StopFn | None,
                         guard: "PolicyGuard | None") -> None:
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


def _training_args_common(out_dir: Path, epochs: int, batch_size: int, lr: float, seed: int,
                          max_steps: int | None) -> dict[str, Any]:
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
    _check_lengths(tokenizer, triplets, max_length)
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

    args = RewardConfig(**_training_args_common(out / "_trainer", epochs, batch_size, learning_rate, seed, None),
                        max_length=None, center_rewards_coefficient=None)
    control = _ControlCallback("reward_model", progress, should_stop, None)
    try:
        trainer = RewardTrainer(model=model, args=args, train_dataset=rows(train), processing_class=tokenizer,
                                peft_config=peft_config, callbacks=[control])
        _quiet(trainer)
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
    _rmtree(out / "_trainer")

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


def _quiet(trainer: Any) -> None:
    """Drop the trainer's stdout log printer: progress goes through our callback and the logger instead."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _check_lengths(tokenizer: Any, triplets: Sequence[Triplet], max_length: int) -> None:
    for i, t in enumerate(triplets):
        prompt = format_prompt(tokenizer, t.prompt)
        longest = max(len(tokenizer(prompt + t.chosen)["input_ids"]), len(tokenizer(prompt + t.rejected)["input_ids"]))
        if longest + 1 > max_length:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR, f"pair {i} has {longest} tokens > max_length {max_length}",
                           index=i, tokens=longest, max_length=max_length)


# --------------------------------------------------------------------------------------------------------------------
# Policy side


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
    policy.to(_device())
    return policy


def _completion_batch(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str],
                      device: str):  # type: ignore[no-untyped-def]
    """Right-padded prompt+completion ids and a mask over the positions that predict completion tokens."""
    import torch

    eos = tokenizer.eos_token or ""
    rows, masks = [], []
    for p, c in zip(prompts, completions, strict=True):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(c + eos, add_special_tokens=False)["input_ids"]
        rows.append(p_ids + c_ids)
        masks.append([0] * len(p_ids) + [1] * len(c_ids))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    comp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
        comp[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids.to(device), attn.to(device), comp.to(device)


class PolicyGuard:
    """Measures a policy against its reference and stops training on KL overrun (E7306) or reward hacking (E7305).

    ``measure()`` returns ``{kl, validation_accuracy, mean_reward}``:

    * ``kl``: mean per-token KL(policy ‖ reference) over the full vocabulary, on the answer tokens of held-out pairs;
    * ``validation_accuracy``: share of held-out pairs where the policy's mean answer log-probability ranks the
      chosen answer above the rejected one (agreement with L06);
    * ``mean_reward``: reward-model score of the policy's greedy answers to held-out prompts.

    ``check()`` records a measurement; on a KL overrun it restores the last good adapter weights ("previous
    checkpoint") and asks to stop; when reward is above its starting value while validation accuracy fell by more
    than the tolerance, it flags reward hacking and asks to stop.
    """

    def __init__(self, policy: Any, tokenizer: Any, scorer: RewardScorer, val_pairs: Sequence[Triplet],
                 val_prompts: Sequence[str], config: RLHFConfig) -> None:
        self.policy, self.tokenizer, self.scorer, self.config = policy, tokenizer, scorer, config
        self.val_pairs = list(val_pairs)
        self.val_prompts = [format_prompt(tokenizer, p) for p in val_prompts]
        self.every = config.guard_every_steps
        self.history: list[dict[str, float]] = []
        self.alerts: list[GuardAlert] = []
        self.stopped_reason = "completed"
        self.baseline: dict[str, float] | None = None
        self._good_state: dict[str, Any] | None = None
        self._good_step = 0

    # -- measurements -------------------------------------------------------------------------------------------
    def _token_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[Any, Any, Any]:
        import torch

        device = next(self.policy.parameters()).device
        ids, attn, comp = _completion_batch(self.tokenizer, prompts, completions, device)
        with torch.no_grad():
            logits = self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            with self.policy.disable_adapter():
                ref_logits = self.policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        mask = comp[:, 1:]
        return logits.log_softmax(-1), ref_logits.log_softmax(-1), (ids[:, 1:], mask)

    def measure(self) -> dict[str, float]:
        """One measurement of the current policy (see class docstring)."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            prompts = [format_prompt(self.tokenizer, p.prompt) for p in self.val_pairs]
            kl_sum, kl_tokens, mean_lp = 0.0, 0, {}
            for key in ("chosen", "rejected"):
                logp, ref_logp, (targets, mask) = self._token_logprobs(prompts, [getattr(p, key) for p in self.val_pairs])
                kl = (logp.exp() * (logp - ref_logp)).sum(-1)
                kl_sum += float((kl * mask).sum())
                kl_tokens += int(mask.sum())
                tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                mean_lp[key] = ((tok_lp * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
            agree = sum(c > r for c, r in zip(mean_lp["chosen"], mean_lp["rejected"], strict=True))
            answers = greedy_answers(self.policy, self.tokenizer, self.val_prompts, self.config.max_new_tokens)
            rewards = self.scorer.score_formatted(self.val_prompts, answers)
        finally:
            if was_training:
                self.policy.train()
        return {
            "kl": kl_sum / max(1, kl_tokens),
            "validation_accuracy": agree / max(1, len(self.val_pairs)),
            "mean_reward": sum(rewards) / max(1, len(rewards)),
        }

    # -- guard ----------------------------------------------------------------------------------------------------
    def start(self) -> dict[str, float]:
        """Measure the starting policy (the baseline) and remember its weights as the first good state."""
        self.baseline = self.measure()
        self._snapshot(0)
        return self.baseline

    def _snapshot(self, step: int) -> None:
        self._good_state = {n: p.detach().clone() for n, p in self.policy.named_parameters() if p.requires_grad}
        self._good_step = step

    def _restore(self) -> None:
        import torch

        assert self._good_state is not None
        with torch.no_grad():
            for n, p in self.policy.named_parameters():
                if n in self._good_state:
                    p.copy_(self._good_state[n])

    def check(self, step: int) -> bool:
        """Measure at ``step``; returns True when training must stop."""
        assert self.baseline is not None, "call start() first"
        m = self.measure()
        m["step"] = float(step)
        self.history.append(m)
        log.info("guard step %d: kl %.4f val_acc %.3f reward %.3f", step, m["kl"], m["validation_accuracy"],
                 m["mean_reward"])
        if m["kl"] > self.config.max_kl_divergence:
            self._restore()
            self.alerts.append(GuardAlert(
                L07ErrorCode.POLICY_DIVERGENCE_THRESHOLD_EXCEEDED.value,
                f"mean KL {m['kl']:.4f} > {self.config.max_kl_divergence}; weights of step {self._good_step} restored",
                step, {"kl": m["kl"], "max_kl_divergence": self.config.max_kl_divergence,
                       "restored_step": self._good_step}))
            self.stopped_reason = "kl_exceeded"
            return True
        reward_up = m["mean_reward"] > self.baseline["mean_reward"]
        val_down = m["validation_accuracy"] < self.baseline["validation_accuracy"] - self.config.validation_tolerance
        if reward_up and val_down:
            self.alerts.append(GuardAlert(
                L07ErrorCode.REWARD_HACKING_DETECTED.value,
                "reward rose while held-out validation fell",
                step, {"baseline": self.baseline, "now": m}))
            self.stopped_reason = "reward_hacking"
            return True
        self._snapshot(step)
        return False


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


def optimize_policy(
    base_model_dir: str | Path,
    reward_model_dir: str | Path,
    train_pairs: Sequence[PreferencePair | Triplet | dict[str, Any]],
    val_pairs: Sequence[PreferencePair | Triplet | dict[str, Any]],
    out_dir: str | Path,
    config: RLHFConfig | None = None,
    *,
    sft_adapter_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
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
    import math

    config = config or RLHFConfig()
    started = time.perf_counter()
    train = as_triplets(train_pairs)
    val = as_triplets(val_pairs)
    if not train or not val:
        raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, "need training and held-out preference pairs",
                       train=len(train), val=len(val))
    out = Path(out_dir)
    tokenizer = load_tokenizer(base_model_dir)
    _check_lengths(tokenizer, train + val, config.max_length)
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
            from .rlhf.ppo import run_ppo

            train_metrics = run_ppo(policy, tokenizer, scorer, [format_prompt(tokenizer, t.prompt) for t in train],
                                    config, guard=guard, progress=progress, should_stop=should_stop)
            cancelled = bool(train_metrics.get("cancelled"))
            steps = int(train_metrics.get("iterations", 0))
            if train_metrics.get("stopped") == "plateau":
                guard.stopped_reason = "plateau"
        else:
            trainer = _trl_trainer(config, policy, tokenizer, scorer, train, out)
            control = _ControlCallback("policy", progress, should_stop, guard)
            trainer.add_callback(control)
            _quiet(trainer)
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
    _rmtree(out / "_trainer")
    return PolicyResult(algorithm=config.algorithm, adapter_dir=str(adapter_dir),
                        merged_dir=str(merged_dir) if merged_dir else None, steps=steps,
                        before=before, after={k: v for k, v in after.items() if k != "step"},
                        history=guard.history, stopped_reason=guard.stopped_reason,
                        wall_s=time.perf_counter() - started, train_metrics=train_metrics, alerts=guard.alerts)


def _trl_trainer(config: RLHFConfig, policy: Any, tokenizer: Any, scorer: RewardScorer, train: list[Triplet],
                 out: Path):  # type: ignore[no-untyped-def]
    """The TRL trainer for DPO, GRPO or RLOO over our PeftModel (adapter off = reference)."""
    from datasets import Dataset

    common = _training_args_common(out / "_trainer", config.epochs, config.batch_size, config.learning_rate_policy,
                                   config.seed, config.max_steps)
    prompts = [format_prompt(tokenizer, t.prompt) for t in train]
    if config.algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_list([{"prompt": p, "chosen": t.chosen, "rejected": t.rejected}
                                  for p, t in zip(prompts, train, strict=True)])
        args = DPOConfig(**common, beta=config.dpo_beta, max_length=config.max_length)
        return DPOTrainer(model=policy, args=args, train_dataset=data, processing_class=tokenizer)

    def reward_fn(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return scorer.score_formatted(prompts, completions)

    reward_fn.__name__ = "reward_model"
    data = Dataset.from_list([{"prompt": p} for p in prompts])
    # TRL needs the generation batch to be a multiple of num_generations: one prompt group per device batch at least.
    batch = max(config.batch_size, config.num_generations)
    batch -= batch % config.num_generations
    online = dict(common, per_device_train_batch_size=batch, num_generations=config.num_generations,
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


def entry(spec: dict[str, Any], emit: Callable[[str, dict[str, Any]], None], should_cancel: StopFn) -> dict[str, Any]:
    """Job-runner entry point for ``JobType.RLHF`` (see ``services/jobs/runner.py``).

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
