"""The REST audit trail (contract §7.4 "Audit"): refused keys are audited by prefix only, rows hold the client
address and user agent, reads of training data are audited, a change commits together with its call's audit row, and
auditors can verify the hash chain over REST."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select, text

from L07_learning.api.app import create_app
from L07_learning.api.auth import AuthService
from L07_learning.models.training_example import ExampleStatus
from L07_learning.services.access import AccessService
from L07_learning.services.dataset_curator import DatasetCurator
from L07_learning.store.db import Database
from L07_learning.store.repositories.audit import list_audit
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.tables import SqlProcessedEvent
from L07_learning.tests.factories.curation import clean_examples

MISSING = "00000000-0000-4000-8000-000000000000"
FORGED = "l07_" + "Zq9" * 14  # shaped like a real token, stored nowhere


@pytest.fixture
async def api(settings, sqlite_db: Database) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    app = create_app(settings=settings, db=sqlite_db)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 50123))
    async with httpx.AsyncClient(transport=transport, base_url="http://l07.test") as client:
        yield client


@pytest.fixture
async def keys(sqlite_db: Database) -> dict[str, tuple[str, str]]:
    """``{role: (key_id, token)}``."""
    auth = AuthService(AccessService(sqlite_db))
    out = {}
    for role in ("admin", "auditor", "reviewer", "trainer", "deployer"):
        record, token = await auth.create_key(role, name=f"audit-{role}")
        out[role] = (record.key_id, token)
    return out


def bearer(token: str, agent: str = "audit-test/1.0") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "User-Agent": agent}


async def rows_of(db: Database, **filters) -> list[dict]:  # type: ignore[no-untyped-def]
    async with db.session() as s:
        rows, _ = await list_audit(s, limit=1000, **filters)
    return rows


async def test_a_refused_key_is_audited_by_its_prefix_never_the_token(api: httpx.AsyncClient, sqlite_db: Database):
    assert (await api.get("/api/v1/models", headers=bearer(FORGED))).status_code == 401
    assert (await api.post(f"/api/v1/models/{MISSING}/promote", json={"stage": "staging"},
                           headers={"X-API-Key": FORGED})).status_code == 401
    assert (await api.get("/api/v1/models")).status_code == 401  # no key at all

    rows = [r for r in await rows_of(sqlite_db) if r["action"].startswith("api.")]
    assert len(rows) == 3 and {r["result"] for r in rows} == {"denied"}
    assert {r["error_code"] for r in rows} == {"E7904"}
    assert sorted(r["actor"]["identifier"] for r in rows) == ["l07_Zq9Z...", "l07_Zq9Z...", "none"]
    assert {r["actor"]["type"] for r in rows} == {"anonymous"}
    assert FORGED not in json.dumps(rows, default=str) and FORGED[:12] not in json.dumps(rows, default=str)


async def test_rows_hold_the_client_address_and_user_agent(api: httpx.AsyncClient, sqlite_db: Database, keys):  # type: ignore[no-untyped-def]
    key_id, token = keys["deployer"]
    r = await api.post(f"/api/v1/models/{MISSING}/promote", json={"stage": "staging"},
                       headers={**bearer(token, "deploy-bot/2.3"), "X-Request-ID": "req-origin-1"})
    assert r.status_code == 404
    [row] = await rows_of(sqlite_db, request_id="req-origin-1")
    assert row["actor"] == {"type": "api_key", "identifier": key_id, "ip_address": "198.51.100.7",
                            "user_agent": "deploy-bot/2.3"}
    assert (row["action"], row["result"], row["error_code"]) == ("api.models.promote", "failure", "E7250")


async def test_a_change_commits_with_its_call_row_and_both_name_the_caller(api: httpx.AsyncClient,
                                                                          sqlite_db: Database, keys):  # type: ignore[no-untyped-def]
    accepted = [e.model_copy(update={"status": ExampleStatus.ACCEPTED}) for e in clean_examples(12, seed=4)]
    async with sqlite_db.session() as s:
        await ExampleRepository(s).add_many(accepted)
    key_id, token = keys["trainer"]
    r = await api.post("/api/v1/datasets", json={"name": "from-rest"},
                       headers={**bearer(token, "trainer-ui/0.9"), "X-Request-ID": "req-ds-1"})
    assert r.status_code == 201, r.text
    rows = sorted(await rows_of(sqlite_db, request_id="req-ds-1"), key=lambda x: x["seq"])
    call, completion = [x for x in rows if x["action"] == "api.datasets.create"]
    [change] = [x for x in rows if x["action"] == "dataset.version_created"]
    # Appended together by the dataset's transaction: the call's row directly before the change's own row.
    assert change["seq"] == call["seq"] + 1
    # The new dataset's id is known only after the commit: a second row completes the call.
    assert completion["details"]["completes"] == call["audit_id"] and completion["resource"]["id"] == change["resource"]["id"]
    for row in (call, change, completion):
        assert row["actor"] == {"type": "api_key", "identifier": key_id, "ip_address": "198.51.100.7",
                                "user_agent": "trainer-ui/0.9"}


async def test_reading_training_data_is_audited_allowed_or_not(api: httpx.AsyncClient, sqlite_db: Database, keys):  # type: ignore[no-untyped-def]
    ds = await DatasetCurator(db=sqlite_db).create_dataset("audited", clean_examples(12))
    reviewer, trainer = keys["reviewer"], keys["trainer"]
    path = f"/api/v1/datasets/{ds.dataset_id}"
    assert (await api.get(path, headers=bearer(trainer[1]))).status_code == 200  # metadata only: not training data
    got = await api.get(path, params={"include_examples": "true"}, headers=bearer(reviewer[1]))
    assert got.status_code == 200 and len(got.json()["examples"]) == 12
    refused = await api.get(path, params={"include_examples": "true"}, headers=bearer(trainer[1]))
    assert refused.status_code == 403

    rows = await rows_of(sqlite_db, action="api.datasets.get")
    assert [(r["actor"]["identifier"], r["result"]) for r in rows] == [(trainer[0], "denied"), (reviewer[0], "success")]
    assert all(r["details"]["training_data_read"] and r["resource"]["id"] == ds.dataset_id for r in rows)


async def test_a_change_never_commits_without_its_call_row(api: httpx.AsyncClient, sqlite_db: Database, keys,  # type: ignore[no-untyped-def]
                                                           sample_cloud_event: dict):
    _, token = keys["admin"]
    ok = await api.post("/api/v1/events", json=dict(sample_cloud_event, id=str(uuid.uuid4())), headers=bearer(token))
    assert ok.status_code == 202, ok.text
    async with sqlite_db.session() as s:
        await s.execute(text("CREATE TRIGGER audit_down BEFORE INSERT ON l07_audit_log "
                             "BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"))
    r = await api.post("/api/v1/events", json=dict(sample_cloud_event, id="ev-unaudited"), headers=bearer(token))
    assert r.status_code == 500 and r.json()["code"] == "E7804"
    async with sqlite_db.session() as s:
        stored = await s.scalar(select(func.count()).select_from(SqlProcessedEvent)
                                .where(SqlProcessedEvent.event_id == "ev-unaudited"))
    assert stored == 0  # the event was not kept: its ingestion rolled back with the audit row that failed


async def test_the_call_row_commits_with_the_change_and_the_outcome_completes_it(api: httpx.AsyncClient,
                                                                                 sqlite_db: Database, keys,  # type: ignore[no-untyped-def]
                                                                                 sample_cloud_event: dict):
    _, token = keys["admin"]
    r = await api.post("/api/v1/events", json=dict(sample_cloud_event, id=str(uuid.uuid4())),
                       headers={**bearer(token), "X-Request-ID": "req-ingest-1"})
    assert r.status_code == 202
    rows = sorted(await rows_of(sqlite_db, request_id="req-ingest-1"), key=lambda x: x["seq"])
    call = [x for x in rows if x["action"] == "api.events.ingest"]
    assert len(call) == 2
    first, completion = call
    assert completion["details"]["completes"] == first["audit_id"] and completion["details"]["events"] == 1
    assert first["seq"] < completion["seq"]


async def test_auditors_verify_the_chain_over_rest(api: httpx.AsyncClient, sqlite_db: Database, keys):  # type: ignore[no-untyped-def]
    await api.post(f"/api/v1/models/{MISSING}/promote", json={"stage": "staging"}, headers=bearer(keys["deployer"][1]))
    r = await api.get("/api/v1/audit/verify", headers=bearer(keys["auditor"][1]))
    assert r.status_code == 200 and r.json()["ok"] is True and r.json()["first_broken"] is None
    assert r.json()["rows_checked"] == r.json()["head"]["seq"] > 0

    async with sqlite_db.session() as s:
        await s.execute(text("UPDATE l07_audit_log SET actor_id = 'someone-else' WHERE seq = 1"))
    r = await api.get("/api/v1/audit/verify", headers=bearer(keys["admin"][1]))
    assert r.status_code == 200 and r.json()["ok"] is False
    assert r.json()["first_broken"]["seq"] == 1 and "content changed" in r.json()["first_broken"]["reason"]
    assert (await api.get("/api/v1/audit/verify", headers=bearer(keys["trainer"][1]))).status_code == 403
