"""REST service: auth and roles, error bodies, limits, request ids, audit, ingestion, health and metrics.

Every test drives the real app through httpx's ASGI transport against a real database; role checks are shown by the
answer a request gets (403 for a refused role, the service's own answer, often 404 for an unknown id, otherwise).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from L07_learning.api import create_app
from L07_learning.api.config import ApiConfig
from L07_learning.api.auth import AuthService, Role, hash_token
from L07_learning.services.access import AccessService
from L07_learning.store.db import Database
from L07_learning.store.repositories.audit import list_audit
from L07_learning.store.repositories.events import RejectedEventRepository
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.tests.conftest import REDIS_URL
from L07_learning.tests.factories.validation import GOLDEN_MAX_NEW_TOKENS, chatty_tiny_model, register_release_candidates

ROLES = [r.value for r in Role]


async def make_keys(db: Database, settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """One key per role, plus ``ml_manager`` (a reviewer key with the ml_manager attribute)."""
    auth = AuthService(AccessService(db))
    # The producer key speaks for L02 traces, the kind of the samples these tests post.
    keys = {role: (await auth.create_key(role, name=f"test-{role}", sources=["L02"] if role == "producer" else None))[1]
            for role in ROLES}
    keys["ml_manager"] = (await auth.create_key("reviewer", name="manager", attributes={"ml_manager": True}))[1]
    return keys


@pytest.fixture
async def client_for(settings):  # type: ignore[no-untyped-def]
    """Factory: an httpx client on a fresh app over ``db`` (with optional REST limits)."""
    clients: list[httpx.AsyncClient] = []

    async def make(db: Database, config: ApiConfig | None = None, app_settings=None) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
        app = create_app(settings=app_settings or settings, db=db, config=config or ApiConfig())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test")
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.aclose()


@pytest.fixture
async def api(sqlite_db: Database, client_for) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    yield await client_for(sqlite_db)


@pytest.fixture
async def keys(sqlite_db: Database, settings) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return await make_keys(sqlite_db, settings)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def score_event(execution_id: str) -> dict:
    return {
        "specversion": "1.0",
        "type": "com.agentic.evaluation.quality_score_computed",
        "source": "https://agentic.local/layers/l06",
        "id": str(uuid.uuid4()),
        "data": {"execution_id": execution_id, "quality_score": 88.5, "confidence_level": 0.91},
    }


# --- authentication ---------------------------------------------------------------------------------------------


async def test_keys_are_stored_only_as_hashes(sqlite_db: Database, settings) -> None:  # type: ignore[no-untyped-def]
    record, token = await AuthService(AccessService(sqlite_db)).create_key("trainer")
    async with sqlite_db.session() as s:
        rows = (await s.execute(text("SELECT key_id, key_hash FROM l07_api_keys"))).all()
    assert rows == [(record.key_id, hash_token(token))]
    assert token not in json.dumps([list(r) for r in rows])


async def test_missing_unknown_and_revoked_keys_get_401(api: httpx.AsyncClient, sqlite_db: Database, settings) -> None:  # type: ignore[no-untyped-def]
    r = await api.get("/api/v1/models")
    assert r.status_code == 401
    assert r.json()["code"] == "E7904" and set(r.json()) == {"code", "name", "message", "detail"}
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert (await api.get("/api/v1/models", headers=auth("l07_not-a-key"))).status_code == 401

    service = AuthService(AccessService(sqlite_db))
    record, token = await service.create_key("auditor")
    assert (await api.get("/api/v1/models", headers={"X-API-Key": token})).status_code == 200
    assert await service.revoke_key(record.key_id)
    r = await api.get("/api/v1/models", headers={"X-API-Key": token})
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_cli_creates_a_key_that_the_api_accepts(settings, sqlite_db: Database) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.cli.main import app as cli

    result = CliRunner().invoke(cli, ["keys", "create", "--role", "deployer", "--attr", "ml_manager=true", "--json"])
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout.strip().splitlines()[-1])
    assert created["role"] == "deployer" and created["attributes"] == {"ml_manager": True}

    listed = CliRunner().invoke(cli, ["keys", "list-api", "--json"])
    assert [k["key_id"] for k in json.loads(listed.stdout)] == [created["key_id"]]
    assert created["api_key"] not in listed.stdout

    bad = CliRunner().invoke(cli, ["keys", "create", "--role", "wizard"])
    assert bad.exit_code == 2


# --- roles ------------------------------------------------------------------------------------------------------

MISSING = "00000000-0000-4000-8000-000000000000"
EVERY_READER = {"trainer", "reviewer", "deployer", "auditor", "admin"}

# (method, path, json body, roles allowed). A refused role gets 403; an allowed one reaches the service, which
# answers for the unknown id (404) or lists (200) or accepts (202).
RBAC = [
    ("POST", "/api/v1/events", "event", {"producer", "admin"}),
    ("GET", "/api/v1/models", None, EVERY_READER),
    ("GET", f"/api/v1/models/{MISSING}", None, EVERY_READER),
    ("GET", f"/api/v1/models/{MISSING}/validations", None, EVERY_READER),
    ("POST", f"/api/v1/models/{MISSING}/promote", {"stage": "staging"}, {"deployer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/promote", {"stage": "PRODUCTION"}, {"deployer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/promote", {"stage": "archived"}, {"admin"}),
    ("POST", f"/api/v1/models/{MISSING}/promote", {"stage": "rejected"}, {"reviewer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/approve", {"stage": "staging"}, {"reviewer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/approve", {"capacity": "deployer"}, {"deployer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/rollback", {"reason": "manual"}, {"deployer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/validate", {}, {"reviewer", "deployer", "admin"}),
    ("POST", f"/api/v1/models/{MISSING}/deploy", None, {"deployer", "admin"}),
    ("GET", f"/api/v1/models/{MISSING}/deployments/{MISSING}", None, EVERY_READER),
    ("GET", "/api/v1/datasets", None, EVERY_READER),
    ("GET", f"/api/v1/datasets/{MISSING}", None, EVERY_READER),
    ("GET", f"/api/v1/datasets/{MISSING}?include_examples=true", None, {"reviewer", "admin"}),
    ("POST", "/api/v1/training/jobs", {"dataset_id": MISSING, "base_model_id": MISSING}, {"trainer", "admin"}),
    ("GET", f"/api/v1/training/jobs/{MISSING}", None, EVERY_READER),
    ("POST", f"/api/v1/training/jobs/{MISSING}/cancel", None, {"trainer", "admin"}),
    ("DELETE", f"/api/v1/training/jobs/{MISSING}", None, {"trainer", "admin"}),
    ("GET", "/api/v1/audit", None, {"auditor", "admin"}),
]


@pytest.mark.parametrize("method,path,body,allowed", RBAC, ids=[f"{m} {p.replace(MISSING, 'X')} {b if isinstance(b, dict) else ''}" for m, p, b, _ in RBAC])
async def test_each_role_is_allowed_or_denied(
    api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database, method: str, path: str, body, allowed: set[str], sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    for role in ROLES:
        payload = dict(sample_cloud_event, id=str(uuid.uuid4())) if body == "event" else body
        r = await api.request(method, path, json=payload, headers=auth(keys[role]))
        if role in allowed:
            assert r.status_code not in (401, 403), (role, r.status_code, r.text)
            assert r.status_code < 500, (role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert r.json()["code"] == "E7904" and r.json()["detail"]["role"] == role
    if method != "GET":
        async with sqlite_db.session() as s:
            rows, _ = await list_audit(s, limit=100)
        denied = {r["actor"]["identifier"] for r in rows if r["result"] == "denied"}
        assert len(denied) == len(set(ROLES) - allowed)  # every refused mutating call is audited under its key


async def test_ml_manager_capacity_comes_only_from_the_attribute(api: httpx.AsyncClient, keys: dict[str, str]) -> None:
    body = {"capacity": "ml_manager"}
    assert (await api.post(f"/api/v1/models/{MISSING}/approve", json=body, headers=auth(keys["admin"]))).status_code == 403
    r = await api.post(f"/api/v1/models/{MISSING}/approve", json=body, headers=auth(keys["ml_manager"]))
    assert r.status_code == 404 and r.json()["code"] == "E7250"


# --- errors, limits, request ids -------------------------------------------------------------------------------


async def test_errors_share_one_body_with_the_table_status(api: httpx.AsyncClient, keys: dict[str, str]) -> None:
    r = await api.get(f"/api/v1/models/{MISSING}", headers=auth(keys["auditor"]))
    assert r.status_code == 404 and r.json()["code"] == "E7250" and r.json()["name"] == "MODEL_NOT_FOUND"

    r = await api.get("/api/v1/models?stage=limbo", headers=auth(keys["auditor"]))
    assert r.status_code == 400 and r.json()["code"] == "E7110" and "STAGING" in r.json()["detail"]["allowed"]

    r = await api.post("/api/v1/training/jobs", json={"dataset_id": "d", "base_model_id": "m", "config": {"lora_rank": 4}},
                       headers=auth(keys["trainer"]))
    assert r.status_code == 400 and r.json()["code"] == "E7500"
    assert r.json()["detail"]["errors"][0]["loc"] == ["body", "config", "lora_rank"]

    r = await api.post("/api/v1/training/jobs", json={"dataset_id": "d"}, headers=auth(keys["trainer"]))
    assert r.status_code == 404 and r.json()["code"] == "E7028"

    r = await api.post("/api/v1/training/jobs", json={"dataset": "d"}, headers=auth(keys["trainer"]))
    assert r.status_code == 400 and r.json()["code"] == "E7110"

    r = await api.get("/api/v1/nowhere")
    assert r.status_code == 404 and r.json()["code"] == "HTTP404"


async def test_request_id_is_echoed_and_lands_in_the_audit_log(api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database) -> None:
    r = await api.post(f"/api/v1/models/{MISSING}/promote", json={"stage": "staging"},
                       headers={**auth(keys["deployer"]), "X-Request-ID": "req-abc-123"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "req-abc-123"
    generated = (await api.get("/health/live")).headers["x-request-id"]
    assert uuid.UUID(generated).version == 4
    bad = await api.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert bad.headers["x-request-id"] != "bad id with spaces"

    r = await api.get("/api/v1/audit", params={"request_id": "req-abc-123"}, headers=auth(keys["auditor"]))
    rows = r.json()["data"]
    assert [(x["action"], x["result"], x["error_code"]) for x in rows] == [("api.models.promote", "failure", "E7250")]
    key_id = (await AuthService(AccessService(sqlite_db)).authenticate(keys["deployer"])).key_id
    assert rows[0]["actor"] == {"type": "api_key", "identifier": key_id, "ip_address": "127.0.0.1",
                                "user_agent": f"python-httpx/{httpx.__version__}"}
    assert rows[0]["details"]["to_stage"] == "STAGING"


async def test_access_log_is_json_with_the_request_id(api: httpx.AsyncClient, keys: dict[str, str]) -> None:
    import io
    import logging

    from L07_learning.observability.logging import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("L07_learning.api.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        await api.get(f"/api/v1/models/{MISSING}", headers={**auth(keys["auditor"]), "X-Request-ID": "req-log-1"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["request_id"] == "req-log-1"
    assert (line["route"], line["status"], line["error_code"]) == ("/api/v1/models/{model_id}", 404, "E7250")
    assert line["key_id"].startswith("key-") and line["duration_ms"] >= 0


async def test_oversized_body_gets_413(sqlite_db: Database, client_for, keys: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    client = await client_for(sqlite_db, ApiConfig(max_request_bytes=2048))
    r = await client.post("/api/v1/events", content=b"x" * 4096, headers=auth(keys["producer"]))
    assert r.status_code == 413 and r.json()["code"] == "E7110" and r.json()["detail"]["limit_bytes"] == 2048

    async def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(4):
            yield b"y" * 1024

    r = await client.post("/api/v1/events", content=chunks(), headers=auth(keys["producer"]))
    assert r.status_code == 413


async def test_event_rate_limit_answers_429_with_retry_after(sqlite_db: Database, client_for, keys: dict[str, str], sample_cloud_event: dict) -> None:  # type: ignore[no-untyped-def]
    config = ApiConfig(rate_limit_events_per_s=0.5, rate_limit_burst=3, max_batch_events=3)
    client = await client_for(sqlite_db, config)
    batch = [dict(sample_cloud_event, id=str(uuid.uuid4())) for _ in range(3)]
    assert (await client.post("/api/v1/events", json=batch, headers=auth(keys["producer"]))).status_code == 202
    r = await client.post("/api/v1/events", json=[dict(sample_cloud_event, id="late")], headers=auth(keys["producer"]))
    assert r.status_code == 429 and r.json()["code"] == "E7104"
    assert int(r.headers["retry-after"]) == 2  # one token at 0.5/s
    # The limit is per key: another key is not throttled.
    assert (await client.post("/api/v1/events", json=[dict(sample_cloud_event, id="other")], headers=auth(keys["admin"]))).status_code == 202
    too_many = [dict(sample_cloud_event, id=str(i)) for i in range(4)]
    r = await client.post("/api/v1/events", json=too_many, headers=auth(keys["admin"]))
    assert r.status_code == 400 and r.json()["detail"]["max_batch_events"] == 3


async def test_audit_write_failure_refuses_the_call(api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database) -> None:
    async with sqlite_db.session() as s:
        await s.execute(text("ALTER TABLE l07_audit_log RENAME TO l07_audit_log_gone"))
    r = await api.post(f"/api/v1/models/{MISSING}/approve", json={"stage": "staging"}, headers=auth(keys["reviewer"]))
    assert r.status_code == 500 and r.json()["code"] == "E7804"
    assert r.headers["x-request-id"]


async def test_unexpected_failure_is_e7910_not_a_bare_500(api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database) -> None:
    async with sqlite_db.session() as s:
        await s.execute(text("ALTER TABLE l07_models RENAME TO l07_models_gone"))
    r = await api.get("/api/v1/models", headers={**auth(keys["auditor"]), "X-Request-ID": "req-broken"})
    assert r.status_code == 500 and r.json()["code"] == "E7910"
    assert r.headers["x-request-id"] == "req-broken"
    assert "l07_models" not in r.text  # no internals in the answer; the traceback goes to the log


# --- event ingestion ---------------------------------------------------------------------------------------------


async def test_events_structured_batch_and_binary_share_the_ingestion_path(
    db: Database, client_for, settings, sample_cloud_event: dict  # type: ignore[no-untyped-def]
) -> None:
    client = await client_for(db)
    producer = (await AuthService(AccessService(db)).create_key("producer", sources=["L02", "L06"]))[1]
    execution_id = sample_cloud_event["data"]["execution_id"]

    # Single event, structured mode: the trace waits for its score.
    r = await client.post("/api/v1/events", content=json.dumps(sample_cloud_event),
                          headers={**auth(producer), "Content-Type": "application/cloudevents+json"})
    assert r.status_code == 202, r.text
    assert r.json()["results"] == [{"index": 0, "status": "pending", "code": None, "reason": None, "examples": 0}]

    # Binary mode: the score's attributes in ce-* headers, its data as the body; it completes the join.
    score = score_event(execution_id)
    headers = {**auth(producer), "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": score["id"],
               "ce-source": score["source"], "ce-type": score["type"]}
    r = await client.post("/api/v1/events", content=json.dumps(score["data"]), headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["examples_extracted"] == 1
    async with db.session() as s:
        assert await ExampleRepository(s).count() == 1

    # Batch: a replay, a broken event and an unknown type; valid ones are kept, the broken one stored with its code.
    broken = {"specversion": "1.0", "id": "b-1", "source": "https://agentic.local/layers/l02"}
    unknown = dict(score_event("x"), type="com.example.other", id=str(uuid.uuid4()))
    r = await client.post("/api/v1/events", json=[sample_cloud_event, broken, unknown],
                          headers={**auth(producer), "Content-Type": "application/cloudevents-batch+json"})
    assert r.status_code == 202
    assert [i["status"] for i in r.json()["results"]] == ["duplicate", "rejected", "ignored"]
    assert r.json()["rejected_by_code"] == {"E7015": 1}

    # A single invalid event answers 400 with its code, and is stored too.
    r = await client.post("/api/v1/events", content=b"{not json", headers=auth(producer))
    assert r.status_code == 400 and r.json()["code"] == "E7015"
    async with db.session() as s:
        rejected = await RejectedEventRepository(s).list()
    assert [(x.code, x.transport) for x in rejected] == [("E7015", "http"), ("E7015", "http")]


# --- health and metrics -----------------------------------------------------------------------------------------


async def test_ready_checks_the_database(api: httpx.AsyncClient) -> None:
    r = await api.get("/health/ready")
    assert r.status_code == 200
    assert r.json()["ready"] is True and r.json()["dependencies_satisfied"] == {"storage": True}
    assert (await api.get("/ready")).json()["dependencies_satisfied"] == {"storage": True}
    assert (await api.get("/health/live")).json()["status"] == "alive"


async def test_ready_fails_when_the_database_is_gone(client_for, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A folder where the SQLite file should be: every connection attempt fails.
    blocked = tmp_path / "db-is-a-dir"
    (blocked / "l07.db").mkdir(parents=True)
    client = await client_for(Database(f"sqlite+aiosqlite:///{blocked / 'l07.db'}"))
    r = await client.get("/health/ready")
    assert r.status_code == 503 and r.json()["dependencies_satisfied"]["storage"] is False


@pytest.mark.redis
async def test_ready_checks_the_configured_broker(sqlite_db: Database, client_for, settings) -> None:  # type: ignore[no-untyped-def]
    up = await client_for(sqlite_db, app_settings=settings.model_copy(update={"redis_url": REDIS_URL}))
    r = await up.get("/health/ready")
    assert r.status_code == 200 and r.json()["dependencies_satisfied"] == {"storage": True, "event_stream": True}
    down = await client_for(sqlite_db, app_settings=settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    r = await down.get("/health/ready")
    assert r.status_code == 503 and r.json()["dependencies_satisfied"]["event_stream"] is False


async def test_metrics_expose_the_brief_metrics_and_http_requests(api: httpx.AsyncClient, keys: dict[str, str]) -> None:
    await api.get("/health/live")
    r = await api.get("/metrics", headers=auth(keys["auditor"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    for name in ("l07_examples_extracted_total", "l07_examples_filtered_total", "l07_datasets_created_total",
                 "l07_training_jobs_total", "l07_training_job_duration_seconds", "l07_models_registered_total",
                 "l07_validation_pass_rate", "l07_http_request_duration_seconds"):
        assert f"# TYPE {name}" in r.text, name
    assert 'l07_http_requests_total{method="GET",route="/health/live",status="200"}' in r.text


# --- the release path: REST and CLI call the same deploy function ----------------------------------------------


# A cap and budgets sized for the tiny model; the cap is the one its golden suite was recorded with.
QUICK_VALIDATION = {"L07_VALIDATION_MAX_NEW_TOKENS": str(GOLDEN_MAX_NEW_TOKENS), "L07_VALIDATION_LATENCY_REQUESTS": "3",
                    "L07_VALIDATION_SAFETY_PROMPTS": "3"}


@pytest.fixture
def quick_settings(l07_home, monkeypatch):  # type: ignore[no-untyped-def]
    """Settings with ``QUICK_VALIDATION`` set in the environment, where the REST app and the CLI both read them."""
    from L07_learning.settings import get_settings, reset_settings

    for name, value in QUICK_VALIDATION.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    return get_settings()


async def register_candidates(db: Database, settings, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Real tiny models: "intact", a first release (no baseline) whose golden suite is its own answers, and
    "damaged", a damaged fine-tune of the same weights that fails that suite."""
    from L07_learning.services.model_registry import ModelRegistry

    _, intact, damaged = await register_release_candidates(
        ModelRegistry(db=db, settings=settings), chatty_tiny_model(tmp_path), tmp_path, "release",
        intact_has_baseline=False)
    return {"intact": intact, "damaged": damaged}


