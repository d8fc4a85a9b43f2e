"""Supervised LoRA fine-tuning: chat conversations -> token ids with an assistant mask -> TRL SFTTrainer + peft ->
adapter.

``run_sft`` is a pure function of its inputs (base model folder, rows, ``JobConfig``, output folders, callbacks); it
touches no database. The job runner calls it in a child process through :func:`entry`.

A row is an agent's conversation (``models/tool_calls.Row``): messages with assistant ``tool_calls`` and ``tool``
turns, and the tool schemas offered. It is rendered through the one tool-call format (``render_chat``) and the loss
falls on the assistant turns only (every tool call and the answer; never the system prompt, the goal or a tool's
result): :func:`tokenize_row` builds TRL's ``completion_mask`` over those turns, which ``completion_only_loss`` turns
into labels. (TRL's ``assistant_only_loss`` would need ``{% generation %}`` markers that SmolLM2's template lacks.)
Tokenizers without a chat template get the ``### Input:`` / ``### Output:`` framing (contract §1.10).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.training_job import JobConfig
from ..models.tool_calls import Row, assistant_text, assistant_turns, render_chat, split_row
from .generation import generate_with
from .lora_targets import resolve_target_modules
from .matching import match_mode_for, score_answer
from .planned_epochs import follow_plan, planned_stream

log = logging.getLogger(__name__)

Messages = Row
CHECKPOINT_PREFIX = "checkpoint-"
# Generation-based accuracy is measured on at most this many test examples (bounded time; enough to see learning).
MAX_GENERATION_EVAL = 64
# The no-improvement verdict: the tuned model must answer more held-out examples correctly than its base, and the
# examples it gets right that the base gets wrong must outnumber the reverse beyond chance (one-sided sign test).
IMPROVEMENT_P_VALUE = 0.05
# Without a held-out score, the eval loss must fall by at least this fraction of its value before training.
MIN_EVAL_LOSS_GAIN = 0.01


@dataclass
class SFTCallbacks:
    """Hooks the caller uses to observe and steer a run. All optional; all called in the training process.

    Attributes:
        on_step: ``{"step", "total_steps", "epoch", "loss", "learning_rate", "tokens_seen", "elapsed_s"}`` per logged step.
        on_eval: ``{"step", "epoch", "eval_loss", ...}`` after each evaluation.
        on_checkpoint: ``(path, step)`` after a checkpoint is written.
        should_cancel: Polled after every optimizer step; returning True stops training within that step.
        on_train_end: Called on every rank with the trained (peft) model when training ends.
    """

    on_step: Callable[[dict[str, Any]], None] | None = None
    on_eval: Callable[[dict[str, Any]], None] | None = None
    on_checkpoint: Callable[[str, int], None] | None = None
    should_cancel: Callable[[], bool] | None = None
    on_train_end: Callable[[Any], None] | None = None


@dataclass
class SFTResult:
    """What a run produced.

    Attributes:
        adapter_dir: Folder with ``adapter_config.json`` + ``adapter_model.safetensors`` (+ tokenizer); None when
            cancelled.
        metrics: ``train_loss``, ``eval_loss``, ``initial_eval_loss``, ``test_loss``, ``eval_accuracy``,
            ``base_accuracy``, ``improvement_vs_baseline``, ``loss_curve``, ``tokens_seen``, ``tokens_per_second``,
            ``examples_per_second``, ``duration_seconds``, ``global_step``, ``resumed_from_step``, ``stopped_early``.
        cancelled: True when ``should_cancel`` stopped the run.
    """

    adapter_dir: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False


def tokenize_row(row: Row, tokenizer: Any) -> dict[str, list[int]]:
    """One conversation as token ids with a mask over every assistant turn (TRL's ``completion_mask``, which its
    ``completion_only_loss`` turns into labels): the model learns what the agent's model said (tool calls, the
    answer) and never the system prompt, the goal or a tool's result.

    The conversation is rendered turn by turn through ``models/tool_calls.render_chat`` (the template serving and
    evaluation use): an assistant turn is the text a render through that turn adds to the render up to it with the
    generation prompt, so its end-of-turn token is learned too. Without a chat template the ``### Input:`` framing
    holds everything but the last assistant turn, which is learned with the end-of-sequence token.

    Raises:
        L07Error: E7031 when the conversation does not end with a non-empty assistant turn.
    """
    messages, tools = split_row(row)
    last = messages[-1] if messages else {}
    if last.get("role") != "assistant" or not (last.get("content") or last.get("tool_calls")):
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, "each example must end with a non-empty assistant message")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    if not getattr(tokenizer, "chat_template", None):
        prompt = tokenizer(render_chat(tokenizer, messages[:-1], tools))["input_ids"]
        answer = ids(assistant_text(last)) + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
        return {"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)}
    input_ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or i == 0:
            continue
        before = render_chat(tokenizer, messages[:i], tools, add_generation_prompt=True)
        through = render_chat(tokenizer, messages[:i + 1], tools, add_generation_prompt=False)
        if not before.startswith(rendered) or not through.startswith(before):
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                           "the chat template does not render a conversation as a growing prefix")
        context = ids(before[len(rendered):])
        turn = ids(through[len(before):])
        input_ids += context + turn
        mask += [0] * len(context) + [1] * len(turn)
        rendered = through
    return {"input_ids": input_ids, "completion_mask": mask}


def resolve_device(config: JobConfig) -> tuple[str, dict[str, bool]]:
    """The device string and the Trainer precision flags (contract §8 #12: ``auto`` = bf16 > fp16 on CUDA, fp32 on CPU)."""
    import torch

    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local_rank}"
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return device, {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if config.precision in ("fp16", "bf16"):
        log.warning("precision %s requested without CUDA; training in fp32 on CPU", config.precision)
    return "cpu", {"bf16": False, "fp16": False}


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder (one with a trainer state), or None."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return None
    found = [
        p for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX):].isdigit()
        and (p / "trainer_state.json").is_file()
    ]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def _sft_config(config: JobConfig, checkpoint_dir: Path, precision: dict[str, bool], max_length: int,
                has_eval: bool, use_cpu: bool) -> Any:
    from trl import SFTConfig

    eval_strategy = config.eval_strategy if has_eval else "no"
    # load_best_model_at_end (needed by early stopping) requires saving on the same schedule as evaluating.
    early = has_eval and eval_strategy != "no" and config.early_stopping_patience > 0
    save_strategy = eval_strategy if early else config.save_strategy
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.validation_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.learning_rate_schedule,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        # transformers 5 takes a ratio as a float below 1 in warmup_steps.
        warmup_steps=config.warmup_ratio if config.warmup_steps is None else config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        eval_strategy=eval_strategy,
        eval_steps=config.compute_on_val_set_every_n_steps,
        save_strategy=save_strategy,
        # With early stopping on a step schedule, checkpoints must fall on evaluation steps.
        save_steps=config.compute_on_val_set_every_n_steps if early else config.save_checkpoint_every_n_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model=config.metric_for_best_model if early else None,
        greater_is_better=False if early and "loss" in config.metric_for_best_model else None,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
        use_cpu=use_cpu,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        disable_tqdm=True,
        max_length=max_length,
        completion_only_loss=True,
        packing=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        ddp_backend="gloo" if use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
    )


