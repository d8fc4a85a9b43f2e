"""A support-desk agent's tool-use traces, as its runtime captured them (issue 20's acceptance family).

Written for the agent-ready measurement (``benchmarks/agent_tools.py``) and nothing else: not the demo generator's
tasks, not the loop tests' ``tool_choice``, not the recipe families. Unlike those, every trace carries what a real
agent runtime sends a model: its own system prompt and the OpenAI tool schemas (with descriptions) in
``task_definition``, so the tuned model is measured the way the agent will call it.

The agent has three tools and picks one per request: ``track_parcel(tracking_id)`` for a delivery question,
``refund_order(order_id, amount, currency)`` for a refund, ``reset_password(username, channel)`` for a locked
account. Arguments are pulled out of requests phrased many ways (tracking ids like ``ZX-48213``, order numbers,
amounts in words of currency, usernames, "by text"/"by email"). The tool's result comes back in a ``tool`` turn and
the agent answers from it. About 20% of executions pick a wrong argument and are scored low by L06.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

from L07_learning.tests.factories.envelopes import envelope_maker

SYSTEM_PROMPT = "You are Acme's support desk agent. Use exactly one tool per request, then tell the customer the result."
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "track_parcel", "description": "Where a parcel is, by tracking id",
        "parameters": {"type": "object", "properties": {"tracking_id": {"type": "string"}},
                       "required": ["tracking_id"]}}},
    {"type": "function", "function": {
        "name": "refund_order", "description": "Refund an order",
        "parameters": {"type": "object", "properties": {
            "order_id": {"type": "integer"}, "amount": {"type": "number"},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]}},
            "required": ["order_id", "amount", "currency"]}}},
    {"type": "function", "function": {
        "name": "reset_password", "description": "Send a password reset link",
        "parameters": {"type": "object", "properties": {
            "username": {"type": "string"}, "channel": {"type": "string", "enum": ["email", "sms"]}},
            "required": ["username", "channel"]}}},
]
CURRENCIES = {"euros": "EUR", "EUR": "EUR", "dollars": "USD", "USD": "USD", "pounds": "GBP", "GBP": "GBP"}
CHANNELS = {"by email": "email", "over email": "email", "by text": "sms", "via SMS": "sms", "as a text message": "sms"}
USERS = ["jdoe", "mkim", "alopez", "tnguyen", "rpatel", "sberg", "kowusu", "lrossi", "hsato", "efischer"]
TRACK = ["Where is my parcel {tid}?", "Package {tid} has not arrived yet, can you check?",
         "Any news on shipment {tid}?", "Tracking number {tid}: where is it now?", "Has {tid} been delivered?"]
REFUND = ["Please refund {amount} {cur} for order {oid}.", "I want my {amount} {cur} back for order #{oid}.",
          "Order {oid} was damaged, refund {amount} {cur} please.", "Can I get a refund of {amount} {cur} on order {oid}?"]
RESET = ["I am locked out, my username is {user}. Send the reset {ch}.", "Reset the password of {user} {ch}, please.",
         "User {user} forgot the password; send a link {ch}.", "Please help {user} log in again, reset {ch}."]
REMARKS = ["", " Thanks.", " Thank you!", " It is urgent.", " Regards, a customer."]
AGENTS = ["agent-support-01", "agent-support-02", "agent-support-03"]
TASK_TYPE = "support_desk"
BASE_TIME = datetime(2026, 9, 7, 8, 0, 0, tzinfo=timezone.utc)


def _request(rng: random.Random, wrong: bool) -> tuple[str, str, dict[str, Any], str, str]:
    """(goal, tool, arguments, tool result, final answer)."""
    kind = rng.choice(["track", "refund", "reset"])
    if kind == "track":
        tid = f"{rng.choice(['ZX', 'QA', 'LM', 'PT'])}-{rng.randint(10000, 99999)}"
        goal = rng.choice(TRACK).format(tid=tid)
        if wrong:
            tid = tid[:-1] + str((int(tid[-1]) + 1) % 10)
        city = rng.choice(["Lyon", "Porto", "Gdansk", "Leeds", "Graz"])
        return goal, "track_parcel", {"tracking_id": tid}, f"in transit, {city} hub", f"Your parcel is at the {city} hub."
    if kind == "refund":
        oid, amount = rng.randint(100000, 999999), rng.choice([rng.randint(5, 300), rng.randint(1, 60) * 5])
        word = rng.choice(sorted(CURRENCIES))
        goal = rng.choice(REFUND).format(amount=amount, cur=word, oid=oid)
        if wrong:
            amount += rng.choice([1, 10, 100])
        ref = f"RF{rng.randint(1000, 9999)}"
        return (goal, "refund_order", {"order_id": oid, "amount": amount, "currency": CURRENCIES[word]},
                f"refunded, reference {ref}", f"Refund done, reference {ref}.")
    user, phrase = rng.choice(USERS), rng.choice(sorted(CHANNELS))
    goal = rng.choice(RESET).format(user=user, ch=phrase)
    channel = CHANNELS[phrase]
    if wrong:
        channel = "sms" if channel == "email" else "email"
    return (goal, "reset_password", {"username": user, "channel": channel}, "link sent",
            f"A reset link was sent to {user} by {'email' if channel == 'email' else 'SMS'}.")


def support_lines(executions: int = 300, seed: int = 0, wrong_share: float = 0.2) -> list[str]:
    """JSON lines (an L02 trace with the agent's system prompt and tools, and its L06 score) per execution."""
    rng = random.Random(f"support:{seed}")
    envelope = envelope_maker(rng, BASE_TIME)
    lines: list[str] = []

    for i in range(executions):
        bad = rng.random() < wrong_share
        goal, tool, args, result, answer = _request(rng, bad)
        exec_id = f"exec-support-{seed}-{i:05d}"
        lines.append(envelope("com.agentic.execution.trace_generated", "https://agentic.local/layers/l02", {
            "execution_id": exec_id, "agent_id": AGENTS[i % 3], "task_id": f"task-support-{seed}-{i:05d}",
            "task_type": TASK_TYPE,
            "task_definition": {"goal": goal + rng.choice(REMARKS), "system_prompt": SYSTEM_PROMPT, "tools": TOOLS},
            "execution_trace": [{"step": 1, "action": tool, "parameters": args, "output": result}],
            "final_answer": answer, "outcome": "failure" if bad else "success",
            "metadata": {"execution_duration_seconds": round(rng.uniform(0.8, 4.0), 2), "tool_calls": 1,
                         "tokens_used": rng.randint(300, 700)}}))
        q = rng.uniform(15, 45) if bad else rng.uniform(82, 98)
        lines.append(envelope("com.agentic.evaluation.quality_score_computed", "https://agentic.local/layers/l06", {
            "execution_id": exec_id, "quality_score": round(q, 1), "confidence_level": round(rng.uniform(0.86, 0.99), 3),
            "task_type": TASK_TYPE, "failure_classification": None if bad else "success",
            "evaluation_method": "automated", "metrics": {"goal_achievement_rate": round(q / 100, 3)},
            "dimensions": {"correctness": round(q, 1)}}))
    return lines


def held_out_requests(n: int = 60, seed: int = 10_000) -> list[tuple[str, str, dict[str, Any]]]:
    """``n`` fresh requests never ingested: ``(goal, tool, arguments)`` of the correct call."""
    rng = random.Random(f"support:held-out:{seed}")
    out = []
    for _ in range(n):
        goal, tool, args, _, _ = _request(rng, False)
        out.append((goal + rng.choice(REMARKS), tool, args))
    return out
