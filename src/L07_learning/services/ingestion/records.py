"""Validated ``data`` payloads of the four consumed event kinds (contract §1.2–§1.5).

Each ``parse_*`` function takes a ``CloudEvent`` and returns a plain dict record (JSON-ready, so it can wait in the
pending-join table as it is) or raises ``L07Error`` with the contract's code: E7010 for a missing required field,
E7110 for a wrong type or out-of-range value, E7012 for a malformed step, E7018 for too many steps. Plain dict checks
instead of a Pydantic model per kind keep the hot path at a few microseconds per event.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from ...events.cloudevent import CloudEvent
from ...models.error_codes import L07Error, L07ErrorCode
from ...store.repositories.joins import PLAN_PREFIX

OUTCOMES = frozenset({"success", "failure", "constraint_violation", "timeout", "error"})
FAILURE_CLASSES = frozenset({"success", "constraint_violation", "timeout", "error"})
ACTION_TYPES = frozenset({"tool_call", "reasoning", "final_answer"})

# Strings that become bounded columns (store/tables.py): longer values are refused here as E7110, because on
# PostgreSQL one of them would fail the whole transaction of its batch ("value too long"). The pending-join key
# of a planning record is PLAN_PREFIX + execution_id, within String(512).
MAX_LENGTHS = {
    "execution_id": 512 - len(PLAN_PREFIX),
    "agent_id": 256,
    "task_type": 128,
    "domain": 64,
    "plan_id": 256,
    "evaluation_id": 512,
    "request_id": 512,
    "model_name": 256,
    "metadata.model_id": 256,
    "metadata.model_name": 256,
}


def _missing(kind: str, field: str) -> L07Error:
    return L07Error(L07ErrorCode.TRACE_MISSING_FIELDS, f"{kind} event is missing required field {field!r}", field=field)


def _mismatch(kind: str, field: str, why: str) -> L07Error:
    return L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{kind} field {field!r} {why}", field=field)


def _data(event: CloudEvent, kind: str) -> dict[str, Any]:
    if event.data is None:
        raise _missing(kind, "data")
    if not isinstance(event.data, dict):
        raise _mismatch(kind, "data", "must be an object")
    return event.data


def _str(d: dict[str, Any], key: str, kind: str, required: bool = False) -> str | None:
    v = d.get(key)
    if v is None or v == "":
        if required:
            raise _missing(kind, key)
        return None
    if not isinstance(v, str):
        raise _mismatch(kind, key, "must be a string")
    return _bounded(v, kind, key)


def _bounded(v: str, kind: str, key: str) -> str:
    limit = MAX_LENGTHS.get(key)
    if limit is not None and len(v) > limit:
        raise _mismatch(kind, key, f"is {len(v)} characters, at most {limit}")
    return v


def _number(v: Any, kind: str, field: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _mismatch(kind, field, "must be a number")
    f = float(v)
    if not math.isfinite(f):
        raise _mismatch(kind, field, "must be finite")
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise _mismatch(kind, field, f"must be in [{lo}, {hi}]")
    return f


def _count(v: Any, kind: str, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _mismatch(kind, field, "must be an integer >= 0")
    return v


def _time(event: CloudEvent) -> str | None:
    return event.time.isoformat() if isinstance(event.time, datetime) else None


def _steps(raw: Any, kind: str, max_steps: int) -> list[dict[str, Any]]:
    if raw is None:
        raise _missing(kind, "execution_trace")
    if not isinstance(raw, list):
        raise _mismatch(kind, "execution_trace", "must be a list")
    if len(raw) < 1:
        raise _missing(kind, "execution_trace")
    if len(raw) > max_steps:
        raise L07Error(L07ErrorCode.TRACE_LIMIT_EXCEEDED, f"trace has {len(raw)} steps, limit {max_steps}", steps=len(raw))
    out: list[dict[str, Any]] = []
    for i, s in enumerate(raw, 1):
        if not isinstance(s, dict):
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} is not an object", step=i)
        action_type = s.get("action_type", "tool_call")
        if action_type not in ACTION_TYPES:
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} has unknown action_type {action_type!r}", step=i)
        tool = s.get("action", s.get("tool_name"))
        if action_type == "tool_call" and (not isinstance(tool, str) or not tool):
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} has no action/tool name", step=i)
        params = s.get("parameters", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} parameters is not an object", step=i)
        number = s.get("step", s.get("step_id", i))
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} has an invalid step number", step=i)
        output = s.get("output")
        if output is not None and not isinstance(output, (str, dict, list, int, float)):
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} output has an invalid type", step=i)
        reasoning = s.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, str):
            raise L07Error(L07ErrorCode.MALFORMED_STEP_STRUCTURE, f"step {i} reasoning must be a string", step=i)
        if "duration_ms" in s and s["duration_ms"] is not None:
            _count(s["duration_ms"], kind, f"execution_trace[{i}].duration_ms")
        content = s.get("content")
        out.append(
            {
                "step": number,
                "action_type": action_type,
                "tool": tool if isinstance(tool, str) else None,
                "parameters": params,
                "output": output,
                "reasoning": reasoning or "",
                "content": content if isinstance(content, str) else None,
            }
        )
    return out


MAX_TOOLS = 128
MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool"})


def _tools(raw: Any, kind: str) -> list[dict[str, Any]]:
    """``task_definition.tools``: OpenAI tool schemas (``{"type": "function", "function": {"name", ...}}``)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise _mismatch(kind, "task_definition.tools", f"must be a list of at most {MAX_TOOLS} tool schemas")
    for i, t in enumerate(raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _mismatch(kind, f"task_definition.tools[{i}]", "must be {'type': 'function', 'function': {'name': ...}}")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise _mismatch(kind, f"task_definition.tools[{i}].function.parameters", "must be an object")
    return raw


def _content(v: Any, kind: str, field: str) -> str | None:
    """Message content: a string, null, or OpenAI's list of parts (their text parts are joined)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(p, dict) for p in v):
        return "".join(p["text"] for p in v if p.get("type") == "text" and isinstance(p.get("text"), str))
    raise _mismatch(kind, field, "must be a string, null or a list of content parts")


def _messages(raw: Any, kind: str, limit: int) -> list[dict[str, Any]]:
    """``messages``: the raw transcript in OpenAI's chat schema, used verbatim for training."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw or len(raw) > limit:
        raise _mismatch(kind, "messages", f"must be a non-empty list of at most {limit} messages")
    out = []
    for i, m in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
            raise _mismatch(kind, field, f"must be an object with role in {sorted(MESSAGE_ROLES)}")
        msg: dict[str, Any] = {"role": m["role"], "content": _content(m.get("content"), kind, f"{field}.content")}
        calls = m.get("tool_calls")
        if calls is not None:
            if m["role"] != "assistant" or not isinstance(calls, list):
                raise _mismatch(kind, f"{field}.tool_calls", "must be a list on an assistant message")
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if (not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]
                        or not isinstance(fn.get("arguments", "{}"), (str, dict))):
                    raise _mismatch(kind, f"{field}.tool_calls[{j}]",
                                    "must be {'function': {'name': ..., 'arguments': JSON}}")
            msg["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if m.get(key) is not None:
                if not isinstance(m[key], str):
                    raise _mismatch(kind, f"{field}.{key}", "must be a string")
                msg[key] = m[key]
        out.append(msg)
    if not any(m["role"] == "user" for m in out):
        raise _mismatch(kind, "messages", "must hold a user message")
    return out


def parse_trace(event: CloudEvent, max_steps: int = 1000) -> dict[str, Any]:
    """Validate an execution-trace event (both spec shapes and the ``task.completed`` alias)."""
    kind = "trace"
    d = _data(event, kind)
    execution_id = _str(d, "execution_id", kind) or (event.subject if event.is_alias else None)
    if not execution_id:
        raise _missing(kind, "execution_id")
    _bounded(execution_id, kind, "execution_id")
    agent_id = _str(d, "agent_id", kind, required=True)
    task_def = d.get("task_definition")
    if task_def is not None and not isinstance(task_def, dict):
        raise _mismatch(kind, "task_definition", "must be an object")
    task_def = task_def or {}
    goal = task_def.get("goal", d.get("task_description"))
    if goal is None or goal == "":
        raise _missing(kind, "task_definition.goal")
    if not isinstance(goal, str):
        raise _mismatch(kind, "task_definition.goal", "must be a string")
    trace = d.get("trace")
    if trace is not None and not isinstance(trace, dict):
        raise _mismatch(kind, "trace", "must be an object")
    trace = trace or {}
    steps = _steps(d.get("execution_trace", trace.get("steps")), kind, max_steps)
    final_answer = d.get("final_answer")
    if final_answer is None:
        finals = [s for s in steps if s["action_type"] == "final_answer" and s["content"]]
        final_answer = finals[-1]["content"] if finals else None
    if final_answer is None or final_answer == "":
        raise _missing(kind, "final_answer")
    if not isinstance(final_answer, str):
        raise _mismatch(kind, "final_answer", "must be a string")
    system_prompt = task_def.get("system_prompt")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise _mismatch(kind, "task_definition.system_prompt", "must be a string")
    tools = _tools(task_def.get("tools"), kind)
    messages = _messages(d.get("messages"), kind, 2 * max_steps + 8)
    outcome = d.get("outcome")
    if outcome is None:
        raise _missing(kind, "outcome")
    if outcome not in OUTCOMES:
        raise _mismatch(kind, "outcome", f"must be one of {sorted(OUTCOMES)}")
    context = task_def.get("context", d.get("task_context"))
    context_valid = context is None or isinstance(context, dict)
    meta = d.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise _mismatch(kind, "metadata", "must be an object")
    meta = meta or {}
    if "execution_duration_seconds" in meta:
        _number(meta["execution_duration_seconds"], kind, "metadata.execution_duration_seconds", lo=0)
    for key in ("tool_calls", "tokens_used"):
        if key in meta:
            _count(meta[key], kind, f"metadata.{key}")
    # Which model served the execution (contract §9): feeds the per-model outcome series, not the example.
    served_by: dict[str, str | None] = {}
    for key in ("model_id", "model_name"):
        value = meta.get(key)
        if value is not None and not isinstance(value, str):
            raise _mismatch(kind, f"metadata.{key}", "must be a string")
        served_by[key] = _bounded(value, kind, f"metadata.{key}") if value else None
    for key in ("total_duration_ms", "tool_call_count"):
        if key in trace:
            _count(trace[key], kind, f"trace.{key}")
    return {
        "execution_id": execution_id,
        "agent_id": agent_id,
        "task_id": _str(d, "task_id", kind),
        "task_type": _str(d, "task_type", kind),
        "domain": _str(d, "domain", kind),
        "goal": goal,
        "context": context if context_valid and context else {},
        "context_invalid": not context_valid,
        "steps": steps,
        "final_answer": final_answer,
        "system_prompt": system_prompt or None,
        "tools": tools,
        "messages": messages,
        "outcome": outcome,
        "tokens_used": meta.get("tokens_used"),
        "duration_s": meta.get("execution_duration_seconds"),
        "end_time": trace.get("end_time") if isinstance(trace.get("end_time"), str) else _time(event),
        "model_id": served_by["model_id"],
        "model_name": served_by["model_name"],
    }


def parse_score(event: CloudEvent) -> dict[str, Any]:
    """Validate a quality-score event, applying the alias fallbacks of contract §1.3."""
    kind = "score"
    d = _data(event, kind)
    execution_id = _str(d, "execution_id", kind)
    if not execution_id and event.is_alias:
        execution_id = event.subject or _str(d, "task_id", kind)
    if not execution_id:
        raise _missing(kind, "execution_id")
    _bounded(execution_id, kind, "execution_id")
    raw_q = d.get("quality_score")
    if raw_q is None and event.is_alias:
        raw_q = d.get("overall_score", d.get("score"))
    if raw_q is None:
        raise _missing(kind, "quality_score")
    quality = _number(raw_q, kind, "quality_score", 0, 100)
    raw_c = d.get("confidence_level")
    if raw_c is None and event.is_alias:
        raw_c = d.get("confidence")
    if raw_c is None and not event.is_alias:
        raise _missing(kind, "confidence_level")
    confidence = None if raw_c is None else _number(raw_c, kind, "confidence_level", 0, 1)
    failure = d.get("failure_classification")
    if failure is not None and failure not in FAILURE_CLASSES:
        raise _mismatch(kind, "failure_classification", f"must be one of {sorted(FAILURE_CLASSES)} or null")
    method = d.get("evaluation_method", "automated") or "automated"
    if method not in ("automated", "human_review"):
        raise _mismatch(kind, "evaluation_method", "must be automated or human_review")
    metrics = d.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise _mismatch(kind, "metrics", "must be an object")
    for k, v in metrics.items():
        _number(v, kind, f"metrics.{k}", 0, 1)
    dims = d.get("dimensions") or {}
    if not isinstance(dims, dict):
        raise _mismatch(kind, "dimensions", "must be an object")
    for k, v in dims.items():
        _number(v, kind, f"dimensions.{k}", 0, 100)
    return {
        "execution_id": execution_id,
        "evaluation_id": _str(d, "evaluation_id", kind) or event.id,
        "quality_score": quality,
        "confidence": confidence,
        "task_type": _str(d, "task_type", kind),
        "failure_classification": failure,
        "evaluation_method": method,
        "metrics": metrics,
        "dimensions": dims,
        "reference_output": _str(d, "reference_output", kind),
        "timestamp": _str(d, "timestamp", kind) or _time(event),
    }


def parse_plan(event: CloudEvent) -> dict[str, Any]:
    """Validate a planning-decision event (contract §1.4)."""
    kind = "plan"
    d = _data(event, kind)
    plan_id = _str(d, "plan_id", kind, required=True)
    pt = d.get("planning_trace")
    if pt is None:
        raise _missing(kind, "planning_trace")
    if not isinstance(pt, dict):
        raise _mismatch(kind, "planning_trace", "must be an object")
    for key in ("search_depth", "nodes_explored", "constraints_checked", "final_plan_length"):
        if key in pt:
            _count(pt[key], kind, f"planning_trace.{key}")
    if "search_duration_ms" in pt:
        _number(pt["search_duration_ms"], kind, "planning_trace.search_duration_ms", lo=0)
    constraints = d.get("constraints") or []
    if not isinstance(constraints, list) or not all(isinstance(c, dict) for c in constraints):
        raise _mismatch(kind, "constraints", "must be a list of objects")
    for c in constraints:
        if "priority" in c and (isinstance(c["priority"], bool) or not isinstance(c["priority"], int) or c["priority"] < 1):
            raise _mismatch(kind, "constraints.priority", "must be an integer >= 1")
    outcome = d.get("outcome")
    if outcome is not None and not isinstance(outcome, dict):
        raise _mismatch(kind, "outcome", "must be an object")
    steps = d.get("plan_steps")
    if steps is not None and (not isinstance(steps, list) or not all(isinstance(s, str) for s in steps)):
        raise _mismatch(kind, "plan_steps", "must be a list of strings")
    return {
        "plan_id": plan_id,
        "execution_id": _str(d, "execution_id", kind),
        "goal": _str(d, "goal", kind),
        "plan_steps": steps or [],
        "task_type": _str(d, "task_type", kind),
        "agent_id": _str(d, "agent_id", kind),
        "constraints": constraints,
        "planning_trace": pt,
        "outcome": outcome,
    }


def parse_response(event: CloudEvent) -> dict[str, Any]:
    """Validate a model-response event (contract §1.5)."""
    kind = "response"
    d = _data(event, kind)
    usage = d.get("token_usage")
    if usage is None:
        raise _missing(kind, "token_usage")
    if not isinstance(usage, dict):
        raise _mismatch(kind, "token_usage", "must be an object")
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if key not in usage:
            raise _missing(kind, f"token_usage.{key}")
        _count(usage[key], kind, f"token_usage.{key}")
    if "latency_ms" not in d:
        raise _missing(kind, "latency_ms")
    execution_id = _str(d, "execution_id", kind)
    return {
        "request_id": _bounded(_str(d, "request_id", kind, required=True), kind, "request_id"),  # type: ignore[arg-type]
        "model_name": _bounded(_str(d, "model_name", kind, required=True), kind, "model_name"),  # type: ignore[arg-type]
        "response": _str(d, "response", kind, required=True),
        "token_usage": usage,
        "latency_ms": _number(d["latency_ms"], kind, "latency_ms", lo=0),
        # Bounded: it keys the model outcome row (contract §9 production feedback).
        "execution_id": _bounded(execution_id, kind, "execution_id") if execution_id else None,
    }


def check_storable(value: Any, path: str = "data") -> None:
    """Refuse NUL characters, lone surrogates and non-finite numbers: PostgreSQL cannot store them (and the contract
    makes NaN/Inf a wrong value, §1.9), so such an event is invalid (E7110)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{path} contains a NUL character", field=path)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{path} is not valid Unicode", field=path) from None
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"{path} is not a finite number", field=path)
    elif isinstance(value, dict):
        for k, v in value.items():
            check_storable(k, path)
            check_storable(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_storable(v, f"{path}[{i}]")


def may_hold_unstorable(body: Any) -> bool:
    """Cheap pre-check on JSON text read by orjson (so without non-finite numbers): NUL and lone surrogates can only
    come from a ``\\u0000``/``\\ud8..`` escape or a raw NUL, so text without a ``\\u`` escape or NUL needs no walk
    over the parsed record."""
    if isinstance(body, (bytes, bytearray)):
        return b"\\u" in body or b"\x00" in body
    if isinstance(body, str):
        return "\\u" in body or "\x00" in body or not body.isascii()
    return True
