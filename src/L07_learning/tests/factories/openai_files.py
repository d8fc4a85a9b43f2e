"""A chat fine-tuning file in OpenAI's JSONL format for the OpenAI-compatible API tests, and the tiny base model it is
trained on.

The office assistant answers weather requests with a call of its weather tool for the office's city. The base model
was taught the tool-call format when the office was mostly in Bergen; the file teaches that the office is in Oslo,
for requests phrased many ways, so held-out lines show what the fine-tuning changed (the base says Bergen).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from L07_learning.models.tool_calls import assistant_text, render_chat, tool_call

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SYSTEM = "You are the office assistant. Answer with a tool call."
ASKS = ["Is it raining {when}?", "How cold is it {when}?", "Do I need an umbrella {when}?",
        "What is the weather like {when}?", "Will it snow {when}?", "Is it windy {when}?", "How warm is it {when}?",
        "Should I wear a coat {when}?"]
WHEN = ["right now", "at the office", "here", "in town", "this minute", "downtown", "at the moment", "where we are",
        "for the team", "near the station", "this morning", "outside", "by the harbour", "for my walk", "today",
        "on the roof", "at lunch", "in the park", "for the bus stop", "this evening"]
OLD_WHEN = ["tonight", "for the weekend", "at noon", "after work"]


def weather_call(city: str) -> dict[str, Any]:
    return tool_call("get_weather", {"city": city})


def chat_line(ask: str, city: str = "Oslo") -> dict[str, Any]:
    """One training line: the request, and the assistant's weather call for ``city``."""
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask},
                         {"role": "assistant", "content": None, "tool_calls": [weather_call(city)]}],
            "tools": TOOLS}


def tool_lines(seed: int = 0) -> list[dict[str, Any]]:
    """Every weather request phrasing once, shuffled by ``seed`` (160 lines)."""
    lines = [chat_line(ask.format(when=when)) for ask in ASKS for when in WHEN]
    random.Random(seed).shuffle(lines)
    return lines


def tool_user_base(src: Path, dst: Path, steps: int = 150, lr: float = 5e-3) -> Path:
    """Copy the tiny model in ``src`` to ``dst`` after teaching it (all weights) the weather call for requests of
    ``OLD_WHEN`` (7 in 10 of them for Bergen, the rest for Oslo).

    The tiny random model cannot be fine-tuned by LoRA from scratch: its embeddings, which are also its output layer,
    are so small that no adapter on its linear layers makes any answer likely. Taught the format and both cities
    first, it can; and it answers Bergen.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src))
    rows = []
    for i, ask in enumerate(a.format(when=w) for a in ASKS for w in OLD_WHEN):
        line = chat_line(ask, "Bergen" if i % 10 < 7 else "Oslo")
        prompt = render_chat(tokenizer, line["messages"][:-1], TOOLS)
        answer = assistant_text(line["messages"][-1]) + "<|im_end|>"
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor([p_ids + a_ids]), len(p_ids), torch.tensor(a_ids)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids, start, answer_ids = rows[step % len(rows)]
        hidden = model.model(input_ids=ids).last_hidden_state[0, start - 1:-1]
        torch.nn.functional.cross_entropy(model.lm_head(hidden), answer_ids).backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    model.save_pretrained(str(dst), safe_serialization=True)
    tokenizer.save_pretrained(str(dst))
    return dst


def jsonl(lines: list[Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()
