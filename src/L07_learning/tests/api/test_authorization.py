"""Who may do what beyond the role table: validation and its baseline, approvals tied to a validation, cancelling
someone else's job, idempotency keys per caller, and whether ``/metrics`` and the API docs need a key.

Each test drives the real app over a real SQLite database; the models are real registered artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from L07_learning.api.config import ApiConfig
from L07_learning.models import JobStatus, TrainingJob
from L07_learning.models.model_artifact import ModelStage
from L07_learning.models.validation import Recommendation
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.store.repositories.jobs import JobRepository
from L07_learning.tests.api.test_api import MISSING, auth, client_for, keys  # noqa: F401  (fixtures)
from L07_learning.tests.services.registry.test_registry import register, validation


@pytest.fixture
async def api(sqlite_db: Database, client_for) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return await client_for(sqlite_db)


# --- validation: who may run it, and against what ------------------------------------------------------------------


async def test_trainer_may_not_validate_and_only_admin_picks_the_baseline(
    api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database, settings, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    r = await api.post(f"/api/v1/models/{MISSING}/validate", json={}, headers=auth(keys["trainer"]))
    assert (r.status_code, r.json()["code"]) == (403, "E7904"), r.text

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    candidate = await register(registry, tmp_path, version="1.1.0", seed=1)
    rejected = await register(registry, tmp_path, version="1.0.0", seed=2)
    await registry.record_validation(validation(rejected, Recommendation.REJECT))
    await registry.promote_model(rejected, "rejected", actor="ci")

    # A reviewer or deployer validates against the server's choice of baseline only.
    for role in ("reviewer", "deployer"):
        r = await api.post(f"/api/v1/models/{candidate}/validate", json={"baseline_model_id": rejected},
                           headers=auth(keys[role]))
        assert (r.status_code, r.json()["code"]) == (403, "E7904"), (role, r.text)
    # An admin may name one, but never a REJECTED model (it would make any candidate look good).
    r = await api.post(f"/api/v1/models/{candidate}/validate", json={"baseline_model_id": rejected},
                       headers=auth(keys["admin"]))
    assert (r.status_code, r.json()["code"]) == (400, "E7110") and "REJECTED" in r.json()["message"], r.text
    r = await api.post(f"/api/v1/models/{candidate}/validate", json={"baseline_model_id": MISSING},
                       headers=auth(keys["admin"]))
    assert (r.status_code, r.json()["code"]) == (404, "E7250"), r.text


# --- approvals are given for one validation --------------------------------------------------------------------------


async def test_an_approval_counts_only_for_the_validation_it_was_given_for(
    api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database, settings, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    mid = await register(registry, tmp_path, version="1.0.0")
    first = validation(mid, Recommendation.REVIEW)
    await registry.record_validation(first)

    r = await api.post(f"/api/v1/models/{mid}/approve", json={"stage": "staging"}, headers=auth(keys["reviewer"]))
    assert r.status_code == 201 and r.json()["validation_id"] == first.validation_id, r.text

    # A new validation arrives after the approval: the reviewer approved a report that is no longer the latest.
    second = validation(mid, Recommendation.REVIEW)
    await registry.record_validation(second)
    r = await api.post(f"/api/v1/models/{mid}/promote", json={"stage": "staging"}, headers=auth(keys["deployer"]))
    assert (r.status_code, r.json()["code"]) == (409, "E7252"), r.text
    assert (await registry.get_model(mid)).stage is ModelStage.DEVELOPMENT

    # Approving a stale report is refused; approving the latest one (by id) is what lets the model through.
    r = await api.post(f"/api/v1/models/{mid}/approve", json={"stage": "staging", "validation_id": first.validation_id},
                       headers=auth(keys["reviewer"]))
    assert (r.status_code, r.json()["code"]) == (409, "E7252") and second.validation_id in r.json()["message"], r.text
    r = await api.post(f"/api/v1/models/{mid}/approve", json={"stage": "staging", "validation_id": second.validation_id},
                       headers=auth(keys["reviewer"]))
    assert r.status_code == 201 and r.json()["validation_id"] == second.validation_id
    r = await api.post(f"/api/v1/models/{mid}/promote", json={"stage": "staging"}, headers=auth(keys["deployer"]))
    assert r.status_code == 200 and r.json()["stage"] == "STAGING", r.text
    chain = r.json()["stage_history"][-1]["approvals"]
    assert [a.get("validation_id") for a in chain] == [second.validation_id]


async def test_a_staging_approval_needs_a_validation_to_approve(
    api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database, settings, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    mid = await register(ModelRegistry(db=sqlite_db, settings=settings), tmp_path, version="1.0.0")
    r = await api.post(f"/api/v1/models/{mid}/approve", json={"stage": "staging"}, headers=auth(keys["reviewer"]))
    assert (r.status_code, r.json()["code"]) == (409, "E7252") and "validat" in r.json()["message"], r.text


# --- training jobs: cancel one's own, idempotency per caller ---------------------------------------------------------


async def _job_of(db: Database, created_by: str, idempotency_key: str | None = None) -> str:
    job = TrainingJob(status=JobStatus.PENDING, dataset_id="d", created_by=created_by, idempotency_key=idempotency_key)
    async with db.session() as s:
        await JobRepository(s).add(job)
    return job.job_id


async def test_a_trainer_cancels_only_its_own_jobs(
    api: httpx.AsyncClient, sqlite_db: Database, settings  # type: ignore[no-untyped-def]
) -> None:
    from L07_learning.api.auth import AuthService
    from L07_learning.services.access import AccessService

    service = AuthService(AccessService(sqlite_db))
    alice, alice_token = await service.create_key("trainer", name="alice")
    _, bob_token = await service.create_key("trainer", name="bob")
    _, admin_token = await service.create_key("admin")
    alices_job, other_job = await _job_of(sqlite_db, alice.key_id), await _job_of(sqlite_db, alice.key_id)

    for method, path in (("POST", f"/api/v1/training/jobs/{alices_job}/cancel"), ("DELETE", f"/api/v1/training/jobs/{alices_job}")):
        r = await api.request(method, path, headers=auth(bob_token))
        assert (r.status_code, r.json()["code"]) == (403, "E7904"), r.text
    async with sqlite_db.session() as s:
        assert (await JobRepository(s).get(alices_job)).status is JobStatus.PENDING

    r = await api.post(f"/api/v1/training/jobs/{alices_job}/cancel", headers=auth(alice_token))
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    r = await api.delete(f"/api/v1/training/jobs/{other_job}", headers=auth(admin_token))
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED", r.text
    # An unknown id is still 404, not a leak of whether it exists through 403.
    r = await api.post(f"/api/v1/training/jobs/{MISSING}/cancel", headers=auth(bob_token))
    assert r.status_code == 404


CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))


async def test_idempotency_keys_are_per_caller(
    api: httpx.AsyncClient, sqlite_db: Database, settings, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from L07_learning.api.auth import AuthService
    from L07_learning.pipelines.base_model import build_tiny_model
    from L07_learning.services.access import AccessService
    from L07_learning.services.dataset_curator import DatasetCurator
    from L07_learning.tests.factories.sft import tool_examples

    base = await ModelRegistry(db=sqlite_db, settings=settings).register_base(
        str(build_tiny_model(tmp_path / "tiny", seed=0, cache_dir=CACHE)), name="tiny-llama")
    dataset = await DatasetCurator(db=sqlite_db, settings=settings).create_dataset(
        "tools", tool_examples(12, seed=0), min_examples=1)
    service = AuthService(AccessService(sqlite_db))
    _, alice = await service.create_key("trainer", name="alice")
    _, bob = await service.create_key("trainer", name="bob")
    body = {"dataset_id": dataset.dataset_id, "base_model_id": base.model_id, "idempotency_key": "nightly-2026-12-06",
            "config": {"lora_rank": 8, "lora_alpha": 16, "max_seq_length": 256}}

    first = await api.post("/api/v1/training/jobs", json=body, headers=auth(alice))
    assert first.status_code == 202, first.text
    again = await api.post("/api/v1/training/jobs", json=body, headers=auth(alice))
    assert again.json()["job_id"] == first.json()["job_id"]
    # Bob's request with the same key is his own job, not a view of Alice's.
    bobs = await api.post("/api/v1/training/jobs", json=body, headers=auth(bob))
    assert bobs.status_code == 202 and bobs.json()["job_id"] != first.json()["job_id"], bobs.text
    r = await api.get(bobs.json()["status_url"], headers=auth(bob))
    assert r.json()["created_by"] != (await api.get(first.json()["status_url"], headers=auth(bob))).json()["created_by"]


# --- /metrics and the API docs -------------------------------------------------------------------------------------


async def test_metrics_and_docs_need_a_key_unless_made_public(
    api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database, client_for  # type: ignore[no-untyped-def]
) -> None:
    for path in ("/metrics", "/openapi.json"):
        r = await api.get(path)
        assert (r.status_code, r.json()["code"]) == (401, "E7904"), (path, r.text)
    for path in ("/docs", "/redoc"):
        assert (await api.get(path)).status_code == 404, path
    r = await api.get("/metrics", headers=auth(keys["auditor"]))
    assert r.status_code == 200 and "l07_examples_extracted_total" in r.text
    assert (await api.get("/metrics", headers=auth(keys["producer"]))).status_code == 403
    r = await api.get("/openapi.json", headers=auth(keys["producer"]))
    assert r.status_code == 200 and "/api/v1/events" in r.json()["paths"]
    assert (await api.get("/health/live")).status_code == 200  # probes stay open

    public = await client_for(sqlite_db, ApiConfig(public_metrics=True, public_docs=True))
    assert (await public.get("/metrics")).status_code == 200
    assert (await public.get("/openapi.json")).status_code == 200
    assert (await public.get("/docs")).status_code == 200
