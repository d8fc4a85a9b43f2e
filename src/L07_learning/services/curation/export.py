"""Dataset export as JSONL or Parquet, one file per split, that ``datasets.load_dataset`` reads as it is.

Each row holds ``messages`` (OpenAI's chat format with ``tool_calls`` and ``tool`` turns, what TRL's SFTTrainer takes),
the offered tool schemas as a JSON string (``tools_json``: their shapes differ per tool, a column cannot), plus flat
metadata columns; free-form metadata is one JSON string column so every row has the same schema.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...models.dataset import Dataset
from ...models.training_example import TrainingExample

FORMATS = ("jsonl", "parquet")


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """A message with every key present (Parquet needs one schema): OpenAI's chat fields, null where unused."""
    calls = [{"id": str(c.get("id", "")), "type": "function",
              "function": {"name": str(c["function"]["name"]), "arguments": str(c["function"].get("arguments", "{}"))}}
             for c in m.get("tool_calls") or []]
    return {"role": str(m.get("role", "")), "content": str(m.get("content") or ""), "tool_calls": calls or None,
            "tool_call_id": m.get("tool_call_id"), "name": m.get("name")}


def export_row(ex: TrainingExample, split: str, dataset: Dataset) -> dict[str, Any]:
    """One exported row."""
    return {
        "messages": [_message(m) for m in ex.chat_messages()],
        "tools_json": json.dumps(ex.tools, sort_keys=True) if ex.tools else None,
        "example_id": ex.example_id,
        "split": split,
        "task_type": ex.task_type,
        "domain": ex.domain,
        "source_type": ex.source_type.value,
        "quality_score": float(ex.quality_score),
        "confidence": None if ex.confidence is None else float(ex.confidence),
        "difficulty": float(ex.difficulty),
        "execution_id": ex.execution_id,
        "content_hash": ex.content_hash,
        "dataset_id": dataset.dataset_id,
        "dataset_version": dataset.version,
        "metadata_json": json.dumps(ex.metadata, sort_keys=True, default=str),
    }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_split_files(dataset: Dataset, out_dir: Path, fmt: str) -> dict[str, dict[str, Any]]:
    """Write ``<split>.<ext>`` for every non-empty split; returns ``{split: {path, rows, sha256}}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for split in ("train", "val", "test"):
        examples = dataset.split_examples(split)
        if not examples:
            continue
        rows = [export_row(ex, split, dataset) for ex in examples]
        if fmt == "jsonl":
            path = out_dir / f"{split}.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(_without_nulls(row), ensure_ascii=False) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            path = out_dir / f"{split}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=_arrow_schema()), path)
        files[split] = {"path": str(path), "rows": len(rows), "sha256": _sha256_file(path)}
    return files


def _without_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """A JSONL line as OpenAI's chat format writes it: a message carries only the keys it uses (a user turn with
    ``"tool_calls": null`` is refused by hosted fine-tuning validators)."""
    return {**row, "messages": [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]}


def _arrow_schema() -> Any:
    import pyarrow as pa

    call = pa.struct([("id", pa.string()), ("type", pa.string()),
                      ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())]))])
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("tool_calls", pa.list_(call)),
                         ("tool_call_id", pa.string()), ("name", pa.string())])
    return pa.schema([
        ("messages", pa.list_(message)), ("tools_json", pa.string()), ("example_id", pa.string()), ("split", pa.string()),
        ("task_type", pa.string()), ("domain", pa.string()), ("source_type", pa.string()),
        ("quality_score", pa.float64()), ("confidence", pa.float64()), ("difficulty", pa.float64()),
        ("execution_id", pa.string()), ("content_hash", pa.string()), ("dataset_id", pa.string()),
        ("dataset_version", pa.string()), ("metadata_json", pa.string()),
    ])
