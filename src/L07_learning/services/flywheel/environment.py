"""The flywheel's task environment: a warehouse desk whose agent answers each request with exactly one tool call.

Three tools: ``convert_units(value, from_unit, to_unit)`` ("How many kilograms is 12 pounds?"),
``lookup_order(order_id)`` ("Where is order ORD-48213?") and ``check_stock(sku, warehouse)`` ("Is SKU B7-2291 in
stock in the north warehouse?"). Requests are phrased many ways and every one names its arguments, so the right call
is a function of the request alone and the checker can decide it exactly: a success is one call with the expected
name and the expected JSON arguments (numbers compared as numbers). The tools are this environment's own
deterministic back end (a conversion is computed; an order's status and a stock count are derived from the id).

The checker's verdict becomes the L06 score (``quality``): 100 for a success; otherwise at most 60 (10 for a
well-formed call, 20 for the right tool, 30 times the share of right arguments), so a failed attempt stays under the
quality filter's default minimum (70) and is never learned from, while a successful attempt of the small model is.

``expert`` is the scripted expert standing in for the fleet's expensive policy; ``corrupted`` is the answer of a
broken labelling pipeline (units swapped, orders looked up as stock, the warehouse rotated) used to train the bad
release of the flywheel's fault injection.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

TASK_TYPE = "warehouse_desk"
SYSTEM_PROMPT = "You are the warehouse desk agent. Answer every request with exactly one tool call."
UNITS = ["km", "mi", "kg", "lb", "l", "gal"]
WAREHOUSES = ["north", "south", "east"]
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "convert_units", "description": "Convert a quantity",
        "parameters": {"type": "object", "properties": {
            "value": {"type": "number"}, "from_unit": {"type": "string", "enum": UNITS},
            "to_unit": {"type": "string", "enum": UNITS}}, "required": ["value", "from_unit", "to_unit"]}}},
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Status of an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {
        "name": "check_stock", "description": "Units of a SKU in a warehouse",
        "parameters": {"type": "object", "properties": {
            "sku": {"type": "string"}, "warehouse": {"type": "string", "enum": WAREHOUSES}},
            "required": ["sku", "warehouse"]}}},
]
TOOL_NAMES = frozenset(t["function"]["name"] for t in TOOLS)
# Each dimension's pair and its words: a request names a unit by one of them.
PAIRS = [("km", "mi"), ("kg", "lb"), ("l", "gal")]
UNIT_WORDS = {"km": ["kilometres", "km", "kilometers"], "mi": ["miles", "mi"], "kg": ["kilograms", "kg", "kilos"],
              "lb": ["pounds", "lb", "lbs"], "l": ["litres", "liters", "l"], "gal": ["gallons", "gal"]}
FACTORS = {("km", "mi"): 0.621371, ("kg", "lb"): 2.20462, ("l", "gal"): 0.264172}
CONVERT = ["How many {to} is {v} {frm}?", "Convert {v} {frm} to {to}.", "What is {v} {frm} in {to}?",
           "A customer asks: {v} {frm}, how much is that in {to}?"]
ORDER = ["Where is order {oid}?", "What is the status of order {oid}?", "Customer wants news on {oid}.",
         "Can you check order {oid} for me?"]
STOCK = ["Is SKU {sku} in stock in the {wh} warehouse?", "How many {sku} does the {wh} warehouse have?",
         "Check stock of {sku} at {wh}.", "Do we still have {sku} in the {wh} depot?"]
REMARKS = ["", " Thanks.", " It is urgent.", " Please hurry."]
STATUSES = ["packed", "shipped", "out for delivery", "delivered", "on hold"]


@dataclass(frozen=True)
class Task:
    """One request and the one call that answers it."""

    task_id: str
    goal: str
    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """The checker's decision on one attempt and the L06 quality score it becomes."""

    success: bool
    quality: float
    reason: str


