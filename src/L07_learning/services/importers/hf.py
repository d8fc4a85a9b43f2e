"""Hugging Face datasets in the chat format: a folder written by ``Dataset.save_to_disk`` (or a ``DatasetDict``'s,
whose ``train`` split is read) or a Parquet file, with a ``messages`` column (and optionally ``tools``). Rows are
numbered from 1 in the dataset's order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from .records import Record, Refused, Source, chat_example, chat_messages, tool_schemas


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            if "train" not in data:
                raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE,
                               f"{path.name}: a DatasetDict without a train split")
            data = data["train"]
        columns = data.column_names
        rows: Any = data
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
        columns = table.column_names
        rows = table.to_pylist()
    if "messages" not in columns:
        raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, f"{path.name} has no messages column (columns: {columns})")
    yield from rows


def _clean(value: Any) -> Any:
    """Arrow stores a list of structs with the union of their keys: drop the keys a row did not have (None)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _tools(value: Any) -> Any:
    # Tool schemas vary in shape from tool to tool, so datasets often hold them as one JSON string.
    return json.loads(value) if isinstance(value, str) and value.strip() else value


def read(path: Path, source: Source) -> Iterator[Record]:
    for number, row in enumerate(_rows(path), start=1):
        try:
            try:
                tools = tool_schemas(_clean(_tools(row.get("tools"))))
            except ValueError:
                raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "tools is not JSON") from None
            yield Record(number, example=chat_example(source, number, chat_messages(_clean(row.get("messages"))),
                                                      tools))
        except Refused as refusal:
            yield Record(number, refusal=refusal)
