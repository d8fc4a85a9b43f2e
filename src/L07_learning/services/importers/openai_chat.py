"""OpenAI chat fine-tuning JSONL: one ``{"messages": [...], "tools": [...]}`` object per line (assistant
``tool_calls`` and ``tool`` turns included), as OpenAI's fine-tuning API takes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ...models.error_codes import L07ErrorCode
from .records import Record, Refused, Source, chat_example, chat_messages, json_lines, tool_schemas


def read(path: Path, source: Source) -> Iterator[Record]:
    for number, row in json_lines(path):
        try:
            if isinstance(row, Refused):
                raise row
            if not isinstance(row, dict):
                raise Refused(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, "the line is not a JSON object")
            if "messages" not in row:
                raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "no messages")
            yield Record(number, example=chat_example(source, number, chat_messages(row["messages"]),
                                                      tool_schemas(row.get("tools"))))
        except Refused as refusal:
            yield Record(number, refusal=refusal)
