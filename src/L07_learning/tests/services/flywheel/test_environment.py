"""The flywheel's warehouse desk: the checker accepts exactly the right call and scores a failure below the quality
filter's minimum, the corrupted labels always fail it, and an attempt's events parse as L02/L06 events that name the
serving model (no model, no training: milliseconds)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

from L07_learning.events.cloudevent import parse_event
from L07_learning.services.flywheel import check, corrupted, expert, make_task
from L07_learning.services.flywheel.environment import execute, parse_calls
from L07_learning.services.flywheel.events import Attempt, attempt_lines
from L07_learning.services.ingestion.records import parse_score, parse_trace


def test_the_checker_accepts_only_the_expected_call_and_keeps_failures_below_70() -> None:
    rng = random.Random(5)
    tasks = [make_task(rng, f"t-{i:06d}") for i in range(300)]
    assert {t.tool for t in tasks} == {"convert_units", "lookup_order", "check_stock"}
    for task in tasks:
        name, args = expert(task)
        assert check(task, [(name, args)]).success and check(task, [(name, args)]).quality == 100.0
        bad = check(task, [corrupted(task)])
        assert not bad.success and bad.quality < 70.0, (task, bad)
        assert not check(task, [(name, args), (name, args)]).success  # one call, not two
    order = next(t for t in tasks if t.tool == "lookup_order")
    assert check(order, []).quality == 0.0 and check(order, [("drop_table", {})]).reason.startswith("malformed")
    convert = next(t for t in tasks if t.tool == "convert_units")
    as_float = {**convert.arguments, "value": float(convert.arguments["value"])}
    as_json = [{"function": {"name": "convert_units", "arguments": json.dumps(as_float)}}]
    assert check(convert, parse_calls(as_json)).success
    wrong_unit = {**convert.arguments, "to_unit": convert.arguments["from_unit"]}
    assert check(convert, [("convert_units", wrong_unit)]).quality == 50.0  # 10 + 20 + 30 * 2/3
    assert execute("convert_units", {"value": 10, "from_unit": "km", "to_unit": "mi"}) == "6.21 mi"


def test_an_attempt_becomes_a_trace_and_a_score_that_name_the_serving_model() -> None:
    task = make_task(random.Random(1), "t-000001")
    attempt = Attempt(task, "agent-desk-01", "model-123", True, [corrupted(task)], check(task, [corrupted(task)]), 0.4,
                      datetime.now(timezone.utc))
    trace_line, score_line = attempt_lines(attempt)
    trace = parse_trace(parse_event(trace_line))
    score = parse_score(parse_event(score_line))
    assert (trace["model_id"], trace["outcome"]) == ("model-123", "failure")
    assert trace["execution_id"] == score["execution_id"]
    assert score["quality_score"] == attempt.verdict.quality < 70