async def released_events(db: Database, model_id: str) -> list[dict]:
    """Outbox rows of ``model_ready_for_deployment`` for ``model_id``."""
    from L07_learning.store.repositories.outbox import OutboxRepository

    async with db.session() as s:
        rows = await OutboxRepository(s).list()
    return [r for r in rows if r["event"]["type"].endswith("learning.model_ready_for_deployment")
            and r["event"]["data"]["model_id"] == model_id]


async def deploy_and_poll(client: httpx.AsyncClient, model_id: str, token: str, reader: str) -> tuple[dict, dict]:
    """POST the deployment (202), let the background run finish, then poll its status URL."""
    r = await client.post(f"/api/v1/models/{model_id}/deploy", headers=auth(token))
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["model_id"] == model_id and started["status_url"].endswith(started["deployment_id"])
    await client._transport.app.state.l07.operations.wait()  # type: ignore[attr-defined]
    return started, (await client.get(started["status_url"], headers=auth(reader))).json()


@pytest.mark.parametrize(("candidate", "status", "stage"), [("intact", "STAGED", "STAGING"),
                                                            ("damaged", "REJECTED", "REJECTED")])
async def test_rest_deploy_answers_202_and_the_poll_shows_the_outcome(
    sqlite_db: Database, client_for, keys, quick_settings, tmp_path,  # type: ignore[no-untyped-def]
    candidate: str, status: str, stage: str,
) -> None:
    model_id = (await register_candidates(sqlite_db, quick_settings, tmp_path))[candidate]
    client = await client_for(sqlite_db, app_settings=quick_settings)
    started, polled = await deploy_and_poll(client, model_id, keys["deployer"], keys["auditor"])
    assert polled["status"] == status and polled["validation_id"], polled
    model = (await client.get(f"/api/v1/models/{model_id}", headers=auth(keys["auditor"]))).json()
    assert model["stage"] == stage
    [report] = (await client.get(f"/api/v1/models/{model_id}/validations", headers=auth(keys["auditor"]))).json()["data"]
    assert report["validation_id"] == polled["validation_id"]
    assert set(report["stages"]) == {"regression", "benchmark", "ab_simulation", "safety", "diversity", "latency"}
    releases = await released_events(sqlite_db, model_id)
    if candidate == "damaged":
        assert report["recommendation"] == "REJECT" and report["stages"]["regression"]["outcome"] == "FAIL"
        assert polled["error"]["code"] == "E7203" and "regression" in polled["error"]["message"], polled
        assert releases == []
        return
    assert polled["recommendation"] == "DEPLOY" and report["stages"]["regression"]["metrics"]["pass_rate"] == 1.0
    [release] = releases
    assert release["event"]["data"]["artifact_signature"] and release["event"]["data"]["validation_status"] == "APPROVED"
    assert release["event"]["data"]["validation_id"] == polled["validation_id"]
    async with sqlite_db.session() as s:
        audit_rows, _ = await list_audit(s, action="api.models.deploy")
    assert audit_rows[0]["details"]["deployment_id"] == started["deployment_id"]


