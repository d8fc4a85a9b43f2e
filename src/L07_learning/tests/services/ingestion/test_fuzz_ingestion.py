"""Fuzzing the event door (issue 22): whatever a producer sends, through the real entry point.

``ingest_and_filter`` is what ``POST /api/v1/events``, ``l07 ingest``, ``l07 consume`` and
``LearningService.process_events`` run: parse, dedup, join, store, then the example quality filter. For every input
the test asserts no exception, no hang (hypothesis' deadline), and that the input ended either taken in (extracted,
pending, processed, ignored, duplicate) or rejected with an E7xxx code that is queryable in ``l07_rejected_events``.

Bounded for CI (well under 60 s on SQLite and PostgreSQL together); ``L07_FUZZ_EXAMPLES=5000`` fuzzes longer.
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import func, select

from L07_learning.events.cloudevent import RawEvent, parse_event
from L07_learning.models import L07Error
from L07_learning.services.example_quality_filter import ExampleQualityFilter
from L07_learning.services.ingestion.pipeline import ingest_and_filter
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.store.tables import SqlProcessedEvent

from .test_extractor import L02, L06, score_event, trace_event

EXAMPLES = int(os.environ.get("L07_FUZZ_EXAMPLES", "40"))
CODE = re.compile(r"^E7\d{3}$")
TAKEN_IN = {"extracted", "pending", "processed", "ignored", "duplicate"}

# Strings that have hurt parsers, databases and regex scanners: NUL, lone surrogates (as JSON escapes), overlong
# ids, runs that make backtracking regexes explode, credential and PII look-alikes, odd Unicode.
HOSTILE_TEXT = [
    "", " ", "\x00", "a\x00b", "\u202e\u200b", "é" * 300, "😀" * 100, "i" * 513, "x" * 5000,
    "a" * 3000 + "!", "@" * 2000, "a." * 1500, "1" * 1000, "1-" * 800, " " * 3000 + "x",
    "sk-" + "A" * 500, "password=" + "p" * 400, "AKIA" + "Z" * 300, "x@" * 700 + "y.com",
    "<script>" * 200, "{" * 300, "[" * 300, "\\" * 500, '"' * 200, "\n" * 1000,
]
hostile_text = st.sampled_from(HOSTILE_TEXT) | st.text(max_size=40)
leaf = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**80)
        | st.floats(allow_nan=True, allow_infinity=True) | hostile_text)
json_values = st.recursive(
    leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=16,
)


def _nest(depth: int, inner: str = '"x"') -> str:
    """JSON text nesting ``inner`` ``depth`` levels deep (built as text: json.dumps would recurse)."""
    return '{"a":' * depth + inner + "}" * depth


def _plan(exec_id: str) -> dict[str, Any]:
    return {"specversion": "1.0", "type": "planning.decision_recorded", "source": "https://agentic.local/layers/l05",
            "id": str(uuid.uuid4()), "data": {"plan_id": f"plan-{exec_id}", "execution_id": exec_id,
                                              "goal": "Plan the weekly report", "plan_steps": ["collect", "write"],
                                              "planning_trace": {"search_depth": 2}}}


def _response(exec_id: str) -> dict[str, Any]:
    return {"specversion": "1.0", "type": "model.response_logged", "source": "https://agentic.local/layers/l04",
            "id": str(uuid.uuid4()), "data": {"request_id": f"r-{exec_id}", "model_name": "m", "response": "ok",
                                              "latency_ms": 12, "execution_id": exec_id,
                                              "token_usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                              "total_tokens": 2}}}


PATHS = [[], ["data"], ["data", "execution_trace", 0], ["data", "execution_trace", 0, "parameters"],
         ["data", "task_definition"], ["data", "metadata"], ["data", "planning_trace"], ["data", "token_usage"]]


def _mutated(data: st.DataObject) -> Any:
    exec_id = f"exec-f-{uuid.uuid4().hex[:12]}"
    make = data.draw(st.sampled_from([trace_event, score_event, _plan, _response]))
    ev = copy.deepcopy(make(exec_id))
    for _ in range(data.draw(st.integers(1, 3))):
        target: Any = ev
        for key in data.draw(st.sampled_from(PATHS)):
            try:
                target = target[key]
            except (KeyError, IndexError, TypeError):
                break
        if not isinstance(target, dict) or not target:
            continue
        key = data.draw(st.sampled_from(sorted(target)))
        action = data.draw(st.sampled_from(["delete", "replace", "deep"]))
        if action == "delete":
            del target[key]
        elif action == "replace":
            target[key] = data.draw(json_values)
        else:
            target[key] = "DEEP-MARK"
    text = json.dumps(ev, allow_nan=True)
    if "DEEP-MARK" in text:
        text = text.replace('"DEEP-MARK"', _nest(data.draw(st.integers(1, 1200))))
    form = data.draw(st.sampled_from(["text", "bytes", "dict"]))
    if form == "dict" and "DEEP-MARK" not in json.dumps(ev):
        return ev
    return text.encode("utf-8", "surrogatepass") if form == "bytes" else text


def _binary(data: st.DataObject) -> RawEvent:
    headers = {"ce-specversion": data.draw(st.sampled_from(["1.0", "0.3", ""])),
               "ce-id": data.draw(hostile_text), "ce-source": data.draw(st.sampled_from([L02, L06, "l02.x", "evil"])),
               "ce-type": data.draw(st.sampled_from(["com.agentic.execution.trace_generated",
                                                     "evaluation.completed", "other"])),
               "content-type": data.draw(st.sampled_from(["application/json", "text/plain"]))}
    body = data.draw(st.binary(max_size=80) | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
                     | st.integers(1, 1500).map(lambda d: _nest(d).encode()))
    return RawEvent(body, headers)


def _l01(data: st.DataObject) -> dict[str, Any]:
    return {"event_type": data.draw(st.sampled_from(["task.completed", "evaluation.completed", "plan.created"])),
            "aggregate_type": data.draw(hostile_text), "aggregate_id": data.draw(json_values),
            "payload": data.draw(json_values), "metadata": data.draw(json_values)}


def _hostile_pair(data: st.DataObject) -> list[Any]:
    """A valid trace and score whose free text is hostile: it passes parsing and reaches the quality filter."""
    exec_id = f"exec-h-{uuid.uuid4().hex[:12]}"
    goal, answer, param = (data.draw(hostile_text.filter(lambda s: s.strip() and "\x00" not in s)) for _ in range(3))
    trace = trace_event(exec_id, goal=goal, answer=answer)
    trace["data"]["execution_trace"][0]["parameters"] = {"q": param}
    return [trace, score_event(exec_id, q=data.draw(st.floats(0, 100)))]


def _input(data: st.DataObject) -> list[Any]:
    kind = data.draw(st.sampled_from(["bytes", "text", "json", "mutated", "mutated", "binary", "l01", "pair"]))
    if kind == "bytes":
        return [data.draw(st.binary(max_size=200))]
    if kind == "text":
        return [data.draw(hostile_text)]
    if kind == "json":
        return [data.draw(json_values.map(lambda v: json.dumps(v, allow_nan=True)) | json_values)]
    if kind == "mutated":
        return [_mutated(data)]
    if kind == "binary":
        return [_binary(data)]
    if kind == "l01":
        return [_l01(data)]
    return _hostile_pair(data)


async def _counts(db: Database) -> tuple[Counter[str], int]:
    async with db.session() as s:
        rejected = Counter(await RejectedEventRepository(s).count_by_code())
        kept = await s.scalar(select(func.count()).select_from(SqlProcessedEvent)
                              .where(SqlProcessedEvent.result != "rejected"))
    return rejected, int(kept or 0)


@pytest.fixture
def cfg(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


@hsettings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_fuzz_every_input_is_stored_or_rejected_with_a_code(db: Database, cfg: Settings, data: st.DataObject):
    flt = ExampleQualityFilter(db=db, settings=cfg)
    anchor = f"exec-anchor-{uuid.uuid4().hex[:12]}"
    batch: list[Any] = [trace_event(anchor)]
    for _ in range(data.draw(st.integers(1, 4))):
        batch += _input(data)
    batch.append(score_event(anchor))
    rejected_before, kept_before = await _counts(db)

    result, accepted = await ingest_and_filter(batch, "http", db=db, settings=cfg, quality_filter=flt)

    assert len(result.items) == len(batch)
    codes: Counter[str] = Counter()
    for raw, item in zip(batch, result.items):
        if item.status == "rejected":
            assert item.code and CODE.match(item.code), (item, raw)
            assert item.reason, (item, raw)
            codes[item.code] += 1
        else:
            assert item.status in TAKEN_IN, (item, raw)
    rejected_after, kept_after = await _counts(db)
    assert rejected_after - rejected_before == codes, "every rejection is a stored, queryable row with its code"
    taken_in = sum(1 for i in result.items if i.status in {"extracted", "pending", "processed", "ignored"})
    assert kept_after - kept_before >= taken_in, "every event taken in holds its dedup key"
    assert result.items[-1].status == "extracted", "the valid pair around the hostile inputs still joins"
    examples = {e.example_id for e in result.examples}
    assert {e.example_id for e in accepted} <= examples


@hsettings(max_examples=EXAMPLES * 5, deadline=timedelta(seconds=10), suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_parse_event_returns_an_event_or_an_l07_error(data: st.DataObject):
    [raw, *_] = _input(data)
    body, headers = (raw.body, raw.headers) if isinstance(raw, RawEvent) else (raw, None)
    try:
        ev = parse_event(body, headers=headers)
    except L07Error as exc:
        assert CODE.match(exc.code.value)
        return
    assert len(ev.id) <= 512 and len(ev.source) <= 512 and len(ev.type) <= 256
