"""An execution trace as the conversation the agent had: OpenAI chat messages and the tool schemas it was offered.

A tuned model is a drop-in for the agent only if it learns the conversation the agent's runtime holds with a model:
the agent's own system prompt (or none), the user's goal, an assistant turn per tool call (``tool_calls`` in OpenAI's
schema), a ``tool`` turn with what the runtime returned, and the final answer. The tool's output sits in a ``tool``
turn, never in text the model writes, so a tuned model stops after a call instead of inventing its result.

Three optional trace fields (contract §1.2 extension) say what the agent really sent:

- ``task_definition.system_prompt``: the agent's system prompt (no system turn without it; tool schemas are rendered
  by ``models/tool_calls.py`` at training and serving time, not baked into the text here);
- ``task_definition.tools``: the OpenAI tool schemas in the request; without them the schemas are derived from the
  observed calls (tool names, parameter names, JSON types; a parameter is required when every call passed it);
- ``messages``: the raw transcript, used verbatim when present (the capture-then-tune approach).

A step's free-text ``reasoning`` is L02's annotation, not something the agent's model said, so it stays in the
example's ``reasoning`` field and out of the conversation.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ...events.json_text import canonical_dumps
from ...models.tool_calls import Message, assistant_text, tool_call

_STEP_LINE = re.compile(r"^Step \d+:\s*(?P<tool>[\w.\-]+)\((?P<params>.*)\)\s*(?:->\s?(?P<output>.*))?$")
_ANSWER_LINE = re.compile(r"^Answer:\s*(?P<answer>.*)$")
_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"), (dict, "object"))


def trace_input(trace: dict[str, Any]) -> str:
    """``goal`` plus ``\\nContext: <canonical json>`` when the context is non-empty (contract §1.10)."""
    ctx = trace.get("context") or {}
    return trace["goal"] + ("\nContext: " + canonical_dumps(ctx) if ctx else "")


def output_str(output: Any) -> str:
    """A step's output as the text of a ``tool`` turn (canonical JSON for structured outputs)."""
    if output is None:
        return ""
    return output if isinstance(output, str) else canonical_dumps(output)


def _json_type(value: Any) -> str:
    for py, name in _JSON_TYPES:
        if isinstance(value, py):
            return name
    return "null"


