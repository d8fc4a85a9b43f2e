"""Greedy, deterministic batched generation from a causal LM folder, optionally with a LoRA adapter on top.

Used by the SFT evaluation, the validator, RLHF and distillation. Prompts are either plain strings (sent as one user
turn through the chat template when the tokenizer has one) or chat rows (messages, with tool schemas when offered).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.error_codes import L07Error, L07ErrorCode
from ..models.tool_calls import Row, render_chat, split_row

Prompt = str | Row


@dataclass(frozen=True)
class GenerationResult:
    """One generated completion.

    Attributes:
        text: The decoded new tokens, special tokens removed, stripped.
        latency_s: Wall time of the batch this prompt was in, divided by the batch size.
        new_tokens: How many tokens were generated (up to and including the end-of-turn token).
    """

    text: str
    latency_s: float
    new_tokens: int


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The text fed to the model: chat template with the generation prompt (tools and tool turns in the one
    tool-call format, ``models/tool_calls.py``), or ``### Input:`` framing without a template."""
    if isinstance(prompt, str):
        messages, tools = [{"role": "user", "content": prompt}], None
    else:
        messages, tools = split_row(prompt)
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]  # the expected answer is never shown to the model
    return render_chat(tokenizer, messages, tools)


def load_model(model_dir: str | Path, adapter_dir: str | Path | None = None, device: str | None = None) -> tuple[Any, Any]:
    """Load tokenizer and model (plus adapter) for inference, in eval mode.

    Raises:
        L07Error: E7032 when the base cannot load, E7604 when the adapter cannot.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - loader errors vary by format; all mean "base model unusable"
        raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"cannot load model from {model_dir}: {exc}") from exc
    if adapter_dir is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        except Exception as exc:  # noqa: BLE001
            raise L07Error(L07ErrorCode.ADAPTER_LOADING_FAILURE, f"cannot load adapter {adapter_dir}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # decoder-only batching: new tokens must follow the prompt directly
    model.to(device).eval()
    return tokenizer, model


def generate_with(
    tokenizer: Any, model: Any, prompts: list[Prompt], max_new_tokens: int, batch_size: int = 8,
    ignore_stop: bool = False,
) -> list[GenerationResult]:
    """Greedy generation with an already loaded model (see :func:`generate`); ``model`` is a transformers model or
    an :class:`~.backends.base.InferenceBackend` (llama.cpp, vLLM). ``ignore_stop`` decodes exactly
    ``max_new_tokens`` per prompt, end-of-turn or not: the same work for any model, for timing."""
    results: list[GenerationResult] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [render_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        # An engine backend is recognised by its method, not by class: the backends import this module.
        if hasattr(model, "generate_rendered"):
            results.extend(model.generate_rendered(chunk, max_new_tokens, ignore_stop=ignore_stop))
        else:
            results.extend(generate_rendered(tokenizer, model, chunk, max_new_tokens, ignore_stop=ignore_stop))
    return results


def stop_token_ids(tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the tokenizer's EOS plus ChatML's end of turn where the vocabulary has it."""
    eos_ids = {tokenizer.eos_token_id}
    if "<|im_end|>" in tokenizer.get_vocab():
        eos_ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in eos_ids if i is not None)


def generate_rendered(tokenizer: Any, model: Any, texts: list[str], max_new_tokens: int,
                      limits: list[int] | None = None, streamer: Any = None,
                      ignore_stop: bool = False) -> list[GenerationResult]:
    """Greedy generation for prompt texts already rendered, as one forward batch.

    ``limits`` caps each row's new tokens below ``max_new_tokens`` (requests with different ``max_tokens`` share a
    batch). ``streamer`` (a transformers streamer, batch of one only) receives tokens as they are produced.
    """
    import torch

    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer)
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,
            # Suppressing the end-of-turn logits until the cap decodes exactly ``max_new_tokens``.
            min_new_tokens=max_new_tokens if ignore_stop else None,
            streamer=streamer,
        )
    per_item = (time.perf_counter() - t0) / len(texts)
    results = []
    for k, row in enumerate(out[:, enc["input_ids"].shape[1]:]):
        ids = row.tolist()[: limits[k] if limits else None]
        n = len(ids)
        for i, tok in enumerate(ids):
            if tok in stops and not ignore_stop:
                n = i + 1
                break
        text = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
        results.append(GenerationResult(text=text, latency_s=per_item, new_tokens=n))
    return results


def generate(
    model_dir: str | Path,
    prompts_or_messages: list[Prompt],
    max_new_tokens: int,
    adapter_dir: str | Path | None = None,
    batch_size: int = 8,
) -> list[GenerationResult]:
    """Greedy, deterministic generation for a list of prompts.

    Args:
        model_dir: A Hugging Face model folder (e.g. from ``ModelRegistry.local_path``).
        prompts_or_messages: Strings (one user turn each) or chat message lists; a trailing assistant message is
            dropped, so training examples can be passed as they are.
        max_new_tokens: Generation length cap.
        adapter_dir: Optional LoRA adapter folder to apply on top of the model.
        batch_size: Prompts per forward batch.

    Returns:
        One :class:`GenerationResult` per prompt, in input order.
    """
    tokenizer, model = load_model(model_dir, adapter_dir)
    return generate_with(tokenizer, model, list(prompts_or_messages), max_new_tokens, batch_size)
