"""LangSmith run exports: runs as JSONL (one run per line, as bulk exports write them), a JSON array, or the
``{"runs": [...]}`` page of the runs query.

An ``llm`` run is one model call: ``inputs.messages`` holds the chat (OpenAI-style dicts, or LangChain's serialised
messages with ``type`` human/ai/system/tool, possibly wrapped in one more list) and ``outputs`` the answer
(``choices[0].message``, ``generations[0][0].message`` or ``.text``, or ``output``). Other run types (chains, tools,
retrievers) are parts of a trace, not training data: they are counted as skipped. Feedback scores on 0-1
(``feedback_stats.<key>.avg``) give the example its quality.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07ErrorCode
from .records import Record, Refused, Source, chat_example, chat_messages, json_records, tool_schemas

_LC_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool",
             "HumanMessage": "user", "AIMessage": "assistant", "SystemMessage": "system", "ToolMessage": "tool"}


def _message(m: Any) -> Any:
    """One message in OpenAI's shape, from an OpenAI dict or a LangChain serialised message."""
    if not isinstance(m, dict) or "role" in m:
        return m
    if m.get("lc") == 1 and isinstance(m.get("kwargs"), dict):  # langchain-core's dumpd() form
        kind = (m.get("id") or [""])[-1]
        m = {**m["kwargs"], "type": kind}
    role = _LC_ROLES.get(str(m.get("type")))
    if role is None:
        return m
    out = {"role": role, "content": m.get("content")}
    calls = m.get("tool_calls") or (m.get("additional_kwargs") or {}).get("tool_calls")
    if calls:
        out["tool_calls"] = [c if "function" in c else
                             {"id": c.get("id"), "type": "function",
                              "function": {"name": c.get("name"), "arguments": c.get("args", {})}} for c in calls]
    if m.get("tool_call_id"):
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _answer(outputs: Any) -> Any:
    if not isinstance(outputs, dict):
        raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "the run has no outputs")
    if outputs.get("choices"):
        return _message(outputs["choices"][0].get("message"))
    generations = outputs.get("generations")
    if generations:
        first = generations[0][0] if isinstance(generations[0], list) else generations[0]
        if isinstance(first, dict) and first.get("message"):
            return _message(first["message"])
        if isinstance(first, dict) and first.get("text"):
            return {"role": "assistant", "content": first["text"]}
    output = outputs.get("output")
    if isinstance(output, str) and output.strip():
        return {"role": "assistant", "content": output}
    if isinstance(output, dict):
        return _message(output)
    raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "the run's outputs hold no answer")


def feedback_score(stats: Any) -> float | None:
    """The mean of the run's feedback averages on 0-1, scaled to 0-100, or None."""
    values = [s["avg"] for s in (stats.values() if isinstance(stats, dict) else [])
              if isinstance(s, dict) and isinstance(s.get("avg"), (int, float)) and not isinstance(s["avg"], bool)
              and math.isfinite(s["avg"]) and 0 <= s["avg"] <= 1]
    return 100 * sum(values) / len(values) if values else None


def read(path: Path, source: Source) -> Iterator[Record]:
    for number, run in json_records(path, ("runs", "data")):
        try:
            if isinstance(run, Refused):
                raise run
            if not isinstance(run, dict) or "run_type" not in run:
                raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "not a run (no run_type)")
            if run["run_type"] != "llm":
                yield Record(number, skipped=f"run_type {run['run_type']}")
                continue
            inputs = run.get("inputs") if isinstance(run.get("inputs"), dict) else {}
            sent = inputs.get("messages")
            if isinstance(sent, list) and len(sent) == 1 and isinstance(sent[0], list):
                sent = sent[0]  # chat models record a batch of one conversation
            if not sent:
                raise Refused(L07ErrorCode.TRACE_MISSING_FIELDS, "no inputs.messages")
            if not isinstance(sent, list):
                raise Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "inputs.messages is not a list")
            messages = chat_messages([_message(m) for m in sent] + [_answer(run.get("outputs"))])
            extra = (run.get("extra") or {}) if isinstance(run.get("extra"), dict) else {}
            tools = tool_schemas(inputs.get("tools") or (extra.get("invocation_params") or {}).get("tools"))
            yield Record(number, example=chat_example(
                source, number, messages, tools, feedback_score(run.get("feedback_stats")),
                {"run_id": run.get("id"), "trace_id": run.get("trace_id")}))
        except Refused as refusal:
            yield Record(number, refusal=refusal)
        except (AttributeError, IndexError, KeyError, TypeError) as exc:  # a shape no branch above expects
            yield Record(number, refusal=Refused(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                                                 f"malformed record: {exc.__class__.__name__}: {exc}"))