def derived_tools(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool schemas inferred from the calls a trace made, in order of first use."""
    seen: dict[str, dict[str, Any]] = {}
    for s in steps:
        if s["action_type"] != "tool_call":
            continue
        entry = seen.setdefault(s["tool"], {"calls": 0, "types": {}, "counts": {}})
        entry["calls"] += 1
        for key, value in s["parameters"].items():
            types = entry["types"].setdefault(key, [])
            t = _json_type(value)
            if t not in types:
                types.append(t)
            entry["counts"][key] = entry["counts"].get(key, 0) + 1
    tools = []
    for name, entry in seen.items():
        props = {}
        for key, types in entry["types"].items():
            if set(types) == {"integer", "number"}:
                types = ["number"]
            props[key] = {"type": types[0] if len(types) == 1 else types}
        required = [k for k, n in entry["counts"].items() if n == entry["calls"]]
        tools.append({"type": "function", "function": {
            "name": name, "parameters": {"type": "object", "properties": props, "required": required}}})
    return tools


def trace_tools(trace: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tool schemas the agent was offered: the trace's own, else derived from its calls (None when neither)."""
    return [dict(t) for t in trace.get("tools") or []] or derived_tools(trace["steps"]) or None


def reference_trace(text: str) -> tuple[list[dict[str, Any]], str] | None:
    """A reviewer's reference written as a trace (contract §1.10's ``Step n: tool({json}) -> output`` lines, then
    ``Answer: ...``) as tool steps and the answer; None for any other text."""
    steps: list[dict[str, Any]] = []
    answer = None
    for line in text.strip().splitlines():
        step, final = _STEP_LINE.match(line), _ANSWER_LINE.match(line)
        if answer is not None or not (step or final):
            return None
        if final:
            answer = final.group("answer").strip()
            continue
        try:
            params = json.loads(step.group("params") or "{}")
        except ValueError:
            return None
        if not isinstance(params, dict):
            return None
        steps.append({"action_type": "tool_call", "tool": step.group("tool"), "parameters": params,
                      "output": (step.group("output") or "").strip() or None})
    return (steps, answer) if answer else None


def corrected_trace(trace: dict[str, Any], reference: str) -> dict[str, Any]:
    """The trace as the reviewer says it should have gone: a reference written as a trace replaces the steps and
    the answer (and the tools are derived again unless the agent sent its own); any other reference replaces the
    whole reply with one answer turn."""
    parsed = reference_trace(reference)
    if parsed is None:
        return {**trace, "steps": [], "messages": [], "final_answer": reference, "tools": []}
    steps, answer = parsed
    return {**trace, "steps": steps, "messages": [], "final_answer": answer}


def trace_messages(trace: dict[str, Any]) -> list[Message]:
    """The trace as OpenAI chat messages ending with the final assistant answer.

    Args:
        trace: A parsed trace record (``ingestion/records.parse_trace``), or a ``corrected_trace`` of one.
    """
    if trace.get("messages"):
        messages = [_normalised(m) for m in trace["messages"]]
        if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
            messages.append({"role": "assistant", "content": trace["final_answer"]})
        return messages
    messages: list[Message] = []
    if trace.get("system_prompt"):
        messages.append({"role": "system", "content": trace["system_prompt"]})
    messages.append({"role": "user", "content": trace_input(trace)})
    n = 0
    for s in trace["steps"]:
        if s["action_type"] != "tool_call":
            continue
        n += 1
        call = tool_call(s["tool"], s["parameters"], call_id=f"call_{n}")
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "name": s["tool"],
                         "content": output_str(s["output"])})
    messages.append({"role": "assistant", "content": trace["final_answer"]})
    return messages


def transcript_text(messages: list[Message]) -> str:
    """Everything after the first user turn as the model reads it (assistant turns in the tool-call format, tool
    results in ``<tool_response>`` blocks): the example's ``output_text``, which the filter scans and hashes and
    preference pairs compare."""
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), -1)
    parts = []
    for m in messages[first_user + 1:]:
        role = m.get("role")
        if role == "assistant":
            parts.append(assistant_text(m))
        elif role == "tool":
            parts.append(f"<tool_response>\n{m.get('content') or ''}\n</tool_response>")
        else:
            parts.append(m.get("content") or "")
    return "\n".join(p for p in parts if p)


def _normalised(message: dict[str, Any]) -> Message:
    """A transcript message in the stored form: text content, canonical tool-call arguments."""
    out: Message = {"role": message["role"], "content": message.get("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = [tool_call(c["function"]["name"], c["function"].get("arguments", {}), c.get("id"))
                             for c in message["tool_calls"]]
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def merged_tools(tool_lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Derived schemas of many traces as one tool list, by name (sorted): each trace shows only the tool it called,
    while the agent offered all of them, so a model taught with one trace's list would learn to call the only tool
    in the request. Properties are unioned; a parameter stays required when every schema requires it."""
    by_name: dict[str, dict[str, Any]] = {}
    for tools in tool_lists:
        for t in tools:
            fn = t["function"]
            params = fn.get("parameters") or {"type": "object", "properties": {}, "required": []}
            if fn["name"] not in by_name:
                by_name[fn["name"]] = {"type": "function", "function": {
                    "name": fn["name"], "parameters": {"type": "object", "properties": dict(params.get("properties", {})),
                                                       "required": list(params.get("required", []))}}}
                continue
            merged = by_name[fn["name"]]["function"]["parameters"]
            for key, schema in params.get("properties", {}).items():
                merged["properties"].setdefault(key, schema)
            merged["required"] = [k for k in merged["required"] if k in params.get("required", [])]
    return [by_name[name] for name in sorted(by_name)]
