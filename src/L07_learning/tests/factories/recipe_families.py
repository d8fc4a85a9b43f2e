"""Two tool-use task families written to test the training recipes (``benchmarks/recipes.py``, issue 19).

Neither is the demo generator's (``services/demo/sample_stream.py``) nor the loop tests' ``tool_choice``, and the
recipes were settled on the demo's data before these existed, so they measure what a user's new task would get.

``calendar``: a scheduling request; the agent calls ``create_event`` with the title, attendee, day, start time and
duration in minutes pulled out of the request (durations come phrased as "half an hour", "90 minutes", "an hour and
a half"...), then confirms: ``Answer: Booked <title> with <attendee> on <day> at <start>.``

``currency``: a conversion question; the agent calls ``convert_currency`` with the amount and the ISO codes of the
currencies the request names in words ("euros" -> EUR, "yen" -> JPY, "Swiss francs" -> CHF...), then confirms:
``Answer: Converted <amount> <FROM> to <TO>.``

Like the issue's task family, 300 executions each of which about 20% end with a wrong answer (a wrong argument)
that L06 scores low, so the quality filter drops them. Requests are phrased many ways so the near-duplicate rule
keeps them, and three agents share the work so no agent passes the filter's 50% source share. Every line is a
CloudEvent (L02 trace, L06 score), the same wire format as the loop tests' families.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from L07_learning.tests.factories.envelopes import envelope_maker

BASE_TIME = datetime(2026, 5, 4, 9, 0, 0, tzinfo=timezone.utc)
REMARKS = ["", " Thanks!", " Please confirm.", " It is for the team.", " Cheers.", " As soon as you can.",
           " No rush.", " Many thanks in advance."]

# --- calendar -----------------------------------------------------------------------------------------------------

CAL_TITLES = ["Budget review", "Design sync", "Quarterly planning", "Hiring panel", "Vendor call", "Retro",
              "Security briefing", "Roadmap chat", "Onboarding session", "Launch prep", "Customer demo", "Team lunch"]
CAL_PEOPLE = ["Priya", "Marco", "Aiko", "Tomas", "Leila", "Noah", "Freya", "Omar", "Sven", "Carmen", "Yusuf", "Ines",
              "Kofi", "Mila"]
CAL_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
CAL_TIMES = ["08:30", "09:00", "10:15", "11:00", "12:30", "13:45", "14:00", "15:30", "16:00", "17:15"]
CAL_DURATIONS = {30: ["half an hour", "30 minutes", "30 min"], 45: ["45 minutes", "three quarters of an hour"],
                 60: ["an hour", "one hour", "60 minutes"], 90: ["an hour and a half", "90 minutes"]}
CAL_TEMPLATES = [
    "Schedule '{title}' with {who} on {day} at {time} for {dur}.",
    "Please book {dur} with {who} on {day} at {time}, titled '{title}'.",
    "Can you put '{title}' in my calendar: {day} {time}, {dur}, with {who}?",
    "Set up a {dur} meeting called '{title}' with {who}, {day} at {time}.",
    "I need '{title}' with {who} on {day} starting {time}; it lasts {dur}.",
    "Create an event '{title}' for {day} at {time} ({dur}) and invite {who}.",
]

# --- currency -----------------------------------------------------------------------------------------------------

CUR_CODES = {"euros": "EUR", "US dollars": "USD", "yen": "JPY", "British pounds": "GBP", "Swiss francs": "CHF",
             "Swedish kronor": "SEK", "Indian rupees": "INR", "Mexican pesos": "MXN", "Canadian dollars": "CAD"}
CUR_TEMPLATES = [
    "How much is {amount} {src} in {dst}?",
    "Convert {amount} {src} to {dst}, please.",
    "What do {amount} {src} come to in {dst}?",
    "I have {amount} {src}; how many {dst} is that?",
    "Exchange {amount} {src} into {dst}.",
    "Tell me the value of {amount} {src} in {dst}.",
]

AGENTS = {"calendar": ["agent-cal-01", "agent-cal-02", "agent-cal-03"],
          "currency": ["agent-fx-01", "agent-fx-02", "agent-fx-03"]}
TASK_TYPES = {"calendar": "calendar_scheduling", "currency": "currency_conversion"}


def _calendar(rng: random.Random, wrong: bool) -> tuple[str, dict[str, Any], str, str]:
    title, who, day, time = rng.choice(CAL_TITLES), rng.choice(CAL_PEOPLE), rng.choice(CAL_DAYS), rng.choice(CAL_TIMES)
    minutes = rng.choice(sorted(CAL_DURATIONS))
    goal = rng.choice(CAL_TEMPLATES).format(title=title, who=who, day=day, time=time,
                                            dur=rng.choice(CAL_DURATIONS[minutes]))
    if wrong:  # the agent misread one field
        field = rng.choice(["day", "minutes", "who"])
        day = rng.choice([d for d in CAL_DAYS if d != day]) if field == "day" else day
        minutes = rng.choice([m for m in CAL_DURATIONS if m != minutes]) if field == "minutes" else minutes
        who = rng.choice([p for p in CAL_PEOPLE if p != who]) if field == "who" else who
    args = {"title": title, "attendee": who, "day": day, "start": time, "duration_minutes": minutes}
    return goal, args, "create_event", f"Booked {title} with {who} on {day} at {time}."


def _currency(rng: random.Random, wrong: bool) -> tuple[str, dict[str, Any], str, str]:
    src, dst = rng.sample(sorted(CUR_CODES), 2)
    amount = rng.choice([rng.randint(2, 99), rng.randint(100, 999), rng.randint(1, 40) * 50])
    goal = rng.choice(CUR_TEMPLATES).format(amount=amount, src=src, dst=dst)
    a, b = CUR_CODES[src], CUR_CODES[dst]
    if wrong:  # swapped direction or a wrong target currency
        a, b = (b, a) if rng.random() < 0.5 else (a, rng.choice([c for c in CUR_CODES.values() if c not in (a, b)]))
    args = {"amount": amount, "from": a, "to": b}
    return goal, args, "convert_currency", f"Converted {amount} {a} to {b}."


FAMILIES: dict[str, Callable[[random.Random, bool], tuple[str, dict[str, Any], str, str]]] = {
    "calendar": _calendar, "currency": _currency}


def family_lines(family: str, executions: int = 300, seed: int = 0, wrong_share: float = 0.2,
                 random_labels: bool = False) -> list[str]:
    """JSON lines (an L02 trace and its L06 score per execution) of one family, deterministic for a seed.

    Args:
        family: ``calendar`` or ``currency``.
        wrong_share: Share of executions with a wrong argument, scored 15-45 by L06 (the filter drops them).
        random_labels: Every execution gets the tool call and answer of another, randomly chosen execution of the
            family, scored high as if correct: nothing in a request predicts its output, so no training can improve
            on the base model (the no-improvement verdict's test).
    """
    make = FAMILIES[family]
    rng = random.Random(f"{family}:{seed}:{random_labels}")
    envelope = envelope_maker(rng, BASE_TIME)
    task_type = TASK_TYPES[family] + ("_random" if random_labels else "")
    wrong = [not random_labels and rng.random() < wrong_share for _ in range(executions)]
    tasks = [make(rng, w) for w in wrong]
    if random_labels:
        outputs = [t[1:] for t in tasks]
        rng.shuffle(outputs)
        tasks = [(t[0], *o) for t, o in zip(tasks, outputs)]
    lines: list[str] = []

    for i, ((goal, args, tool, answer), bad) in enumerate(zip(tasks, wrong)):
        exec_id = f"exec-{family}{'-rl' if random_labels else ''}-{seed}-{i:05d}"
        lines.append(envelope("com.agentic.execution.trace_generated", "https://agentic.local/layers/l02", {
            "execution_id": exec_id, "agent_id": AGENTS[family][i % 3], "task_id": f"task-{family}-{seed}-{i:05d}",
            "task_type": task_type, "task_definition": {"goal": goal + rng.choice(REMARKS), "context": {}},
            "execution_trace": [{"step": 1, "action": tool, "parameters": args, "output": "ok"}],
            "final_answer": answer, "outcome": "failure" if bad else "success",
            "metadata": {"execution_duration_seconds": round(rng.uniform(0.8, 4.0), 2), "tool_calls": 1,
                         "tokens_used": rng.randint(200, 600)}}))
        q = rng.uniform(15, 45) if bad else rng.uniform(82, 98)
        lines.append(envelope("com.agentic.evaluation.quality_score_computed", "https://agentic.local/layers/l06", {
            "execution_id": exec_id, "quality_score": round(q, 1),
            "confidence_level": round(rng.uniform(0.86, 0.99), 3),
            "task_type": task_type, "failure_classification": None if bad else "success",
            "evaluation_method": "automated", "metrics": {"goal_achievement_rate": round(q / 100, 3)},
            "dimensions": {"correctness": round(q, 1)}}))
    return lines


def held_out_goals(family: str, n: int = 60, seed: int = 10_000) -> list[dict[str, Any]]:
    """``n`` fresh requests of a family, never ingested, as the conversation a correct execution has (the
    extractor's form, ``services/ingestion/conversation.py``: the tool call, its ``ok`` result, the answer) with the
    tool schemas derived from the call: ``{"messages", "tools"}`` rows."""
    from L07_learning.services.ingestion.conversation import trace_messages, trace_tools

    rng = random.Random(f"{family}:held-out:{seed}")
    out = []
    for _ in range(n):
        goal, args, tool, answer = FAMILIES[family](rng, False)
        trace = {"goal": goal + rng.choice(REMARKS), "context": {}, "final_answer": answer,
                 "steps": [{"action_type": "tool_call", "tool": tool, "parameters": args, "output": "ok"}]}
        out.append({"messages": trace_messages(trace), "tools": trace_tools(trace)})
    return out