def test_cli_deploy_calls_the_same_release_path(quick_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from L07_learning.cli.main import app as cli

    db = Database(quick_settings.database_url or "", auto_migrate=True)

    async def register() -> dict[str, str]:
        try:
            return await register_candidates(db, quick_settings, tmp_path)
        finally:
            await db.dispose()

    ids = asyncio.run(register())
    result = CliRunner().invoke(cli, ["models", "deploy", ids["intact"], "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["stage"] == "STAGING" and body["validation"]["recommendation"] == "DEPLOY"
    # The CLI goes through LearningService.deploy_model, which flushes the outbox at once.
    [release] = asyncio.run(released_events(db, ids["intact"]))
    assert release["delivered_at"] is not None

    result = CliRunner().invoke(cli, ["models", "deploy", ids["damaged"], "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout.strip().splitlines()[-1])["error"]
    assert error["code"] == "E7203" and "regression" in error["detail"]["failing_stages"]
    assert asyncio.run(released_events(db, ids["damaged"])) == []
    result = CliRunner().invoke(cli, ["models", "show", ids["damaged"], "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert shown["model"]["stage"] == "REJECTED"
    [report] = shown["validations"]
    assert report["recommendation"] == "REJECT" and report["stages"]["regression"]["outcome"] == "FAIL"


# --- the approval rule end to end (real model, real validation) --------------------------------------------------


@pytest.mark.slow
async def test_production_promotion_needs_deployer_and_ml_manager_and_a_refusal_changes_nothing(
    sqlite_db: Database, client_for, settings, tmp_path  # type: ignore[no-untyped-def]
) -> None:
    from L07_learning.models import ModelArtifact, ModelType
    from L07_learning.pipelines.base_model import build_tiny_model
    from L07_learning.pipelines.evaluation_pipeline import EvalCase, evaluate_model
    from L07_learning.services.model_registry import ModelRegistry
    from L07_learning.services.model_validator import ValidationConfig
    from L07_learning.store.repositories.golden import GoldenCaseRepository
    from L07_learning.store.repositories.outbox import OutboxRepository

    keys = await make_keys(sqlite_db, settings)
    # A fixed generation cap, so the recorded golden answers and the validation run generate the same length.
    client = await client_for(sqlite_db, app_settings=settings.model_copy(update={"validation_max_new_tokens": 24}))
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    model_id = await ModelRegistry(db=sqlite_db, settings=settings).register_model(
        ModelArtifact(name="api-e2e", version="1.0.0", model_type=ModelType.FINE_TUNED), source_dir=str(model_dir)
    )
    # Golden suite = this model's own greedy answers, recorded now (as a team records the current model's answers
    # before a release), so re-running the same weights must pass every case.
    cfg = ValidationConfig(max_new_tokens=24)
    cases = [EvalCase(case_id=f"g{i}", messages=[{"role": "user", "content": f"Route request {i} to a tool."}], expected="")
             for i in range(4)]
    recorded = evaluate_model(model_dir, cases, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                              latency_requests=0, latency_warmup=0, safety_prompts=0)
    async with sqlite_db.session() as s:
        await GoldenCaseRepository(s).add_many(
            "api-e2e", [{"case_id": c.case_id, "messages": c.messages, "expected": r.got} for c, r in zip(cases, recorded.cases)]
        )
    url = f"/api/v1/models/{model_id}"

    r = await client.post(f"{url}/validate", json={}, headers=auth(keys["reviewer"]))
    assert r.status_code == 202, r.text
    await client._transport.app.state.l07.operations.wait()  # type: ignore[attr-defined]
    polled = (await client.get(r.json()["status_url"], headers=auth(keys["auditor"]))).json()
    assert polled["status"] == "COMPLETED" and polled["result"]["recommendation"] == "DEPLOY", polled
    r = await client.post(f"{url}/promote", json={"stage": "staging"}, headers=auth(keys["deployer"]))
    assert r.status_code == 200 and r.json()["stage"] == "STAGING", r.text
    before = (await client.get(url, headers=auth(keys["auditor"]))).json()

    # No approvals: refused with E7252, and nothing changes.
    r = await client.post(f"{url}/promote", json={"stage": "production"}, headers=auth(keys["deployer"]))
    assert r.status_code == 409 and r.json()["code"] == "E7252"
    assert set(r.json()["detail"]["missing"]) == {"deployer", "ml_manager"}
    assert (await client.get(url, headers=auth(keys["auditor"]))).json() == before

    # The deployer's approval alone is not enough; the ml_manager's (another key) completes it.
    r = await client.post(f"{url}/approve", json={"stage": "production"}, headers=auth(keys["deployer"]))
    assert r.status_code == 201 and r.json()["role"] == "deployer"
    r = await client.post(f"{url}/promote", json={"stage": "production"}, headers=auth(keys["deployer"]))
    assert r.status_code == 409 and r.json()["detail"]["missing"] == ["ml_manager"]
    assert (await client.get(url, headers=auth(keys["auditor"]))).json() == before
    r = await client.post(f"{url}/approve", json={"stage": "production"}, headers=auth(keys["ml_manager"]))
    assert r.status_code == 201 and r.json()["role"] == "ml_manager"

    r = await client.post(f"{url}/promote", json={"stage": "production"},
                          headers={**auth(keys["deployer"]), "X-Request-ID": "req-promote-1"})
    assert r.status_code == 200, r.text
    assert (r.json()["stage"], r.json()["serving_state"]) == ("PRODUCTION", "ACTIVE")
    chain = r.json()["stage_history"][-1]["approvals"]
    assert sorted(a["role"] for a in chain) == ["deployer", "ml_manager"]

    # The request id reaches the published event and the audit rows of the change.
    async with sqlite_db.session() as s:
        published = await OutboxRepository(s).list("com.agentic.learning.model_deployment_approved")
        rows, _ = await list_audit(s, request_id="req-promote-1")
    assert published[0]["event"]["data"]["to_stage"] == "PRODUCTION"
    assert published[0]["event"]["l07requestid"] == "req-promote-1"
    assert {x["action"] for x in rows} == {"model.promote", "api.models.promote"}

    # Nothing to roll back to yet: refused, the ACTIVE model stays.
    r = await client.post(f"{url}/rollback", json={"reason": "manual"}, headers=auth(keys["deployer"]))
    assert r.status_code == 409 and r.json()["code"] == "E7251"
