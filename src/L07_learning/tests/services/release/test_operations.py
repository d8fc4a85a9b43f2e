"""Background operations (``l07_operations``): REST validation answers 202 and the poll ends with the stored report;
an operation whose process died reads FAILED; ``POST /api/v1/datasets`` versions ACCEPTED examples."""

from __future__ import annotations

import socket
from datetime import timedelta

from L07_learning.models._base import new_id, utcnow
from L07_learning.models.training_example import ExampleSource, ExampleStatus, TrainingExample
from L07_learning.services.release.deploy import STALE_AFTER_S
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.operations import Operation, OperationRepository
from L07_learning.tests.api.test_api import (  # noqa: F401 - fixtures
    auth,
    client_for,
    keys,
    quick_settings,
    register_candidates,
)


async def test_rest_validate_answers_202_and_the_poll_ends_with_the_stored_report(
    sqlite_db: Database, client_for, keys, quick_settings, tmp_path,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    model_id = (await register_candidates(sqlite_db, quick_settings, tmp_path))["intact"]
    client = await client_for(sqlite_db, app_settings=quick_settings)
    r = await client.post(f"/api/v1/models/{model_id}/validate", json={}, headers=auth(keys["reviewer"]))
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] == "RUNNING" and started["kind"] == "validate"
    assert started["status_url"] == f"/api/v1/models/{model_id}/operations/{started['operation_id']}"
    await client._transport.app.state.l07.operations.wait()  # type: ignore[attr-defined]

    polled = (await client.get(started["status_url"], headers=auth(keys["auditor"]))).json()
    assert polled["status"] == "COMPLETED" and polled["error"] is None and polled["completed_at"], polled
    [stored] = (await client.get(f"/api/v1/models/{model_id}/validations", headers=auth(keys["auditor"]))).json()["data"]
    assert polled["result"]["validation_id"] == stored["validation_id"]
    assert polled["result"]["recommendation"] == stored["recommendation"] == "DEPLOY"
    # A validation is no deployment: the model did not move, and its id is unknown to the deployment view.
    assert (await client.get(f"/api/v1/models/{model_id}", headers=auth(keys["auditor"]))).json()["stage"] == "DEVELOPMENT"
    r = await client.get(f"/api/v1/models/{model_id}/deployments/{started['operation_id']}", headers=auth(keys["auditor"]))
    assert r.status_code == 404


async def _stored(db: Database, owner: str, heartbeat_age_s: float, kind: str = "deploy") -> str:
    now = utcnow()
    op = Operation(operation_id=new_id(), kind=kind, model_id="mdl-x", status="RUNNING", requested_by="key-1",
                   owner=owner, created_at=now - timedelta(seconds=heartbeat_age_s),
                   heartbeat_at=now - timedelta(seconds=heartbeat_age_s))
    async with db.session() as s:
        OperationRepository(s).add(op)
    return op.operation_id


async def test_operations_interrupted_by_a_restart_read_failed(sqlite_db: Database, client_for, keys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    host = socket.gethostname()
    dead_here = await _stored(sqlite_db, f"{host}:999999999:0dead000", heartbeat_age_s=1)
    silent_elsewhere = await _stored(sqlite_db, "other-host:12:abcd", heartbeat_age_s=STALE_AFTER_S + 5, kind="validate")
    alive_elsewhere = await _stored(sqlite_db, "other-host:13:abcd", heartbeat_age_s=1)
    # A fresh app is the restarted process: its first poll recovers what the dead ones left RUNNING.
    client = await client_for(sqlite_db)
    r = await client.get(f"/api/v1/models/mdl-x/deployments/{dead_here}", headers=auth(keys["auditor"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "FAILED" and body["deployment_id"] == body["operation_id"] == dead_here
    assert body["error"]["code"] == "E7910" and "interrupted" in body["error"]["message"]
    polled = (await client.get(f"/api/v1/models/mdl-x/operations/{silent_elsewhere}", headers=auth(keys["auditor"]))).json()
    assert polled["status"] == "FAILED" and "restart or crash" in polled["error"]["message"]
    polled = (await client.get(f"/api/v1/models/mdl-x/operations/{alive_elsewhere}", headers=auth(keys["auditor"]))).json()
    assert polled["status"] == "RUNNING" and polled["error"] is None


async def test_orderly_shutdown_marks_its_running_operations_failed(
    sqlite_db: Database, client_for, keys, quick_settings, tmp_path,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    model_id = (await register_candidates(sqlite_db, quick_settings, tmp_path))["intact"]
    client = await client_for(sqlite_db, app_settings=quick_settings)
    started = (await client.post(f"/api/v1/models/{model_id}/deploy", headers=auth(keys["deployer"]))).json()
    await client._transport.app.state.l07.close()  # type: ignore[attr-defined]
    async with sqlite_db.session() as s:
        op = await OperationRepository(s).get(started["deployment_id"])
    assert op is not None and op.status in {"FAILED", "STAGED"}
    if op.status == "FAILED":
        assert "interrupted" in (op.error_message or "")


def _accepted(i: int, task_type: str) -> TrainingExample:
    return TrainingExample(source_type=ExampleSource.EXECUTION_TRACE,
                           input_text=f"Route request {i} about {task_type} to the right tool, please.",
                           output_text=f"I routed request {i} to the {task_type} tool and it answered.",
                           task_type=task_type, quality_score=90.0, confidence=0.9, status=ExampleStatus.ACCEPTED,
                           execution_id=f"exec-{task_type}-{i}", agent_id="agent-1")


async def test_rest_creates_dataset_versions_from_accepted_examples(sqlite_db: Database, client_for, keys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    async with sqlite_db.session() as s:
        await ExampleRepository(s).add_many([_accepted(i, "qa") for i in range(12)] + [_accepted(0, "billing")])
    client = await client_for(sqlite_db)
    body = {"name": "qa-set", "selector": {"task_type": "qa"}, "min_examples": 5}
    assert (await client.post("/api/v1/datasets", json=body, headers=auth(keys["auditor"]))).status_code == 403
    r = await client.post("/api/v1/datasets", json=body, headers=auth(keys["trainer"]))
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["version"] == "1.0.0" and sum(first["split_counts"].values()) == 12
    r = await client.post("/api/v1/datasets", json=body, headers=auth(keys["trainer"]))
    assert r.status_code == 409 and r.json()["code"] == "E7020"
    async with sqlite_db.session() as s:
        await ExampleRepository(s).add_many([_accepted(i, "qa") for i in range(12, 15)])
    r = await client.post("/api/v1/datasets", json=body, headers=auth(keys["admin"]))
    assert r.status_code == 201, r.text
    assert r.json()["version"] == "1.1.0" and r.json()["dataset_id"] == first["dataset_id"]
    assert sum(r.json()["split_counts"].values()) == 15