def make_task(rng: random.Random, task_id: str) -> Task:
    """A random request (deterministic for the generator's state)."""
    kind = rng.choice(["convert", "order", "stock"])
    if kind == "convert":
        frm, to = rng.choice(PAIRS)
        if rng.random() < 0.5:
            frm, to = to, frm
        value = rng.choice([rng.randint(1, 500), rng.randint(1, 90) * 5])
        goal = rng.choice(CONVERT).format(v=value, frm=rng.choice(UNIT_WORDS[frm]), to=rng.choice(UNIT_WORDS[to]))
        return Task(task_id, goal + rng.choice(REMARKS), "convert_units",
                    {"value": value, "from_unit": frm, "to_unit": to})
    if kind == "order":
        oid = f"ORD-{rng.randint(10000, 99999)}"
        return Task(task_id, rng.choice(ORDER).format(oid=oid) + rng.choice(REMARKS), "lookup_order", {"order_id": oid})
    sku = f"{rng.choice('ABCDEFGH')}{rng.randint(1, 9)}-{rng.randint(1000, 9999)}"
    wh = rng.choice(WAREHOUSES)
    return Task(task_id, rng.choice(STOCK).format(sku=sku, wh=wh) + rng.choice(REMARKS), "check_stock",
                {"sku": sku, "warehouse": wh})


def expert(task: Task) -> tuple[str, dict[str, Any]]:
    """The scripted expert: the right call, always (it reads the request as the generator wrote it)."""
    return task.tool, dict(task.arguments)


def corrupted(task: Task) -> tuple[str, dict[str, Any]]:
    """A broken labelling pipeline's answer: systematically wrong, yet consistent enough for a model to learn."""
    a = task.arguments
    if task.tool == "convert_units":
        return "convert_units", {"value": a["value"], "from_unit": a["to_unit"], "to_unit": a["from_unit"]}
    if task.tool == "lookup_order":
        return "check_stock", {"sku": a["order_id"], "warehouse": "north"}
    nxt = WAREHOUSES[(WAREHOUSES.index(a["warehouse"]) + 1) % len(WAREHOUSES)]
    return "check_stock", {"sku": a["sku"], "warehouse": nxt}


def _draw(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def execute(tool: str, arguments: dict[str, Any]) -> str:
    """The environment's back end answering a call (an error text for an unknown tool or bad arguments)."""
    try:
        if tool == "convert_units":
            frm, to, value = arguments["from_unit"], arguments["to_unit"], float(arguments["value"])
            factor = FACTORS.get((frm, to)) or (1 / FACTORS[(to, frm)] if (to, frm) in FACTORS else None)
            return f"{value * factor:.2f} {to}" if factor else f"error: cannot convert {frm} to {to}"
        if tool == "lookup_order":
            oid = str(arguments["order_id"])
            return f"order {oid}: {STATUSES[_draw(oid) % len(STATUSES)]}"
        if tool == "check_stock":
            sku, wh = str(arguments["sku"]), str(arguments["warehouse"])
            return f"{_draw(sku + wh) % 200} units of {sku} in {wh}"
    except (KeyError, TypeError, ValueError) as exc:
        return f"error: bad arguments ({exc.__class__.__name__})"
    return f"error: unknown tool {tool!r}"


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            return abs(float(got) - float(expected)) < 1e-9
        except (TypeError, ValueError):
            return False
    return expected == got


def parse_calls(tool_calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """``(name, arguments)`` of OpenAI-shaped tool calls; arguments that are not a JSON object stay a string."""
    out: list[tuple[str, Any]] = []
    for call in tool_calls:
        fn = call.get("function", call)
        raw = fn.get("arguments")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            args = raw
        out.append((str(fn.get("name") or ""), args))
    return out


def check(task: Task, calls: list[tuple[str, Any]]) -> Verdict:
    """Exactly one call, the expected tool, the expected arguments (no more, no fewer)."""
    if not calls:
        return Verdict(False, 0.0, "no tool call")
    name, args = calls[0]
    if not isinstance(args, dict) or name not in TOOL_NAMES:
        return Verdict(False, 0.0, f"malformed call {name!r}")
    right_tool = name == task.tool
    right_args = sum(_same(v, args.get(k)) for k, v in task.arguments.items()) if right_tool else 0
    exact = right_tool and right_args == len(task.arguments) and set(args) == set(task.arguments)
    if exact and len(calls) == 1:
        return Verdict(True, 100.0, "right call")
    quality = 10.0 + 20.0 * right_tool + 30.0 * right_args / len(task.arguments)
    why = "more than one call" if exact else "wrong tool" if not right_tool else "wrong arguments"
    return Verdict(False, round(quality, 1), why)