def _make_callback(callbacks: SFTCallbacks, started: float, max_duration_s: float, state: dict[str, Any]) -> Any:
    from transformers import TrainerCallback

    class _Bridge(TrainerCallback):
        """Forwards Trainer events to the caller, stops on cancel, fails fast on NaN loss or a timeout."""

        def on_log(self, args, st, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            logs = logs or {}
            if "loss" in logs:
                loss = float(logs["loss"])
                if not math.isfinite(loss):
                    raise L07Error(L07ErrorCode.TRAINING_DIVERGENCE, f"loss became {loss} at step {st.global_step}",
                                   step=st.global_step)
                point = {"step": st.global_step, "total_steps": st.max_steps, "epoch": float(st.epoch or 0.0),
                         "loss": loss, "learning_rate": float(logs.get("learning_rate", 0.0)),
                         "tokens_seen": int(st.num_input_tokens_seen or 0),
                         "elapsed_s": time.monotonic() - started}
                state["loss_curve"].append([st.global_step, round(loss, 6)])
                if callbacks.on_step and st.is_world_process_zero:
                    callbacks.on_step(point)
            if "eval_loss" in logs and state["training"]:
                point = {"step": st.global_step, "epoch": float(st.epoch or 0.0),
                         **{k: float(v) for k, v in logs.items() if k.startswith("eval_")}}
                state["evals"].append(point)
                if callbacks.on_eval and st.is_world_process_zero:
                    callbacks.on_eval(point)

        def on_save(self, args, st, control, **kw):  # type: ignore[no-untyped-def]
            path = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{st.global_step}"
            if callbacks.on_checkpoint and st.is_world_process_zero:
                callbacks.on_checkpoint(str(path), st.global_step)

        def on_train_end(self, args, st, control, model=None, **kw):  # type: ignore[no-untyped-def]
            if callbacks.on_train_end:
                callbacks.on_train_end(model)

        def on_step_end(self, args, st, control, **kw):  # type: ignore[no-untyped-def]
            if callbacks.should_cancel and callbacks.should_cancel():
                state["cancelled"] = True
                control.should_training_stop = True
                control.should_save = False
                control.should_evaluate = False
            elif time.monotonic() - started > max_duration_s:
                state["timed_out"] = True
                control.should_training_stop = True
                control.should_save = True

    return _Bridge()


def held_out_cases(rows: list[Row], named_modes: list[str] | None = None) -> list[tuple[Row, str, str]]:
    """``(prompt, expected, match mode)`` per assistant turn of each held-out row: the validator's cases too. A mode
    named for a row (its example's ``match_mode``) holds for each of its turns; ``auto`` or none lets each turn's
    text decide (``matching.match_mode_for``)."""
    named = named_modes or []
    out = []
    for i, row in enumerate(rows):
        for prompt, expected in assistant_turns(row):
            mode = named[i] if i < len(named) and named[i] != "auto" else match_mode_for(expected)
            out.append((prompt, expected, mode))
    return out


def _generation_correct(model: Any, tokenizer: Any, cases: list[tuple[Row, str]], modes: list[str],
                        max_new_tokens: int, batch_size: int) -> list[bool]:
    """Per held-out turn ``(prompt, expected)``: is the greedy answer correct under its match mode (the validator's
    rule)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        outs = generate_with(tokenizer, model, [p for p, _ in cases], max_new_tokens=max_new_tokens,
                             batch_size=batch_size)
    finally:
        tokenizer.padding_side = side
    return [score_answer(o.text, expected, mode)[0] for o, (_, expected), mode in zip(outs, cases, modes)]


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of at least ``wins`` of ``wins + losses`` discordant pairs going the
    tuned model's way if neither model were better."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n


def improvement_verdict(metrics: dict[str, Any]) -> dict[str, Any]:
    """Did the tuned model improve on its base? ``{"verdict": improved | no_improvement | unmeasured, "measure",
    "reason"}``.

    With a held-out score (greedy generation on the test split, ``generation_wins``/``generation_losses`` against
    the base): improved when the tuned model is right where the base is wrong more often than the reverse, beyond
    chance (sign test, p <= ``IMPROVEMENT_P_VALUE``). Without one: the eval loss must fall by ``MIN_EVAL_LOSS_GAIN``
    of its value before training. Without either: unmeasured.
    """
    if metrics.get("eval_accuracy") is not None and metrics.get("base_accuracy") is not None:
        wins, losses = int(metrics.get("generation_wins", 0)), int(metrics.get("generation_losses", 0))
        p = sign_test_p(wins, losses)
        ok = wins > losses and p <= IMPROVEMENT_P_VALUE
        reason = (f"held-out accuracy {metrics['eval_accuracy']:.1%} vs base {metrics['base_accuracy']:.1%} on "
                  f"{metrics.get('generation_eval_examples', 0)} examples: {wins} newly right, {losses} newly wrong "
                  f"(sign test p={p:.3g}, needs <= {IMPROVEMENT_P_VALUE})")
        return {"verdict": "improved" if ok else "no_improvement", "measure": "held_out_accuracy", "p_value": p,
                "reason": reason}
    before, after = metrics.get("initial_eval_loss"), metrics.get("eval_loss")
    if before is not None and after is not None and math.isfinite(before) and math.isfinite(after):
        ok = after <= before * (1 - MIN_EVAL_LOSS_GAIN)
        reason = f"eval loss {before:.4f} -> {after:.4f} (needs a {MIN_EVAL_LOSS_GAIN:.0%} fall; no held-out score)"
        return {"verdict": "improved" if ok else "no_improvement", "measure": "eval_loss", "reason": reason}
    return {"verdict": "unmeasured", "measure": None, "reason": "no held-out score and no eval loss before and after"}


def run_sft(
    base_model_dir: str | Path,
    train_rows: list[Messages],
    val_rows: list[Messages],
    config: JobConfig,
    output_dir: str | Path,
    checkpoint_dir: str | Path,
    *,
    test_rows: list[Messages] | None = None,
    target_modules: list[str] | None = None,
    callbacks: SFTCallbacks | None = None,
    measure_generation: bool = True,
    train_order: list[list[int]] | None = None,
    test_match_modes: list[str] | None = None,
) -> SFTResult:
    """Fine-tune a LoRA adapter on chat examples.

    Resumes from the newest checkpoint in ``checkpoint_dir`` when there is one (a worker that died mid-job).

    Args:
        base_model_dir: Hugging Face model folder (verified by the caller through the registry).
        train_rows: Training examples as chat messages, each ending with the assistant answer.
        val_rows: Validation examples (eval loss each epoch, early stopping); may be empty.
        config: Hyper-parameters (contract §3.4).
        output_dir: Where the final adapter (and tokenizer) is saved.
        checkpoint_dir: Trainer checkpoints (kept for resumption).
        test_rows: Held-out examples: test loss, and accuracy by greedy generation (``matching.score_answer``, the
            validator's measure) for the tuned model and the base model (adapter disabled), on at most
            ``MAX_GENERATION_EVAL`` of them; ``metrics["verdict"]`` says whether the tuned model improved.
        target_modules: Already-resolved LoRA targets (see ``lora_targets.resolve_target_modules``).
        callbacks: Progress hooks and cancellation.
        measure_generation: Measure generation accuracy on ``test_rows``.
        test_match_modes: Match mode per test row (``matching.match_mode_for`` of its example, as the validator
            picks it); default: the mode each expected answer implies.
        train_order: The curriculum's plan, one list of indices into ``train_rows`` per epoch: trained as one
            sequential pass in exactly that order (``planned_epochs``). None: the Trainer's own shuffled epochs.

    Raises:
        L07Error: E7031 (bad rows), E7032 (base model), E7036 (LoRA config), E7037 (tokenisation), E7030 (out of
            memory), E7033 (NaN loss), E7038 (timeout), E7034 (checkpoint write).
    """
    import torch
    from datasets import Dataset as HFDataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback

    from .answer_loss import AnswerLossSFTTrainer

    callbacks = callbacks or SFTCallbacks()
    started = time.monotonic()
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    if not train_rows:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, "the train split is empty")
    device, precision = resolve_device(config)
    use_cpu = device == "cpu"
    torch.manual_seed(config.seed)

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
        dtype = torch.bfloat16 if precision["bf16"] else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - every loader failure is E7032 to the job
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load {base_model_dir}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_pos = int(getattr(model.config, "max_position_embeddings", config.max_seq_length) or config.max_seq_length)
    if config.max_seq_length > max_pos:
        raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID,
                       f"max_seq_length {config.max_seq_length} exceeds the model's {max_pos} positions")
    targets = target_modules or resolve_target_modules(config.target_modules, base_model_dir)
    layers = None
    if config.lora_top_layers is not None:
        depth = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
        if not 0 < config.lora_top_layers <= depth:
            raise L07Error(L07ErrorCode.LORA_ADAPTER_CONFIG_INVALID,
                           f"lora_top_layers {config.lora_top_layers} must be within the model's {depth} layers")
        layers = list(range(depth - config.lora_top_layers, depth))
        if targets == ["all-linear"]:  # peft takes a layer subset only with named modules
            head = model.get_output_embeddings()
            targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                              if isinstance(m, torch.nn.Linear) and m is not head})
    try:
        peft_config = LoraConfig(r=config.lora_rank, lora_alpha=int(config.lora_alpha), lora_dropout=config.lora_dropout,
                                 target_modules="all-linear" if targets == ["all-linear"] else targets, bias="none",
                                 layers_to_transform=layers, task_type="CAUSAL_LM")
    except (ValueError, TypeError) as exc:
        raise L07Error(L07ErrorCode.LORA_ADAPTER_CONFIG_INVALID, str(exc)) from exc

    try:
        stream = planned_stream(train_rows, train_order) if train_order is not None else None
        train_tok = [tokenize_row(r, tokenizer) for r in (stream.rows if stream else train_rows)]
        val_tok = [tokenize_row(r, tokenizer) for r in val_rows]
    except (KeyError, TypeError) as exc:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, f"malformed example: {exc}") from exc

    # A conversation longer than max_seq_length would be cut at its end, where the answer is: the model would learn
    # half a tool call. Such rows are left out, counted in the metrics and logged (E7037 when none is left).
    too_long = sum(len(t["input_ids"]) > config.max_seq_length for t in train_tok)
    if too_long:
        log.warning("E7037 %d of %d training conversations exceed max_seq_length %d and are left out",
                    too_long, len(train_tok), config.max_seq_length)
        if stream is not None:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                           f"{too_long} conversations exceed max_seq_length {config.max_seq_length}; raise it to keep "
                           "the curriculum's order")
        train_tok = [t for t in train_tok if len(t["input_ids"]) <= config.max_seq_length]
        if not train_tok:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                           f"every training conversation exceeds max_seq_length {config.max_seq_length}")
    train_ds = HFDataset.from_list(train_tok)
    val_ds = HFDataset.from_list(val_tok) if val_tok else None
    args = _sft_config(config, checkpoint_dir, precision, config.max_seq_length, val_ds is not None, use_cpu)
    state: dict[str, Any] = {"loss_curve": [], "evals": [], "cancelled": False, "timed_out": False, "training": True}
    trainer_callbacks = [_make_callback(callbacks, started, config.max_training_duration_s, state)]
    if stream is not None:
        trainer_callbacks.append(follow_plan(args, stream, int(os.environ.get("WORLD_SIZE", "1"))))
    if args.load_best_model_at_end:
        trainer_callbacks.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    try:
        trainer = AnswerLossSFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                                       processing_class=tokenizer, peft_config=peft_config, callbacks=trainer_callbacks)
    except L07Error:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        if "target module" in str(exc).lower():
            raise L07Error(L07ErrorCode.LORA_ADAPTER_CONFIG_INVALID, str(exc)) from exc
        raise L07Error(L07ErrorCode.TOKENIZATION_ERROR, f"cannot tokenise the dataset: {exc}") from exc

    resume = latest_checkpoint(checkpoint_dir)
    resumed_from = int(resume.name[len(CHECKPOINT_PREFIX):]) if resume else 0
    initial_eval_loss = None
    if val_ds is not None and resume is None:
        initial_eval_loss = float(trainer.evaluate()["eval_loss"])
    t_train = time.monotonic()
    try:
        train_out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except L07Error:
        raise
    except torch.OutOfMemoryError as exc:
        raise L07Error(L07ErrorCode.GPU_OUT_OF_MEMORY, str(exc).splitlines()[0]) from exc
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise L07Error(L07ErrorCode.GPU_OUT_OF_MEMORY, str(exc).splitlines()[0]) from exc
        raise
    except OSError as exc:
        raise L07Error(L07ErrorCode.CHECKPOINT_SAVE_FAILURE, f"checkpoint I/O failed: {exc}") from exc
    train_seconds = time.monotonic() - t_train
    state["training"] = False  # later evaluate() calls are the final measurements, not progress events
    st = trainer.state
    tokens_seen = int(st.num_input_tokens_seen or 0)
    metrics: dict[str, Any] = {
        "train_loss": float(train_out.training_loss),
        "loss_curve": state["loss_curve"],
        "evals": state["evals"],
        "initial_eval_loss": initial_eval_loss,
        "tokens_seen": tokens_seen,
        "train_seconds": train_seconds,
        "tokens_per_second": tokens_seen / train_seconds if train_seconds > 0 else 0.0,
        "examples_per_second": float(train_out.metrics.get("train_samples_per_second", 0.0)),
        "global_step": int(st.global_step),
        "total_steps": int(st.max_steps),
        "resumed_from_step": resumed_from,
        "stopped_early": bool(st.global_step < st.max_steps and not state["cancelled"] and not state["timed_out"]),
        "device": device,
        "target_modules": targets,
        "train_examples": len(train_rows),
        "train_examples_too_long": too_long,
        "val_examples": len(val_rows),
        "recipe": config.extra.get("recipe"),
        "curriculum": stream.summary() if stream is not None else None,
    }
    if state["cancelled"]:
        metrics["duration_seconds"] = time.monotonic() - started
        return SFTResult(adapter_dir=None, metrics=metrics, cancelled=True)
    if state["timed_out"]:
        raise L07Error(L07ErrorCode.TRAINING_TIMEOUT,
                       f"training exceeded {config.max_training_duration_s} s; last checkpoint kept",
                       checkpoint=str(latest_checkpoint(checkpoint_dir) or ""))
    if not math.isfinite(metrics["train_loss"]):
        raise L07Error(L07ErrorCode.TRAINING_DIVERGENCE, "final training loss is not finite")

    if val_ds is not None:
        last = state["evals"][-1] if state["evals"] else None
        # An evaluation at the last step already measured these weights, unless the best checkpoint was reloaded.
        if last is not None and last["step"] == st.global_step and not args.load_best_model_at_end:
            metrics["eval_loss"] = last["eval_loss"]
        else:
            metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
    if test_rows:
        test_ds = HFDataset.from_list([tokenize_row(r, tokenizer) for r in test_rows])
        metrics["test_loss"] = float(trainer.evaluate(eval_dataset=test_ds, metric_key_prefix="test")["test_loss"])
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(str(output_dir), safe_serialization=config.output_format == "safetensors")
        tokenizer.save_pretrained(str(output_dir))
        if test_rows and measure_generation:
            held_out = held_out_cases(test_rows[:MAX_GENERATION_EVAL], test_match_modes)
            cases = [(prompt, expected) for prompt, expected, _ in held_out]
            modes = [mode for *_, mode in held_out]
            longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for _, e in cases)
            peft_model = trainer.model
            peft_model.eval()
            tuned = _generation_correct(peft_model, tokenizer, cases, modes, longest + 8, config.validation_batch_size)
            with peft_model.disable_adapter():
                base = _generation_correct(peft_model, tokenizer, cases, modes, longest + 8,
                                           config.validation_batch_size)
            acc, base_acc = sum(tuned) / len(cases), sum(base) / len(cases)
            metrics.update(eval_accuracy=acc, base_accuracy=base_acc, improvement_vs_baseline=acc - base_acc,
                           generation_eval_examples=len(cases),
                           generation_wins=sum(t and not b for t, b in zip(tuned, base)),
                           generation_losses=sum(b and not t for t, b in zip(tuned, base)))
    metrics["verdict"] = improvement_verdict(metrics)
    metrics["duration_seconds"] = time.monotonic() - started
    return SFTResult(adapter_dir=str(output_dir), metrics=metrics)


def entry(spec: dict[str, Any], emit: Callable[[str, dict[str, Any]], None], should_cancel: Callable[[], bool]) -> dict[str, Any]:
    """Job-runner entry point for ``JobType.SFT`` (table in ``services/jobs/kinds.py``).

    Args:
        spec: ``base_model_dir``, ``train_rows``, ``val_rows``, ``test_rows``, ``config`` (JobConfig dict),
            ``output_dir``, ``checkpoint_dir``, optional ``target_modules``.
        emit: ``emit(kind, payload)`` with kinds ``step``, ``eval``, ``checkpoint``.
        should_cancel: Cooperative cancellation check.

    Returns:
        ``{"adapter_dir", "metrics", "cancelled"}``.
    """
    config = JobConfig(**spec["config"])
    result = run_sft(
        spec["base_model_dir"], spec["train_rows"], spec.get("val_rows") or [], config,
        spec["output_dir"], spec["checkpoint_dir"], test_rows=spec.get("test_rows") or None,
        target_modules=spec.get("target_modules"),
        train_order=spec.get("train_order"),
        test_match_modes=spec.get("test_match_modes"),
        # A caller that validates the output by generation right after (the demo) skips this duplicate measurement.
        measure_generation=config.extra.get("generation_eval", True) is not False,
        callbacks=SFTCallbacks(
            on_step=lambda p: emit("step", p),
            on_eval=lambda p: emit("eval", p),
            on_checkpoint=lambda path, step: emit("checkpoint", {"path": path, "step": step}),
            should_cancel=should_cancel,
        ),
    )
    return {"adapter_dir": result.adapter_dir, "metrics": result.metrics, "cancelled": result.cancelled}
