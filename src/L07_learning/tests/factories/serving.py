"""A tiny model taught to answer two agent requests with tool calls (and one plain request in words), for serving
tests.

It is trained for real (a few hundred steps of next-token loss on the assistant turn, rendered through the one
tool-call format), so what the server returns is what the model computes, not a canned answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from L07_learning.models.tool_calls import assistant_text, render_chat, tool_call

TOOLS = [
    {"type": "function", "function": {"name": "unit_convert", "description": "Convert a value between units",
                                      "parameters": {"type": "object", "properties": {
                                          "value": {"type": "number"}, "from": {"type": "string"},
                                          "to": {"type": "string"}}, "required": ["value", "from", "to"]}}},
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]
SYSTEM = "You are the field-ops assistant. Use the tools."
TEACH: list[tuple[str, dict[str, Any]]] = [
    ("How many feet is 152 m?", tool_call("unit_convert", {"value": 152, "from": "m", "to": "ft"})),
    ("Is it raining in Oslo?", tool_call("get_weather", {"city": "Oslo"})),
]
# A request without tools that the model answers in words, so streamed text has several pieces to send.
TEACH_TEXT = ("Greet the crew.", "Good morning crew, all field stations report ready.")


def conversation(goal: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": goal}]


def taught_tool_caller(src: Path, dst: Path, steps: int = 300, lr: float = 5e-3) -> Path:
    """Copy the tiny model in ``src`` to ``dst`` after teaching it the calls in ``TEACH``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModelForCausalLM.from_pretrained(str(src))
    rows = []
    pairs = [(render_chat(tokenizer, conversation(goal), TOOLS),
              assistant_text({"role": "assistant", "content": None, "tool_calls": [call]})) for goal, call in TEACH]
    pairs.append((render_chat(tokenizer, conversation(TEACH_TEXT[0])), TEACH_TEXT[1]))
    for prompt, answer in pairs:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append((torch.tensor([p_ids + a_ids]), len(p_ids), torch.tensor(a_ids)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        ids, start, answer_ids = rows[step % len(rows)]
        # The vocabulary projection only where the answer is predicted: the prompt's logits would cost ~7x more.
        hidden = model.model(input_ids=ids).last_hidden_state[0, start - 1:-1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), answer_ids)
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    model.save_pretrained(str(dst), safe_serialization=True)
    tokenizer.save_pretrained(str(dst))
    return dst
