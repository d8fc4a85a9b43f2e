"""Event ingestion and training-data extraction (issue 4): parsing, joins, idempotency, rejections, pairs, metrics.

Every test runs on SQLite and PostgreSQL through the ``db`` fixture.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from L07_learning.events.cloudevent import CloudEvent, RawEvent, parse_event
from L07_learning.services.demo.sample_stream import correct_output, generate
from L07_learning.services.example_quality_filter import ExampleQualityFilter
from L07_learning.models import ExampleSource, L07Error, L07ErrorCode, TrainingExample
from L07_learning.observability.metrics import REGISTRY
from L07_learning.services.ingestion.pipeline import IngestionPipeline, ingest_events
from L07_learning.services.training_data_extractor import TrainingDataExtractor
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import ProcessedEventRepository, RejectedEventRepository
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.joins import JoinRepository
from L07_learning.store.repositories.rewards import RewardRepository

L02 = "https://agentic.local/layers/l02"
L06 = "https://agentic.local/layers/l06"


def trace_event(exec_id: str | None = None, goal: str = "Book a flight from Berlin to Paris on Monday.",
                answer: str = "Booked flight BERPAR-1 from Berlin to Paris on Monday.", outcome: str = "success",
                **data: Any) -> dict[str, Any]:
    exec_id = exec_id or f"exec-{uuid.uuid4().hex[:10]}"
    body = {
        "execution_id": exec_id, "agent_id": "agent-travel-03", "task_id": "task-1", "task_type": "flight_booking",
        "task_definition": {"goal": goal, "context": {"seat": "aisle"}},
        "execution_trace": [
            {"step": 1, "action": "search_flights", "parameters": {"from": "Berlin", "to": "Paris"}, "output": "3 flights"},
            {"step": 2, "action": "book_flight", "parameters": {"flight": "BERPAR-1"}, "output": "confirmed"},
        ],
        "final_answer": answer, "outcome": outcome, "metadata": {"tool_calls": 2, "tokens_used": 400},
    }
    body.update(data)
    return {"specversion": "1.0", "type": "com.agentic.execution.trace_generated", "source": L02,
            "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:02Z", "data": body}


def score_event(exec_id: str, q: float = 88.5, c: float = 0.91, **data: Any) -> dict[str, Any]:
    body = {"execution_id": exec_id, "quality_score": q, "confidence_level": c, "task_type": "flight_booking",
            "evaluation_method": "automated", "failure_classification": "success"}
    body.update(data)
    return {"specversion": "1.0", "type": "com.agentic.evaluation.quality_score_computed", "source": L06,
            "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:03Z", "data": body}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def cfg(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


# --- parsing ---------------------------------------------------------------------------------------------------


def test_parse_structured_binary_and_l01_envelope():
    structured = trace_event("exec-a")
    ev = parse_event(json.dumps(structured).encode())
    assert ev.kind == "trace" and ev.id == structured["id"] and ev.data["execution_id"] == "exec-a"

    headers = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": L06, "content-type": "application/json",
               "ce-type": "com.agentic.evaluation.quality_score_computed", "ce-time": "2026-02-10T09:15:03Z"}
    binary = parse_event(json.dumps(score_event("exec-a")["data"]).encode(), headers=headers)
    assert binary.kind == "score" and binary.id == "b-1" and binary.data["quality_score"] == 88.5

    env = {"event_type": "task.completed", "aggregate_type": "execution", "aggregate_id": "exec-b",
           "payload": {"agent_id": "a"}, "metadata": {"correlation_id": "c"}, "timestamp": "2026-02-10T09:00:00Z"}
    l01 = parse_event(env)
    assert l01.kind == "trace" and l01.subject == "exec-b" and l01.source == "l01.execution"
    assert parse_event(dict(env)).id == l01.id, "a replayed L01 envelope keeps its derived id"


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"{not json", "E7015"),
        (b"[1, 2]", "E7015"),
        ({"specversion": "0.3", "id": "x", "source": L02, "type": "task.completed"}, "E7015"),
        ({"specversion": "1.0", "source": L02, "type": "task.completed"}, "E7015"),
        ({"specversion": "1.0", "id": 5, "source": L02, "type": "task.completed"}, "E7110"),
        (b"x" * 2_000_000, "E7018"),
    ],
)
def test_parse_errors_carry_contract_codes(raw, code):
    with pytest.raises(L07Error) as info:
        parse_event(raw, max_bytes=1_000_000)
    assert info.value.code.value == code


# --- extraction and joins ------------------------------------------------------------------------------------


async def test_extract_batch_joins_either_order_and_keeps_input_order(db: Database, cfg: Settings):
    ex = TrainingDataExtractor(db=db, settings=cfg)
    t1, t2 = trace_event("exec-1"), trace_event("exec-2", goal="Book a flight from Rome to Oslo on Friday.")
    s1, s2 = score_event("exec-1"), score_event("exec-2", q=75.0)
    # exec-2's score arrives first; exec-1's trace first. Output follows the order of the completing events.
    examples = await ex.extract_batch([s2, t1, t2, s1])
    assert [e.execution_id for e in examples] == ["exec-2", "exec-1"]
    e1 = examples[1]
    assert e1.source_type is ExampleSource.EXECUTION_TRACE
    assert e1.quality_score == 88.5 and e1.confidence == 0.91
    assert e1.task_type == "flight_booking" and e1.agent_id == "agent-travel-03" and e1.domain == "travel"
    assert set(e1.source_event_ids) == {t1["id"], s1["id"]}
    assert e1.input_text == 'Book a flight from Berlin to Paris on Monday.\nContext: {"seat":"aisle"}'
    # The conversation the agent had: a tool call per step, the runtime's result in a tool turn, then the answer.
    assert [m["role"] for m in e1.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert e1.messages[0]["content"] == e1.input_text
    calls = [m["tool_calls"][0]["function"] for m in e1.messages if m.get("tool_calls")]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [
        ("search_flights", {"from": "Berlin", "to": "Paris"}), ("book_flight", {"flight": "BERPAR-1"})]
    assert [m["content"] for m in e1.messages if m["role"] == "tool"] == ["3 flights", "confirmed"]
    assert e1.messages[-1] == {"role": "assistant", "content": "Booked flight BERPAR-1 from Berlin to Paris on Monday."}
    # No schemas in the trace: derived from the calls.
    assert [t["function"]["name"] for t in e1.tools] == ["search_flights", "book_flight"]
    assert e1.tools[0]["function"]["parameters"] == {
        "type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        "required": ["from", "to"]}
    assert "3 flights" in e1.output_text and '<tool_call>' in e1.output_text
    # §5.3: 2 steps, 2 tools, q 88.5 -> 0.06 + 0.12 + 0.046
    assert e1.difficulty == pytest.approx(0.3 * 0.2 + 0.3 * 0.4 + 0.4 * 0.115)
    assert e1.task_complexity == "multi_step" and e1.execution_length == 2 and e1.tool_count == 2
    assert "outcome:SUCCESS" in e1.labels and e1.metadata["agent_id"] == "agent-travel-03"


def test_examples_are_conversational_for_trl():
    from trl.data_utils import is_conversational

    ex = TrainingExample(source_type=ExampleSource.EXECUTION_TRACE, input_text="a", output_text="b", quality_score=90,
                         messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert is_conversational({"messages": ex.chat_messages()})


async def test_join_survives_a_restart(db: Database, cfg: Settings):
    first = TrainingDataExtractor(db=db, settings=cfg)
    assert await first.extract_from_event(score_event("exec-r")) is None
    await db.dispose()  # the process "restarts": nothing of the join lives in memory
    second = TrainingDataExtractor(db=db, settings=cfg)
    example = await second.extract_from_event(trace_event("exec-r"))
    assert example is not None and example.execution_id == "exec-r"
    async with db.session() as s:
        assert (await JoinRepository(s).count_by_status()) == {"joined": 1}


async def test_window_then_late_join_then_expiry(db: Database, tmp_path):
    window_only = Settings(home=tmp_path / "h", join_window_s=0.0, late_join_ttl_s=3600.0)
    ex = TrainingDataExtractor(db=db, settings=window_only)
    assert await ex.extract_from_event(trace_event("exec-late")) is None
    await ex.extract_batch([])  # a later batch runs the sweeper
    async with db.session() as s:
        assert (await JoinRepository(s).count_by_status()) == {"pending_evaluation": 1}
    late = await ex.extract_from_event(score_event("exec-late"))
    assert late is not None and late.execution_id == "exec-late", "a score inside the late-join TTL still joins"

    no_ttl = TrainingDataExtractor(db=db, settings=Settings(home=tmp_path / "h", join_window_s=0.0, late_join_ttl_s=0.0))
    await no_ttl.extract_from_event(trace_event("exec-never"))
    await no_ttl.extract_from_event(score_event("exec-orphan"))
    await no_ttl.extract_batch([])
    await no_ttl.extract_batch([])
    async with db.session() as s:
        counts = await JoinRepository(s).count_by_status()
        assert counts == {"joined": 1, "expired": 1, "orphan_score": 1}
        unprocessed = await RewardRepository(s).list_signals(processed=False)
    assert [r.execution_id for r in unprocessed] == ["exec-orphan"], "a score without trace is kept as a reward signal"
    assert await no_ttl.extract_from_event(score_event("exec-never")) is None, "an expired trace takes no more scores"
    async with db.session() as s:
        assert sorted(r.execution_id for r in await RewardRepository(s).list_signals(processed=False)) == [
            "exec-never", "exec-orphan"]


async def test_duplicates_are_noops_within_and_across_batches(db: Database, cfg: Settings):
    ex = TrainingDataExtractor(db=db, settings=cfg)
    t, s = trace_event("exec-d"), score_event("exec-d")
    assert len(await ex.extract_batch([t, t, s, s])) == 1
    assert ex.last_result.summary.duplicates == 2
    assert await ex.extract_batch([t, s]) == []
    assert ex.last_result.summary.duplicates == 2
    async with db.session() as ses:
        assert await ProcessedEventRepository(ses).count() == 2


async def test_invalid_events_are_stored_with_code_and_never_stop_the_batch(db: Database, cfg: Settings):
    good_t, good_s = trace_event("exec-ok"), score_event("exec-ok")
    no_agent = trace_event()
    del no_agent["data"]["agent_id"]
    bad_step = trace_event()
    del bad_step["data"]["execution_trace"][0]["action"]
    bad_params = trace_event()
    bad_params["data"]["execution_trace"][0]["parameters"] = "x=1"
    too_many = trace_event(execution_trace=[{"step": i + 1, "action": "t"} for i in range(1001)])
    out_of_range = score_event("exec-x", q=150)
    nan_conf = score_event("exec-x", c=float("nan"))
    foreign = trace_event()
    foreign["source"] = "https://attacker.example/l02"
    unknown = {**trace_event(), "type": "com.agentic.execution.started"}
    batch = [b"{broken", no_agent, good_t, bad_step, bad_params, too_many, out_of_range, nan_conf, foreign, unknown, good_s]
    rejected_before = metric("l07_events_rejected_total", code="E7012")
    examples = await TrainingDataExtractor(db=db, settings=cfg).extract_batch(batch)
    assert [e.execution_id for e in examples] == ["exec-ok"]
    async with db.session() as s:
        rows = await RejectedEventRepository(s).list()
    assert [r.code for r in rows] == ["E7015", "E7010", "E7012", "E7012", "E7018", "E7110", "E7110", "E7115"]
    assert rows[0].raw_payload == "{broken" and rows[0].transport == "inprocess"
    assert json.loads(rows[1].raw_payload)["id"] == no_agent["id"]
    assert metric("l07_events_rejected_total", code="E7012") == rejected_before + 2


async def test_alias_types_and_fallback_fields(db: Database, cfg: Settings):
    alias_trace = {"specversion": "1.0", "type": "task.completed", "source": "l02.agent-runtime", "id": "a-1",
                   "subject": "exec-alias",
                   "data": {"agent_id": "agent-9", "task_description": "Answer the question: what is the capital of Spain?",
                            "outcome": "success", "final_answer": "Madrid",
                            "trace": {"steps": [{"step_id": 1, "tool_name": "search_kb", "parameters": {"q": "Spain"}}]}}}
    alias_score = {"specversion": "1.0", "type": "evaluation.completed", "source": "l06.evaluation", "id": "a-2",
                   "subject": "exec-alias", "data": {"overall_score": 91, "agent_id": "agent-9"}}
    [ex] = await TrainingDataExtractor(db=db, settings=cfg).extract_batch([alias_trace, alias_score])
    assert ex.execution_id == "exec-alias" and ex.quality_score == 91 and ex.domain == "qa"
    assert ex.confidence is None, "an alias score without confidence can only reach REVIEW (contract §1.3)"


async def test_preference_pairs_wait_for_the_filter_and_come_from_accepted_examples(db: Database, cfg: Settings):
    ex = TrainingDataExtractor(db=db, settings=cfg)
    extracted = await ex.extract_batch([trace_event("exec-p1"), score_event("exec-p1", q=92)])
    wrong = trace_event("exec-p2", answer="Booked flight PARBER-1 from Paris to Berlin on Monday.", outcome="failure")
    extracted += await ex.extract_batch([wrong, score_event("exec-p2", q=35, failure_classification=None)])
    reviewed = trace_event("exec-p3", goal="Book a flight from Oslo to Rome on Friday.", answer="No flights.",
                           outcome="failure")
    reference = "Step 1: search_flights({}) -> 2 flights\nAnswer: Booked flight OSLROM-5."
    examples = await ex.extract_batch([reviewed, score_event("exec-p3", q=30, evaluation_method="human_review",
                                                             reference_output=reference)])
    assert [e.source_type for e in examples] == [ExampleSource.EXECUTION_TRACE, ExampleSource.QUALITY_FEEDBACK]
    # A reference written as a trace becomes the conversation the reviewer says the agent should have had.
    assert examples[1].output_text == ('<tool_call>\n{"name": "search_flights", "arguments": {}}\n</tool_call>\n'
                                       '<tool_response>\n2 flights\n</tool_response>\nBooked flight OSLROM-5.')
    assert examples[1].quality_score == 100.0
    async with db.session() as s:
        assert await RewardRepository(s).count_signals() == 3
        assert await RewardRepository(s).count_pairs() == 0, "no pair before the filter decided (issue 22)"

    report = await ExampleQualityFilter(db=db, settings=cfg).filter_detailed(extracted + examples)
    assert [d.decision.value for d in report.decisions] == ["ACCEPT", "REJECT", "REJECT", "ACCEPT"]
    async with db.session() as s:
        pairs = {p.source: p for p in await RewardRepository(s).list_pairs()}
    # The q=35 answer was REJECTED: no repeat pair from it. The reviewer's accepted correction is chosen over the
    # original (REJECTED for its quality, which is what a rejected side is for).
    assert set(pairs) == {"correction"}
    correction = pairs["correction"]
    assert correction.chosen == examples[1].output_text and correction.rejected.endswith("\nNo flights.")


async def test_planning_records_join_with_scores(db: Database, cfg: Settings):
    plan = {"specversion": "1.0", "type": "planning.decision_recorded", "source": "https://agentic.local/layers/l05",
            "id": "pl-1", "data": {"plan_id": "plan-1", "execution_id": "exec-pl", "goal": "Schedule a meeting with Bob",
                                   "plan_steps": ["Check the calendar", "Create the event"],
                                   "constraints": [{"type": "deadline", "priority": 1}],
                                   "planning_trace": {"search_depth": 2, "nodes_explored": 9}}}
    examples = await TrainingDataExtractor(db=db, settings=cfg).extract_batch([plan, score_event("exec-pl", q=80)])
    [ex] = examples
    assert ex.source_type is ExampleSource.PLANNING_TRACE and ex.execution_id == "plan-1"
    assert ex.output_text == "1. Check the calendar\n2. Create the event"
    assert ex.input_text == "Schedule a meeting with Bob\nConstraints: deadline (priority 1)"


async def test_sample_stream_ingests_to_exactly_the_expected_examples(db: Database, cfg: Settings):
    stream = generate(160, seed=11)
    exp = stream.expected
    pipeline = IngestionPipeline(db, cfg)
    extracted_before = metric("l07_examples_extracted_total", source_type="EXECUTION_TRACE", domain="travel")
    totals: dict[str, int] = {"duplicates": 0, "ignored": 0}
    for i in range(0, len(stream.lines), 64):
        result = await pipeline.ingest(stream.lines[i : i + 64], "file")
        totals["duplicates"] += result.summary.duplicates
        totals["ignored"] += result.summary.ignored
    async with db.session() as s:
        repo = ExampleRepository(s)
        keys = await repo.keys()
        rejected = await RejectedEventRepository(s).count_by_code()
        pending = await JoinRepository(s).count_open()
    by_type: dict[str, list[str]] = {}
    for source_type, execution_id in keys:
        by_type.setdefault(source_type, []).append(execution_id)
    assert sorted(by_type["EXECUTION_TRACE"]) == sorted(exp["trace_examples"])
    assert sorted(by_type["QUALITY_FEEDBACK"]) == sorted(exp["feedback_examples"])
    assert sorted(by_type.get("PLANNING_TRACE", [])) == sorted(exp["plan_examples"])
    assert rejected == exp["rejected"]
    assert totals == {"duplicates": exp["duplicates"], "ignored": exp["ignored"]}
    assert pending >= len(exp["unscored_traces"])
    assert metric("l07_events_pending_join") == pending
    assert metric("l07_examples_extracted_total", source_type="EXECUTION_TRACE", domain="travel") > extracted_before

    replay = await pipeline.ingest(stream.lines, "file")
    assert replay.summary.examples_extracted == 0 and replay.summary.examples_stored == 0


async def test_concurrent_pipelines_never_double_count(db: Database, cfg: Settings):
    stream = generate(120, seed=5)
    lines = stream.lines
    a, b = IngestionPipeline(db, cfg), IngestionPipeline(db, cfg)

    async def feed(p: IngestionPipeline, order: list[str]) -> int:
        n = 0
        for i in range(0, len(order), 25):
            n += (await p.ingest(order[i : i + 25], "redis")).summary.examples_stored
        return n

    stored = await asyncio.gather(feed(a, lines), feed(b, list(reversed(lines))))
    async with db.session() as s:
        keys = await ExampleRepository(s).keys()
    assert len(keys) == len(set(keys)) == sum(stored)
    assert sorted(e for t, e in keys if t == "EXECUTION_TRACE") == sorted(stream.expected["trace_examples"])


async def test_on_examples_hook_runs_inside_the_transaction(db: Database, cfg: Settings):
    seen: list[str] = []

    async def hook(session, examples):
        seen.extend(e.execution_id for e in examples)
        if examples:
            raise RuntimeError("filter crashed")

    trace, score = trace_event("exec-h"), score_event("exec-h")
    result = await ingest_events([trace, score], db=db, settings=cfg, on_examples=hook)
    assert "exec-h" in seen
    # Issue 22: the failure is isolated to the event whose example the hook failed on (rejected, E7910, no key
    # claimed); the rest of the batch commits.
    assert [(i.status, i.code) for i in result.items] == [("pending", None), ("rejected", "E7910")]
    async with db.session() as s:
        assert await ProcessedEventRepository(s).count("processed") == 1, "only the trace holds a key"
    again = await ingest_events([trace, score], db=db, settings=cfg)
    assert [i.status for i in again.items] == ["duplicate", "extracted"]
    assert [e.execution_id for e in again.examples] == ["exec-h"]


async def test_pending_examples_are_stored_with_secrets_masked(db: Database, cfg: Settings):
    from L07_learning.services.example_quality_filter import ExampleQualityFilter

    key = "AKIAIOSFODNN7EXAMPLQ"
    token = f"ghp_{'x7Kq9' * 8}"
    result = await ingest_events([trace_event("exec-s1", answer=f"Booked. Use key {key} for the API."),
                                  score_event("exec-s1"),
                                  trace_event("exec-s2", answer=f"Booked. Use key {key} for the API.",
                                              execution_trace=[{"step": 1, "action": "call_api", "output": "ok",
                                                                "parameters": {"auth": token}}]),
                                  score_event("exec-s2")], db=db, settings=cfg)
    live = {e.execution_id: e for e in result.examples}
    assert key in live["exec-s1"].output_text, "the filter still sees the secret it must decide on"
    async with db.session() as s:
        stored = {e.execution_id: e for e in await ExampleRepository(s).list()}
    assert token in json.dumps([a["params"] for a in live["exec-s2"].expected_actions])
    for ex in stored.values():
        assert key not in ex.model_dump_json() and token not in ex.model_dump_json()
        assert "<SECRET_MASKED kind=aws_access_key_id" in ex.output_text and "scan" not in ex.metadata

    flt = ExampleQualityFilter(db=db, settings=cfg)
    report = await flt.filter_detailed([live["exec-s1"]])
    assert [(d.decision.value, d.reason) for d in report.decisions] == [("QUARANTINE", "secret")]
    # A stored row filtered again (e.g. after the filter crashed) is decided by its masks, and they are kept as is.
    again = await flt.filter_detailed([stored["exec-s2"]])
    assert [(d.decision.value, d.reason) for d in again.decisions] == [("QUARANTINE", "secret")]
    async with db.session() as s:
        decided = {e.execution_id: e for e in await ExampleRepository(s).list()}
    assert {e.status.value for e in decided.values()} == {"QUARANTINED"}
    assert decided["exec-s2"].output_text == stored["exec-s2"].output_text
    assert all(key not in e.model_dump_json() for e in decided.values())


def test_sample_stream_is_deterministic_and_learnable():
    a, b = generate(80, seed=3), generate(80, seed=3)
    assert a.lines == b.lines and generate(80, seed=4).lines != a.lines
    events = [json.loads(line) for line in a.lines if line.startswith("{") and line.endswith("}")]
    types = {(e.get("data") or e.get("payload") or {}).get("task_type") for e in events}
    assert {"ticket_routing", "weather_lookup", "flight_booking", "code_debug", "capital_qa",
            "meeting_scheduling"} <= types
    # The correct answer is a function of the goal: identical goals of successful runs share one output.
    from L07_learning.services.demo.sample_stream import make_task
    import random

    t1, t2 = make_task("capital_qa", random.Random(1)), make_task("capital_qa", random.Random(1))
    assert correct_output(t1) == correct_output(t2) and "capital" in t1.goal


# --- property-based: nothing but L07Error, valid events still extracted ------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _mutate(event: dict[str, Any], data: st.DataObject) -> Any:
    ev = copy.deepcopy(event)
    for _ in range(data.draw(st.integers(1, 3))):
        target = ev
        path = data.draw(st.sampled_from([[], ["data"], ["data", "execution_trace", 0], ["data", "task_definition"]]))
        for key in path:
            try:
                target = target[key]
            except (KeyError, IndexError, TypeError):
                break
        if not isinstance(target, dict) or not target:
            continue
        key = data.draw(st.sampled_from(sorted(target)))
        if data.draw(st.booleans()):
            del target[key]
        else:
            target[key] = data.draw(json_values)
    return ev


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_property_arbitrary_and_mutated_events(db: Database, cfg: Settings, data: st.DataObject):
    ex = TrainingDataExtractor(db=db, settings=cfg)
    exec_id = f"exec-{uuid.uuid4().hex}"
    garbage: list[Any] = []
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["text", "bytes", "json", "mutated_trace", "mutated_score"]))
        if kind == "text":
            garbage.append(data.draw(st.text(max_size=60)))
        elif kind == "bytes":
            garbage.append(data.draw(st.binary(max_size=60)))
        elif kind == "json":
            garbage.append(data.draw(json_values))
        elif kind == "mutated_trace":
            garbage.append(_mutate(trace_event(f"exec-m-{uuid.uuid4().hex}"), data))
        else:
            garbage.append(_mutate(score_event(f"exec-m-{uuid.uuid4().hex}"), data))
    valid = [trace_event(exec_id), score_event(exec_id)]
    mixed = garbage[:1] + valid[:1] + garbage[1:] + valid[1:]
    try:
        examples = await ex.extract_batch(mixed)
    except L07Error as exc:  # the contract allows only L07Error; storage trouble would be E7014
        pytest.fail(f"batch raised {exc}")
    assert exec_id in [e.execution_id for e in examples]
    for item in garbage:
        try:
            await ex.extract_from_event(item)
        except L07Error:
            pass


def test_cloud_event_model_keeps_extensions():
    ev = CloudEvent.model_validate({"specversion": "1.0", "id": "1", "source": L02, "type": "x", "traceparent": "t"})
    assert ev.to_dict()["traceparent"] == "t"
    assert RawEvent(b"{}").headers is None
    with pytest.raises(L07Error) as info:
        parse_event({"specversion": "1.0", "id": "1", "source": "evil", "type": "x"}, allow_list=[r"^l0\d$"])
    assert info.value.code is L07ErrorCode.EVENT_AUTHENTICITY_FAILED


def test_cli_sample_events_then_ingest_json(l07_home, tmp_path):
    from typer.testing import CliRunner

    from L07_learning.cli.main import app

    runner = CliRunner()
    out = tmp_path / "events.jsonl"
    made = runner.invoke(app, ["sample-events", "--out", str(out), "--executions", "60", "--seed", "4", "--json"])
    assert made.exit_code == 0, made.output
    plan = json.loads(made.stdout.strip().splitlines()[-1])
    first = runner.invoke(app, ["ingest", str(out), "--batch-size", "50", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["events_read"] == plan["events"]
    assert summary["examples_extracted"] == summary["examples_stored"] == (
        plan["expected_trace_examples"] + plan["expected_feedback_examples"] + plan["expected_plan_examples"])
    assert summary["events_rejected"] == plan["malformed"] and summary["duplicates"] == plan["duplicates"]
    assert summary["pending_join"] >= plan["unscored_traces"]
    again = json.loads(runner.invoke(app, ["ingest", str(out), "--json"]).stdout.strip().splitlines()[-1])
    assert again["examples_extracted"] == 0
    joins = json.loads(runner.invoke(app, ["joins", "--json"]).stdout.strip().splitlines()[-1])
    assert joins["joined"] >= plan["expected_trace_examples"]
