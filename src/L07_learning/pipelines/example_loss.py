"""Per-example loss of a causal LM on chat examples: the "how hard is this for the model" curriculum signal.

Imports torch and transformers inside the function, like every pipeline, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def example_losses(model_dir: str | Path, conversations: Sequence[Sequence[dict[str, str]]], batch_size: int = 8,
                   max_length: int = 512) -> list[float]:
    """Mean token cross-entropy of the final (assistant) message of each conversation, by a real forward pass.

    Args:
        model_dir: A Hugging Face causal-LM folder with its tokenizer (chat template included).
        conversations: Chat messages per example; the last message is the one scored.
        batch_size: Examples per forward pass.
        max_length: Longest tokenised conversation; longer ones are cut from the left of the prompt side.

    Returns:
        One loss per conversation, in input order (``nan`` when the answer has no tokens left after truncation).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    encoded: list[tuple[list[int], int]] = []
    for messages in conversations:
        messages = [dict(m) for m in messages]
        full = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True) if len(messages) > 1 else []
        full, prompt = _ids(full), _ids(prompt)
        cut = max(0, len(full) - max_length)  # keep the answer; drop the oldest prompt tokens
        encoded.append((full[cut:], max(0, len(prompt) - cut)))

    losses: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, prompt_len) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                labels[row, prompt_len: len(ids)] = torch.tensor(ids[prompt_len:])
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1, :]
            target = labels[:, 1:]
            token_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="none"
            ).view(target.shape)
            counts = (target != -100).sum(dim=1)
            sums = token_loss.sum(dim=1)
            for s, c in zip(sums.tolist(), counts.tolist()):
                losses.append(s / c if c else float("nan"))
    return losses


def _ids(value) -> list[int]:  # type: ignore[no-untyped-def]
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True); older versions a list.
    if hasattr(value, "get") and value.get("input_ids") is not None:
        value = value["input_ids"]
    return list(value)
