"""The one tool-call format: how tools and tool calls are written into a model's prompt, and how a generation is
read back into OpenAI-schema ``tool_calls``.

Training data, validation and ``l07 serve-model`` all go through this module, so a model is taught, judged and
served in one format. When the tokenizer's chat template supports tools (it references ``tools``), the template
renders them. Otherwise (SmolLM2's ChatML template, for instance) the Hermes format is used, the one vLLM's
``hermes`` parser, llama.cpp and Ollama templates read:

- the tool schemas go into the system turn inside ``<tools></tools>``, one compact JSON function schema per line,
  after a two-line instruction (shorter than Hermes's own, for CPU cost);
- an assistant tool call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` after any text;
- a ``tool`` turn becomes a ``user`` turn holding ``<tool_response>\\n...\\n</tool_response>``.

Parsing is forgiving about whitespace and accepts ``parameters`` for ``arguments`` (Llama 3.1 style); it never
raises on model output: text that is not a well-formed call stays content.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# Short on purpose: on a CPU every prompt token is paid for in every training step and request, and an agent's tool
# schemas already take hundreds. The tags are Hermes's, so parsers that read ``<tool_call>`` blocks still work.
TOOL_PREAMBLE = (
    "You can call these tools (JSON schemas):\n<tools>\n{tools}\n</tools>\n"
    "To call one, write <tool_call>{{\"name\": <tool name>, \"arguments\": <JSON object>}}</tool_call>."
)
# Bounded and non-nested: a block cannot make the scan super-linear (no nested quantifiers over the same text).
_BLOCK = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)

Message = dict[str, Any]
# What training and evaluation consume: chat messages, or ``{"messages": [...], "tools": [...]}`` (OpenAI's
# fine-tuning line) when the conversation offered tools.
Row = list[Message] | dict[str, Any]


def canonical_arguments(arguments: Any) -> str:
    """Arguments as compact JSON with sorted keys: the string OpenAI's schema carries, stable for comparison."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def tool_call(name: str, arguments: Any, call_id: str | None = None) -> dict[str, Any]:
    """One OpenAI-schema tool call (``id``, ``type: function``, ``function.name``, ``function.arguments`` JSON)."""
    args = canonical_arguments(arguments)
    call_id = call_id or "call_" + hashlib.sha256(f"{name}:{args}".encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's own chat template renders a ``tools`` argument."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def _call_text(call: dict[str, Any]) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            pass
    # Name first, as the Hermes format writes it (a forced tool_choice prefills up to the arguments).
    body = f'{{"name": {json.dumps(fn["name"], ensure_ascii=False)}, "arguments": ' \
           f'{json.dumps(args, ensure_ascii=False, sort_keys=True)}}}'
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def assistant_text(message: Message) -> str:
    """An assistant turn as the model writes it: its text, then one block per tool call."""
    parts = [message.get("content") or ""]
    parts += [_call_text(c) for c in message.get("tool_calls") or []]
    return "\n".join(p for p in parts if p)


def tool_schema_text(tool: dict[str, Any]) -> str:
    """One tool schema as its line in ``<tools>``: the function object (name, description, parameters) as compact
    JSON with sorted keys (the ``{"type": "function"}`` wrapper and blanks would cost tokens and say nothing)."""
    fn = tool.get("function", tool)
    return json.dumps(fn, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def to_plain_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[Message]:
    """``messages`` (with ``tool_calls`` and ``tool`` turns) as system/user/assistant turns of plain text in the
    Hermes format, for templates without tool support."""
    out: list[Message] = []
    if tools:
        preamble = TOOL_PREAMBLE.format(tools="\n".join(tool_schema_text(t) for t in tools))
        if messages and messages[0].get("role") == "system":
            out.append({"role": "system", "content": f"{messages[0].get('content') or ''}\n\n{preamble}".lstrip()})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": preamble})
    for m in messages:
        role = m.get("role")
        if role == "tool":
            response = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n" + response}
            else:
                out.append({"role": "user", "content": response})
        elif role == "assistant":
            out.append({"role": "assistant", "content": assistant_text(m)})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    return out


def render_chat(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` and ``tools`` through the tokenizer's template (natively when it supports
    tools, in the Hermes format otherwise); ``### Input:`` framing for a tokenizer with no template."""
    if getattr(tokenizer, "chat_template", None):
        if tools and template_supports_tools(tokenizer):
            return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
        return tokenizer.apply_chat_template(to_plain_messages(messages, tools), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    plain = to_plain_messages(messages, tools)
    user = "\n".join(m["content"] for m in plain if m["role"] != "assistant")
    return f"### Input:\n{user}\n### Output:\n"


def parse_generation(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """A generation split into its text content and OpenAI-schema tool calls.

    ``<tool_call>`` blocks whose body is a JSON object with a ``name`` become calls; a generation that is nothing
    but such an object (no tags) is one call too. Everything else stays content.
    """
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    pos = 0
    for match in _BLOCK.finditer(text):
        call = _as_call(match.group(1))
        if call is None:
            continue
        kept.append(text[pos:match.start()])
        pos = match.end()
        calls.append(call)
    kept.append(text[pos:])
    content = "".join(kept).strip()
    if not calls and content.startswith("{") and content.endswith("}"):
        bare = _as_call(content)
        if bare is not None:
            return None, [bare]
    return (content or None), calls


def _as_call(body: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return tool_call(obj["name"], args)


def same_calls(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    """Same tool calls in the same order: equal names and equal parsed JSON arguments (ids ignored; 152 and 152.0
    are the same number)."""
    if len(expected) != len(got):
        return False
    for a, b in zip(expected, got):
        fa, fb = a.get("function", a), b.get("function", b)
        if fa.get("name") != fb.get("name"):
            return False
        if _loaded(fa.get("arguments", {})) != _loaded(fb.get("arguments", {})):
            return False
    return True


def _loaded(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def split_row(row: Row) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """A row's messages and tool schemas (None without tools)."""
    if isinstance(row, dict):
        return list(row["messages"]), (list(row["tools"]) if row.get("tools") else None)
    return list(row), None


def with_messages(row: Row, messages: list[Message]) -> Row:
    """``row`` with other messages and the same tools."""
    _, tools = split_row(row)
    return {"messages": messages, "tools": tools} if tools else messages


def assistant_turns(row: Row) -> list[tuple[Row, str]]:
    """One ``(prompt, expected)`` per assistant turn of a conversation: everything before the turn (with the tools),
    and the turn as the model writes it. Each turn is a decision the model makes on its own (call this tool, then
    answer from its result), so each is a held-out case."""
    messages, _ = split_row(row)
    return [(with_messages(row, messages[:i]), assistant_text(m))
            for i, m in enumerate(messages) if i > 0 and m.get("role") == "assistant"]


def plain_messages(row: Row) -> list[Message]:
    """A row as system/user/assistant turns of plain text in the Hermes format (tools in the system turn), for
    consumers that read text turns only (distillation, per-example losses)."""
    messages, tools = split_row(row)
    return to_plain_messages(messages, tools)
