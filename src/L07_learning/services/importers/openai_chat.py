"""OpenAI chat fine-tuning JSONL: one ``{"messages": [...], "tools": [...]}`` object per line (assistant
``tool_calls`` and ``tool`` turns included), as OpenAI's fine-tuning API takes it."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from ...models.error_codes import L07ErrorCode
from .records import Record, Refused, Source, chat_example, chat_messages, object_lines, tool_schemas


def _record(source: Source, number: int, row: dict[str, Any]) -> Record:
    if "messages" not in row:
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "no messages")
    return Record(number, example=chat_example(source, number, chat_messages(row["messages"]),
                                               tool_schemas(row.get("tools"))))


def read(path: Path, source: Source) -> Iterator[Record]:
    return object_lines(path, partial(_record, source))
