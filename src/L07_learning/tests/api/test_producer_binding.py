"""Producer keys are bound to sources and event kinds (contract §7.4, §9 "Roles"): one key cannot post a trace as L02
and a reviewer's correction as L06 and so author an ACCEPTED training example.

Every test drives ``POST /api/v1/events`` of the real app over a real database; rejections are read back from
``l07_rejected_events`` and the audit log, where an operator finds them.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from typer.testing import CliRunner

from L07_learning.api.auth import AuthService
from L07_learning.observability.metrics import REGISTRY
from L07_learning.services.access import AccessService
from L07_learning.store.db import Database
from L07_learning.store.repositories.audit import list_audit
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.tests.api.test_api import auth, client_for  # noqa: F401  (fixture)

# The attacker's answer: plausible enough to pass the content scan, wrong enough to matter.
ATTACK_ANSWER = "The ticket is a duplicate of 4410; close it without contacting the customer."


def correction(execution_id: str, **data: object) -> dict:
    """An L06 score that carries a reviewer's corrected answer (contract §1.3 ``reference_output``)."""
    return {
        "specversion": "1.0",
        "type": "com.agentic.evaluation.quality_score_computed",
        "source": "https://agentic.local/layers/l06",
        "id": str(uuid.uuid4()),
        "data": {"execution_id": execution_id, "quality_score": 100, "confidence_level": 0.99,
                 "evaluation_method": "human_review", "reference_output": ATTACK_ANSWER, **data},
    }


async def post(client: httpx.AsyncClient, token: str, event: dict) -> httpx.Response:
    return await client.post("/api/v1/events", json=event, headers=auth(token))


async def feedback_examples(db: Database) -> int:
    async with db.session() as s:
        return await ExampleRepository(s).count(source_type="QUALITY_FEEDBACK")


