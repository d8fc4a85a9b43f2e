"""What counts as a correct answer: one definition for the SFT job's own ``eval_accuracy`` and the validator's gates.

An expected assistant turn that calls tools is matched on its calls (``tool_calls``): the same tool names with the
same parsed JSON arguments in the same order, read by ``models/tool_calls.parse_generation``, the parser serving
uses. An expected answer that is an agent trace (``Step n: tool(params) -> ...`` lines, or ``<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`` blocks, and a final ``Answer:``) is matched as a trace: the same tools in the same
order with the same *parsed* JSON arguments (key order, blanks and ``1`` vs ``1.0`` do not matter), and the same final
answer. Anything else is matched exactly on the normalised text (case, runs of blanks and a trailing full stop
ignored). An example may name ``contains``, ``regex`` or ``similarity`` in its metadata (``match_mode``; golden suites
do). :func:`match_mode_for` is the one rule both the job (``pipelines/sft_pipeline.py``) and the validator
(``services/model_validator.py``) use to pick the mode of a held-out example.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

from ..models.tool_calls import parse_generation, same_calls

_WS = re.compile(r"\s+")
_STEP_RE = re.compile(r"^Step \d+:\s*(?P<tool>[\w.\-]+)\((?P<params>.*)\)\s*->", re.M)
_ANSWER_RE = re.compile(r"^Answer:\s*(?P<answer>.*)$", re.M)
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(?P<body>\{.*?\})\s*</tool_call>", re.S)
MATCH_MODES = ("exact", "tool_calls", "trace", "contains", "regex", "similarity")


def normalise_answer(text: str) -> str:
    """Case- and whitespace-insensitive form used by exact matching."""
    return _WS.sub(" ", text.strip().casefold()).strip(" .")


def similarity(a: str, b: str) -> float:
    """Similarity in [0, 1] for free text (difflib ratio over normalised tokens)."""
    return difflib.SequenceMatcher(None, normalise_answer(a).split(), normalise_answer(b).split()).ratio()


def parse_trace_output(text: str) -> tuple[list[tuple[str, str]], str | None]:
    """Split an agent-trace answer (contract §1.10 rendering) into its tool calls and its final answer.

    Returns:
        ``([(tool, normalised params), ...], final answer or None)``. Tool *outputs* (after ``->``) are dropped:
        they are observations from the environment, not something the model decides.
    """
    calls = [(m.group("tool"), _WS.sub("", m.group("params"))) for m in _STEP_RE.finditer(text)]
    if not calls:
        calls = [c for c in map(_tool_call_block, _TOOL_CALL_RE.finditer(text)) if c is not None]
    answers = _ANSWER_RE.findall(text)
    return calls, (answers[-1].strip() if answers else None)


def _tool_call_block(m: re.Match[str]) -> tuple[str, str] | None:
    try:
        call = json.loads(m.group("body"))
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("arguments", {})
    if isinstance(args, str):  # OpenAI's wire form carries the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            pass
    return call["name"], json.dumps(args, sort_keys=True, separators=(",", ":"))


def _parsed_arguments(params: str) -> Any:
    """The call's arguments as JSON values (numbers compare by value), or the blank-free text when not JSON."""
    try:
        return json.loads(params)
    except ValueError:
        return params


def same_call(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Two tool calls are the same when the tool names are equal and their arguments parse to equal JSON values."""
    return a[0] == b[0] and (a[1] == b[1] or _parsed_arguments(a[1]) == _parsed_arguments(b[1]))


def infer_match_mode(expected: str) -> str:
    """``tool_calls`` for an assistant turn that calls tools, ``trace`` for a legacy agent-trace text (tool steps
    plus ``Answer:``), else ``exact``."""
    calls, answer = parse_trace_output(expected)
    if answer is not None and calls:
        return "trace"
    return "tool_calls" if parse_generation(expected)[1] else "exact"


def score_answer(got: str, expected: str, mode: str, similarity_threshold: float = 0.8) -> tuple[bool, float]:
    """(correct, score) for one answer under a match mode.

    Modes: ``exact`` (normalised), ``contains``, ``regex``, ``similarity`` (free text), ``tool_calls`` (an assistant
    turn: the same tool calls, names and parsed JSON arguments, in the same order), and ``trace``: the same tool
    calls with the same parameters in the same order, and the same final answer. The score of a trace is the share
    of those parts that match, so partial credit shows in A/B comparisons while correctness stays all-or-nothing.
    """
    if mode == "trace":
        exp_calls, exp_answer = parse_trace_output(expected)
        got_calls, got_answer = parse_trace_output(got)
        parts = [same_call(a, b) for a, b in zip(exp_calls, got_calls)] + [False] * abs(len(exp_calls) - len(got_calls))
        parts.append(got_answer is not None and exp_answer is not None
                     and normalise_answer(got_answer) == normalise_answer(exp_answer))
        return all(parts), sum(parts) / len(parts)
    if mode == "tool_calls":
        # The calls are the decision; text the model writes before them is free. ``models/tool_calls.py`` is the
        # one parser, so serving and judging read a generation the same way.
        expected_calls, got_calls = parse_generation(expected)[1], parse_generation(got)[1]
        if not expected_calls:
            ok = normalise_answer(got) == normalise_answer(expected)
            return ok, float(ok)
        ok = same_calls(expected_calls, got_calls)
        hits = sum(same_calls([a], [b]) for a, b in zip(expected_calls, got_calls))
        return ok, hits / max(len(expected_calls), len(got_calls))
    if mode == "exact":
        ok = normalise_answer(got) == normalise_answer(expected)
        return ok, float(ok)
    if mode == "contains":
        ok = normalise_answer(expected) in normalise_answer(got)
        return ok, float(ok)
    if mode == "regex":
        ok = re.search(expected, got) is not None
        return ok, float(ok)
    s = similarity(got, expected)
    return s >= similarity_threshold, s


def match_mode_for(expected: str, metadata: Mapping[str, Any] | None = None) -> str:
    """The match mode of one held-out example: its metadata's ``match_mode`` when it names a known one, else the mode
    its expected answer implies (:func:`infer_match_mode`). The job's ``eval_accuracy`` and the validator's held-out
    accuracy both call this, so they count the same answers as correct."""
    named = (metadata or {}).get("match_mode")
    return str(named) if named in MATCH_MODES else infer_match_mode(expected)


def answer_matches(got: str, expected: str, mode: str | None = None) -> bool:
    """Correctness of ``got`` under ``mode`` (default: the mode ``expected`` implies, :func:`match_mode_for`)."""
    return score_answer(got, expected, mode or match_mode_for(expected))[0]
