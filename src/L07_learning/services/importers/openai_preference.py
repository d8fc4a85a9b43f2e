"""OpenAI preference (DPO) JSONL: ``{"input": {"messages": [...], "tools": [...]}, "preferred_output": [...],
"non_preferred_output": [...]}`` per line. The preferred chat is the example the filter judges; once accepted it and
the non-preferred answer make an L07 preference pair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07ErrorCode
from ...models.tool_calls import assistant_text
from .records import Record, Refused, Source, chat_example, chat_messages, json_lines, tool_schemas


def _answer(row: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = row.get(key)
    if not value:
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, f"no {key}")
    if not isinstance(value, list) or not all(isinstance(m, dict) and m.get("role") == "assistant" for m in value):
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{key} must be a list of assistant messages")
    return value


def read(path: Path, source: Source) -> Iterator[Record]:
    for number, row in json_lines(path):
        try:
            if isinstance(row, Refused):
                raise row
            if not isinstance(row, dict):
                raise Refused(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, "the line is not a JSON object")
            prompt = row.get("input")
            if not isinstance(prompt, dict) or "messages" not in prompt:
                raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "no input.messages")
            tools = tool_schemas(prompt.get("tools"))
            chosen = chat_messages(list(prompt["messages"] or []) + _answer(row, "preferred_output"))
            rejected = chat_messages(list(prompt["messages"] or []) + _answer(row, "non_preferred_output"))
            yield Record(number, example=chat_example(source, number, chosen, tools),
                         rejected=assistant_text(rejected[-1]))
        except Refused as refusal:
            yield Record(number, refusal=refusal)
