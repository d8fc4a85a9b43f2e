"""What every importer produces: one ``Record`` per line or record of the source, holding either an example (with
the rejected answer of a preference pair) or a refusal with its line number and E7xxx code.

A record is refused when it cannot become an example at all (malformed JSON, no messages, no assistant turn to learn);
an example that is read but not accepted is the quality filter's decision, reported as *filtered* with its reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...models.error_codes import L07ErrorCode
from ...models.tool_calls import assistant_text, canonical_arguments
from ...models.training_example import ExampleSource, TrainingExample

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class Refused(Exception):
    """A record that cannot become an example: its code and why."""

    def __init__(self, code: L07ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Source:
    """Where the records come from and what the importer declares about them.

    Attributes:
        format: Importer name (``openai-chat``...).
        file_name: The file's name as the user gave it (provenance).
        sha256: Digest of the file's bytes, so provenance names one exact file.
        quality: Quality (0-100) declared for records that carry no score of their own; ``None`` leaves them without
            a confidence, so the filter sends them to REVIEW (contract §1.7: no default score trains).
        agent_id, task_type: Stored on every example (the filter needs both).
    """

    format: str
    file_name: str
    sha256: str
    quality: float | None
    agent_id: str
    task_type: str


@dataclass
class Record:
    """One line (or record) of the source."""

    line: int
    example: TrainingExample | None = None
    rejected: str | None = None  # preference formats: the non-preferred answer
    refusal: Refused | None = None
    skipped: str | None = None  # a record that is not training data by its own type (a LangSmith chain run)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of each non-blank line; an unparseable line yields its ``Refused`` instead."""
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except ValueError as exc:
                yield number, Refused(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"not JSON: {exc}")


def object_lines(path: Path, build: Callable[[int, dict[str, Any]], Record]) -> Iterator[Record]:
    """One record per non-blank JSONL line: ``build(line number, object)`` for a JSON object, the line's refusal
    (E7015) for one that is not JSON or not an object, or the ``Refused`` that ``build`` raises."""
    for number, row in json_lines(path):
        try:
            if isinstance(row, Refused):
                raise row
            if not isinstance(row, dict):
                raise Refused(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, "the line is not a JSON object")
            yield build(number, row)
        except Refused as refusal:
            yield Record(number, refusal=refusal)


def json_records(path: Path, keys: tuple[str, ...]) -> Iterator[tuple[int, Any]]:
    """Records of an export that is one JSON document (an array, one object, or an object holding the array under
    one of ``keys``), numbered from 1; a file that is not one JSON document is read as JSONL."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        yield from json_lines(path)
        return
    if isinstance(doc, dict):
        inner = next((doc[k] for k in keys if isinstance(doc.get(k), list)), None)
        doc = inner if inner is not None else [doc]
    if not isinstance(doc, list):
        yield 1, Refused(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, "the file holds neither records nor a list of them")
        return
    yield from enumerate(doc, start=1)


def _content(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: only text parts mean anything to a text model
        return "".join(str(p.get("text", "")) for p in value if isinstance(p, dict) and p.get("type") in ("text", None))
    raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{where}: content is neither text nor content parts")


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise Refused(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"{where}: tool_calls is not a list")
    out = []
    for k, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise Refused(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"{where}: tool call {k} has no function name")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                json.loads(args or "{}")
            except ValueError:
                raise Refused(L07ErrorCode.MALFORMED_STEP_STRUCTURE,
                              f"{where}: tool call {fn['name']!r} arguments are not JSON") from None
        call_id = call.get("id") or f"call_{k}"
        out.append({"id": str(call_id), "type": "function",
                    "function": {"name": fn["name"], "arguments": canonical_arguments(args or "{}")}})
    return out


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages, checked and reduced to the fields training reads (role, content, tool_calls,
    tool_call_id, name).

    Raises:
        Refused: E7010 without messages, E7110 for a malformed message or no assistant turn after the last user
            turn, E7012 for a malformed tool call.
    """
    if raw is None or raw == []:
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "no messages")
    if not isinstance(raw, list):
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "messages is not a list")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{where}: not a message with a known role")
        role = "system" if m["role"] == "developer" else m["role"]
        msg: dict[str, Any] = {"role": role, "content": _content(m.get("content"), where) or ""}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], where)
        if role == "tool":
            if not m.get("tool_call_id"):
                raise Refused(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"{where}: tool turn without tool_call_id")
            msg["tool_call_id"] = str(m["tool_call_id"])
        if role == "assistant" and not msg["content"].strip() and not msg.get("tool_calls"):
            raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{where}: empty assistant turn")
        out.append(msg)
    if out[-1]["role"] != "assistant":
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "no assistant turn at the end to learn")
    if not any(m["role"] == "user" for m in out):
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "no user turn")
    return out


def tool_schemas(raw: Any) -> list[dict[str, Any]] | None:
    """OpenAI tool schemas, checked (E7110 for one without a function name)."""
    if raw in (None, []):
        return None
    if not isinstance(raw, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in raw):
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "tools must be OpenAI function tool schemas")
    return [dict(t) for t in raw]


def chat_example(source: Source, number: int, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 score: float | None = None, extra: dict[str, Any] | None = None) -> TrainingExample:
    """The example of one chat: its messages and tools as training reads them, plus provenance.

    ``input_text`` is the conversation before the final assistant turn (user, tool results), ``output_text`` that
    turn as the model writes it, so duplicates and content scans see what is trained on.

    Args:
        score: The record's own quality score (0-100), when the source has one; otherwise ``source.quality``.
    """
    final = messages[-1]
    context = [m for m in messages[:-1] if m["role"] in ("user", "tool") or m.get("tool_calls")]
    input_text = "\n".join(assistant_text(m) if m["role"] == "assistant" else m["content"] for m in context).strip()
    quality = score if score is not None else source.quality
    tool_steps = sum(len(m.get("tool_calls") or []) for m in messages)
    names = {c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    provenance = {"format": source.format, "file": source.file_name, "sha256": source.sha256, "line": number,
                  **(extra or {})}
    return TrainingExample(
        source_type=ExampleSource.IMPORTED,
        input_text=input_text or final["content"],
        output_text=assistant_text(final),
        quality_score=quality if quality is not None else 0.0,
        confidence=1.0 if quality is not None else None,
        metadata={"agent_id": source.agent_id, "task_type": source.task_type, "import": provenance,
                  "score_origin": "record" if score is not None else ("declared" if quality is not None else "none")},
        execution_id=f"{source.format}:{source.sha256[:16]}:{number}",
        messages=messages,
        tools=tools,
        execution_length=tool_steps,
        tool_count=len(names),
        task_complexity="single_step" if tool_steps == 0 else ("multi_step" if tool_steps <= 3 else "reasoning"),
        extracted_by=f"l07-import/{source.format}",
    )
