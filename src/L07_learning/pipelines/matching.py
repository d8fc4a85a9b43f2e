"""What counts as a correct answer: one definition for the SFT job's own ``eval_accuracy`` and the validator's gates.

An expected answer that is an agent trace (``Step n: tool(params) -> ...`` lines and a final ``Answer:``) is matched
as a trace; anything else by exact match of the normalised text (case, runs of blanks and a trailing full stop
ignored). Cases may also name ``contains``, ``regex`` or ``similarity`` explicitly (golden suites do).
"""

from __future__ import annotations

import difflib
import re

_WS = re.compile(r"\s+")
_STEP_RE = re.compile(r"^Step \d+:\s*(?P<tool>[\w.\-]+)\((?P<params>.*)\)\s*->", re.M)
_ANSWER_RE = re.compile(r"^Answer:\s*(?P<answer>.*)$", re.M)


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
    answers = _ANSWER_RE.findall(text)
    return calls, (answers[-1].strip() if answers else None)


def infer_match_mode(expected: str) -> str:
    """``trace`` for agent-trace outputs (tool steps plus ``Answer:``), else ``exact``."""
    calls, answer = parse_trace_output(expected)
    return "trace" if answer is not None and calls else "exact"


def score_answer(got: str, expected: str, mode: str, similarity_threshold: float = 0.8) -> tuple[bool, float]:
    """(correct, score) for one answer under a match mode.

    Modes: ``exact`` (normalised), ``contains``, ``regex``, ``similarity`` (free text), and ``trace``: the same tool
    calls with the same parameters in the same order, and the same final answer. The score of a trace is the share
    of those parts that match, so partial credit shows in A/B comparisons while correctness stays all-or-nothing.
    """
    if mode == "trace":
        exp_calls, exp_answer = parse_trace_output(expected)
        got_calls, got_answer = parse_trace_output(got)
        parts = [a == b for a, b in zip(exp_calls, got_calls)] + [False] * abs(len(exp_calls) - len(got_calls))
        parts.append(got_answer is not None and exp_answer is not None
                     and normalise_answer(got_answer) == normalise_answer(exp_answer))
        return all(parts), sum(parts) / len(parts)
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


def answer_matches(got: str, expected: str) -> bool:
    """Correctness of ``got`` under the mode ``expected`` implies (``infer_match_mode``), as the validator scores a
    held-out example without an explicit ``match_mode``."""
    return score_answer(got, expected, infer_match_mode(expected))[0]
