"""Hostile producers (issue 22): nothing an event producer sends can fail a batch, claim another event's key or
reach a bounded column it does not fit. Every test runs on SQLite and PostgreSQL through the ``db`` fixture."""

from __future__ import annotations

import json
from typing import Any

import pytest

from L07_learning.events.cloudevent import parse_event
from L07_learning.models import L07Error
from L07_learning.services.ingestion.pipeline import IngestionPipeline, ingest_events
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.joins import JoinRepository

from .test_extractor import L02, score_event, trace_event


@pytest.fixture
def cfg(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


def nested(depth: int, leaf: Any = "x") -> Any:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


async def rejected_rows(db: Database) -> list[Any]:
    async with db.session() as s:
        return await RejectedEventRepository(s).list(limit=1000)


async def example_ids(db: Database) -> list[str | None]:
    async with db.session() as s:
        return sorted(e.execution_id for e in await ExampleRepository(s).list(limit=1000))


# --- HIGH 4: nesting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [255, 300, 5000])
async def test_deeply_nested_trace_is_rejected_at_parse_and_never_fails_a_later_batch(db: Database, cfg: Settings,
                                                                                      depth: int):
    """The review's 2 KB pair: a trace nested ~255 levels used to wait in the join table, and every later batch
    carrying its score raised a raw ValueError."""
    deep = trace_event("exec-deep")
    deep["data"]["task_definition"]["context"] = "DEEP"
    text = json.dumps(deep).replace('"DEEP"', '{"a":' * depth + '"x"' + "}" * depth)
    first = await ingest_events([text], db=db, settings=cfg)
    assert [(i.status, i.code) for i in first.items] == [("rejected", "E7015")]
    ok_t, ok_s = trace_event("exec-ok"), score_event("exec-ok")
    second = await ingest_events([json.dumps(score_event("exec-deep")), json.dumps(ok_t), json.dumps(ok_s)],
                                 db=db, settings=cfg)
    assert [i.status for i in second.items] == ["pending", "pending", "extracted"]
    assert await example_ids(db) == ["exec-ok"]
    [row] = await rejected_rows(db)
    assert row.code == "E7015" and "nests" in row.reason
    # Past the JSON reader's own limit not even the envelope can be read; below it the row names the event.
    assert row.event_id == (deep["id"] if depth < 1000 else None)


def test_depth_limit_applies_to_every_wire_form():
    deep = trace_event("exec-deep")
    deep["data"]["task_definition"]["context"] = nested(100)
    for raw in (json.dumps(deep), json.dumps(deep).encode(), deep):
        with pytest.raises(L07Error) as info:
            parse_event(raw)
        assert info.value.code.value == "E7015"
    headers = {"ce-specversion": "1.0", "ce-id": "b-1", "ce-source": L02, "content-type": "application/json",
               "ce-type": "com.agentic.execution.trace_generated"}
    with pytest.raises(L07Error) as info:
        parse_event(json.dumps(deep["data"]).encode(), headers=headers)
    assert info.value.code.value == "E7015"
    # A realistic event well inside the limit still parses.
    fine = trace_event("exec-fine")
    fine["data"]["task_definition"]["context"] = nested(20)
    assert parse_event(json.dumps(fine)).data["execution_id"] == "exec-fine"


async def test_a_failure_while_storing_one_event_rejects_that_event_only(db: Database, cfg: Settings):
    """Per-event isolation: an exception while storing what one event produced (here raised by the caller's
    ``on_examples`` hook for one execution) rejects that event with a code; the rest of its batch commits, and the
    failed event claimed no key, so its redelivery is processed once the fault is gone."""
    pipeline = IngestionPipeline(db=db, settings=cfg)
    await pipeline.ingest([trace_event("exec-poison"), trace_event("exec-a")])

    async def hook(session, examples):
        if any(e.execution_id == "exec-poison" for e in examples):
            raise ValueError("Circular reference detected (depth exceeded)")
        await ExampleRepository(session).add_many(examples)

    poison_score = score_event("exec-poison")
    batch = [score_event("exec-a"), poison_score, trace_event("exec-b"), score_event("exec-b")]
    result = await pipeline.ingest(batch, on_examples=hook)
    assert [(i.status, i.code) for i in result.items] == [
        ("extracted", None), ("rejected", "E7910"), ("pending", None), ("extracted", None)]
    assert result.summary.events_rejected == 1 and result.summary.examples_extracted == 2
    assert await example_ids(db) == ["exec-a", "exec-b"]
    [row] = await rejected_rows(db)
    assert row.code == "E7910" and row.event_id == poison_score["id"] and "ValueError" in row.reason
    again = await pipeline.ingest([poison_score])
    assert [i.status for i in again.items] == ["extracted"], "the failed event did not claim its key"
    assert await example_ids(db) == ["exec-a", "exec-b", "exec-poison"]


# --- MEDIUM: bounded columns -----------------------------------------------------------------------------------


def _long(field: str) -> dict[str, Any]:
    ev = trace_event(f"exec-long-{field}")
    if field == "id":
        ev["id"] = "i" * 600
    elif field == "source":
        ev["source"] = "l02." + "s" * 600
    elif field == "type":
        ev["type"] = "com.agentic." + "t" * 300
    elif field == "subject":
        ev = {**ev, "type": "task.completed", "subject": "e" * 600}
        del ev["data"]["execution_id"]
    elif field == "execution_id":
        ev["data"]["execution_id"] = "e" * 600
    elif field == "agent_id":
        ev["data"]["agent_id"] = "a" * 300
    elif field == "task_type":
        ev["data"]["task_type"] = "t" * 200
    elif field == "domain":
        ev["data"]["domain"] = "d" * 100
    elif field == "score_task_type":
        ev = score_event("exec-long", task_type="t" * 200)
    elif field == "evaluation_id":
        ev = score_event("exec-long", evaluation_id="v" * 600)
    elif field == "plan_id":
        ev = {"specversion": "1.0", "type": "planning.decision_recorded", "source": "https://agentic.local/layers/l05",
              "id": "pl-long", "data": {"plan_id": "p" * 300, "planning_trace": {"search_depth": 1}}}
    return ev


LONG_FIELDS = ["id", "source", "type", "subject", "execution_id", "agent_id", "task_type", "domain",
               "score_task_type", "evaluation_id", "plan_id"]


async def test_overlong_strings_are_rejected_e7110_and_never_fail_their_batch(db: Database, cfg: Settings):
    """On PostgreSQL an id over 512 characters used to fail every batch it was in (value too long)."""
    hostile = [_long(f) for f in LONG_FIELDS]
    batch = [trace_event("exec-ok"), *hostile, score_event("exec-ok")]
    result = await ingest_events([json.dumps(e) for e in batch], db=db, settings=cfg)
    codes = [(i.status, i.code) for i in result.items[1:-1]]
    assert codes == [("rejected", "E7110")] * len(LONG_FIELDS), list(zip(LONG_FIELDS, codes))
    assert result.items[-1].status == "extracted"
    assert await example_ids(db) == ["exec-ok"]
    rows = await rejected_rows(db)
    assert len(rows) == len(LONG_FIELDS) and {r.code for r in rows} == {"E7110"}
    assert all(len(r.event_id or "") <= 512 and len(r.source or "") <= 512 for r in rows)


# --- HIGH 1: an invalid event does not claim the dedup key -----------------------------------------------------


async def test_an_invalid_event_cannot_pre_claim_a_valid_events_key(db: Database, cfg: Settings):
    real = trace_event("exec-victim")
    forged = json.loads(json.dumps(real))
    del forged["data"]["agent_id"]  # same (source, id), invalid payload: E7010
    first = await ingest_events([forged], db=db, settings=cfg)
    assert [(i.status, i.code) for i in first.items] == [("rejected", "E7010")]
    again = await ingest_events([forged], db=db, settings=cfg)
    assert [i.status for i in again.items] == ["duplicate"], "a replayed invalid event is still a no-op"
    second = await ingest_events([real, score_event("exec-victim")], db=db, settings=cfg)
    assert [i.status for i in second.items] == ["pending", "extracted"], "the real event is not a duplicate"
    assert await example_ids(db) == ["exec-victim"]
    replay = await ingest_events([real, forged], db=db, settings=cfg)
    assert [i.status for i in replay.items] == ["duplicate", "duplicate"]
    async with db.session() as s:
        assert (await JoinRepository(s).load(["exec-victim"]))["exec-victim"].status == "joined"
    assert len(await rejected_rows(db)) == 1


@pytest.mark.parametrize("attr", ["id", "source", "type", "subject"])
@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"])
async def test_envelope_strings_postgres_cannot_store_are_rejected_e7110(db: Database, cfg: Settings, attr: str,
                                                                         bad: str):
    """Found by the fuzz target on PostgreSQL: a NUL in an envelope id failed the batch ("invalid byte sequence")."""
    ev = trace_event("exec-nul")
    ev[attr] = "l02." + bad if attr == "source" else bad
    text = json.dumps(ev)  # the lone surrogate travels as the JSON escape \ud800, as a producer would send it
    result = await ingest_events([text, trace_event("exec-ok"), score_event("exec-ok")], db=db, settings=cfg)
    assert [(i.status, i.code) for i in result.items] == [("rejected", "E7110"), ("pending", None), ("extracted", None)]
    [row] = await rejected_rows(db)
    assert row.code == "E7110" and attr in row.reason


async def test_an_example_the_filter_chokes_on_stays_pending_and_the_rest_are_filtered(db: Database, cfg: Settings):
    """``ingest_and_filter`` (the HTTP, CLI and consumer path): the filter raising on one example used to fail the
    whole request after the batch was stored; now the others are filtered one by one and that one waits PENDING."""
    from L07_learning.services.example_quality_filter import ExampleQualityFilter
    from L07_learning.services.ingestion.pipeline import ingest_and_filter

    class Choking(ExampleQualityFilter):
        async def filter(self, examples):  # type: ignore[override]
            if any(e.execution_id == "exec-choke" for e in examples):
                raise RecursionError("maximum recursion depth exceeded")
            return await super().filter(examples)

    flt = Choking(db=db, settings=cfg)
    batch = [trace_event("exec-choke"), score_event("exec-choke"), trace_event("exec-fine"), score_event("exec-fine")]
    result, accepted = await ingest_and_filter(batch, "http", db=db, settings=cfg, quality_filter=flt)
    assert [i.status for i in result.items] == ["pending", "extracted", "pending", "extracted"]
    assert all(e.execution_id == "exec-fine" for e in accepted)
    async with db.session() as s:
        # exec-fine got the filter's decision; exec-choke waits for ``l07 examples filter --pending``.
        assert [e.execution_id for e in await ExampleRepository(s).list(status="PENDING")] == ["exec-choke"]
