"""OpenAI preference (DPO) JSONL: ``{"input": {"messages": [...], "tools": [...]}, "preferred_output": [...],
"non_preferred_output": [...]}`` per line. The preferred chat is the example the filter judges; once accepted it and
the non-preferred answer make an L07 preference pair."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ...models.error_codes import L07ErrorCode
from ...models.tool_calls import assistant_text
from .records import Record, Refused, Source, chat_example, chat_messages, object_lines, tool_schemas


def _answer(row: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = row.get(key)
    if not value:
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, f"no {key}")
    if not isinstance(value, list) or not all(isinstance(m, dict) and m.get("role") == "assistant" for m in value):
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{key} must be a list of assistant messages")
    return value


def _record(source: Source, number: int, row: dict[str, Any]) -> Record:
    prompt = row.get("input")
    if not isinstance(prompt, dict) or "messages" not in prompt:
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "no input.messages")
    tools = tool_schemas(prompt.get("tools"))
    chosen = chat_messages(list(prompt["messages"] or []) + _answer(row, "preferred_output"))
    rejected = chat_messages(list(prompt["messages"] or []) + _answer(row, "non_preferred_output"))
    return Record(number, example=chat_example(source, number, chosen, tools), rejected=assistant_text(rejected[-1]))


def read(path: Path, source: Source) -> Iterator[Record]:
    return object_lines(path, partial(_record, source))
