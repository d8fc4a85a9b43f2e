"""What an agent conversation teaches (issue 20): the loss falls on every assistant turn (each tool call with its
end-of-turn token, and the answer), never on the system prompt, the goal, the tool schemas or a tool's result; and
each assistant turn is a held-out case judged on its parsed tool calls."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from L07_learning.models.error_codes import L07Error
from L07_learning.models.tool_calls import assistant_turns, tool_call
from L07_learning.pipelines.base_model import default_tokenizer_dir
from L07_learning.pipelines.generation import render_prompt
from L07_learning.pipelines.matching import match_mode_for, score_answer
from L07_learning.pipelines.sft_pipeline import tokenize_row

TOOLS = [{"type": "function", "function": {"name": "track_parcel", "parameters": {
    "type": "object", "properties": {"tracking_id": {"type": "string"}}, "required": ["tracking_id"]}}}]
CALL = tool_call("track_parcel", {"tracking_id": "ZX-48213"}, "call_1")
ROW = {"messages": [
    {"role": "system", "content": "You are Acme's support desk agent."},
    {"role": "user", "content": "Where is my parcel ZX-48213?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "in transit, Lyon hub"},
    {"role": "assistant", "content": "Your parcel is at the Lyon hub."},
], "tools": TOOLS}


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    cache = os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models"))
    return AutoTokenizer.from_pretrained(str(default_tokenizer_dir(cache)))


def test_loss_falls_on_assistant_turns_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    row = tokenize_row(ROW, tokenizer)
    ids, mask = row["input_ids"], row["completion_mask"]
    assert len(ids) == len(mask)
    learned = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert learned == ('<tool_call>\n{"name": "track_parcel", "arguments": {"tracking_id": "ZX-48213"}}\n'
                       '</tool_call><|im_end|>\nYour parcel is at the Lyon hub.<|im_end|>\n')
    context = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    for shown in ("support desk agent", "Where is my parcel", "track_parcel", "in transit, Lyon hub"):
        assert shown in context
    # The whole sequence is what serving renders: the prompt of the first turn is a prefix of it.
    first_prompt = render_prompt(tokenizer, assistant_turns(ROW)[0][0])
    assert tokenizer.decode(ids).startswith(first_prompt)


def test_a_conversation_must_end_with_an_assistant_turn(tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(L07Error) as err:
        tokenize_row({"messages": ROW["messages"][:4], "tools": TOOLS}, tokenizer)
    assert err.value.code.value == "E7031"


def test_each_assistant_turn_is_a_case_judged_on_parsed_calls() -> None:
    (p1, e1), (p2, e2) = assistant_turns(ROW)
    assert p1 == {"messages": ROW["messages"][:2], "tools": TOOLS}
    assert p2["messages"][-1]["role"] == "tool"
    assert match_mode_for(e1) == "tool_calls" and match_mode_for(e2) == "exact"
    # Key order, spacing and 1 vs 1.0 do not matter; a wrong argument or a second call does.
    assert score_answer('Sure.\n<tool_call>{"arguments": {"tracking_id": "ZX-48213"}, "name": "track_parcel"}'
                        '</tool_call>', e1, "tool_calls")[0]
    assert not score_answer('<tool_call>{"name": "track_parcel", "arguments": {"tracking_id": "ZX-48214"}}'
                            '</tool_call>', e1, "tool_calls")[0]
    two = '<tool_call>{"name": "track_parcel", "arguments": {"tracking_id": "ZX-48213"}}</tool_call>' * 2
    assert score_answer(two, e1, "tool_calls") == (False, 0.5)
    assert not score_answer("track_parcel ZX-48213", e1, "tool_calls")[0]