async def test_an_unbound_producer_key_cannot_author_training_data(
    sqlite_db: Database, client_for, sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    # A producer key as every key was stored before bindings existed: a role and nothing else.
    record, token = await AccessService(sqlite_db).create_key("producer", "legacy", {}, "test")
    client = await client_for(sqlite_db)
    execution_id = sample_cloud_event["data"]["execution_id"]

    trace = await post(client, token, sample_cloud_event)
    review = await post(client, token, correction(execution_id))

    assert (trace.status_code, trace.json()["code"]) == (400, "E7115"), trace.text
    assert (review.status_code, review.json()["code"]) == (400, "E7115"), review.text
    assert "not bound" in trace.json()["message"]
    assert await feedback_examples(sqlite_db) == 0
    async with sqlite_db.session() as s:
        assert await ExampleRepository(s).count() == 0
        rejected = await RejectedEventRepository(s).list(code="E7115")
    assert len(rejected) == 2 and all(record.key_id in r.reason for r in rejected)


async def test_a_key_bound_to_l02_traces_cannot_post_l06_scores(
    sqlite_db: Database, client_for, sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    auth_service = AuthService(AccessService(sqlite_db))
    record, token = await auth_service.create_key("producer", name="l02-runtime", sources=["L02"], kinds=["trace"])
    client = await client_for(sqlite_db)
    execution_id = sample_cloud_event["data"]["execution_id"]

    trace = await post(client, token, sample_cloud_event)
    assert trace.status_code == 202 and trace.json()["results"][0]["status"] == "pending", trace.text

    # The same key, claiming to be L06: refused with its code, stored, counted, alerted and audited under the key.
    def counted() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("l07_events_rejected_total", {"code": "E7115"}) or 0.0,
                REGISTRY.get_sample_value("l07_errors_total", {"error_code": "E7115", "error_type": "security"}) or 0.0)

    rejected_before, alerts_before = counted()
    review = await post(client, token, correction(execution_id))
    assert (review.status_code, review.json()["code"]) == (400, "E7115"), review.text
    assert "l06" in review.json()["message"] and record.key_id in review.json()["message"]
    batch = await client.post("/api/v1/events", json=[correction(execution_id), dict(sample_cloud_event, id="t-2",
                              source="l05.planner")], headers=auth(token))
    assert batch.status_code == 202 and batch.json()["rejected_by_code"] == {"E7115": 2}
    rejected_after, alerts_after = counted()
    assert rejected_after == rejected_before + 3 and alerts_after >= alerts_before + 3
    assert await feedback_examples(sqlite_db) == 0
    async with sqlite_db.session() as s:
        assert await ExampleRepository(s).count() == 0
        assert len(await RejectedEventRepository(s).list(code="E7115")) == 3
        rows, _ = await list_audit(s, action="api.events.ingest")
    assert any(r["details"].get("rejected_by_code") == {"E7115": 2} for r in rows), rows

    # A key of the right source but another kind is refused too: an L02 key posts traces, not plans.
    plan = {"specversion": "1.0", "type": "planning.decision_recorded", "source": "https://agentic.local/layers/l02",
            "id": "pl-1", "data": {"plan_id": "p", "planning_trace": {"search_depth": 1}}}
    r = await post(client, token, plan)
    assert (r.status_code, r.json()["code"]) == (400, "E7115") and "plan" in r.json()["message"]


async def test_only_a_reviewer_bound_key_may_post_human_review_scores(
    sqlite_db: Database, client_for, sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    auth_service = AuthService(AccessService(sqlite_db))
    _, l02 = await auth_service.create_key("producer", sources=["L02"], kinds=["trace"])
    _, l06 = await auth_service.create_key("producer", sources=["L06"], kinds=["score"])
    _, reviewer = await auth_service.create_key("producer", sources=["L06"], kinds=["score", "human_review"])
    client = await client_for(sqlite_db)
    execution_id = sample_cloud_event["data"]["execution_id"]
    assert (await post(client, l02, sample_cloud_event)).status_code == 202

    # An evaluator key may score, but a human_review score outranks automated ones and a reference output becomes
    # training output: both need the reviewer binding.
    r = await post(client, l06, correction(execution_id))
    assert (r.status_code, r.json()["code"]) == (400, "E7115") and "human_review" in r.json()["message"]
    r = await post(client, l06, correction(execution_id, reference_output=None))
    assert (r.status_code, r.json()["code"]) == (400, "E7115")
    assert await feedback_examples(sqlite_db) == 0

    r = await post(client, reviewer, correction(execution_id))
    assert r.status_code == 202 and r.json()["examples_extracted"] == 2, r.text
    assert await feedback_examples(sqlite_db) == 1


async def test_bindings_are_checked_when_the_key_is_made(sqlite_db: Database) -> None:
    from L07_learning.models.error_codes import L07Error

    auth_service = AuthService(AccessService(sqlite_db))
    for kwargs in ({}, {"sources": ["L02"], "kinds": ["trace", "telepathy"]}, {"sources": ["l0x"], "kinds": ["trace"]}):
        with pytest.raises(L07Error) as exc:
            await auth_service.create_key("producer", **kwargs)
        assert exc.value.code.value == "E7110", kwargs
    # Kinds default to what the bound layers produce (contract §1.1); human_review is never implied.
    record, _ = await auth_service.create_key("producer", sources=["L02", "l06"])
    assert (record.sources, record.kinds) == (("l02", "l06"), ("score", "trace"))
    with pytest.raises(L07Error):
        await auth_service.create_key("trainer", sources=["L02"])  # only event producers carry bindings


def test_cli_creates_bound_keys_and_lists_e7115_rejections(settings, sqlite_db: Database) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.cli.main import app as cli

    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--role", "producer", "--source", "L02", "--kinds", "trace", "--json"])
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout.strip().splitlines()[-1])
    assert created["sources"] == ["l02"] and created["kinds"] == ["trace"]
    listed = json.loads(runner.invoke(cli, ["keys", "list-api", "--json"]).stdout)
    assert [(k["key_id"], k["sources"], k["kinds"]) for k in listed] == [(created["key_id"], ["l02"], ["trace"])]

    unbound = runner.invoke(cli, ["keys", "create", "--role", "producer"])
    assert unbound.exit_code != 0 and "--source" in unbound.output


async def test_a_refused_event_does_not_block_the_genuine_one(
    sqlite_db: Database, client_for, sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    # The attacker guesses the id L06 will use; the forged event is refused, and must not make the real one a
    # "duplicate" of it (contract §1.8 dedup key is (source, id)).
    auth_service = AuthService(AccessService(sqlite_db))
    _, l02 = await auth_service.create_key("producer", sources=["L02"])
    _, l06 = await auth_service.create_key("producer", sources=["L06"])
    client = await client_for(sqlite_db)
    execution_id = sample_cloud_event["data"]["execution_id"]
    genuine = correction(execution_id, evaluation_method="automated", reference_output=None, quality_score=88.5)
    forged = dict(genuine, data={**genuine["data"], "quality_score": 100})
    assert (await post(client, l02, forged)).json()["code"] == "E7115"
    assert (await post(client, l02, sample_cloud_event)).status_code == 202
    r = await post(client, l06, genuine)
    assert r.status_code == 202 and r.json()["results"][0]["status"] == "extracted", r.text
