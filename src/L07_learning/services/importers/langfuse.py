"""Langfuse trace exports: a trace downloaded as JSON (``trace-<id>.json``: the trace with its ``observations`` and
``scores``), or many traces exported from the traces table as a JSON array or JSONL.

Each observation of type ``GENERATION`` is one model call: its ``input`` holds the chat messages sent and its
``output`` the answer (a message, or a string), so each becomes one example. Numeric and boolean trace scores on
0-1 (or 0-100) give the examples their quality; a trace without scores gets the importer's declared quality.
Records are numbered by trace; the observation id is kept in the provenance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07ErrorCode
from .records import Record, Refused, Source, chat_example, chat_messages, json_records, tool_schemas


def trace_score(scores: Any) -> float | None:
    """The mean of the trace's numeric and boolean scores on 0-100 (0-1 values scaled), or None."""
    values = []
    for s in scores if isinstance(scores, list) else []:
        value = s.get("value") if isinstance(s, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if s.get("dataType", "NUMERIC") in ("NUMERIC", "BOOLEAN") and 0 <= value <= 100:
            values.append(value * 100 if value <= 1 else float(value))
    return sum(values) / len(values) if values else None


def _answer(output: Any) -> dict[str, Any]:
    if isinstance(output, str) and output.strip():
        return {"role": "assistant", "content": output}
    if isinstance(output, dict):
        if isinstance(output.get("choices"), list) and output["choices"]:
            output = output["choices"][0].get("message", {})
        if output.get("content") or output.get("tool_calls"):
            return {"role": "assistant", "content": output.get("content"), "tool_calls": output.get("tool_calls")}
    raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "generation output holds no assistant answer")


def _generation(obs: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    sent = obs.get("input")
    tools = None
    if isinstance(sent, dict):  # SDKs record {"messages": [...], "tools": [...]} as well as the bare list
        tools = tool_schemas(sent.get("tools"))
        sent = sent.get("messages")
    if not sent:
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, f"generation {obs.get('id')} has no input messages")
    if obs.get("output") in (None, "", {}):
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, f"generation {obs.get('id')} has no output")
    if not isinstance(sent, list):
        raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "generation input is not a list of messages")
    return chat_messages(list(sent) + [_answer(obs["output"])]), tools


def read(path: Path, source: Source) -> Iterator[Record]:
    for number, trace in json_records(path, ("data", "traces")):
        try:
            if isinstance(trace, Refused):
                raise trace
            if not isinstance(trace, dict) or not isinstance(trace.get("observations"), list):
                raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "not a trace with observations")
            generations = [o for o in trace["observations"] if isinstance(o, dict) and o.get("type") == "GENERATION"]
            if not generations:
                raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "the trace has no GENERATION observation")
        except Refused as refusal:
            yield Record(number, refusal=refusal)
        except (AttributeError, IndexError, KeyError, TypeError) as exc:  # a shape no branch above expects
            yield Record(number, refusal=Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                                                 f"malformed record: {exc.__class__.__name__}: {exc}"))
            continue
        score = trace_score(trace.get("scores"))
        for obs in generations:
            try:
                messages, tools = _generation(obs)
                yield Record(number, example=chat_example(
                    source, number, messages, tools, score,
                    {"trace_id": trace.get("id"), "observation_id": obs.get("id"), "model": obs.get("model")}))
            except Refused as refusal:
                yield Record(number, refusal=refusal)
